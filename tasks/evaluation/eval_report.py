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


def _verdict(result: GateResult) -> str:
    return ("pass" if result.passed else "**FAIL**") + ("" if result.blocking else " (advisory)")


def render_markdown(decision: Decision, title: str) -> str:
    lines = [
        f"# {title}",
        "",
        f"**Decision:** {_decision_word(decision)} — baseline: {decision.baseline}",
        "",
        "| gate | value | threshold | baseline value | result | why |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in decision.results:
        cells = [
            r.metric,
            format_value(r.value),
            format_value(r.threshold),
            format_value(r.champion_value),
            _verdict(r),
            r.reason,
        ]
        lines.append("| " + " | ".join(cells) + " |")
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
<tr><th>gate</th><th>value</th><th>threshold</th><th>baseline value</th><th>result</th><th>why</th></tr>
{rows}
</table>
<img alt="metrics against the baseline" src="data:image/png;base64,{_chart_png(decision)}">
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
