"""The drift report: one self-contained HTML page (figures embedded as base64 PNG) and a markdown summary.

Top to bottom: the verdict and why, the statistics table (value, threshold, pass/fail), the embedding
distance of traffic prompts to their nearest training prompt beside the same for held-out training prompts,
prompt-length histograms, and the history of canary deltas and of the MMD p-value over previous checks.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tasks.drift.stats import Statistic

DRIFT, NO_DRIFT, NOT_ENOUGH = "drift", "no drift", "not enough traffic"
VERDICT_COLOURS = {DRIFT: "#b3261e", NO_DRIFT: "#1e7d32", NOT_ENOUGH: "#8a6d00"}


@dataclass
class HistoryPoint:
    """One earlier (or this) drift check of the same champion, from the MLflow drift experiment."""

    at: float  # seconds since the epoch
    metrics: dict[str, float]


@dataclass
class ReportData:
    title: str
    verdict: str
    reasons: list[str]
    statistics: list[Statistic]
    notes: list[str] = field(default_factory=list)
    traffic_nearest: list[float] = field(default_factory=list)
    heldout_nearest: list[float] = field(default_factory=list)
    lengths: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    history: list[HistoryPoint] = field(default_factory=list)
    promotion_scores: dict[str, float] = field(default_factory=dict)  # golden metrics at promotion
    bins: int = 30


def format_number(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def result_label(stat: Statistic) -> str:
    return ("DRIFT" if stat.drifted else "pass") + ("" if stat.decides else " (advisory)")


# ---------------------------------------------------------------------------------------------- figures


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _figure(width: float = 7.0, height: float = 3.2, columns: int = 1):
    import matplotlib

    matplotlib.use("Agg")  # no display: render to memory only
    import matplotlib.pyplot as plt

    return plt.subplots(1, columns, figsize=(width, height), squeeze=False)


def distance_figure(data: ReportData) -> str | None:
    if not data.traffic_nearest:
        return None
    figure, axes = _figure()
    ax = axes[0][0]
    ax.hist(data.heldout_nearest, bins=data.bins, alpha=0.6, density=True, label="held-out training prompts")
    ax.hist(data.traffic_nearest, bins=data.bins, alpha=0.6, density=True, label="traffic prompts")
    ax.set_xlabel("cosine distance to the nearest training prompt")
    ax.set_ylabel("density")
    ax.legend()
    return _png(figure)


def length_figure(data: ReportData) -> str | None:
    if not data.lengths:
        return None
    figure, axes = _figure(width=10.0, columns=len(data.lengths))
    for ax, (unit, pair) in zip(axes[0], data.lengths.items(), strict=True):
        ax.hist(pair["training"], bins=data.bins, alpha=0.6, density=True, label="training prompts")
        ax.hist(pair["traffic"], bins=data.bins, alpha=0.6, density=True, label="traffic prompts")
        ax.set_xlabel(f"prompt length ({unit})")
        ax.set_ylabel("density")
        ax.legend()
    return _png(figure)


def history_figure(data: ReportData) -> str | None:
    """Canary deltas (current - promotion) over the checks, and the MMD p-value over the checks."""
    points = sorted(data.history, key=lambda point: point.at)
    canary = sorted({key for p in points for key in p.metrics if key.startswith("canary_")})
    has_mmd = any("mmd_p_value" in p.metrics for p in points)
    if not points or not (canary or has_mmd):
        return None
    figure, axes = _figure(width=10.0, columns=2)
    left, right = axes[0]
    for key in canary:
        series = [(datetime.fromtimestamp(p.at, UTC), p.metrics[key]) for p in points if key in p.metrics]
        left.plot(*zip(*series, strict=True), marker="o", label=key)
    left.axhline(0.0, color="grey", linestyle="--", label="promotion-time value")
    if not canary:
        left.text(
            0.5,
            0.5,
            "no canary check yet\n(no recorded evaluation, or switched off)",
            ha="center",
            va="center",
            transform=left.transAxes,
            color="grey",
        )
    left.set_title("canary: golden answers and metrics, change since promotion")
    left.legend(fontsize="small")
    series = [
        (datetime.fromtimestamp(p.at, UTC), p.metrics["mmd_p_value"])
        for p in points
        if "mmd_p_value" in p.metrics
    ]
    if series:
        right.plot(*zip(*series, strict=True), marker="o", color="tab:purple")
        right.set_yscale("log")
    right.set_title("input drift: MMD permutation p-value")
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=30, labelsize="small")
    return _png(figure)


# ------------------------------------------------------------------------------------------------- HTML


def render_html(data: ReportData) -> str:
    colour = VERDICT_COLOURS[data.verdict]
    reasons = "".join(f"<li>{html.escape(reason)}</li>" for reason in data.reasons)
    notes = "".join(f"<p class='note'>{html.escape(note)}</p>" for note in data.notes)
    rows = "".join(
        "<tr>"
        f"<td>{html.escape(s.name)}</td><td>{s.kind}</td><td>{format_number(s.value)}</td>"
        f"<td>{html.escape(s.rule)}</td>"
        f"<td class='{'bad' if s.drifted else 'good'}'>{result_label(s)}</td>"
        f"<td>{html.escape(s.detail)}</td></tr>"
        for s in data.statistics
    )
    table = (
        "<table><tr><th>statistic</th><th>kind</th><th>value</th><th>drift when</th><th>result</th>"
        f"<th>detail</th></tr>{rows}</table>"
        if data.statistics
        else "<p>No statistic was computed.</p>"
    )
    sections = []
    for title, png in (
        ("Embedding distance to the nearest training prompt", distance_figure(data)),
        ("Prompt lengths", length_figure(data)),
        ("History of this champion's drift checks", history_figure(data)),
    ):
        if png:
            sections.append(
                f"<h2>{title}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>"
            )
    promotion = ", ".join(f"{k} {v:.4f}" for k, v in sorted(data.promotion_scores.items()))
    if promotion:
        sections.append(f"<p class='note'>Golden scores at promotion: {promotion}</p>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(data.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; }}
.verdict {{ font-size: 1.6em; font-weight: bold; color: white; background: {colour}; padding: .4em .8em;
  border-radius: 6px; display: inline-block; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: .3em .6em; text-align: left; font-size: .9em; }}
.bad {{ color: #b3261e; font-weight: bold; }} .good {{ color: #1e7d32; }} .note {{ color: #555; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{html.escape(data.title)}</h1>
<div class="verdict">{html.escape(data.verdict)}</div>
<ul>{reasons}</ul>{notes}
<h2>Statistics</h2>{table}
{"".join(sections)}
</body></html>
"""


def render_markdown(data: ReportData, run_id: str, report_uri: str) -> str:
    lines = [f"# {data.title}", "", f"**Verdict: {data.verdict}**", ""]
    lines += [f"- {reason}" for reason in data.reasons] + [""]
    lines += [f"_{note}_" for note in data.notes] + ([""] if data.notes else [])
    if data.statistics:
        lines += ["| statistic | value | drift when | result |", "|---|---|---|---|"]
        lines += [
            f"| {s.name} | {format_number(s.value)} | {s.rule} | {result_label(s)} |" for s in data.statistics
        ]
        lines.append("")
    lines.append(f"MLflow run `{run_id}`; report: `{report_uri}`")
    return "\n".join(lines)
