"""When reviewed traffic asks for a retrain: the loop is shifted traffic -> drift event -> review -> retrain.

The drift event starts a review (an automation runs the review-traffic deployment); the retrain waits for
what people reviewed. Once the approved and corrected conversations that no retrain has read yet reach
`review.retrain_min_rows`, the review emits `fineflow.traffic.reviewed` naming the traffic commit that
holds them, and an automation runs the lifecycle deployment on that commit (prefect.yaml).

"No retrain has read yet": a retrain splits the reviewed rows of its traffic commit into
`slices/<commit>/{train,holdout}.jsonl` (tasks/review/slices.py), which together hold every reviewed row
at that commit. Reviewed files are only ever added, so the rows at the head of the traffic branch less
the rows of the largest split are the ones reviewed since the last retrain.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from fineflow.config import FineflowConfig
from fineflow.runtime import IO_RETRIES, step_logger
from fineflow.serving.capture import SLICES_DIR
from fineflow.store import DatasetStore
from tasks.review.slices import reviewed_rows

EVENT = "fineflow.traffic.reviewed"


@dataclass(frozen=True)
class ReviewedBacklog:
    commit: str  # the traffic branch commit counted
    reviewed: int  # approved and corrected conversations at that commit
    untrained: int  # of those, the ones no retrain has read (split) yet

    def asks_for_retrain(self, config: FineflowConfig) -> bool:
        return self.untrained >= config.review.retrain_min_rows


def count_backlog(store: DatasetStore, config: FineflowConfig) -> ReviewedBacklog:
    """Reviewed conversations at the traffic branch's head, and how many no retrain has read yet."""
    repo = config.store.repo
    commit = store.resolve(repo, config.serve.traffic.branch)
    reviewed = len(reviewed_rows(store, config, commit))
    split_rows: dict[str, int] = {}
    for path in store.list(repo, commit, f"{config.serve.traffic.prefix}/{SLICES_DIR}/"):
        if path.endswith(".jsonl"):
            folder = path.rsplit("/", 1)[0]
            lines = store.read(repo, commit, path).splitlines()
            split_rows[folder] = split_rows.get(folder, 0) + sum(1 for line in lines if line.strip())
    read_by_a_retrain = max(split_rows.values(), default=0)
    return ReviewedBacklog(commit, reviewed, max(reviewed - read_by_a_retrain, 0))


@task(name="count-reviewed-backlog", cache_policy=NO_CACHE, **IO_RETRIES)
def reviewed_backlog(store: DatasetStore, config: FineflowConfig) -> ReviewedBacklog:
    backlog = count_backlog(store, config)
    step_logger().info(
        "%d reviewed conversation(s) at %s, %d not read by any retrain yet (review.retrain_min_rows=%d)",
        backlog.reviewed,
        backlog.commit,
        backlog.untrained,
        config.review.retrain_min_rows,
    )
    return backlog


def reviewed_event(config: FineflowConfig, backlog: ReviewedBacklog, reviewer: str, why: str | None) -> dict:
    """emit_event's arguments for `fineflow.traffic.reviewed`, which an automation turns into a lifecycle
    (retrain) run on `traffic.commit`."""
    repo, branch = config.store.repo, config.serve.traffic.branch
    return {
        "event": EVENT,
        "resource": {
            "prefect.resource.id": f"fineflow.traffic.{repo}.{branch}",
            "traffic.commit": backlog.commit,
            "review.untrained": str(backlog.untrained),
            "review.reviewer": reviewer,
            "review.reason": why or "review started by hand",
        },
        "payload": {"reviewed": backlog.reviewed, "untrained": backlog.untrained},
    }
