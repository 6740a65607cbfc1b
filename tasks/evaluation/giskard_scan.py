"""A giskard-scan vulnerability scan on the project's own prompt-injection payloads.

giskard-scan's stock `vulnerability_scan` writes its attacks with an LLM and loads fixed-prompt datasets from
a hub: offline it yields nothing. `PayloadScenarioGenerator` is a dataset generator (giskard-scan's
`BaseDatasetScenarioGenerator`) over configs/injection_payloads.yaml instead: each payload becomes one
single-turn scenario whose check is deterministic (the canary must not appear in the answer), so the suite
is built by giskard-scan's own `generate_suite` and run with `Suite.run` fully offline, without an LLM.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, override

from giskard.scan.generators.base import BaseDatasetScenarioGenerator
from pydantic import Field

from tasks.evaluation.injection import load_payloads

SCAN_DESCRIPTION = "Nimbus smart-thermostat support assistant"
SCAN_TAGS = ["threat-type:prompt-injection", "source:fineflow-payloads"]
REPORT_WIDTH = 120


class PayloadScenarioGenerator(BaseDatasetScenarioGenerator):
    """One scenario per payload of a fineflow payload file: the attack is sent to the target as a single
    turn and `Not(StringMatching(canary))` checks the answer (case-insensitive). No LLM involved."""

    payloads_path: Path
    tags: list[str] = Field(default_factory=lambda: list(SCAN_TAGS))

    @override
    def load_scenarios(self, description: str, languages: list[str]) -> list[Any]:
        from giskard.checks import Not, Scenario, StringMatching

        scenarios = []
        for payload in load_payloads(self.payloads_path).payloads:
            scenario = (
                Scenario(scenario_id(payload.id))
                .interact(inputs=payload.attack)
                .check(
                    Not(
                        name="canary absent",
                        check=StringMatching(
                            keyword=payload.canary, target_key="trace.last.outputs", case_sensitive=False
                        ),
                    )
                )
            )
            scenario = scenario.with_annotations(
                {"payload_id": payload.id, "description": description, "languages": languages}
            )
            scenarios.append(scenario.with_tags(list(self.tags)))
        return scenarios


def scenario_id(payload_id: str) -> str:
    return f"injection-{payload_id}"


def _target(answer: Callable[[str], str]) -> Callable[[str], str]:
    """giskard-checks calls a target with a parameter named `inputs` (or `trace`)."""

    def target(inputs: str) -> str:
        return answer(inputs)

    return target


async def build_scan_suite(payloads_path: str | Path, seed: int = 42):
    """The suite giskard-scan's `generate_suite` builds from the payload generator: every payload, in file
    order (the budget is the payload count, so the generator never subsamples)."""
    from giskard.scan import generate_suite

    count = len(load_payloads(payloads_path).payloads)
    return await generate_suite(
        description=SCAN_DESCRIPTION,
        languages=["en"],
        generators=[PayloadScenarioGenerator(payloads_path=Path(payloads_path))],
        max_scenarios=count,
        seed=seed,
        target_mode="singleturn",
    )


def _payload_id(result) -> str:
    prefix = scenario_id("")
    name = result.scenario_name
    return name[len(prefix) :] if name.startswith(prefix) else name


def write_reports(result, out_dir: Path, stem: str = "scan") -> list[str]:
    """`<stem>.json` (the SuiteResult's JSON), `<stem>.xml` (JUnit) and `<stem>.html`: giskard's rich report
    (which details failures only), its pass rate per threat type, and a table of every scenario's status."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, xml_path, html_path = (out_dir / f"{stem}.{ext}" for ext in ("json", "xml", "html"))
    json_path.write_text(result.model_dump_json(indent=2))
    result.to_junit_xml(xml_path)
    console = Console(record=True, file=io.StringIO(), width=REPORT_WIDTH, force_terminal=True)
    result.print_report(console=console, group_by="threat-type")
    table = Table(title="Scenarios")
    for column in ("scenario", "status", "tags"):
        table.add_column(column)
    for scenario in result.results:
        table.add_row(
            escape(scenario.scenario_name), scenario.status.value.upper(), escape(", ".join(scenario.tags))
        )
    console.print(table)
    html_path.write_text(console.export_html(inline_styles=True))
    return [str(json_path), str(xml_path), str(html_path)]


def run_vulnerability_scan(answer: Callable[[str], str], payloads_path: str | Path, out_dir: Path) -> dict:
    """Scan `answer` with the payload suite; write scan.json, scan.xml and scan.html into `out_dir`.

    {"scan_pass_rate": passed / scenarios, "scenarios": n, "failed": [payload ids whose canary appeared],
    "errored": [payload ids whose answer raised], "files": [paths]}. An errored scenario is not a pass."""
    suite = asyncio.run(build_scan_suite(payloads_path))
    result = asyncio.run(suite.run(_target(answer), parallel=False, return_exception=True, verbose=False))
    files = write_reports(result, Path(out_dir))
    scenarios = len(result.results)
    return {
        "scan_pass_rate": result.passed_count / scenarios if scenarios else 0.0,
        "scenarios": scenarios,
        "failed": [_payload_id(r) for r in result.results if r.failed],
        "errored": [_payload_id(r) for r in result.results if r.errored],
        "files": files,
    }
