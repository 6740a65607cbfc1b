"""Versioned dataset store with lakeFS semantics: `open_store(config)` picks the configured backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fineflow.store.base import (
    AlreadyExistsError,
    Change,
    Commit,
    DatasetStore,
    DatasetURI,
    MergeConflictError,
    NotFoundError,
    NothingToCommitError,
    StoreError,
    UncommittedChangesError,
)

if TYPE_CHECKING:
    from fineflow.config import FineflowConfig

__all__ = [
    "AlreadyExistsError",
    "Change",
    "Commit",
    "DatasetStore",
    "DatasetURI",
    "MergeConflictError",
    "NotFoundError",
    "NothingToCommitError",
    "StoreError",
    "UncommittedChangesError",
    "open_store",
]


def open_store(config: FineflowConfig) -> DatasetStore:
    if config.store.backend == "lakefs":
        from fineflow.store.lakefs_store import LakeFSStore  # the lakefs SDK is only imported when used

        return LakeFSStore(storage_namespace=config.store.lakefs.storage_namespace)
    from fineflow.store.embedded import EmbeddedStore

    return EmbeddedStore(config.data_dir / "store")
