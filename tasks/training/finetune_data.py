"""The fine-tune's input: the train split of a published dataset commit, never a moving branch."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from fineflow.config import FineflowConfig
from fineflow.models.engine import with_system_prompt
from fineflow.runtime import IO_RETRIES, step_logger
from fineflow.store import DatasetStore, DatasetURI
from fineflow.store.jsonl import parse_jsonl
from fineflow.store.layout import dataset_layout


def default_train_uri(config: FineflowConfig) -> str:
    """The train split last published by data prep on the main branch."""
    return dataset_layout(config).uri(config.store.repo, config.store.main_branch, "train")


@task(name="resolve-dataset", **IO_RETRIES, cache_policy=NO_CACHE)
def resolve_train_split(store: DatasetStore, uri: str) -> DatasetURI:
    """Pin the dataset URI to the commit its ref points to now; the run records that commit."""
    parsed = DatasetURI.parse(uri)
    commit = store.resolve(parsed.repo, parsed.ref)
    store.read(parsed.repo, commit, parsed.path)  # fail here, clearly, if the split is not in that commit
    pinned = parsed.with_ref(commit)
    if parsed.ref != commit:
        step_logger().info("dataset %s resolved to commit %s", uri, commit)
    return pinned


@task(name="stage-train-split", **IO_RETRIES, cache_policy=NO_CACHE)
def stage_train_split(
    store: DatasetStore, pinned: DatasetURI, run_dir: Path, system_prompt: str
) -> tuple[Path, list[dict]]:
    """Write the pinned split next to the run, where the training process (or SkyPilot's upload) reads it,
    each conversation opening with the system prompt it will be served with (a row's own system message,
    the data owner's, is kept): the model learns its answers under the instructions it will get."""
    rows = [with_system_message(row, system_prompt) for row in parse_jsonl(store.read_uri(pinned))]
    if not rows:
        raise ValueError(f"{pinned} holds no rows to train on")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "train.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    own = sum(row["messages"][0]["content"] != system_prompt for row in rows)
    step_logger().info(
        "staged %d training rows from %s (%d with a system message of their own)", len(rows), pinned, own
    )
    return path, rows


def with_system_message(row: dict, system_prompt: str) -> dict:
    return {**row, "messages": with_system_prompt(row["messages"], system_prompt)}
