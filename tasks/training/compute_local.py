"""Local compute: the training entry point in a child process on this machine (CPU, or a local GPU).

A separate process means a crash, an out-of-memory kill or a CUDA error in training cannot take the
orchestrator down; the flow sees a failed task with the last lines of the trainer's output. Cancelling
the flow terminates the child. With `training.distributed.processes_per_node` > 1 the child is torchrun,
which starts that many trainers (DDP) and stops them all when it is terminated or one of them fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

from tasks.training.train import TrainSpec, entry_command

REPO_ROOT = Path(__file__).resolve().parents[2]
TAIL_LINES = 30  # trainer output kept for the error message when training fails
TERMINATE_GRACE_S = 30  # time the trainer gets to exit after SIGTERM before it is killed


class TrainingFailedError(RuntimeError):
    """The training process ended with an error; the message carries its last lines."""


def run_locally(spec: TrainSpec, on_line: Callable[[str], None]) -> Path:
    output = Path(spec.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    spec_file = output / "spec.json"
    spec_file.write_text(spec.model_dump_json(indent=2))
    command = entry_command(sys.executable, spec_file, spec.training.distributed.processes_per_node)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    try:
        for raw in process.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            on_line(line)
        code = process.wait()
    except BaseException:  # cancelled or interrupted: do not leave a trainer running behind us
        _stop(process)
        raise
    if code != 0:
        raise TrainingFailedError(
            f"training process exited with code {code} (run {spec.run_id}); last lines:\n" + "\n".join(tail)
        )
    return output


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
