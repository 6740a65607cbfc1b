"""The evaluation decision as a person reads it: a Markdown table (Prefect artifact), a JSON file and an
HTML page with the table and a chart of each metric against the baseline (MLflow artifacts)."""

from __future__ import annotations

import base64
import html
import io

from tasks.evaluation.gates import Decision, GateResult


def format_value(value: float | None) -> str:
    """A metric value for a table: 4 significant digits, a dash when not measured."""
    return "—" if value is None else f"{value:.4g}"


def format_interval(low: float | None, high: float | None, signed: bool) -> str:
    """A confidence interval for a table: [low, high] (with signs for a difference), a dash for none."""
    if low is None or high is None:
        return "—"
    return f"[{low:+.4g}, {high:+.4g}]" if signed else f"[{low:.4g}, {high:.4g}]"


def format_diff(value: float | None) -> str:
    """challenger − baseline, signed, a dash when there is no baseline."""
    return "—" if value is None else f"{value:+.4g}"


def _ci_label(decision: Decision) -> str:
    return "CI" if decision.confidence is None else f"{decision.confidence:.0%} CI"


def _statistics_cells(r: GateResult) -> list[str]:
    """n and the interval of the value; the difference from the baseline and its paired interval."""
    return [
        "—" if r.n is None else str(r.n),
        format_interval(r.ci_low, r.ci_high, signed=False),
        format_diff(r.diff),
        format_interval(r.diff_ci_low, r.diff_ci_high, signed=True),
    ]


_STATISTICS_NOTE = (
    "n: items behind the value; CI: bootstrap interval of its mean; diff: challenger − baseline, its "
    "interval paired item by item on the same items (— where a metric has no per-item scores)."
)


def _verdict(result: GateResult) -> str:
    return ("pass" if result.passed else "**FAIL**") + ("" if result.blocking else " (advisory)")


def render_markdown(decision: Decision, title: str) -> str:
    ci = _ci_label(decision)
    lines = [
        f"# {title}",
        "",
        f"**Decision:** {_decision_word(decision)} — baseline: {decision.baseline}",
        "",
        f"| gate | value | threshold | baseline value | result | n | {ci} | diff | diff {ci} | why |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in decision.results:
        cells = [
            r.metric,
            format_value(r.value),
            format_value(r.threshold),
            format_value(r.champion_value),
            _verdict(r),
            *_statistics_cells(r),
            r.reason,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _STATISTICS_NOTE]
    return "\n".join(lines)


def evaluation_title(name: str, version: str, decision: Decision) -> str:
    return f"{name} version {version} vs {decision.baseline}"


def report_notes(judge_capable: bool) -> list[str]:
    """What a reader must know to weigh the table."""
    if judge_capable:
        return []
    return [
        "Judge-scored metrics are advisory: the judge is not marked capable, so they cannot block a gate."
    ]


def evaluation_markdown(decision: Decision, title: str, notes: list[str], run_id: str) -> str:
    """The Prefect artifact of an evaluation: the gate table, its notes, and where the full report is."""
    markdown = render_markdown(decision, title) + "".join(f"\n\n_{note}_" for note in notes)
    return markdown + f"\n\nMLflow run `{run_id}`: decision.json and report.html"


def render_html(decision: Decision, title: str, notes: list[str] | None = None) -> str:
    rows = "\n".join(_html_row(r) for r in decision.results)
    ci = html.escape(_ci_label(decision))
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in notes or [])
    verdict = _decision_word(decision)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
td, th {{ border: 1px solid #ccc; padding: .35rem .6rem; text-align: left; }}
tr.pass td {{ background: #eef8ee; }}
tr.fail td {{ background: #fbe9e9; }}
tr.advisory td {{ background: #fff8e1; }}
.verdict {{ font-size: 1.2rem; font-weight: 600; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="verdict">Decision: {verdict} (baseline: {html.escape(decision.baseline)})</p>
<table>
<tr><th>gate</th><th>value</th><th>threshold</th><th>baseline value</th><th>result</th><th>n</th>\
<th>{ci}</th><th>diff</th><th>diff {ci}</th><th>why</th></tr>
{rows}
</table>
<img alt="metrics against the baseline" src="data:image/png;base64,{_chart_png(decision)}">
<p>{html.escape(_STATISTICS_NOTE)}</p>
<ul>{note_items}</ul>
</body></html>
"""


def _decision_word(decision: Decision) -> str:
    return "promote" if decision.promote else "do not promote"


def _html_row(r: GateResult) -> str:
    css = "pass" if r.passed else ("fail" if r.blocking else "advisory")
    result = ("pass" if r.passed else "FAIL") + ("" if r.blocking else " (advisory)")
    cells = [
        html.escape(r.metric),
        format_value(r.value),
        format_value(r.threshold),
        format_value(r.champion_value),
        result,
        *_statistics_cells(r),
    ]
    cells.append(html.escape(r.reason))
    return f"<tr class='{css}'>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _chart_png(decision: Decision) -> str:
    """One small panel per metric: challenger and baseline side by side, threshold as a dashed line
    (metrics live on different scales, so they do not share an axis)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a PNG in memory
    import matplotlib.pyplot as plt

    measured = [r for r in decision.results if r.value is not None]
    columns = max(1, min(4, len(measured)))
    rows = max(1, -(-len(measured) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.4 * rows), squeeze=False)
    for axis in axes.flat[len(measured) :]:
        axis.set_visible(False)
    for axis, result in zip(axes.flat, measured, strict=False):
        labels, values = ["challenger"], [result.value]
        if result.champion_value is not None:
            labels.append("baseline")
            values.append(result.champion_value)
        colour = "#3a7d44" if result.passed else ("#c0392b" if result.blocking else "#d4a017")
        bars = axis.bar(labels, values, color=[colour, "#7f8c8d"][: len(values)])
        axis.bar_label(bars, fmt="%.3g", fontsize=7)  # a zero-height bar still shows its value
        if result.threshold is not None:
            axis.axhline(result.threshold, linestyle="--", color="#333", linewidth=1)
        axis.set_title(result.metric, fontsize=9)
        axis.tick_params(labelsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()
