"""SLURM host lists such as ``lrdn[0101-0104,0200],gpu7``."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

# What a single SLURM node name may look like on an --exclude list: no brackets, commas or spaces (those are
# host-list syntax), nothing an sbatch argument could misread.
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# One bracketed range of an item: "0001-0004,0010"; a name may carry several ("rack[1-2]-n[01-02]").
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_RANGE = re.compile(r"(\d+)(?:-(\d+))?")

# A host list longer than this is not something a job was given: refuse it instead of building it.
MAX_HOSTS = 100_000


def count_hosts(hostlist: str) -> int:
    """Hosts in a SLURM hostlist (0 for an empty one)."""
    return sum(_count_item(item) for item in _items(hostlist))


def expand(hostlist: str) -> list[str]:
    """Every host of a SLURM hostlist, in its order: ``lrdn[0001-0002,0010]`` -> lrdn0001, lrdn0002, lrdn0010.

    Zero padding is kept as written (``[08-10]`` -> 08, 09, 10). Raises ValueError for a list that is not
    host-list syntax (an unclosed bracket, a range that runs backwards, a non-numeric range).
    """
    if hostlist.count("[") != hostlist.count("]"):
        # _items would drop an unclosed item silently: a job's host list is never like that.
        raise ValueError(f"not host-list syntax: {hostlist[:80]!r} (unbalanced brackets)")
    hosts: list[str] = []
    for item in _items(hostlist):
        hosts.extend(_expand_item(item))
        if len(hosts) > MAX_HOSTS:
            raise ValueError(f"host list {hostlist[:80]!r} names more than {MAX_HOSTS} hosts")
    return hosts


def is_node_name(name: str) -> bool:
    """Whether ``name`` is one plain node name (no host-list syntax in it)."""
    return _NODE_NAME.fullmatch(name) is not None


def join(names: Iterable[str]) -> str:
    """Node names as one host list that SLURM parses back to exactly those names (sorted, each once).

    Raises ValueError for anything that is not a plain node name: a list built here is always valid syntax.
    """
    unique = sorted(set(names))
    bad = [n for n in unique if not is_node_name(n)]
    if bad:
        raise ValueError(f"not a node name: {', '.join(map(repr, bad))}")
    return ",".join(unique)


def _items(hostlist: str) -> list[str]:
    """Top-level comma-separated items; commas inside brackets belong to a range."""
    items, depth, item = [], 0, ""
    for char in hostlist + ",":
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            if item.strip():
                items.append(item.strip())
            item = ""
        else:
            item += char
    return items


def _count_item(item: str) -> int:
    if "[" not in item:
        return 1
    total = 0
    for part in item[item.index("[") + 1 : item.rindex("]")].split(","):
        low, _, high = part.partition("-")
        total += (int(high) - int(low) + 1) if high and low.isdigit() and high.isdigit() else 1
    return total


def _expand_item(item: str) -> list[str]:
    pieces: list[list[str]] = []
    at = 0
    for bracket in _BRACKET.finditer(item):
        pieces.append([item[at : bracket.start()]])
        pieces.append(_expand_ranges(bracket.group(1), item))
        at = bracket.end()
    pieces.append([item[at:]])
    hosts = ["".join(parts) for parts in itertools.product(*pieces)]
    for host in hosts:
        if not is_node_name(host):
            raise ValueError(f"not host-list syntax: {item!r}")
    return hosts


def _expand_ranges(ranges: str, item: str) -> list[str]:
    values: list[str] = []
    for part in ranges.split(","):
        found = _RANGE.fullmatch(part.strip())
        if found is None:
            raise ValueError(f"not host-list syntax: {item!r} (range {part!r})")
        low, high = found.group(1), found.group(2) or found.group(1)
        if int(high) < int(low):
            raise ValueError(f"not host-list syntax: {item!r} (range {part!r} runs backwards)")
        if int(high) - int(low) >= MAX_HOSTS:
            raise ValueError(f"host list item {item!r} names more than {MAX_HOSTS} hosts")
        width = len(low) if low.startswith("0") else 0
        values.extend(str(n).zfill(width) for n in range(int(low), int(high) + 1))
    return values
