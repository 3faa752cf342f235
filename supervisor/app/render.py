"""What the CLI shows people: Rich tables built from the library's plain data (the same dicts ``--json`` prints).

Every piece of text that came from outside (log lines, run and stage names, paths, error messages) enters a
renderable as a ``Text``, never as a markup string: Rich reads ``[...]`` as a tag, so a log line such as
``[rank0]:[E1228 ...]`` would be swallowed and ``[/home/user/.cache/...]`` would raise a MarkupError.

Names are what people type next (``supervisor show NAME``): their columns never truncate; the other
columns fold. Timestamps are shown in the local time zone (``TZ`` is honoured) with the zone's name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.table import Column, Table
from rich.text import Text

from supervisor.domain.durations import format_duration

EVENTS_SHOWN = 30


def text(value: object) -> Text:
    """``value`` as literal text: no markup, no highlighting."""
    return Text("" if value is None else str(value))


def local_time(iso: str | None) -> str:
    """An ISO 8601 timestamp as local time with the zone, e.g. ``2025-01-31 14:02:07 CET``.

    A timestamp without an offset is UTC (how the database has always stored them).
    """
    if not iso:
        return ""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    local = moment.astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S ") + (local.tzname() or local.strftime("%z"))


def _name(header: str, values: Iterable[object]) -> Column:
    # min_width: Rich shrinks every column of a too-wide table, and an ellipsis in a name is a name nobody
    # can type; the folding columns give the room instead.
    return _fixed(header, (str(v or "") for v in values))


def _fixed(header: str, values: Iterable[str]) -> Column:
    # A fixed width: Rich never collapses such a column to fit (it folds the others instead).
    return Column(header, no_wrap=True, width=max([len(header), *(len(v) for v in values)]))


def _fold(header: str) -> Column:
    return Column(header, overflow="fold")


def _table(columns: Sequence[Column], rows: Iterable[Sequence[object]]) -> Table:
    # No outer edge and no vertical rules: in an 80-column pane the room goes to the text.
    table = Table(*columns, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True)
    for row in rows:
        table.add_row(*(text(cell) for cell in row))
    return table


def _progress(progress: Mapping[str, Any] | None, eta: str | None = None) -> str:
    """``250/1000 25%``, and ``~5h`` more while the attempt's own rate gives an ETA."""
    if not progress:
        return ""
    if not progress["total"]:
        return str(progress["step"])
    text = f"{progress['step']}/{progress['total']}"
    if progress.get("fraction") is not None:
        text += f" {progress['fraction']:.0%}"
    if eta:
        left = (datetime.fromisoformat(eta) - datetime.now(UTC)).total_seconds()
        text += f" ~{format_duration(max(left, 0))}"
    return text


def _waiting(row: Mapping[str, Any]) -> str:
    """What a queued job waits for, and since when: the pending reason and the time queued."""
    reason, queued = row.get("pending_reason"), row.get("queued_for_s")
    if not reason:
        return ""
    return f"waiting: {reason}" + (f" {format_duration(queued)}" if queued is not None else "")


STATUS_HEADERS = ("run", "state", "stage", "attempt", "job", "progress", "updated")
# Which of them fold when the table is wider than the terminal: not the names, nor the time.
STATUS_FOLDS = (False, True, False, True, True, True, False)
# Above this many runs `status` prints plain columns (status_lines): Rich lays a table out at about half a
# millisecond a row, 5 s for 10,000 runs.
PLAIN_ROWS = 200


def status_table(rows: Sequence[Mapping[str, Any]]) -> Group:
    """One row per run; a run that needs attention gets a line saying why under the table."""
    cells = _status_cells(rows)
    columns = [_fold(header) if folds else _fixed(header, (c[i] for c in cells))
               for i, (header, folds) in enumerate(zip(STATUS_HEADERS, STATUS_FOLDS, strict=True))]
    return Group(_table(columns, cells), *(Text(note) for note in _attention(rows)))


def status_lines(rows: Sequence[Mapping[str, Any]], width: int, rule: str = "\u2500") -> list[str]:
    """:func:`status_table` as plain lines, laid out the way Rich lays it out: the same columns and rows, two
    spaces between columns, a rule under the header, the notes under the table. Where the table is wider than
    ``width``, the widest folding column gives a character at a time down to its header's width, and a cell
    wider than its column continues on the next lines. No colour, no markup: the text is printed as it is."""
    cells = _status_cells(rows)
    widths = [max([_cells(header), *(_cells(c[i]) for c in cells)]) for i, header in enumerate(STATUS_HEADERS)]
    _fit(widths, width, [_cells(header) for header in STATUS_HEADERS])
    _fit(widths, width, [1] * len(widths))  # names too long for that: the headers fold as well
    header = [_fold_text(h, w) for h, w in zip(STATUS_HEADERS, widths, strict=True)]
    height = max(len(parts) for parts in header)
    lines = _plain_lines([[""] * (height - len(parts)) + parts for parts in header], widths)  # at the bottom
    lines.append(rule * (sum(widths) + 2 * (len(widths) - 1)))
    for row in cells:
        if all(_cells(cell) <= w for cell, w in zip(row, widths, strict=True)):
            lines.append(_plain_line(row, widths))
        else:
            lines += _plain_lines([_fold_text(cell, w) for cell, w in zip(row, widths, strict=True)], widths)
    return lines + _attention(rows)


def _status_cells(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    return [
        (r["name"], r["state"], r["stage"] or "", str(r["attempt"] or ""), r["job_id"] or "",
         _progress(r["progress"], r.get("eta")) or _waiting(r), local_time(r["updated_at"]))
        for r in rows
    ]


def _attention(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"{r['name']} needs attention: {r['reason']}" for r in rows
            if r["state"] == "needs_attention" and r.get("reason")]


def _cells(text: str) -> int:
    """Terminal cells ``text`` takes (a wide character takes two)."""
    return len(text) if text.isascii() else cell_len(text)


def _fit(widths: list[int], width: int, least: Sequence[int]) -> None:
    """Narrow the folding columns, the widest first, until the table fits in ``width`` or none is wider than
    its ``least``."""
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    while excess > 0:
        giving = [i for i, folds in enumerate(STATUS_FOLDS) if folds and widths[i] > least[i]]
        if not giving:
            return
        widest = max(reversed(giving), key=lambda i: widths[i])  # of equals, the rightmost: as Rich does
        widths[widest] -= 1
        excess -= 1


def _fold_text(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` cells: broken at spaces, a longer word broken where it must be."""
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        while _cells(word) > width:
            if line:
                lines.append(line)
                line = ""
            cut = _cut(word, width)
            lines.append(word[:cut])
            word = word[cut:]
        if not line:
            line = word
        elif _cells(line) + 1 + _cells(word) <= width:
            line += " " + word
        else:
            lines.append(line)
            line = word
    return [*lines, line]


def _cut(word: str, width: int) -> int:
    """How many characters of ``word`` fit in ``width`` cells (at least one)."""
    taken = 0
    for i, char in enumerate(word):
        taken += _cells(char)
        if taken > width:
            return max(1, i)
    return len(word)


def _plain_lines(folded: Sequence[Sequence[str]], widths: Sequence[int]) -> list[str]:
    """One row whose cells take several lines each (``folded``), line by line."""
    return [_plain_line([parts[i] if i < len(parts) else "" for parts in folded], widths)
            for i in range(max(len(parts) for parts in folded))]


def _plain_line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(cell + " " * (w - _cells(cell)) for cell, w in zip(cells, widths, strict=True)).rstrip()


def show_renderables(data: Mapping[str, Any], *, all_events: bool = False) -> list[RenderableType]:
    """The run's header line, its stages and attempts, its events (the last 30 unless ``all_events``),
    excluded nodes and undelivered notifications."""
    header = Text.assemble((str(data["name"]), "bold"), f"  {data['state']}  ({data['backend']}, {data['workdir']})")
    if data.get("reason"):
        header.append(f"\nreason: {data['reason']}")
    stages = data["stages"]
    attempt_rows: list[Sequence[object]] = []
    for s in stages:
        if not s["attempts"]:
            attempt_rows.append((s["name"], s["state"], "", "", "", "", "", ""))
        attempt_rows.extend(
            (s["name"], s["state"], a["number"], a["job_id"] or "", a["state"],
             "" if a["exit_code"] is None else a["exit_code"], a["nodes"] or _waiting(a), a["cause"] or "")
            for a in s["attempts"])
    out: list[RenderableType] = [header, _table(
        [_name("stage", (s["name"] for s in stages)), _fold("state"), _fold("attempt"), _fold("job"),
         _fold("attempt state"), _fold("exit"), _fold("nodes"), _fold("cause")], attempt_rows)]

    events = data["events"]
    shown = events if all_events else events[-EVENTS_SHOWN:]
    at = [local_time(e["at"]) for e in shown]
    out.append(_table(
        [_fixed("at", at), _fold("kind"), _name("stage", (e["stage"] for e in shown)), _fold("attempt"),
         _fold("message")],
        ((when, e["kind"], e["stage"] or "", "" if e.get("attempt") is None else e["attempt"], e["message"])
         for e, when in zip(shown, at, strict=True))))
    if len(shown) < len(events):
        out.append(Text(f"last {len(shown)} of {len(events)} events; --all for every one"))

    excluded = data.get("excluded_nodes") or []
    if excluded:
        until = [local_time(x["until"]) for x in excluded]
        out.append(_table([_name("excluded node", (x["node"] for x in excluded)), _fold("reason"),
                           _fixed("until", until)],
                          ((x["node"], x["reason"], when) for x, when in zip(excluded, until, strict=True))))

    notifications = data.get("notifications") or []
    if notifications:
        out.append(_table(
            [_fold("notification"), _fold("channel"), _fold("kind"), _fold("state"), _fold("tries"),
             _fold("last error")],
            ((n["id"], n["channel"], n["kind"], n["state"], n["tries"], n["last_error"] or "") for n in notifications)))
    return out


def diagnose_renderables(result: Mapping[str, Any]) -> list[RenderableType]:
    table = _table([_fold("line"), _fold("signature"), _fold("action"), _fold("text")],
                   ((m["line"], m["signature"], m["action"], m["text"]) for m in result["matches"]))
    verdict = result["verdict"]
    line = f"{verdict['signature']} -> {verdict['action']}" if verdict else "no known failure"
    return [table, Text("verdict: " + line)]


def campaign_line(name: str, rows: list[dict[str, Any]]) -> str:
    """One line over a campaign's rows: how many runs in which state, node-hours spent, the budget."""
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    used = sum(row["node_hours"]["used"] for row in rows)
    wasted = sum(row["node_hours"]["wasted"] for row in rows)
    line = (f"campaign {name}: {len(rows)} runs ({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}); "
            f"{used:.2f} node-hours used, {wasted:.2f} wasted")
    budget = next((row["budget"] for row in rows if row.get("budget") and row["budget"]["scope"] == "campaign"),
                  None)
    if budget is not None:
        limits = [f"{budget[k]:g} {label}" for k, label in (("node_hours", "node-hours"),
                                                           ("wasted_node_hours", "wasted"))
                  if budget.get(k) is not None]
        line += f"; budget {', '.join(limits)}"
    return line
