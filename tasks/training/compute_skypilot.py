"""SkyPilot compute: the training entry point as a managed job on (spot) cloud GPUs, followed to the end.

    run_on_skypilot(spec, config, on_line) -> Path(spec.output_dir)

launch a managed job from infra/sky/finetune.yaml that runs the same entry point as local compute,
`python -m tasks.training.train --spec <file>`, on the spec uploaded beside the train split -> stream its
logs into on_line, line by line, in the same FINEFLOW_METRIC / FINEFLOW_EVENT protocol as local compute
-> poll its status until it ends -> copy `adapter/` and `train_result.json` from the bucket into
spec.output_dir.

The job has fine_tune.skypilot.num_nodes nodes of training.distributed.processes_per_node GPUs each
(`scaled_task`); the YAML's `run` starts torchrun on every node, one trainer per GPU (DDP), with rank 0 on
the first node of $SKYPILOT_NODE_IPS.

Checkpoints live in the bucket (<bucket>/<run id>/checkpoint-N), so a spot preemption, or a rerun of the
same run id, resumes from the last one. Interrupting the caller (Ctrl-C, a Prefect cancellation) cancels
the job before the exception goes on.

Every call into SkyPilot goes through `SkyPilotSDK`, a handful of small methods; tests replace it with a
double (no cloud and no SkyPilot API server are reachable there).
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import re
import shlex
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import urlsplit

import yaml

from fineflow.config import FineflowConfig
from tasks.training.train import ENTRY_MODULE, TrainSpec

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
# The job's contract with infra/sky/finetune.yaml (build_task checks the YAML against it): the run's
# TrainSpec travels as a file, so a new training knob needs no change here or in the YAML.
TRAIN_FILE_ON_VM = "/fineflow/data/train.jsonl"  # file_mounts destination of $TRAIN_SPLIT
SPEC_FILE_ON_VM = "/fineflow/data/spec.json"  # file_mounts destination of $TRAIN_SPEC, beside the split
OUTPUT_MOUNT = "/outputs"  # file_mounts destination of the output bucket (MOUNT_CACHED)
MODEL_CACHE_ON_VM = "~/.cache/fineflow/models"  # expanded on the VM by tasks.training.train.read_spec
# What local compute runs too; on SkyPilot always under torchrun (one trainer per GPU, on every node).
ENTRY_POINT = f"-m {ENTRY_MODULE} --spec {SPEC_FILE_ON_VM}"
LAUNCHER = "torchrun"
SPEC_FILE = "sky-spec.json"  # the VM's spec, written locally into spec.output_dir before the launch
BUCKET_SCHEMES = ("s3", "gs", "r2")  # what fine_tune.skypilot.bucket documents, and cloud_stores syncs down
# sky.jobs.ManagedJobStatus values that end a job (a test checks this against SkyPilot's own list).
TERMINAL_STATUSES = frozenset(
    {
        "SUCCEEDED",
        "CANCELLED",
        "FAILED",
        "FAILED_SETUP",
        "FAILED_PRECHECKS",
        "FAILED_NO_RESOURCE",
        "FAILED_CONTROLLER",
    }
)
LOG_DRAIN_S = 60.0  # after the job ends, how long the log stream gets to deliver its last lines
STATUS_ATTEMPTS = 5  # consecutive failed status polls (API server unreachable) before giving up
TAIL_LINES = 30  # job output kept for the error message when the job fails
# SkyPilot prefixes job output: "(setup pid=12)", "(fineflow-finetune, pid=34)", "(head, rank=0, pid=5)".
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_SKY_PREFIX = re.compile(r"^\([^()]*\bpid=\d+[^()]*\) ?")


class SkyPilotError(RuntimeError):
    """The managed job could not be launched, or it ended without success."""


class SkyPilotJobFailed(SkyPilotError):
    """The managed job ended in a status other than SUCCEEDED; the message names the job and its status."""

    def __init__(self, job_id: int, status: str, message: str):
        super().__init__(message)
        self.job_id = job_id
        self.status = status


@dataclass(frozen=True)
class JobStatus:
    status: str  # a sky.jobs.ManagedJobStatus value, e.g. "RUNNING"
    failure_reason: str | None = None


class SkyBoundary(Protocol):
    """The SkyPilot calls run_on_skypilot makes. `SkyPilotSDK` is the real one."""

    def launch(self, task: Any, name: str, output: Callable[[str], None]) -> int: ...
    def tail_logs(self, job_id: int, output: io.TextIOBase) -> None: ...
    def status(self, job_id: int) -> JobStatus: ...
    def cancel(self, job_id: int) -> None: ...
    def sync_down(self, url: str, destination: Path, is_dir: bool) -> None: ...


class SkyPilotSDK:
    """The real boundary: the SkyPilot 0.14 client SDK (every call goes through its API server)."""

    def launch(self, task, name: str, output: Callable[[str], None]) -> int:
        import sky

        request_id = sky.jobs.launch(task, name=name)
        try:
            with LineWriter(output) as stream:
                job_ids, _handle = sky.stream_and_get(request_id, output_stream=stream)
        except BaseException:
            _quietly(lambda: sky.api_cancel(request_id, silent=True))  # interrupted mid-launch
            raise
        if not job_ids:
            raise SkyPilotError(f"sky.jobs.launch returned no job id for {name!r}")
        return int(job_ids[0])

    def tail_logs(self, job_id: int, output: io.TextIOBase) -> None:
        import sky

        sky.jobs.tail_logs(job_id=job_id, follow=True, output_stream=output)

    def status(self, job_id: int) -> JobStatus:
        import sky

        fields = ["job_id", "task_id", "status", "failure_reason", "recovery_count"]
        answer = sky.get(sky.jobs.queue_v2(refresh=False, job_ids=[job_id], fields=fields))
        records = answer[0] if isinstance(answer, tuple) else answer  # (jobs, total, counts, total) or a list
        mine = [r for r in records if r.get("job_id") == job_id]
        if not mine:
            raise SkyPilotError(f"managed job {job_id} is not in the jobs queue")
        record = mine[-1]  # one record per task; this job has one task
        status = record.get("status")
        return JobStatus(getattr(status, "value", str(status)), record.get("failure_reason"))

    def cancel(self, job_id: int) -> None:
        import sky

        sky.get(sky.jobs.cancel(job_ids=[job_id]))

    def sync_down(self, url: str, destination: Path, is_dir: bool) -> None:
        """Bucket -> local, with the command SkyPilot itself uses for cloud file_mounts
        (sky.cloud_stores: `aws s3 sync` for s3/r2, `gsutil rsync` for gs); the cloud's CLI and
        credentials must work on this machine."""
        from sky import cloud_stores

        store = cloud_stores.get_storage_from_path(url)
        destination.parent.mkdir(parents=True, exist_ok=True)
        target = shlex.quote(str(destination))
        if is_dir:
            destination.mkdir(parents=True, exist_ok=True)
            command = store.make_sync_dir_command(shlex.quote(url), target)
        else:
            command = store.make_sync_file_command(shlex.quote(url), target)
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-2000:]
            raise SkyPilotError(f"could not copy {url} to {destination} (exit {done.returncode}): {tail}")


def run_on_skypilot(
    spec: TrainSpec,
    config: FineflowConfig,
    on_line: Callable[[str], None],
    *,
    sdk: SkyBoundary | None = None,
) -> Path:
    """Train `spec` as a SkyPilot managed job; return spec.output_dir (adapter/, train_result.json)."""
    sdk = sdk or SkyPilotSDK()
    sky_config = config.fine_tune.skypilot
    bucket_root, prefix = split_bucket(sky_config.bucket)
    _check_runs_remotely(spec)
    task = build_task(spec, config)
    name = job_name(sky_config.job_name, spec.run_id)
    job_id = sdk.launch(task, name, lambda line: on_line(clean_log_line(line)))
    on_line(f"fineflow: managed job {job_id} ({name}) launched")
    try:
        final, tail = follow_job(sdk, job_id, on_line, sky_config.poll_seconds)
    except BaseException:  # KeyboardInterrupt, a Prefect cancellation, a crash here: do not leave it running
        _quietly(
            lambda: sdk.cancel(job_id),
            f"could not cancel managed job {job_id}; run `sky jobs cancel {job_id}`",
        )
        raise
    if final.status != "SUCCEEDED":
        reason = f": {final.failure_reason}" if final.failure_reason else ""
        raise SkyPilotJobFailed(
            job_id,
            final.status,
            f"SkyPilot managed job {job_id} ({name}) ended with status {final.status}{reason}; "
            f"see `sky jobs logs {job_id}`. Last lines:\n" + "\n".join(tail),
        )
    return download_outputs(sdk, bucket_root, prefix, spec)


def build_task(spec: TrainSpec, config: FineflowConfig):
    """The task YAML for this run, as `sky jobs launch <yaml> --env K=V ...` would build it, with the
    run's spec (VM paths) written to spec.output_dir/SPEC_FILE for SkyPilot to upload.

    The envs go in before the Task is built (SkyPilot's `env_overrides`), because file_mounts refer to
    them and SkyPilot substitutes them once, while loading; a later Task.update_envs() would not move
    the mounts."""
    import sky

    sky_config = config.fine_tune.skypilot
    bucket_root, prefix = split_bucket(sky_config.bucket)
    task_file = _resolve(sky_config.task_file)
    raw = scaled_task(yaml.safe_load(task_file.read_text()), config)
    raw["workdir"] = str(REPO_ROOT)  # the repository, wherever the flow was started from
    uploads = {"TRAIN_SPLIT": Path(spec.train_file).resolve(), "TRAIN_SPEC": write_vm_spec(spec, prefix)}
    envs = {name: str(path) for name, path in uploads.items()} | {"OUTPUT_BUCKET": bucket_root}
    task = sky.Task.from_yaml_config(raw, env_overrides=list(envs.items()))
    _check_contract(task, task_file, uploads, bucket_root)
    return task


def scaled_task(raw: dict, config: FineflowConfig) -> dict:
    """The task YAML at the configured size: num_nodes nodes, each with processes_per_node GPUs of
    whichever accelerator the optimizer picks (SkyPilot then sets SKYPILOT_NUM_GPUS_PER_NODE, which the
    YAML's torchrun starts that many trainers from)."""
    gpus = config.fine_tune.training.distributed.processes_per_node
    resources = dict(raw.get("resources") or {})
    accelerators = resources.get("accelerators")
    if not isinstance(accelerators, dict) or not accelerators:
        raise SkyPilotError(
            "the SkyPilot task file must list its GPUs as resources.accelerators {NAME: count}"
        )
    resources["accelerators"] = {name: gpus for name in accelerators}
    return {**raw, "num_nodes": config.fine_tune.skypilot.num_nodes, "resources": resources}


def spec_on_vm(spec: TrainSpec, prefix: str) -> TrainSpec:
    """The spec as the job sees it: the same knobs, with the paths the YAML's file_mounts fix."""
    output_dir = PurePosixPath(OUTPUT_MOUNT, *[p for p in prefix.split("/") if p], spec.run_id)
    paths = {"train_file": TRAIN_FILE_ON_VM, "output_dir": str(output_dir), "model_cache": MODEL_CACHE_ON_VM}
    return spec.model_copy(update=paths)


def write_vm_spec(spec: TrainSpec, prefix: str) -> Path:
    path = Path(spec.output_dir).resolve() / SPEC_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec_on_vm(spec, prefix).model_dump_json(indent=2))
    return path


def _check_contract(task, task_file: Path, uploads: dict[str, Path], bucket_root: str) -> None:
    """A YAML edited out of step with the code fails here, before anything is launched."""
    for (name, local), destination in zip(uploads.items(), (TRAIN_FILE_ON_VM, SPEC_FILE_ON_VM), strict=True):
        mounted = (task.file_mounts or {}).get(destination)
        if mounted is None or Path(mounted).resolve() != local:
            raise SkyPilotError(f"{task_file}: file_mounts must map {destination} to ${name}")
    storage = (task.storage_mounts or {}).get(OUTPUT_MOUNT)
    if storage is None or storage.source != bucket_root:
        raise SkyPilotError(f"{task_file}: file_mounts must mount source $OUTPUT_BUCKET at {OUTPUT_MOUNT}")
    if ENTRY_POINT not in (task.run or "") or LAUNCHER not in (task.run or ""):
        raise SkyPilotError(
            f"{task_file}: run must call `{LAUNCHER} ... {ENTRY_POINT}`, the entry point local compute runs"
        )


def split_bucket(bucket: str | None) -> tuple[str, str]:
    """'s3://b/some/prefix' -> ('s3://b', 'some/prefix'). SkyPilot mounts whole buckets only (MOUNT modes
    refuse a sub-path source), so the prefix becomes a directory inside the mount."""
    if not bucket:
        raise SkyPilotError(
            "fine_tune.skypilot.bucket is not set: SkyPilot compute needs a bucket for checkpoints and the "
            "adapter (e.g. s3://my-bucket/fineflow); set it in the config or with "
            "--set fine_tune.skypilot.bucket=s3://..."
        )
    parts = urlsplit(bucket)
    if parts.scheme not in BUCKET_SCHEMES or not parts.netloc:
        raise SkyPilotError(
            f"fine_tune.skypilot.bucket {bucket!r} must look like s3://bucket[/prefix], gs://... or r2://..."
        )
    return f"{parts.scheme}://{parts.netloc}", parts.path.strip("/")


def job_name(base: str, run_id: str) -> str:
    return f"{base}-{run_id}"


def follow_job(
    sdk: SkyBoundary, job_id: int, on_line: Callable[[str], None], poll_seconds: float
) -> tuple[JobStatus, list[str]]:
    """Stream the job's log lines into on_line (in this thread, in order) and poll its status every
    poll_seconds until it is terminal. Returns the final status and the last lines of output."""
    lines: queue.Queue[str | None] = queue.Queue()
    tail: deque[str] = deque(maxlen=TAIL_LINES)

    def stream_logs() -> None:
        try:
            with LineWriter(lines.put) as stream:
                sdk.tail_logs(job_id, stream)
        except Exception as exc:  # the status poll decides the outcome; a broken log stream only loses lines
            log.warning("log stream of managed job %s ended early: %s", job_id, exc)
        finally:
            lines.put(None)

    threading.Thread(target=stream_logs, name=f"sky-logs-{job_id}", daemon=True).start()
    logs_open = True

    def deliver(timeout: float) -> None:
        nonlocal logs_open
        deadline = time.monotonic() + timeout
        while logs_open:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if line is None:
                logs_open = False
                return
            line = clean_log_line(line)
            tail.append(line)
            on_line(line)

    failures = 0
    while True:
        try:
            status = sdk.status(job_id)
            failures = 0
        except Exception as exc:  # a blip must not cancel hours of training; a lasting outage ends the wait
            failures += 1
            if failures >= STATUS_ATTEMPTS:
                raise SkyPilotError(f"cannot read the status of managed job {job_id}: {exc}") from exc
            log.warning(
                "status of managed job %s unavailable (%d/%d): %s", job_id, failures, STATUS_ATTEMPTS, exc
            )
            status = None
        if status is not None and status.status in TERMINAL_STATUSES:
            break
        if logs_open:
            deliver(poll_seconds)
        else:
            time.sleep(poll_seconds)
    deliver(LOG_DRAIN_S)  # the stream ends with the job; take what is still in flight
    return status, list(tail)


def download_outputs(sdk: SkyBoundary, bucket_root: str, prefix: str, spec: TrainSpec) -> Path:
    """<bucket>/<run id>/adapter/ and train_result.json -> spec.output_dir, with the summary's adapter_dir
    pointing at the local copy (the trainer wrote its VM path)."""
    output = Path(spec.output_dir)
    remote = "/".join(p for p in (bucket_root, prefix, spec.run_id) if p)
    sdk.sync_down(f"{remote}/adapter/", output / "adapter", is_dir=True)
    result_file = output / "train_result.json"
    sdk.sync_down(f"{remote}/train_result.json", result_file, is_dir=False)
    summary = json.loads(result_file.read_text())
    summary["remote_adapter_dir"] = f"{remote}/adapter"
    summary["adapter_dir"] = str(output / "adapter")
    result_file.write_text(json.dumps(summary, indent=2))
    return output


def clean_log_line(line: str) -> str:
    """A job log line as the trainer printed it: no colour codes, no SkyPilot '(task, pid=N) ' prefix."""
    return _SKY_PREFIX.sub("", _ANSI.sub("", line).rstrip("\r"))


class LineWriter(io.TextIOBase):
    """A text stream that hands each complete line (without its newline) to a callback."""

    def __init__(self, on_line: Callable[[str], None]):
        self.on_line = on_line
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        *complete, self.pending = self.pending.split("\n")
        for line in complete:
            self.on_line(line)
        return len(text)

    def close(self) -> None:
        if self.pending:
            self.on_line(self.pending)
            self.pending = ""
        super().close()


def _check_runs_remotely(spec: TrainSpec) -> None:
    base = spec.base_model
    if base.startswith((".", "/", "~")) or os.path.isdir(base):
        raise SkyPilotError(
            f"base model {base!r} is a local directory, which the cloud VM cannot see: use the embedded "
            "model's name or a Hugging Face hub id with SkyPilot compute"
        )


def _resolve(path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    if not path.exists():
        raise SkyPilotError(f"SkyPilot task file not found: {path} (fine_tune.skypilot.task_file)")
    return path


def _quietly(call: Callable[[], object], message: str = "best-effort SkyPilot call failed") -> None:
    try:
        call()
    except Exception as exc:
        log.error("%s: %s", message, exc)
