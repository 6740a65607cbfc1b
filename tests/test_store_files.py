"""The one JSONL reader/writer and the one dataset layout every stage uses."""

from __future__ import annotations

import pytest

from fineflow.config import load_config
from fineflow.store.jsonl import parse_jsonl, to_jsonl
from fineflow.store.layout import dataset_layout


def test_jsonl_round_trips_and_skips_blank_lines():
    records = [{"text": "café \u2028 line separator"}, {"n": 1}]
    data = to_jsonl(records)
    assert data.count(b"\n") == 2 and "café".encode() in data  # one line each, UTF-8 as it is
    assert parse_jsonl(data + b"\n  \n") == records
    assert parse_jsonl(b"") == []


def test_layout_names_every_published_file():
    config = load_config()
    layout = dataset_layout(config)
    prefix = config.data_prep.output_prefix
    assert [layout.path(n) for n in ("train", "eval", "quarantine", "removed")] == [
        f"{prefix}/train.jsonl",
        f"{prefix}/eval.jsonl",
        f"{prefix}/quarantine.jsonl",
        f"{prefix}/removed.jsonl",
    ]
    assert layout.report == f"{prefix}/report.json"
    assert (
        layout.uri("fineflow-data", "abc123", "train")
        == f"lakefs://fineflow-data/abc123/{prefix}/train.jsonl"
    )
    with pytest.raises(ValueError, match="no dataset file"):
        layout.path("secrets")
