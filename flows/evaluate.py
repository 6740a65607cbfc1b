"""Lifecycle stage 4, evaluation: the challenger against the champion (or the base model when there is
no champion yet) on the same evaluation sets, decided by the gates in configs/gates.yaml.

Scores are computed once per model and evaluation key (eval split commit, golden set, evaluation config,
code) and kept as MLflow runs, so the champion is not re-measured for every challenger. The decision is
a gate table logged to MLflow (metrics, decision.json, report.html; tags on the model version) and shown
as a Prefect markdown artifact. Nothing moves here: `flows/promote.py` moves aliases.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from fineflow.config import DEFAULT_CONFIG, FineflowConfig, config_hash, load_config
from fineflow.registry.tracking import ensure_experiment, lineage_tags, tracking_uri, use_tracking_uri
from fineflow.runtime import code_version, io_task, step_logger
from fineflow.store import open_store
from tasks.evaluation.classic_metrics import load_eval_prompts
from tasks.evaluation.eval_report import render_html, render_markdown
from tasks.evaluation.gates import Decision, decide, load_gates
from tasks.evaluation.injection import load_payloads
from tasks.evaluation.measure import EvalSets, Subject, measure, read_golden, version_key
from tasks.evaluation.promotion import CHAMPION, record_decision, version_by_alias

SUBJECT_TAG, KEY_TAG = "eval.subject", "eval.key"
REPORT_ARTIFACT_KEY = "evaluation-report"


class ModelRefError(ValueError):
    """A model reference that names no registered version."""


def resolve_model_ref(client: MlflowClient, ref: str) -> tuple[str, str]:
    """`name@alias` or `name/version` -> (name, version)."""
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return name, str(client.get_model_version_by_alias(name, alias).version)
        name, _, version = ref.rpartition("/")
        return name, str(client.get_model_version(name, version).version)
    except Exception as exc:  # MLflow raises its own RestException for a missing model, alias or version
        raise ModelRefError(f"no registered model version {ref!r} (use name@alias or name/version)") from exc


def evaluation_key(config: FineflowConfig, dataset_commit: str) -> str:
    golden = Path(config.evaluation.golden_file).read_bytes()
    return config_hash(config.evaluation, dataset_commit, golden, code_version())[:24]


@flow(name="evaluate", log_prints=True)
def evaluate(
    model: str | None = None, config_path: str = str(DEFAULT_CONFIG), overrides: dict[str, Any] | None = None
) -> dict:
    """Evaluate a registered model version (default: the challenger) and decide its gates.

    Args:
        model: name@alias or name/version; default <registry.model_name>@<challenger alias>.
        config_path: the YAML config to start from.
        overrides: dotted config keys, e.g. {"evaluation.generation.max_new_tokens": 32}.
    """
    config = load_config(config_path, overrides)
    gates = load_gates(config.evaluation.gates_file)  # every input checked before any model is loaded
    load_eval_prompts(config.evaluation.classic_metrics.prompts_file)
    load_payloads(config.evaluation.injection_payloads_file)
    client = MlflowClient(tracking_uri(config))
    name, version = resolve_model_ref(
        client, model or f"{config.registry.model_name}@{config.registry.challenger_alias}"
    )
    tags = lineage_tags(name, version, client.get_model_version(name, version).tags)
    sets = _eval_sets(config, tags["dataset_commit"])
    key = evaluation_key(config, tags["dataset_commit"])

    challenger = Subject(
        f"version {version}", version_key(version), tags["base_model"], f"models:/{name}/{version}"
    )
    champion = version_by_alias(client, name, CHAMPION)
    if champion and champion != version:
        champion_tags = lineage_tags(name, champion, client.get_model_version(name, champion).tags)
        baseline = Subject(
            f"champion version {champion}",
            version_key(champion),
            champion_tags["base_model"],
            f"models:/{name}/{champion}",
        )
    else:
        baseline = Subject(
            f"base model {tags['base_model']}", f"base:{tags['base_model']}", tags["base_model"], None
        )

    challenger_run, challenger_metrics = measured(client, config, challenger, sets, key)
    baseline_run, baseline_metrics = measured(client, config, baseline, sets, key)
    decision = decide(
        gates, challenger_metrics, baseline_metrics, config.evaluation.judge_capable, baseline.label
    )
    _record(client, config, name, version, decision, challenger_run, baseline_run)
    step_logger().info(
        "decision for %s version %s: %s", name, version, "promote" if decision.promote else "do not promote"
    )
    return {
        "model_name": name,
        "version": version,
        "baseline": baseline.label,
        "promote": decision.promote,
        "gates": decision.as_json()["gates"],
        "challenger_run": challenger_run,
        "baseline_run": baseline_run,
    }


def _eval_sets(config: FineflowConfig, dataset_commit: str) -> EvalSets:
    store = open_store(config)
    data = store.read(config.store.repo, dataset_commit, f"{config.data_prep.output_prefix}/eval.jsonl")
    rows = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    questions, references = read_golden(config.evaluation.golden_file)
    limit = config.evaluation.max_eval_rows
    return EvalSets(questions, references, [row["messages"] for row in rows[:limit]])


def _adapter_dir(config: FineflowConfig, model_uri: str | None) -> str | None:
    """The registered model's LoRA adapter, downloaded from the registry (the model artifact holds it);
    None for the bare base model."""
    import mlflow

    if model_uri is None:
        return None
    target = Path(tempfile.mkdtemp(prefix="fineflow-adapter-"))
    with use_tracking_uri(tracking_uri(config)):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(target)))
    return str(local / "artifacts" / "adapter")


def measured(client: MlflowClient, config: FineflowConfig, subject: Subject, sets: EvalSets, key: str):
    """(MLflow run id, metrics) for a subject on this evaluation key: reused when already measured.

    Three tasks: the lookup and the logging talk to the tracking server and are retried on a transient
    failure; the measurement itself (minutes of model time) is not repeated because a log call failed."""
    found = find_measurement(client, config, subject, key)
    if found:
        return found
    # Downloaded only now: a model already measured on this key needs no weights at all.
    result = task(name=f"measure-{subject.key}", cache_policy=NO_CACHE)(measure)(
        subject, _adapter_dir(config, subject.model_uri), sets, config
    )
    return log_measurement(client, config, subject, key, result), result.metrics


@io_task("find-measurement")
def find_measurement(client: MlflowClient, config: FineflowConfig, subject: Subject, key: str):
    experiment = ensure_experiment(config, name=config.evaluation.experiment)
    wanted = f"tags.`{SUBJECT_TAG}` = '{subject.key}' and tags.`{KEY_TAG}` = '{key}'"
    found = client.search_runs(
        [experiment], filter_string=f"{wanted} and attributes.status = 'FINISHED'", max_results=1
    )
    if not found:
        return None
    step_logger().info(
        "%s already measured on this evaluation key (run %s)", subject.label, found[0].info.run_id
    )
    return found[0].info.run_id, dict(found[0].data.metrics)


@io_task("log-measurement")
def log_measurement(client: MlflowClient, config: FineflowConfig, subject: Subject, key: str, result) -> str:
    run = client.create_run(
        ensure_experiment(config, name=config.evaluation.experiment),
        run_name=f"eval-{subject.key}",
        tags={SUBJECT_TAG: subject.key, KEY_TAG: key},
    )
    try:
        for metric, value in result.metrics.items():
            client.log_metric(run.info.run_id, metric, value)
        for path in result.details.get("scan_files", []):
            client.log_artifact(run.info.run_id, path, "vulnerability_scan")
        client.log_text(run.info.run_id, json.dumps(result.details, indent=2), "details.json")
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")  # a retry logs into a fresh run
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@io_task("record-decision")
def _record(
    client, config, name, version, decision: Decision, challenger_run: str, baseline_run: str
) -> None:
    title = f"{name} version {version} vs {decision.baseline}"
    notes = []
    if not config.evaluation.judge_capable:
        notes.append(
            "Judge-scored metrics are advisory: the judge is not marked capable, so they cannot block a gate."
        )
    client.log_text(challenger_run, json.dumps(decision.as_json(), indent=2), "decision.json")
    client.log_text(challenger_run, render_html(decision, title, notes), "report.html")
    record_decision(client, name, version, decision)
    client.set_model_version_tag(name, version, "gates.eval_run", challenger_run)
    client.set_model_version_tag(name, version, "gates.baseline_run", baseline_run)
    markdown = render_markdown(decision, title) + "".join(f"\n\n_{note}_" for note in notes)
    markdown += f"\n\nMLflow run `{challenger_run}`: decision.json and report.html"
    create_markdown_artifact(key=REPORT_ARTIFACT_KEY, markdown=markdown, description=title)
