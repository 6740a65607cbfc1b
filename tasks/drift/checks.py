"""The drift checks of one champion: whether there is enough data to judge, input drift against its
training prompts, the canary and live quality against its recorded evaluation, and the verdict they
give."""

from __future__ import annotations

from dataclasses import dataclass, field

from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from fineflow.config import FineflowConfig
from fineflow.models.base import load_tokenizer
from fineflow.registry.adapters import download_adapter
from fineflow.registry.prompts import recorded_system_prompt
from fineflow.registry.refs import RegisteredVersion
from fineflow.runtime import IO_RETRIES
from tasks.drift.canary import KIND as CANARY_KIND
from tasks.drift.canary import canary_statistics, golden_answers, recorded_golden
from tasks.drift.live_quality import (
    JUDGE_SIGNAL,
    compare_signals,
    evaluation_answers,
    judge_signal_scores,
    served_sample,
    signal_scores,
    sorted_by_rules,
)
from tasks.drift.live_quality import KIND as LIVE_KIND
from tasks.drift.report import DRIFT, NO_DRIFT, NOT_ENOUGH, ReportData
from tasks.drift.stats import MIN_POINTS, InputDrift, Statistic, input_drift
from tasks.drift.traffic_window import TrafficWindow
from tasks.evaluation.classic_metrics import load_eval_prompts
from tasks.evaluation.measurements import recorded_details
from tasks.evaluation.promotion import EVAL_RUN_TAG


@dataclass
class CanaryCheck:
    statistics: list[Statistic] = field(default_factory=list)
    note: str | None = None  # for the report
    promotion_scores: dict[str, float] = field(default_factory=dict)  # golden scores at promotion


def new_report(config: FineflowConfig, found: RegisteredVersion, window: TrafficWindow) -> ReportData:
    """A report with no verdict yet, noting what was compared."""
    report = ReportData(
        title=f"Drift check of {found.name} version {found.version}",
        verdict=NOT_ENOUGH,
        reasons=[],
        statistics=[],
        bins=config.drift.histogram_bins,
    )
    report.notes.append(
        f"Traffic: {len(window.records)} records since {window.since:%Y-%m-%d %H:%M} UTC at commit "
        f"{window.commit} of branch {config.serve.traffic.branch} ({window.unreadable} unreadable lines "
        "skipped); "
        f"training prompts: dataset commit {found.tags['dataset_commit']}."
    )
    return report


def too_little_traffic(config: FineflowConfig, window: TrafficWindow) -> str | None:
    if len(window.records) >= config.drift.min_traffic:
        return None
    return (
        f"{len(window.records)} traffic records in the window, fewer than drift.min_traffic="
        f"{config.drift.min_traffic}: no verdict"
    )


def too_few_training_prompts(training: list[str], dataset_commit: str) -> str | None:
    """A train split this small (or empty) leaves nothing to compare traffic with: no verdict, as with
    too little traffic, rather than a statistics error."""
    if len(training) >= MIN_POINTS:
        return None
    return (
        f"{len(training)} training prompts at dataset commit {dataset_commit}, fewer than "
        f"{MIN_POINTS}: not enough training prompts, no verdict"
    )


@task(name="input-drift", cache_policy=NO_CACHE)
def measure_input(
    traffic: list[str], training: list[str], base_model: str, rules, config: FineflowConfig
) -> InputDrift:
    tokenizer = load_tokenizer(base_model)
    return input_drift(traffic, training, tokenizer, rules, config.drift)


@task(name="canary", cache_policy=NO_CACHE)
def measure_canary(client: MlflowClient, config: FineflowConfig, found: RegisteredVersion) -> CanaryCheck:
    """The golden set answered again, compared with the answers and scores recorded when the version was
    evaluated for promotion."""
    recorded = recorded_golden(client, found.tags, list(config.drift.canary.max_drop))
    if recorded is None:
        skipped = f"version {found.version} has no recorded evaluation (no gates.eval_run)"
        return CanaryCheck(note=f"Canary skipped: {skipped}.")
    adapter = download_adapter(config, found.name, found.version)
    prompt = recorded_system_prompt(config, found.tags)  # evaluation answered with it
    answers, references = golden_answers(
        config, found.tags["base_model"], str(adapter), prompt.text if prompt else None
    )
    return CanaryCheck(
        statistics=canary_statistics(answers, references, recorded, config),
        note=f"Canary: golden answers compared with evaluation run {recorded.run_id} (at promotion).",
        promotion_scores=recorded.metrics,
    )


def add_input(report: ReportData, measured: InputDrift) -> None:
    report.statistics += measured.statistics
    report.traffic_nearest, report.heldout_nearest = measured.traffic_nearest, measured.heldout_nearest
    report.lengths = measured.lengths


def add_canary(report: ReportData, canary: CanaryCheck) -> None:
    report.statistics += canary.statistics
    if canary.note:
        report.notes.append(canary.note)
    report.promotion_scores = canary.promotion_scores


@dataclass
class LiveQualityCheck:
    statistics: list[Statistic] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for the report


@task(name="live-quality", cache_policy=NO_CACHE, **IO_RETRIES)
def measure_live_quality(
    client: MlflowClient, config: FineflowConfig, found: RegisteredVersion, window: TrafficWindow, rules
) -> LiveQualityCheck:
    """Served answers of the window against the answers recorded by the version's evaluation."""
    run_id = found.tags.get(EVAL_RUN_TAG)
    recorded = evaluation_answers(recorded_details(client, run_id)) if run_id else None
    if recorded is None:
        why = "no recorded evaluation" if not run_id else f"evaluation run {run_id} kept no answered prompts"
        return LiveQualityCheck(notes=[f"Live quality skipped: version {found.version} has {why}."])
    refusals = load_eval_prompts(config.evaluation.classic_metrics.prompts_file).refusal_regexes
    settings = config.drift.live_quality
    live = sorted_by_rules(*served_sample(window.records, settings), rules)
    now, then = signal_scores(live, config, refusals), signal_scores(recorded, config, refusals)
    notes = [f"Live quality: served answers compared with evaluation run {run_id}."]
    if JUDGE_SIGNAL in settings.signals:
        if config.evaluation.judge_capable:
            now[JUDGE_SIGNAL], then[JUDGE_SIGNAL], note = judge_signal_scores(
                live.ordinary, recorded.ordinary, config
            )
            notes.append(note)
        else:
            notes.append(
                f"Live quality: {JUDGE_SIGNAL} skipped: the judge ({config.evaluation.judge.model}) is not "
                "marked capable (evaluation.judge.capable: false), so its scores would be noise."
            )
            signals = {k: v for k, v in settings.signals.items() if k != JUDGE_SIGNAL}
            settings = settings.model_copy(update={"signals": signals})
    statistics, compared = compare_signals(now, then, settings)
    return LiveQualityCheck(statistics, notes + compared)


def add_live_quality(report: ReportData, live: LiveQualityCheck) -> None:
    report.statistics += live.statistics
    report.notes += live.notes


def conclude(report: ReportData) -> None:
    """The verdict: drift when any deciding statistic drifted (advisory ones are only reported)."""
    drifted = [s for s in report.statistics if s.decides and s.drifted]
    report.verdict = DRIFT if drifted else NO_DRIFT
    report.reasons = [reason(s) for s in drifted] or ["every deciding statistic is within its threshold"]


def reason(stat: Statistic) -> str:
    if stat.kind == CANARY_KIND:
        return f"canary: {stat.name} {stat.value:+.3f} ({stat.rule})"
    if stat.kind == LIVE_KIND:
        return f"live quality: {stat.name} {stat.value:+.3g} ({stat.rule})"
    return f"input drift: {stat.name}={stat.value:.3g} ({stat.rule})"
