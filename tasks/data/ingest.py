"""Ingest: bring raw input files into the dataset store and pin every input to a commit.

Local files are committed to the raw branch under `raw_prefix/` (identical bytes make no new commit);
`lakefs://` URIs are read where they are. Either way the run works from commit-pinned URIs, so its
outputs name exactly the data they came from, and a moving branch cannot change a rerun.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from prefect import task
from prefect.cache_policies import NO_CACHE

from fineflow.config import FineflowConfig
from fineflow.runtime import IO_RETRIES, step_logger
from fineflow.store import DatasetStore, DatasetURI, NothingToCommitError
from tasks.data.parse import SUPPORTED_SUFFIXES


class InputError(ValueError):
    """An input that cannot be read: missing file, unsupported type, name clash."""


def check_inputs(inputs: list[str]) -> None:
    """Fail before any work on inputs that cannot be used."""
    problems = []
    for item in inputs:
        suffix = PurePosixPath(item).suffix.lower()
        if suffix not in SUPPORTED_SUFFIXES:
            problems.append(
                f"{item}: unsupported file type {suffix or '(none)'} (use {', '.join(SUPPORTED_SUFFIXES)})"
            )
        elif item.startswith("lakefs://"):
            try:
                DatasetURI.parse(item)
            except ValueError as exc:
                problems.append(str(exc))
        elif not Path(item).is_file():
            problems.append(f"{item}: no such file")
    names = [PurePosixPath(i).name for i in inputs if not i.startswith("lakefs://")]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        problems.append(f"local inputs share file names {clashes}; rename them so raw/ paths stay distinct")
    if problems:
        raise InputError("cannot use these inputs:\n  - " + "\n  - ".join(problems))


def ensure_repo(store: DatasetStore, config: FineflowConfig) -> None:
    store.create_repo(config.store.repo, default_branch=config.store.main_branch, exist_ok=True)
    if not store.branch_exists(config.store.repo, config.store.raw_branch):
        store.create_branch(config.store.repo, config.store.raw_branch, config.store.main_branch)


@task(name="ingest", **IO_RETRIES, cache_policy=NO_CACHE)  # must see new bytes
def ingest_inputs(store: DatasetStore, config: FineflowConfig, inputs: list[str]) -> list[str]:
    """Commit local files to the raw branch; return every input as a commit-pinned lakefs:// URI."""
    repo, raw_branch, prefix = config.store.repo, config.store.raw_branch, config.data_prep.raw_prefix
    ensure_repo(store, config)
    local = [item for item in inputs if not item.startswith("lakefs://")]
    for item in local:
        store.write(repo, raw_branch, f"{prefix}/{Path(item).name}", Path(item).read_bytes())
    raw_commit = None
    if local:
        try:
            raw_commit = store.commit(
                repo, raw_branch, f"ingest {len(local)} raw file(s)", {"sources": ", ".join(local)}
            )
            step_logger().info(
                "ingest: committed %d raw file(s) to %s@%s", len(local), raw_branch, raw_commit[:12]
            )
        except NothingToCommitError:
            raw_commit = store.resolve(repo, raw_branch)
            step_logger().info("ingest: raw files unchanged at %s@%s", raw_branch, raw_commit[:12])
    pinned = []
    for item in inputs:
        if item.startswith("lakefs://"):
            uri = DatasetURI.parse(item)
            pinned.append(str(uri.with_ref(store.resolve(uri.repo, uri.ref))))
        else:
            pinned.append(str(DatasetURI(repo, raw_commit, f"{prefix}/{Path(item).name}")))
    return pinned
