"""`supervisor report`: what the runs cost, as JSON or as one self-contained HTML page.

The figures come from :func:`supervisor.store.readmodels.report_from`; this module adds what lies outside
the database: the scheduler's own elapsed time and node count of ended jobs (sacct, where the cluster
keeps accounting), the save times of the complete checkpoints, and for the page, the loss curves read
from the attempts' logs. The page embeds everything it shows (inline SVG, inline CSS, a few lines of
script): it is read on laptops after an rsync, with no network.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog

from supervisor.domain.accounting import SchedulerUsage
from supervisor.domain.errors import ClusterError, SpecError, StageError
from supervisor.store.readmodels import RunPlace

log = structlog.get_logger(__name__)

MAX_CURVE_POINTS = 400  # per attempt: a page, not a metrics store
_READ_CHUNK = 8 * 1024 * 1024


@runtime_checkable
class SchedulerAccounting(Protocol):
    """A backend that can say what its ended jobs used, as the scheduler counted it."""

    def usage(self, job_ids: Sequence[str]) -> dict[str, SchedulerUsage]: ...


# --- what lies outside the database -----------------------------------------------------------------


def checkpoint_times(place: RunPlace, stage: str) -> list[datetime]:
    """Save times of the stage's complete checkpoints (``trainer_state.json`` is written last); none
    when the stage's config or output directory cannot be read from here."""
    from supervisor.domain.spec import RunSpec
    from supervisor.stages import StageContext
    from supervisor.stages import context as stage_context
    from supervisor.stages.checkpoints import TRAINER_STATE, is_complete, list_checkpoints

    try:
        spec = RunSpec.model_validate(place.spec)
        stage_spec = next(s for s in spec.stages if s.name == stage)
        ctx = StageContext(run=place.name, spec=stage_spec, attempt=1, workdir=Path(place.workdir),
                           axolotl_config=spec.axolotl_config, venv=spec.venv, merged_dir=spec.merged_dir,
                           base_dir=Path(place.spec_path).parent)
        output_dir = stage_context.load_axolotl_config(ctx).output_dir
        return [datetime.fromtimestamp((c.path / TRAINER_STATE).stat().st_mtime, UTC)
                for c in list_checkpoints(output_dir) if is_complete(c.path)]
    except (StopIteration, SpecError, StageError, OSError, ValueError) as exc:
        # The report still counts: waste then runs from the attempt's first step, as `show` counts it.
        log.info("report.no_checkpoints", run=place.name, stage=stage, error=str(exc))
        return []


def scheduler_figures(state_dir: Path) -> Any:
    """(backend, job ids) -> the scheduler's figures, one call per backend; {} where it keeps none."""
    from supervisor.backends import make_cluster

    def figures(backend: str, job_ids: Sequence[str]) -> dict[str, SchedulerUsage]:
        try:
            cluster = make_cluster(backend, state_dir)
        except ValueError:
            return {}
        if not isinstance(cluster, SchedulerAccounting):
            return {}
        try:
            return cluster.usage(job_ids)
        except ClusterError as exc:
            log.info("report.no_scheduler_figures", backend=backend, error=str(exc))
            return {}

    return figures


def loss_curve(log_path: str | None) -> list[tuple[float, float]]:
    """(epoch, loss) of each metric dict in an attempt's log, thinned to MAX_CURVE_POINTS."""
    from supervisor.logs.progress import parse_metrics

    if not log_path:
        return []
    points: list[tuple[float, float]] = []
    try:
        for line in _metric_lines(Path(log_path)):
            metrics = parse_metrics(line)
            if metrics and "loss" in metrics and "epoch" in metrics and math.isfinite(metrics["loss"]):
                points.append((metrics["epoch"], metrics["loss"]))
    except OSError:
        return []
    step = max(1, math.ceil(len(points) / MAX_CURVE_POINTS))
    thinned = points[::step]
    if points and thinned[-1] != points[-1]:
        thinned.append(points[-1])
    return thinned


def _metric_lines(path: Path) -> Iterator[str]:
    """The ``{'loss': ...}`` dicts of a log of any size, found with bytes.find (no regex over the log)."""
    tail = b""
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ_CHUNK):
            data = tail + chunk
            pos, cut = 0, data.rfind(b"\n") + 1 if len(chunk) == _READ_CHUNK else len(data)
            while (pos := data.find(b"{'loss'", pos, cut)) != -1:
                close = data.find(b"}", pos, cut)
                if close == -1:
                    break
                yield data[pos : close + 1].decode("utf-8", errors="replace")
                pos = close
            tail = data[cut:]


# --- the page ---------------------------------------------------------------------------------------

_COLOURS = {"succeeded": "#2e7d32", "failed": "#c62828", "cancelled": "#ef6c00", "running": "#1565c0",
            "queued": "#9e9e9e", "submitting": "#bdbdbd"}
_CURVE_COLOURS = ("#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037", "#ad1457")

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#212121}
h1{font-size:20px}h2{font-size:17px;margin-top:28px}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f5f5f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
.legend span{display:inline-block;margin-right:14px}.legend i{display:inline-block;width:12px;height:12px;
margin-right:4px;vertical-align:-1px}
svg text{font:11px system-ui,sans-serif}.muted{color:#757575}
"""

# Marks the page as rendered once its script ran: the headless test reads it back from the DOM.
_SCRIPT = """
document.body.dataset.charts = String(document.querySelectorAll("svg.chart").length);
for (const bar of document.querySelectorAll("[data-attempt]")) {
  bar.addEventListener("click", () => { document.getElementById("picked").textContent = bar.dataset.attempt; });
}
"""


def render_html(report: Mapping[str, Any], curves: Mapping[tuple[str, str, int], Sequence[tuple[float, float]]]) -> str:
    """The whole page; ``curves`` is (run, stage, attempt) -> (epoch, loss) points."""
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; img-src data:\">",
        f"<title>supervisor report {e(str(report['generated_at']))}</title><style>{_STYLE}</style></head><body>",
        "<h1>Supervisor report</h1>",
        f"<p class='muted'>generated {e(str(report['generated_at']))}"
        f"{' — runs active since ' + e(str(report['since'])) if report.get('since') else ''}</p>",
        _summary(report),
        "<h2>Waste by cause</h2>", _cause_chart(report["waste_by_cause"], "waste-by-cause"),
        "<h2>Failures by signature</h2>", _failures(report["failures_by_signature"]),
    ]
    for index, run in enumerate(report["runs"]):
        parts.append(f"<h2 id='run-{index}'>Run {e(run['name'])} <span class='muted'>({e(run['state'])})</span></h2>")
        parts.append(_run_table(run))
        parts.append("<h3>Attempts</h3>" + _legend() + _gantt(run, index, _time(report["generated_at"])))
        run_curves = {(stage, number): pts for (name, stage, number), pts in curves.items()
                      if name == run["name"] and pts}
        if run_curves:
            parts.append("<h3>Loss</h3>" + _loss_chart(run_curves, index))
    parts.append("<p class='muted'>clicked attempt: <span id='picked'>none</span></p>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def _n(value: float) -> str:
    return f"{value:,.2f}"


def _summary(report: Mapping[str, Any]) -> str:
    d = report["detection"]
    rows = [("node-hours", report["node_hours"]), ("used", report["used_node_hours"]),
            ("wasted", report["wasted_node_hours"]), ("of which hung before detection", d["hung_node_hours"])]
    body = "".join(f"<tr><th>{label}</th><td class='n'>{_n(value)}</td></tr>" for label, value in rows)
    return f"<table id='summary'>{body}<tr><th>hangs detected</th><td class='n'>{d['hangs']}</td></tr></table>"


def _failures(failures: Sequence[Mapping[str, Any]]) -> str:
    if not failures:
        return "<p class='muted'>no failed attempt</p>"
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(f['signature'])}</td><td class='n'>{f['attempts']}</td>"
        f"<td class='n'>{_n(f['wasted_node_hours'])}</td><td>{e(', '.join(f['runs']))}</td></tr>"
        for f in failures)
    return ("<table id='failures'><tr><th>signature</th><th>attempts</th><th>wasted node-hours</th><th>runs</th>"
            f"</tr>{rows}</table>")


def _run_table(run: Mapping[str, Any]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(s['name'])}</td><td>{e(s['kind'])}</td><td>{e(s['state'])}</td>"
        f"<td class='n'>{_duration(s['wall_s'])}</td><td class='n'>{_duration(s['run_s'])}</td>"
        f"<td class='n'>{_n(s['node_hours'])}</td><td class='n'>{_n(s['used_node_hours'])}</td>"
        f"<td class='n'>{_n(s['wasted_node_hours'])}</td><td class='n'>{_n(s['hung_node_hours'])}</td></tr>"
        for s in run["stages"])
    total = (f"<tr><th colspan='5'>run</th><td class='n'>{_n(run['node_hours'])}</td>"
             f"<td class='n'>{_n(run['used_node_hours'])}</td><td class='n'>{_n(run['wasted_node_hours'])}</td>"
             f"<td class='n'>{_n(run['hung_node_hours'])}</td></tr>")
    return ("<table class='stages'><tr><th>stage</th><th>kind</th><th>state</th><th>wall</th><th>ran</th>"
            "<th>node-hours</th><th>used</th><th>wasted</th><th>hung</th></tr>" + rows + total + "</table>")


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _legend() -> str:
    items = "".join(f"<span><i style='background:{colour}'></i>{state}</span>" for state, colour in _COLOURS.items())
    return f"<div class='legend'>{items}<span><i style='background:#000;opacity:.35'></i>wasted</span></div>"


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _gantt(run: Mapping[str, Any], index: int, now: datetime | None) -> str:
    """One row per attempt: queued (grey), then running coloured by its outcome, the wasted tail shaded."""
    e = html.escape
    rows = [(stage["name"], a) for stage in run["stages"] for a in stage["attempts"]]
    moments = [t for _, a in rows for t in (_time(a["submitted_at"]), _time(a["started_at"]), _time(a["ended_at"]))
               if t is not None]
    if not moments:
        return "<p class='muted'>no attempt was submitted</p>"
    live = any(a["ended_at"] is None for _, a in rows)
    low, high = min(moments), max(moments)
    if live and now is not None:
        high = max(high, now)  # a live attempt runs up to the report's own time
    span = max((high - low).total_seconds(), 1.0)
    label_w, width, row_h = 150, 1000, 22
    plot = width - label_w - 10

    def x(moment: datetime) -> float:
        return label_w + plot * (moment - low).total_seconds() / span

    out = [f"<svg class='chart gantt' id='gantt-{index}' width='{width}' height='{row_h * len(rows) + 30}' "
           f"role='img' aria-label='attempt timeline of {e(run['name'])}'>"]
    for i, (stage, a) in enumerate(rows):
        y = 5 + i * row_h
        out.append(f"<text x='4' y='{y + 14}'>{e(stage)} #{a['number']}</text>")
        submitted, started, ended = _time(a["submitted_at"]), _time(a["started_at"]), _time(a["ended_at"])
        end = ended or high
        tip = (f"{stage} attempt {a['number']} job {a['job_id'] or '?'}: {a['state']}"
               f"{' (' + a['waste_cause'] + ')' if a['waste_cause'] else ''}, {a['node_hours']:.2f} node-h, "
               f"{a['wasted_node_hours']:.2f} wasted")
        if submitted is not None:
            queued_end = started or end
            out.append(f"<rect x='{x(submitted):.1f}' y='{y + 6}' width='{max(x(queued_end) - x(submitted), 1):.1f}' "
                       f"height='6' fill='{_COLOURS['queued']}'><title>{e(tip)} — queued</title></rect>")
        if started is not None:
            colour = _COLOURS.get(a["state"], "#616161")
            out.append(f"<rect class='attempt' data-attempt='{e(stage)} #{a['number']}' x='{x(started):.1f}' "
                       f"y='{y + 2}' width='{max(x(end) - x(started), 1):.1f}' height='14' fill='{colour}'>"
                       f"<title>{e(tip)}</title></rect>")
            if a["node_seconds"] and a["wasted_node_seconds"]:
                # The wasted share sits at the end: it is the work since the last checkpoint, or all of it.
                share = a["wasted_node_seconds"] / a["node_seconds"]
                w = max((x(end) - x(started)) * share, 1)
                out.append(f"<rect class='wasted' x='{x(end) - w:.1f}' y='{y + 2}' width='{w:.1f}' height='14' "
                           f"fill='#000' opacity='.35'><title>{e(tip)}</title></rect>")
    axis_y = 5 + len(rows) * row_h + 14
    out.append(f"<text x='{label_w}' y='{axis_y}'>{e(low.strftime('%Y-%m-%d %H:%M'))} UTC</text>")
    out.append(f"<text x='{width - 10}' y='{axis_y}' text-anchor='end'>{e(high.strftime('%Y-%m-%d %H:%M'))}"
               " UTC</text></svg>")
    return "".join(out)


def _loss_chart(curves: Mapping[tuple[str, int], Sequence[tuple[float, float]]], index: int) -> str:
    e = html.escape
    xs = [p[0] for pts in curves.values() for p in pts]
    ys = [p[1] for pts in curves.values() for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    width, height, pad = 700, 260, 40
    sx = (width - 2 * pad) / ((x1 - x0) or 1.0)
    sy = (height - 2 * pad) / ((y1 - y0) or 1.0)
    out = [f"<svg class='chart loss' id='loss-{index}' width='{width}' height='{height + 20 * len(curves)}' "
           "role='img' aria-label='loss curves'>",
           f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' stroke='#999'/>",
           f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{height - pad}' stroke='#999'/>",
           f"<text x='{pad}' y='{height - pad + 14}'>epoch {x0:g}</text>",
           f"<text x='{width - pad}' y='{height - pad + 14}' text-anchor='end'>{x1:g}</text>",
           f"<text x='2' y='{pad}'>{y1:.3g}</text><text x='2' y='{height - pad}'>{y0:.3g}</text>"]
    for i, ((stage, number), pts) in enumerate(sorted(curves.items())):
        colour = _CURVE_COLOURS[i % len(_CURVE_COLOURS)]
        path = " ".join(f"{pad + (px - x0) * sx:.1f},{height - pad - (py - y0) * sy:.1f}" for px, py in pts)
        out.append(f"<polyline class='curve' fill='none' stroke='{colour}' stroke-width='1.5' points='{path}'>"
                   f"<title>{e(stage)} attempt {number}</title></polyline>")
        out.append(f"<text x='{pad}' y='{height + 14 + 20 * i}' fill='{colour}'>{e(stage)} attempt {number}</text>")
    out.append("</svg>")
    return "".join(out)


def _cause_chart(causes: Sequence[Mapping[str, Any]], chart_id: str) -> str:
    if not causes:
        return "<p class='muted'>nothing was wasted</p>"
    e = html.escape
    top = max(c["node_seconds"] for c in causes) or 1
    label_w, width, row_h = 220, 800, 22
    out = [f"<svg class='chart causes' id='{chart_id}' width='{width}' height='{row_h * len(causes) + 10}' "
           "role='img' aria-label='wasted node-hours by cause'>"]
    for i, c in enumerate(causes):
        y = 5 + i * row_h
        w = max((width - label_w - 90) * c["node_seconds"] / top, 1)
        out.append(f"<text x='4' y='{y + 14}'>{e(c['cause'])}</text>"
                   f"<rect class='cause' x='{label_w}' y='{y + 2}' width='{w:.1f}' height='14' fill='#c62828'>"
                   f"<title>{e(c['cause'])}: {c['node_hours']:.2f} node-hours</title></rect>"
                   f"<text x='{label_w + w + 6:.1f}' y='{y + 14}'>{c['node_hours']:.2f} node-h</text>")
    out.append("</svg>")
    return "".join(out)


# --- the command's work -------------------------------------------------------------------------------


def curves_of(report: Mapping[str, Any]) -> dict[tuple[str, str, int], list[tuple[float, float]]]:
    """The loss curves of every train attempt in the report, read from the logs where they are."""
    return {(run["name"], stage["name"], a["number"]): loss_curve(a["log"])
            for run in report["runs"] for stage in run["stages"] if stage["kind"] == "train"
            for a in stage["attempts"] if a["started_at"]}


def write_html(report: Mapping[str, Any], path: Path) -> None:
    """Write the page next to where it goes, then rename: a reader never sees half of it."""
    text = render_html(report, curves_of(report))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# --- the terminal -----------------------------------------------------------------------------------


def report_renderables(report: Mapping[str, Any]) -> list[Any]:
    """Rich tables for the terminal; every value from outside is plain Text (never markup)."""
    from rich.table import Table
    from rich.text import Text

    def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> Table:
        t = Table(title=title, title_justify="left")
        for h in headers:
            t.add_column(h, justify="right" if h.endswith(("hours", "attempts", "wall", "ran")) else "left")
        for row in rows:
            t.add_row(*(Text(str(v)) for v in row))
        return t

    runs = table("node-hours per run", ["run", "state", "node-hours", "used node-hours", "wasted node-hours",
                                        "hung node-hours"],
                 [(r["name"], r["state"], _n(r["node_hours"]), _n(r["used_node_hours"]),
                   _n(r["wasted_node_hours"]), _n(r["hung_node_hours"])) for r in report["runs"]]
                 + [("all", "", _n(report["node_hours"]), _n(report["used_node_hours"]),
                     _n(report["wasted_node_hours"]), _n(report["hung_node_hours"]))])
    causes = table("wasted node-hours by cause", ["cause", "wasted node-hours"],
                   [(c["cause"], _n(c["node_hours"])) for c in report["waste_by_cause"]])
    failures = table("failures by signature", ["signature", "attempts", "wasted node-hours", "runs"],
                     [(f["signature"], f["attempts"], _n(f["wasted_node_hours"]), ", ".join(f["runs"]))
                      for f in report["failures_by_signature"]])
    stages = table("wall time per stage", ["run", "stage", "state", "wall", "ran", "node-hours", "wasted node-hours"],
                   [(r["name"], s["name"], s["state"], _duration(s["wall_s"]), _duration(s["run_s"]),
                     _n(s["node_hours"]), _n(s["wasted_node_hours"])) for r in report["runs"] for s in r["stages"]])
    d = report["detection"]
    detection = Text(f"time lost to detection: {_n(d['hung_node_hours'])} node-hours hung in {d['hangs']} hang(s)")
    return [runs, causes, failures, stages, detection]
