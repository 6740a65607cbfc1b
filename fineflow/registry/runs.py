"""One MLflow run written in one go (an evaluation's measurement, a drift check): created with its tags,
logged into, then marked FINISHED, or FAILED when logging raised."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mlflow import MlflowClient


@contextmanager
def recorded_run(
    client: MlflowClient, experiment_id: str, run_name: str, tags: dict[str, str]
) -> Iterator[str]:
    """Yields the new run's id. A run left FAILED is never reused: lookups of finished work read only
    FINISHED runs, so a retry logs into a fresh run."""
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    try:
        yield run_id
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
