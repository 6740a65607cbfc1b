"""Measurements kept as MLflow runs in the evaluation experiment, one per model and evaluation key, so the
champion is not measured again for every challenger.

Three tasks: the lookup and the logging talk to the tracking server and are retried on a transient
failure; the measurement itself (minutes of model time) is not repeated because a log call failed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from fineflow.config import FineflowConfig
from fineflow.privacy.masker import get_masker
from fineflow.registry.adapters import download_adapter
from fineflow.registry.aliases import version_by_alias
from fineflow.registry.lineage import lineage_tags
from fineflow.registry.prompts import (
    JUDGE_PROMPT_TAG,
    SYSTEM_PROMPT_TAG,
    RegisteredPrompt,
    recorded_system_prompt,
)
from fineflow.registry.refs import ModelRef, RegisteredVersion
from fineflow.registry.runs import recorded_run
from fineflow.registry.tracking import ensure_experiment, link_prompt, tracking_uri
from fineflow.runtime import IO_RETRIES, step_logger
from tasks.evaluation.gates import GateConfig, Scores
from tasks.evaluation.measure import EvalSets, Measurement, Subject, measure, version_key

SUBJECT_TAG, KEY_TAG = "eval.subject", "eval.key"
DETAILS_FILE = "details.json"  # answers, counts and the per-item scores the gates test


def challenger_subject(config: FineflowConfig, found: RegisteredVersion) -> Subject:
    """The version with the system prompt it records (and will be served with)."""
    prompt = recorded_system_prompt(config, found.tags)
    return Subject(
        f"version {found.version}", version_key(found.version), found.tags["base_model"], found.uri, prompt
    )


def base_model_subject(challenger: Subject) -> Subject:
    """The bare base model the challenger's adapter was trained on, given the challenger's system prompt:
    the comparison is then of the weights alone, under the same instructions. Its key names that prompt,
    as the base model answers differently under another."""
    base_model, prompt = challenger.base_model, challenger.system_prompt
    key = f"base:{base_model}" + (f"|{prompt.uri}" if prompt else "")
    return Subject(f"base model {base_model}", key, base_model, None, prompt)


def baseline_subject(client: MlflowClient, config: FineflowConfig, challenger: Subject) -> Subject:
    """The champion with its own system prompt, as it serves now; or the bare base model when there is no
    champion yet (or the challenger is it)."""
    name = config.registry.model_name
    champion = version_by_alias(client, name, config.registry.champion_alias)
    if champion is None or version_key(champion) == challenger.key:
        return base_model_subject(challenger)
    tags = lineage_tags(name, champion, client.get_model_version(name, champion).tags)
    found = RegisteredVersion(name, champion, tags)
    prompt = recorded_system_prompt(config, tags)
    return Subject(
        f"champion version {champion}", version_key(champion), tags["base_model"], found.uri, prompt
    )


def also_measure_base(baseline: Subject, base: Subject, gates: GateConfig) -> bool:
    """Whether the bare base model is measured besides the baseline: only when the baseline is a champion
    (with no champion, the baseline already is the base model, measured once) and a gate claims an
    improvement over the base model, which needs the base model's own scores. Otherwise its minutes of
    model time buy nothing the gates read."""
    return baseline.key != base.key and any(g.improvement_over == "base_model" for g in gates.gates)


def measured(
    client: MlflowClient, config: FineflowConfig, subject: Subject, sets: EvalSets, key: str
) -> tuple[str, Scores]:
    """(MLflow run id, scores with their per-item values) for a subject on this evaluation key: reused
    when already measured."""
    found = find_measurement(client, config, subject, key)
    if found:
        return found
    # Fetched only now: a model already measured on this key needs no weights at all.
    adapter = fetch_adapter(config, subject)
    # The scan's reports live only until they are logged: a temporary directory per measurement, removed
    # whatever happens (an evaluation a day, each leaving its reports behind, fills /tmp).
    with tempfile.TemporaryDirectory(prefix="fineflow-measure-") as scratch:
        result = measure_subject(subject, adapter, sets, config, Path(scratch))
        return log_measurement(client, config, subject, key, result, sets.judge_criteria), result.scores


@task(name="find-measurement", cache_policy=NO_CACHE, **IO_RETRIES)
def find_measurement(
    client: MlflowClient, config: FineflowConfig, subject: Subject, key: str
) -> tuple[str, Scores] | None:
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
    return found[0].info.run_id, recorded_scores(client, found[0].info.run_id)


def recorded_scores(client: MlflowClient, run_id: str) -> Scores:
    """A measurement as its run keeps it: the metrics and the per-item scores in details.json. A run
    recorded without that file (by older code) gives point values only, and its gates say so."""
    return Scores.recorded(client.get_run(run_id).data.metrics, recorded_details(client, run_id))


def recorded_details(client: MlflowClient, run_id: str) -> dict:
    """details.json of a measurement run ({} for a run recorded without it, by older code)."""
    if DETAILS_FILE not in {artifact.path for artifact in client.list_artifacts(run_id)}:
        return {}
    with tempfile.TemporaryDirectory(prefix="fineflow-details-") as folder:
        return json.loads(Path(client.download_artifacts(run_id, DETAILS_FILE, folder)).read_text())


@task(name="fetch-adapter", cache_policy=NO_CACHE, **IO_RETRIES)
def fetch_adapter(config: FineflowConfig, subject: Subject) -> str | None:
    """The subject's adapter directory in the shared cache; None for the bare base model."""
    if subject.model_uri is None:
        return None
    ref = ModelRef.from_uri(subject.model_uri)
    return str(download_adapter(config, ref.name, ref.version))


@task(name="measure", task_run_name="measure-{subject.key}", cache_policy=NO_CACHE)
def measure_subject(
    subject: Subject, adapter_dir: str | None, sets: EvalSets, config: FineflowConfig, scratch: Path
):
    return measure(subject, adapter_dir, sets, config, scratch)


@task(name="log-measurement", cache_policy=NO_CACHE, **IO_RETRIES)
def log_measurement(
    client: MlflowClient,
    config: FineflowConfig,
    subject: Subject,
    key: str,
    result: Measurement,
    judge_criteria: RegisteredPrompt | None = None,  # None: measured without a registered judge prompt
) -> str:
    experiment = ensure_experiment(config, name=config.evaluation.experiment)
    prompts = [p for p in (subject.system_prompt, judge_criteria) if p is not None]
    tags = {SUBJECT_TAG: subject.key, KEY_TAG: key} | prompt_run_tags(subject.system_prompt, judge_criteria)
    with recorded_run(client, experiment, f"eval-{subject.key}", tags) as run_id:
        for prompt in prompts:  # MLflow's UI lists them with the run
            link_prompt(tracking_uri(config), run_id, prompt.uri)
        for metric, value in result.metrics.items():
            client.log_metric(run_id, metric, value)
        for path in result.details.get("scan_files", []):
            client.log_artifact(run_id, path, "vulnerability_scan")
        details = masked_details(result.details, config)
        client.log_text(run_id, json.dumps(details, indent=2), DETAILS_FILE)
    return run_id


def prompt_run_tags(system: RegisteredPrompt | None, judge: RegisteredPrompt | None) -> dict[str, str]:
    """The prompt versions a measurement used, as tags of its run."""
    tags = {SYSTEM_PROMPT_TAG: system.uri} if system else {}
    return tags | ({JUDGE_PROMPT_TAG: judge.uri} if judge else {})


# The model's own words: they may state PII (pii_leak_rate counts it).
MASKED_DETAILS = ("golden_answers", "eval_answers", "attack_answers")


def masked_details(details: dict, config: FineflowConfig) -> dict:
    """details.json as it is kept: the model's answers PII-masked by the one masker (data prep's
    settings), as everything else fineflow writes down. The metrics were computed on the raw answers."""
    masker = get_masker(config.data_prep.pii)
    kept = dict(details)
    for name in MASKED_DETAILS:
        if name in kept:
            kept[name] = [masker.mask(text)[0] for text in kept[name]]
    return kept
