"""The drifted slice: a seeded share of the reviewed conversations, split off before a retrain and never
trained on, so the new version can be measured on the traffic that drifted.

A conversation's side is decided by a hash of the seed and its prompt turns (every turn but the
assistant's), not by a shuffle: the same prompt lands on the same side in every retrain, whatever else was
reviewed since, and a prompt reviewed twice (approved once, corrected later) cannot straddle the split.
Both parts are written at `<prefix>/slices/<traffic commit>/{train,holdout}.jsonl` on the traffic branch
and committed, so a retrain names exactly what it trained on and what it held out.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from fineflow.config import FineflowConfig
from fineflow.serving.capture import REVIEWED_DIR, SLICES_DIR
from fineflow.store import DatasetStore, NothingToCommitError
from fineflow.store.jsonl import parse_jsonl

SPLIT_KIND = "reviewed-split"


@dataclass(frozen=True)
class ReviewedSplit:
    train_uri: str | None  # lakefs:// URI pinned to a commit; None when no reviewed row trains
    holdout_uri: str | None  # the drifted slice; None when no reviewed row is held out
    train_rows: int
    holdout_rows: int


def held_out(row: dict, fraction: float, seed: int) -> bool:
    """Whether a reviewed conversation belongs to the held-out slice (a share `fraction` of prompts)."""
    prompt = [m for m in row["messages"] if m.get("role") != "assistant"]
    digest = hashlib.sha256(f"{seed}:{json.dumps(prompt, sort_keys=True)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def reviewed_rows(store: DatasetStore, config: FineflowConfig, commit: str) -> list[dict]:
    prefix = f"{config.serve.traffic.prefix}/{REVIEWED_DIR}/"
    return [
        row
        for path in sorted(store.list(config.store.repo, commit, prefix))
        if path.endswith(".jsonl")
        for row in parse_jsonl(store.read(config.store.repo, commit, path))
    ]


def split_reviewed(store: DatasetStore, config: FineflowConfig, traffic_commit: str) -> ReviewedSplit:
    """The reviewed conversations at `traffic_commit`, split into what a retrain may train on and the
    held-out drifted slice, both committed to the traffic branch."""
    repo, branch, review = config.store.repo, config.serve.traffic.branch, config.review
    commit = store.resolve(repo, traffic_commit)
    rows = reviewed_rows(store, config, commit)
    holdout = [row for row in rows if held_out(row, review.holdout_fraction, review.holdout_seed)]
    train = [row for row in rows if not held_out(row, review.holdout_fraction, review.holdout_seed)]
    if not rows:
        return ReviewedSplit(None, None, 0, 0)
    folder = f"{config.serve.traffic.prefix}/{SLICES_DIR}/{commit}"
    for name, part in (("train", train), ("holdout", holdout)):
        store.write(repo, branch, f"{folder}/{name}.jsonl", _jsonl(part))
    metadata = {
        "kind": SPLIT_KIND,
        "traffic_commit": commit,
        "holdout_fraction": str(review.holdout_fraction),
        "holdout_seed": str(review.holdout_seed),
    }
    try:
        split_commit = store.commit(repo, branch, f"reviewed traffic of {commit[:12]} split", metadata)
    except NothingToCommitError:  # the same split, written by an earlier run
        split_commit = store.resolve(repo, branch)

    def uri(name: str, part: list[dict]) -> str | None:
        return f"lakefs://{repo}/{split_commit}/{folder}/{name}.jsonl" if part else None

    return ReviewedSplit(uri("train", train), uri("holdout", holdout), len(train), len(holdout))


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
