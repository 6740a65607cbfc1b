"""Following an alias: a server started on `name@alias` (the champion, by default) with
`serve.follow_alias_poll_s` > 0 asks the registry that often which version the alias names. When it moves,
the new version is loaded in the background (the old one keeps answering meanwhile) and handed to `swap`,
which switches between requests: a request is answered by the version that was served when it arrived,
so a stream in flight ends on the old version and nothing is dropped.

A version that fails to load (a missing adapter, a base model that cannot be loaded, a resolution error)
leaves the old one serving; the failure is logged, counted in /metrics and shown on /v1/models, and that
version is not tried again until the alias moves to another one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from fineflow.config import FineflowConfig
from fineflow.serving.loading import ServedModel, load_registered, registered_version

log = logging.getLogger("fineflow.serve")

FOLLOWER_THREAD = "follow-alias"


@dataclass(frozen=True)
class LoadFailure:
    """Why the version the alias names is not the one served."""

    version: str
    error: str


class AliasFollower:
    """Polls the registry for the version `alias_ref` names and swaps it in when it changes."""

    def __init__(
        self,
        config: FineflowConfig,
        alias_ref: str,
        current: Callable[[], ServedModel],
        swap: Callable[[ServedModel], None],
        failed: Callable[[LoadFailure], None],
    ):
        self.config = config
        self.alias_ref = alias_ref
        self.current, self.swap, self.failed = current, swap, failed
        self.failure: LoadFailure | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """One poll: load and swap in the version the alias names now, if it is new."""
        try:
            found = registered_version(self.config, self.alias_ref)
        except Exception as exc:  # the registry unreachable or the alias gone: keep serving, say why
            self._fail(LoadFailure("?", _one_line(exc)))
            return
        if found.version == self.current().version:
            self.failure = None
            return
        if self.failure is not None and self.failure.version == found.version:
            return  # already failed: not loaded again until the alias moves on
        log.info("%s moved to version %s: loading it in the background", self.alias_ref, found.version)
        try:
            served = load_registered(self.config, found, self.alias_ref)
        except Exception as exc:  # any load failure leaves the old version serving
            self._fail(LoadFailure(found.version, _one_line(exc)))
            return
        self.failure = None
        self.swap(served)
        log.info("now serving %s (%s)", served.ids[0], self.alias_ref)

    def start(self, poll_seconds: float) -> None:
        def run() -> None:
            while not self._stop.wait(poll_seconds):
                self.check()

        self._thread = threading.Thread(target=run, name=FOLLOWER_THREAD, daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stops polling; a load in progress gets `timeout` seconds (the thread is a daemon: it cannot keep
        the process alive)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _fail(self, failure: LoadFailure) -> None:
        if failure != self.failure:
            log.warning(
                "%s: version %s not loaded, still serving %s: %s",
                self.alias_ref,
                failure.version,
                self.current().ids[0],
                failure.error,
            )
            self.failed(failure)
        self.failure = failure


def _one_line(exc: Exception) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
