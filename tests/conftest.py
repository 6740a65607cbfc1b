"""Shared fixtures. Tests never reach the network: the environment below keeps every library offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest  # noqa: E402

from fineflow.store.base import DatasetStore  # noqa: E402
from fineflow.store.embedded import EmbeddedStore  # noqa: E402


@pytest.fixture(params=["embedded", "lakefs"])
def store(request, tmp_path) -> DatasetStore:
    """The same behaviour suite runs against both backends."""
    if request.param == "embedded":
        yield EmbeddedStore(tmp_path / "store")
        return
    # No lakeFS server can run here: the lakeFS backend talks to a loopback double of its REST API.
    from fineflow.store.lakefs_store import LakeFSStore
    from tests.lakefs_double import serve_lakefs_double

    with serve_lakefs_double(tmp_path / "lakefs-double") as double:
        yield LakeFSStore(double.endpoint, double.access_key, double.secret_key)
