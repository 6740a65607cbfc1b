"""The audit's PII scan, in a child process that loads its masker while the merge runs.

The audit scans a few dozen strings (input paths, the removal records' skeletons, the report), but
building the masker for them took 6.5 s of the flow's process after the merge (Presidio, spaCy and their
torch import), time in which nothing else ran: at 100k rows a sixth of the serial part of a run. The
merge holds one core and the workers are gone by then, so the scanner starts loading on the other core
when the merge starts and is warm when the audit asks. Like the workers, it runs without torch unless a
configured model needs it (tasks/data/engine.py), and it masks with the shards' own config.

Where the shards ran in the flow's own process (inputs that fit in one shard, as in `make run`), the
masker is built there already and the scan runs there.

Protocol: the parent writes the PII config as one JSON line (the child starts loading at once), then
each scan's texts as one JSON line, and reads the findings' counts back as one JSON line. A retried
audit scans again with the same process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Protocol

from fineflow.config import DataPrepConfig, PIIConfig


class AuditScanError(RuntimeError):
    """The scanner process failed; the message carries the end of its error output."""


class AuditScanner(Protocol):
    def scan(self, texts: list[str]) -> dict[str, int]:
        """Counts of PII findings by type in `texts` (never the values), as `scan_for_pii` gives them."""
        ...


@dataclass
class ScannerHere:
    """The scan in this process: where the shards ran here, their masker is already built."""

    config: PIIConfig

    def scan(self, texts: list[str]) -> dict[str, int]:
        from fineflow.privacy.masker import scan_for_pii

        return scan_for_pii(texts, self.config)


@dataclass
class ScannerProcess:
    process: subprocess.Popen
    errors: IO[str]

    def scan(self, texts: list[str]) -> dict[str, int]:
        """Counts of PII findings by type in `texts` (never the values), as `scan_for_pii` gives them."""
        self.send(json.dumps(texts))
        answer = self.process.stdout.readline()
        if not answer:
            raise self._failed()
        return json.loads(answer)

    def send(self, line: str) -> None:
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except BrokenPipeError as exc:
            raise self._failed() from exc

    def _failed(self) -> AuditScanError:
        self.process.wait()
        self.errors.seek(0)
        tail = self.errors.read()[-2000:].strip()
        return AuditScanError(f"the audit's PII scanner exited {self.process.returncode}: {tail}")


@contextmanager
def audit_scanner(prep: DataPrepConfig, shards_expected: int) -> Iterator[AuditScanner]:
    """The scanner for a run of `shards_expected` shards: in this process where they run here (its masker
    is built), else a process that starts loading now, stopped on exit whether or not it was asked."""
    from tasks.data.engine import models_need_torch, shards_run_here  # not in the child: Dask

    if shards_run_here(shards_expected):
        yield ScannerHere(prep.pii)
        return
    command = [sys.executable, "-m", __name__]
    if not models_need_torch(prep):
        command.append("--without-torch")
    with (
        tempfile.TemporaryFile(mode="w+") as errors,
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True
        ) as process,
    ):
        try:
            scanner = ScannerProcess(process, errors)
            scanner.send(prep.pii.model_dump_json())
            yield scanner
        finally:
            process.kill()  # it holds nothing worth a graceful end


def _serve() -> None:
    if "--without-torch" in sys.argv:
        import tasks.data.torch_free_worker  # noqa: F401  (hides torch, as in the workers)
    from fineflow.privacy.masker import get_masker, scan_for_pii

    config = PIIConfig.model_validate_json(sys.stdin.readline())
    get_masker(config)  # the slow part, done before any texts arrive
    for line in sys.stdin:
        sys.stdout.write(json.dumps(scan_for_pii(json.loads(line), config)) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
