"""The one table of how a failure ends a command: which errors exit with which status.

2: the command cannot do what was asked as asked (a bad config or input, a model that is not registered,
   missing lineage, nothing to check); fix the request and run it again.
1: the work ran and failed (a stage, the audit, the store, the stack); the message says where.

Errors are named as `module:Class` and matched only against modules already imported: the CLI imports
flows lazily (after the environment is prepared), and an error whose module never loaded cannot have
been raised.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from fineflow.cli.common import console

EXIT_CODES: dict[str, int] = {
    "fineflow.config:ConfigError": 2,
    "tasks.data.ingest:InputError": 2,
    "tasks.data.decontaminate:ContaminationError": 2,
    "fineflow.registry.refs:ModelRefError": 2,
    "fineflow.registry.lineage:LineageError": 2,
    "tasks.evaluation.promotion:NotEvaluatedError": 2,
    "tasks.drift.traffic_window:TrafficError": 2,
    "tasks.review.decisions:ReviewError": 2,
    "fineflow.serving.loading:ServeModelError": 2,
    "fineflow.privacy.masker:NerModelMissingError": 2,
    "fineflow.serving.capture:SpoolInUseError": 2,
    "flows.lifecycle:StageFailedError": 1,
    "tasks.data.publish:AuditFailedError": 1,
    "fineflow.registry.aliases:RollbackError": 1,
    # the champion moved while the promotion waited (for approval): nothing moved, evaluate again
    "fineflow.registry.aliases:ChampionMovedError": 1,
    "fineflow.stack:StackError": 1,
    "fineflow.store.base:StoreError": 1,
}


def exit_code(exc: BaseException) -> int | None:
    for name, code in EXIT_CODES.items():
        module, _, cls = name.partition(":")
        error_class = getattr(sys.modules.get(module), cls, None)
        if error_class is not None and isinstance(exc, error_class):
            return code
    return None


@contextmanager
def exits_by_table(hints: dict[str, str] | None = None) -> Iterator[None]:
    """Print a known error in red and exit with its status; `hints` adds a verb's advice after the
    message of an error class named by its class name. Unknown errors propagate with their traceback."""
    try:
        yield
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            raise
        console.print(f"[red]{exc}[/red]{(hints or {}).get(type(exc).__name__, '')}")
        raise typer.Exit(code) from None
