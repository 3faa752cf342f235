"""SLURM host lists such as ``lrdn[0101-0104,0200],gpu7``."""

from __future__ import annotations


def count_hosts(hostlist: str) -> int:
    """Hosts in a SLURM hostlist (0 for an empty one)."""
    return sum(_count_item(item) for item in _items(hostlist))


def _items(hostlist: str) -> list[str]:
    """Top-level comma-separated items; commas inside brackets belong to a range."""
    items, depth, item = [], 0, ""
    for char in hostlist + ",":
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            if item:
                items.append(item)
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
