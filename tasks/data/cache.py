"""The data-prep cache: every step of a run is cached under `data-prep-<step>-<run key>`.

The run key hashes everything that decides the outputs: the store's location, the inputs pinned to
commits and the config hash (the stage's config, where it publishes, the tokenizer, the safety rules'
text, the system prompt's text, the code version). Rerunning on unchanged inputs with an unchanged config
is then served from Prefect's cache: every shard (tasks/data/shards.py, whose persisted result holds masked
rows only) and the steps after the merge, which carry `PREP_STEP_CACHE` on their definitions. The
single-process raw steps (parse, normalise) are never persisted (`RAW_STEP`). The flow names the run (and
whether to refresh) for the steps it calls with `PrepRun.cached_steps`.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import tags, task
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.context import TagsContext
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

from fineflow.config import FineflowConfig, config_hash
from fineflow.registry.prompts import read_prompt_text
from fineflow.runtime import code_version, step_logger
from fineflow.store import DatasetStore

# A tag on every step run of one prep run: it carries the run key to the cache policy (a step's own
# parameters are rows and config sections, which should not have to know about runs) and groups the
# run's steps in the UI. The shards carry the key in their input instead (`without_run_key_tag`).
RUN_KEY_TAG = "data-prep-run:"


def prep_config_hash(config: FineflowConfig) -> str:
    """Everything that decides the outputs: the stage's config, where it publishes, the tokenizer,
    the safety rules' text, the system prompt's text (the token limit counts it, as training adds it) and
    the code version. Not where the shards run nor how big they are (`scale_out`): the published bytes do
    not depend on it, so the lineage must not either."""
    rules = Path(config.data_prep.safety.rules_file).read_bytes()
    scope = f"{config.store.repo}:{config.store.main_branch}:{config.base_model.name}"
    prompt = training_system_prompt(config)
    return config_hash(config.data_prep, scope, rules, prompt, code_version(), exclude={"scale_out"})


def training_system_prompt(config: FineflowConfig) -> str:
    """The system prompt text training puts first in a row without one: the file's text, which is what the
    fine-tune registers (`register_prompt`) and trains with."""
    return read_prompt_text(config.prompts.system)


@dataclass(frozen=True)
class PrepRun:
    key: str
    config_hash: str
    pinned: tuple[str, ...]  # every input as a commit-pinned lakefs:// URI

    @property
    def branch(self) -> str:
        """Where this run writes and audits its outputs before publishing."""
        return f"prep-{self.key[:12]}"

    @contextmanager
    def cached_steps(self, refresh: bool) -> Iterator[None]:
        """Steps called inside are cached under this run's key; refresh recomputes and overwrites them."""
        with tags(RUN_KEY_TAG + self.key), temporary_settings(updates={PREFECT_TASKS_REFRESH_CACHE: refresh}):
            yield


def run_key_in_context() -> str | None:
    """The key of the prep run whose `cached_steps` the caller is in, None outside one."""
    return _run_key_in(TagsContext.get().current_tags)


def _run_key_in(run_tags) -> str | None:
    keys = [tag.removeprefix(RUN_KEY_TAG) for tag in run_tags if tag.startswith(RUN_KEY_TAG)]
    return keys[0] if keys else None


@contextmanager
def without_run_key_tag() -> Iterator[None]:
    """Runs created inside do not carry the run key's tag; any other tag in the context stays.

    For steps that carry the key in their inputs instead: Prefect asks its API for the tag concurrency
    limits of every run of a tagged task before it starts, one synchronous round trip each. For the
    shards that was half a second per shard on the workers while they kept both cores busy (py-spy: the
    wait in `acquire_concurrency_slots_with_lease`), for a tag that never has a limit."""
    current = TagsContext.get().current_tags
    with TagsContext(current_tags={tag for tag in current if not tag.startswith(RUN_KEY_TAG)}):
        yield


@task(name="prep-run-key", cache_policy=NO_CACHE)  # cheap, and must see the current config
def start_prep_run(store: DatasetStore, config: FineflowConfig, pinned: list[str]) -> PrepRun:
    cfg_hash = prep_config_hash(config)
    key = hashlib.sha256("\n".join([store.location, *pinned, cfg_hash]).encode()).hexdigest()
    step_logger().info("inputs %s, config hash %s, run key %s", pinned, cfg_hash[:12], key[:12])
    return PrepRun(key, cfg_hash, tuple(pinned))


@dataclass
class PrepStepCache(CachePolicy):
    """`data-prep-<task name>-<run key>` inside a prep run; no caching outside one."""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs):
        key = _run_key_in(task_ctx.task_run.tags)
        return f"data-prep-{task_ctx.task.name}-{key}" if key else None


PREP_STEP_CACHE = PrepStepCache()

# The steps before masking (read, parse, normalise) handle raw rows. Prefect persists a cached step's
# result as a pickle under its home, outside the store's access control and never expiring: these steps
# are recomputed on every run instead (parsing is cheap next to masking), and caching starts at mask-pii.
RAW_STEP = {"cache_policy": NO_CACHE, "persist_result": False}


@contextmanager
def spool_directory(config: FineflowConfig, run: PrepRun) -> Iterator[Path]:
    """A local working folder for one pass of a run (the shards' spooled results, the split files),
    removed when the pass ends: the published commit and Prefect's cache are what persist."""
    root = config.data_dir / "prep-spool"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{run.key[:12]}-", dir=root) as directory:
        yield Path(directory)
