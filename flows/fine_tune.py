"""Lifecycle stages 2 and 3, fine-tune and register: a dataset commit -> a LoRA adapter -> an MLflow model
version with its lineage, under the `challenger` alias.

resolve dataset (pin to a commit) -> lookup (same lineage already registered? done) -> stage train split
-> train adapter (local process or SkyPilot; resumes from the last checkpoint) -> log to MLflow -> register

Lineage on every version: dataset_commit, dataset_uri, base_model, code_commit, config_hash. A rerun
with the same lineage registers nothing and names the existing version.

The system prompt (configs/prompts/, registered in MLflow's prompt registry) is trained with (a training
row without a system message gets it) and recorded on the version (`prompt.system`, `prompt.system.trained`).
It is deliberately *not* part of the lineage, the fine-tune's cache key: a changed prompt registers the
already-trained adapter again as a new version recording the new prompt version, and only evaluation runs.
Why: the prompt is the operator's policy and is reworded far more often than data changes; the adapter
learns the answers (facts, tone, format), which do not hinge on the exact wording of the instructions, and
a fine-tune costs GPU hours where an evaluation costs minutes. Evaluation measures the reused adapter *with
the new prompt*, and the gates decide whether that pair may serve: a rewording that needs retraining shows
as failed gates, and a retrain then is one config change away (any fine_tune knob, or new data).
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from fineflow.config import DEFAULT_CONFIG, load_config
from fineflow.models.base import check_base_model
from fineflow.store import open_store
from tasks.training.compute import train_adapter, train_spec
from tasks.training.finetune_data import default_train_uri, resolve_train_split, stage_train_split
from tasks.training.register import (
    finetune_lineage,
    finished,
    log_adapter_model,
    log_final_metrics,
    lookup_version,
    register_model,
    register_system_prompt,
    register_with_prompt,
    start_tracking,
)
from tasks.training.results import REPORT_ARTIFACT_KEY, FineTuneResult, report_markdown


@flow(name="fine-tune", log_prints=True)
def fine_tune(
    config_path: str = str(DEFAULT_CONFIG),
    dataset: str | None = None,
    compute: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> FineTuneResult:
    """Fine-tune a LoRA adapter on a dataset commit and register it as the challenger.

    Args:
        config_path: the YAML config to start from.
        dataset: lakefs://<repo>/<ref>/<train.jsonl>; default: the train split published on the main branch.
        compute: local or skypilot; default from config.
        overrides: dotted config keys, e.g. {"fine_tune.training.max_steps": 100}.
    """
    extra = {"fine_tune.dataset": dataset} if dataset else {}
    extra |= {"fine_tune.compute": compute} if compute else {}
    config = load_config(config_path, {**(overrides or {}), **extra})
    check_base_model(config.base_model.name)
    store = open_store(config)

    pinned = resolve_train_split(store, config.fine_tune.dataset or default_train_uri(config))
    prompt = register_system_prompt(config)
    lineage = finetune_lineage(config, pinned)
    existing = lookup_version(config, lineage, prompt)
    trained = lookup_version(config, lineage, None) if existing is None else None
    if existing is not None:
        result = FineTuneResult.registered(
            config, existing.version, existing.run_id, lineage, None, existing.tags
        )
    elif trained is not None:  # only the prompt changed: the trained adapter, registered with the new one
        version = register_with_prompt(config, trained, prompt, lineage)
        result = FineTuneResult.registered(
            config, version.version, version.run_id, lineage, None, version.tags
        )
    else:
        run_dir = config.data_dir / "finetune" / lineage.run_id
        train_file, rows = stage_train_split(store, pinned, run_dir, prompt.text)
        tracker = start_tracking(config, lineage, prompt, pinned, rows, run_dir)
        with finished(tracker):
            spec = train_spec(config, lineage.run_id, train_file, run_dir)
            summary = train_adapter(spec, config, tracker.log_step)
            log_final_metrics(tracker, summary)
            model_uri = log_adapter_model(tracker, config, summary, prompt)
            version = register_model(tracker, config, model_uri, lineage, prompt)
        result = FineTuneResult.registered(
            config, version.version, tracker.run_id, lineage, summary, version.tags
        )
    create_markdown_artifact(
        key=REPORT_ARTIFACT_KEY, markdown=report_markdown(result), description="fine-tune and registration"
    )
    return result
