"""SkyPilot compute: the task YAML, the spec file the job trains on, and following a managed job to the end.

No cloud and no SkyPilot API server are reachable here, so:
- the YAML is checked by SkyPilot's own loader and schemas (offline, real code);
- the task's resources are checked by SkyPilot's real optimizer against a small fixture catalog
  (tests/fixtures/sky_home, rows in the public catalog's format) with one cloud enabled by monkeypatch, as
  SkyPilot's own tests enable clouds; it runs in a child process with HOME at a copy of the fixture and
  with SkyPilot's API-server client and `requests` made to fail, so it provably stays offline;
- launch / logs / status / cancel / download are exercised against a TEST DOUBLE of the SDK boundary
  (`FakeSky` below, standing in for tasks.training.compute_skypilot.SkyPilotSDK). The task it receives
  is built
  by the real SkyPilot loader from the real YAML.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest
import yaml
from prefect.exceptions import TerminationSignal
from pydantic import BaseModel, Field, create_model

from fineflow.config import ConfigError, LoraConfig, TrainingConfig, load_config
from tasks.training import train as train_module
from tasks.training.compute_skypilot import (
    OUTPUT_MOUNT,
    SPEC_FILE_ON_VM,
    TERMINAL_STATUSES,
    TRAIN_FILE_ON_VM,
    JobStatus,
    LineWriter,
    SkyPilotError,
    SkyPilotJobFailed,
    build_task,
    clean_log_line,
    run_on_skypilot,
    scaled_task,
    split_bucket,
)
from tasks.training.train import EVENT_PREFIX, METRIC_PREFIX, TrainSpec, read_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
TASK_YAML = REPO_ROOT / "infra" / "sky" / "finetune.yaml"
SKY_HOME_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "sky_home"
BUCKET = "s3://fineflow-test-bucket"


def raw_yaml() -> dict:
    return yaml.safe_load(TASK_YAML.read_text())


def make_spec(tmp_path: Path, run_id: str = "run42", **training) -> TrainSpec:
    config = load_config(overrides={f"fine_tune.training.{k}": v for k, v in training.items()})
    train_file = tmp_path / "train.jsonl"
    train_file.write_text(json.dumps({"id": "1", "source": "t", "messages": []}) + "\n")
    return TrainSpec(
        run_id=run_id,
        base_model="smollm2-135m-instruct",
        model_cache=str(tmp_path / "models"),
        train_file=str(train_file),
        output_dir=str(tmp_path / "local-output"),
        lora=config.fine_tune.lora,
        training=config.fine_tune.training,
    )


def uploaded_spec(task) -> TrainSpec:
    """The spec the job trains on, read from the file SkyPilot uploads, the way the VM reads it."""
    return read_spec(task.file_mounts[SPEC_FILE_ON_VM])


def sky_config(bucket: str | None = BUCKET + "/team/fineflow", poll: float = 0.01):
    return load_config(
        overrides={"fine_tune.skypilot.bucket": bucket, "fine_tune.skypilot.poll_seconds": poll}
    )


# --- a. the task YAML -------------------------------------------------------------------------------------


def test_task_yaml_passes_skypilots_own_schema_validation():
    import sky
    from sky.utils import common_utils, schemas

    raw = raw_yaml()
    common_utils.validate_schema(raw, schemas.get_task_schema(), "Invalid task YAML: ")
    common_utils.validate_schema(raw["resources"], schemas.get_resources_schema(), "Invalid resources: ")
    common_utils.validate_schema(
        raw["file_mounts"][OUTPUT_MOUNT], schemas.get_storage_schema(), "Invalid storage: "
    )
    task = sky.Task.from_yaml(str(TASK_YAML))  # resources, storage and envs through SkyPilot's loader

    assert {str(r.accelerators) for r in task.resources} == {"{'L4': 1}", "{'A10G': 1}", "{'A100': 1}"}
    assert all(r.use_spot for r in task.resources)
    assert raw["workdir"] == "."
    assert TRAIN_FILE_ON_VM in task.file_mounts  # the local train split, uploaded by SkyPilot
    assert SPEC_FILE_ON_VM in task.file_mounts  # the run's TrainSpec JSON, uploaded beside it
    assert Path(SPEC_FILE_ON_VM).parent == Path(TRAIN_FILE_ON_VM).parent
    outputs = task.storage_mounts[OUTPUT_MOUNT]
    assert outputs.mode == sky.StorageMode.MOUNT_CACHED
    assert outputs.source == raw["envs"]["OUTPUT_BUCKET"]  # $OUTPUT_BUCKET substituted by SkyPilot
    assert "uv sync --frozen" in raw["setup"]
    # The same entry point as local compute (tasks/training/compute_local.py), on the uploaded spec, under
    # torchrun on every node (tested below by running the script).
    assert f"-m tasks.training.train --spec {SPEC_FILE_ON_VM}" in raw["run"]
    assert task.num_nodes == 1


def test_an_unknown_field_in_the_task_yaml_is_rejected():
    from sky.utils import common_utils, schemas

    raw = raw_yaml() | {"enviroment": {"X": "1"}}
    with pytest.raises(ValueError, match="enviroment"):
        common_utils.validate_schema(raw, schemas.get_task_schema(), "Invalid task YAML: ")


def test_the_yaml_names_no_training_knob():
    # Only the files to upload and the bucket: every knob of the run travels in the spec file.
    assert set(raw_yaml()["envs"]) == {"TRAIN_SPLIT", "TRAIN_SPEC", "OUTPUT_BUCKET"}
    text = TASK_YAML.read_text()
    for model in (LoraConfig, TrainingConfig):
        for field in model.model_fields:
            # as a key, an env name (LORA_R, MAX_STEPS) or a word: `(lora_)?<field>`, any case
            assert not re.search(rf"\b(lora_)?{field}\b", text, re.IGNORECASE), field


def test_the_spec_file_carries_the_config_defaults(tmp_path):
    config = load_config()
    spec = uploaded_spec(build_task(make_spec(tmp_path), sky_config()))
    assert spec.lora == config.fine_tune.lora
    assert spec.training == config.fine_tune.training
    assert spec.base_model == config.base_model.name


def test_build_task_writes_the_spec_and_points_the_mounts(tmp_path):
    spec = make_spec(tmp_path, max_steps=7)
    task = build_task(spec, sky_config())

    on_vm = uploaded_spec(task)
    assert on_vm.run_id == "run42" and on_vm.training.max_steps == 7
    assert on_vm.output_dir == "/outputs/team/fineflow/run42"  # the bucket prefix, inside the mount
    assert on_vm.train_file == TRAIN_FILE_ON_VM
    assert Path(task.file_mounts[SPEC_FILE_ON_VM]).parent == Path(spec.output_dir).resolve()
    assert task.file_mounts[TRAIN_FILE_ON_VM] == str(Path(spec.train_file).resolve())
    assert task.storage_mounts[OUTPUT_MOUNT].source == BUCKET  # the bucket root: MOUNT takes no sub-path
    assert task.workdir == str(REPO_ROOT)


def test_a_yaml_out_of_step_with_the_code_is_refused_before_launch(tmp_path):
    broken = raw_yaml()
    broken["run"] = broken["run"].replace("tasks.training.train", "tasks.training.other")
    task_file = tmp_path / "finetune.yaml"
    task_file.write_text(yaml.safe_dump(broken))
    config = load_config(
        overrides={"fine_tune.skypilot.bucket": BUCKET, "fine_tune.skypilot.task_file": str(task_file)}
    )
    with pytest.raises(SkyPilotError, match="run must call `torchrun ... -m tasks.training.train --spec"):
        build_task(make_spec(tmp_path), config)
    del broken["file_mounts"][SPEC_FILE_ON_VM]
    task_file.write_text(yaml.safe_dump(broken))
    with pytest.raises(SkyPilotError, match=f"file_mounts must map {SPEC_FILE_ON_VM} to \\$TRAIN_SPEC"):
        build_task(make_spec(tmp_path), config)


def test_bucket_urls_split_into_root_and_prefix():
    assert split_bucket("s3://b/some/prefix/") == ("s3://b", "some/prefix")
    assert split_bucket("gs://b") == ("gs://b", "")
    with pytest.raises(SkyPilotError, match="fine_tune.skypilot.bucket"):
        split_bucket(None)
    with pytest.raises(SkyPilotError, match="s3://bucket"):
        split_bucket("/local/dir")


# --- b. SkyPilot's optimizer on a fixture catalog ---------------------------------------------------------

OPTIMIZER_PROBE = textwrap.dedent(
    """
    import json, sys
    import requests
    import sky
    from sky import check, exceptions, optimizer
    from sky.server import common as server_common

    def offline(*args, **kwargs):
        raise AssertionError(f"network or API server used: {args[:2]}")

    server_common.make_authenticated_request = offline  # no SkyPilot API server on this path
    requests.Session.request = offline  # no catalog download either

    def optimize(clouds, resources=None, task_file=sys.argv[1]):
        enabled = [getattr(sky.clouds, c)() for c in clouds]
        check.get_cached_enabled_clouds_or_refresh = lambda *a, **k: enabled
        task = sky.Task.from_yaml(task_file)
        if resources is not None:
            task.set_resources(resources(task))
        with sky.Dag() as dag:
            dag.add(task)
        try:
            best = optimizer.Optimizer.optimize(dag, quiet=True).tasks[0].best_resources
        except exceptions.ResourcesUnavailableError as exc:
            return {"error": str(exc).splitlines()[0]}
        return {"cloud": str(best.cloud), "instance_type": best.instance_type, "region": best.region,
                "accelerators": best.accelerators, "use_spot": best.use_spot, "num_nodes": task.num_nodes}

    cases = {
        "task_on_runpod": optimize(["RunPod"]),
        "task_on_lambda": optimize(["Lambda"]),
        "on_demand_on_lambda": optimize(["Lambda"], lambda t: {r.copy(use_spot=False) for r in t.resources}),
        "unknown_gpu": optimize(["RunPod", "Lambda"], lambda t: sky.Resources(accelerators="NOPE-GPU:1")),
        "two_nodes_of_two_gpus": optimize(
            ["Lambda"], lambda t: {r.copy(use_spot=False) for r in t.resources}, task_file=sys.argv[2]
        ),
    }
    print("PROBE " + json.dumps(cases))
    """
)


@pytest.fixture(scope="module")
def optimizer_cases(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("sky-home")
    shutil.copytree(SKY_HOME_FIXTURE, home, dirs_exist_ok=True)  # SkyPilot writes state under ~/.sky
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SKYPILOT_DISABLE_USAGE_COLLECTION": "1",
        "NO_PROXY": "",
        "HTTPS_PROXY": "http://127.0.0.1:9",  # belt and braces: anything that slips through fails locally
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    # The task as build_task sizes it for 2 nodes of 2 GPUs (fine_tune.skypilot.num_nodes, processes per node)
    multi_node = home / "finetune-2x2.yaml"
    multi_node.write_text(yaml.safe_dump(scaled_task(raw_yaml(), multi_node_config())))
    done = subprocess.run(
        [sys.executable, "-c", OPTIMIZER_PROBE, str(TASK_YAML), str(multi_node)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(lines[-1][len("PROBE ") :])


def test_optimizer_picks_a_spot_offer_with_a_listed_gpu(optimizer_cases):
    best = optimizer_cases["task_on_runpod"]
    assert best["cloud"] == "RunPod"
    assert best["use_spot"] is True
    assert best["accelerators"] == {"L4": 1}  # the only listed GPU RunPod offers in the fixture catalog
    assert best["instance_type"] == "1x_L4_SECURE"


def test_optimizer_honours_spot_lambda_sells_none(optimizer_cases):
    # Lambda has no spot instances: the task's own resources cannot run there ...
    assert "Catalog does not contain any instances" in optimizer_cases["task_on_lambda"]["error"]
    # ... while the same GPU list on demand finds Lambda's A100 in the same fixture catalog.
    on_demand = optimizer_cases["on_demand_on_lambda"]
    assert (on_demand["cloud"], on_demand["instance_type"]) == ("Lambda", "gpu_1x_a100_sxm4")
    assert on_demand["accelerators"] == {"A100": 1} and on_demand["use_spot"] is False


def test_optimizer_rejects_an_unknown_gpu(optimizer_cases):
    assert "NOPE-GPU" in optimizer_cases["unknown_gpu"]["error"]


def test_optimizer_places_two_nodes_of_two_gpus(optimizer_cases):
    # The task as build_task sizes it for 2 nodes x 2 GPUs, on demand: Lambda (multi-node, no spot) offers
    # a 2-GPU A100 machine in the fixture catalog, and the optimizer takes two of them.
    best = optimizer_cases["two_nodes_of_two_gpus"]
    assert (best["cloud"], best["instance_type"]) == ("Lambda", "gpu_2x_a100_sxm4")
    assert best["accelerators"] == {"A100": 2} and best["num_nodes"] == 2 and best["use_spot"] is False


# --- multi-node: the task's size from config, and what its run script starts on each node ----------------


def multi_node_config(nodes: int = 2, gpus: int = 2):
    return load_config(
        overrides={
            "fine_tune.skypilot.bucket": BUCKET,
            "fine_tune.skypilot.num_nodes": nodes,
            "fine_tune.training.distributed.processes_per_node": gpus,
        }
    )


def test_build_task_sizes_the_job_from_config(tmp_path):
    spec = make_spec(tmp_path, **{"distributed.processes_per_node": 4})  # the spec and the task, one config
    task = build_task(spec, multi_node_config(nodes=3, gpus=4))
    assert task.num_nodes == 3
    assert {str(r.accelerators) for r in task.resources} == {"{'L4': 4}", "{'A10G': 4}", "{'A100': 4}"}
    assert uploaded_spec(task).training.distributed.processes_per_node == 4


# TEST DOUBLE of torchrun: no GPU node can run here. It records the arguments the run script gives it.
TORCHRUN_DOUBLE = '#!/bin/sh\nprintf \'%s\\n\' "$@" > "$TORCHRUN_ARGS"\n'


@pytest.mark.parametrize("rank", [0, 1])
def test_every_node_starts_torchrun_with_rank_0_on_the_first_node(tmp_path, rank):
    """The YAML's run script as SkyPilot runs it on node `rank` of 2 with 4 GPUs each, SkyPilot's own
    environment variables set: both nodes name the first IP as the master, and each its own rank."""
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "torchrun").write_text(TORCHRUN_DOUBLE)
    (bin_dir / "torchrun").chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "TORCHRUN_ARGS": str(tmp_path / "args"),
        "SKYPILOT_NODE_IPS": "10.0.0.5\n10.0.0.9\n",
        "SKYPILOT_NUM_NODES": "2",
        "SKYPILOT_NODE_RANK": str(rank),
        "SKYPILOT_NUM_GPUS_PER_NODE": "4",
    }
    subprocess.run(["bash", "-c", raw_yaml()["run"]], cwd=tmp_path, env=env, check=True)
    args = (tmp_path / "args").read_text().split()
    assert args == [
        "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "4",
        "--master_addr", "10.0.0.5", "--master_port", "29500",
        "-m", "tasks.training.train", "--spec", SPEC_FILE_ON_VM,
    ]  # fmt: skip


# --- c. launch / logs / status / cancel against a TEST DOUBLE of the SDK boundary -------------------------


class FakeSky:
    """TEST DOUBLE of tasks.training.compute_skypilot.SkyPilotSDK: no cloud or SkyPilot API server is
    reachable here.

    It plays a managed job from a script: the log text tail_logs writes (in SkyPilot's format, with its
    '(task, pid=N)' prefixes, colours and arbitrary chunking), the statuses the queue reports poll by poll,
    and a bucket that is a local folder standing for BUCKET."""

    def __init__(self, bucket_dir: Path, statuses: list, log_chunks: list[str] = (), job_id: int = 7):
        self.bucket_dir = bucket_dir
        self.statuses = list(statuses)
        self.log_chunks = list(log_chunks)
        self.job_id = job_id
        self.calls: list[tuple] = []
        self.launched_task = None

    def launch(self, task, name, output):
        self.calls.append(("launch", name))
        self.launched_task = task
        output("\x1b[32m⚙︎ Launching managed job\x1b[0m")
        return self.job_id

    def tail_logs(self, job_id, stream: io.TextIOBase):
        self.calls.append(("tail_logs", job_id))
        for chunk in self.log_chunks:
            print(chunk, end="", flush=True, file=stream)  # exactly how sky.client.sdk.stream_response writes

    def status(self, job_id):
        self.calls.append(("status", job_id))
        step = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if isinstance(step, BaseException) or (isinstance(step, type) and issubclass(step, BaseException)):
            raise step
        if callable(step):
            return step()
        return JobStatus(*step) if isinstance(step, tuple) else JobStatus(step)

    def cancel(self, job_id):
        self.calls.append(("cancel", job_id))

    def sync_down(self, url, destination: Path, is_dir):
        self.calls.append(("sync_down", url))
        assert url.startswith(BUCKET + "/")
        source = self.bucket_dir / url[len(BUCKET) + 1 :]
        if is_dir:
            shutil.copytree(source, destination, dirs_exist_ok=True)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)

    def called(self, name):
        return [call for call in self.calls if call[0] == name]


def metric(step: int) -> str:
    return METRIC_PREFIX + json.dumps({"step": step, "loss": 2.0 - step / 10, "tokens_per_second": 100.0})


def job_output(run_id: str) -> list[str]:
    """A real-looking job log, split at awkward places."""
    done = EVENT_PREFIX + json.dumps({"event": "done", "run_id": run_id, "global_step": 2})
    text = (
        "\x1b[36m(setup pid=2383)\x1b[0m Installed 212 packages\n"
        f"\x1b[36m(fineflow-finetune, pid=2401)\x1b[0m {metric(1)}\n"
        f"(fineflow-finetune, pid=2401) {metric(2)}\n"
        f"(fineflow-finetune, pid=2401) {done}\n"
        "(fineflow-finetune, pid=2401) last line without newline"
    )
    return [text[:37], text[37:120], text[120:121], text[121:]]


def fill_bucket(bucket_dir: Path, prefix: str, run_id: str) -> Path:
    """What the trainer leaves under /outputs/<prefix>/<run id> on the VM, as the bucket holds it."""
    run = bucket_dir / prefix / run_id
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    (run / "checkpoint-2").mkdir()
    summary = {"run_id": run_id, "global_step": 2, "adapter_dir": f"/outputs/{prefix}/{run_id}/adapter"}
    (run / "train_result.json").write_text(json.dumps(summary))
    return run


def test_success_streams_lines_in_order_and_downloads_the_adapter(tmp_path):
    spec = make_spec(tmp_path)
    fill_bucket(tmp_path / "bucket", "team/fineflow", spec.run_id)
    sky = FakeSky(tmp_path / "bucket", ["PENDING", "STARTING", "RUNNING", "RUNNING", "SUCCEEDED"])
    sky.log_chunks = job_output(spec.run_id)
    lines: list[str] = []

    output = run_on_skypilot(spec, sky_config(), lines.append, sdk=sky)

    assert sky.calls[0] == ("launch", "fineflow-finetune-run42")
    assert uploaded_spec(sky.launched_task).run_id == "run42"  # a real sky.Task, from the real YAML
    trainer_lines = lines[lines.index("fineflow: managed job 7 (fineflow-finetune-run42) launched") + 1 :]
    assert trainer_lines == [
        "Installed 212 packages",
        metric(1),
        metric(2),
        EVENT_PREFIX + json.dumps({"event": "done", "run_id": "run42", "global_step": 2}),
        "last line without newline",
    ]
    assert lines[0] == "⚙︎ Launching managed job"  # launch output, colour codes removed
    assert output == Path(spec.output_dir)
    assert (output / "adapter" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert not (output / "checkpoint-2").exists()  # checkpoints stay in the bucket
    summary = json.loads((output / "train_result.json").read_text())
    assert summary["adapter_dir"] == str(output / "adapter")  # local, not the VM's path
    assert summary["remote_adapter_dir"] == f"{BUCKET}/team/fineflow/run42/adapter"
    assert [c[1] for c in sky.called("sync_down")] == [
        f"{BUCKET}/team/fineflow/run42/adapter/",
        f"{BUCKET}/team/fineflow/run42/train_result.json",
    ]
    assert len(sky.called("status")) == 5 and not sky.called("cancel")


def test_failure_raises_naming_the_job_and_its_status(tmp_path):
    spec = make_spec(tmp_path)
    sky = FakeSky(tmp_path / "bucket", ["RUNNING", ("FAILED", "Job exited with code 1")], job_id=31)
    sky.log_chunks = ["(fineflow-finetune, pid=9) Traceback (most recent call last):\n", "(x, pid=9) OOM\n"]

    with pytest.raises(SkyPilotJobFailed) as failed:
        run_on_skypilot(spec, sky_config(), lambda line: None, sdk=sky)

    assert (failed.value.job_id, failed.value.status) == (31, "FAILED")
    message = str(failed.value)
    assert "managed job 31" in message and "FAILED" in message and "Job exited with code 1" in message
    assert "OOM" in message  # the last lines of the job's output
    assert not sky.called("sync_down") and not sky.called("cancel")


def test_preemption_recovery_is_not_the_end(tmp_path):
    spec = make_spec(tmp_path)
    fill_bucket(tmp_path / "bucket", "team/fineflow", spec.run_id)
    sky = FakeSky(tmp_path / "bucket", ["RUNNING", "RECOVERING", "STARTING", "RUNNING", "SUCCEEDED"])
    run_on_skypilot(spec, sky_config(), lambda line: None, sdk=sky)
    assert len(sky.called("status")) == 5 and sky.called("sync_down")


def test_a_status_blip_does_not_cancel_the_job(tmp_path):
    spec = make_spec(tmp_path)
    fill_bucket(tmp_path / "bucket", "team/fineflow", spec.run_id)
    sky = FakeSky(tmp_path / "bucket", ["RUNNING", ConnectionError("api server restarting"), "SUCCEEDED"])
    run_on_skypilot(spec, sky_config(), lambda line: None, sdk=sky)
    assert not sky.called("cancel")


def test_ctrl_c_cancels_the_job_and_goes_on(tmp_path):
    spec = make_spec(tmp_path)

    def ctrl_c():  # a real SIGINT through Python's default handler, while the job runs
        signal.raise_signal(signal.SIGINT)
        return JobStatus("RUNNING")

    sky = FakeSky(tmp_path / "bucket", ["RUNNING", ctrl_c, "RUNNING"], job_id=12)
    # Python's own handler, as in a terminal: a shell starting the suite in the background (`make test &`)
    # hands it SIGINT ignored, and the job would then poll on forever.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_on_skypilot(spec, sky_config(), lambda line: None, sdk=sky)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sky.called("cancel") == [("cancel", 12)]
    assert not sky.called("sync_down")


def test_prefect_cancellation_cancels_the_job(tmp_path):
    spec = make_spec(tmp_path)
    sky = FakeSky(tmp_path / "bucket", ["RUNNING", TerminationSignal(signal.SIGTERM)], job_id=13)
    with pytest.raises(TerminationSignal):
        run_on_skypilot(spec, sky_config(), lambda line: None, sdk=sky)
    assert sky.called("cancel") == [("cancel", 13)]


def test_an_interrupt_while_handling_a_line_cancels_the_job(tmp_path):
    spec = make_spec(tmp_path)
    sky = FakeSky(tmp_path / "bucket", ["RUNNING"], log_chunks=[f"(t, pid=1) {metric(1)}\n"], job_id=14)

    def on_line(line):
        if line.startswith(METRIC_PREFIX):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_on_skypilot(spec, sky_config(poll=5), on_line, sdk=sky)
    assert sky.called("cancel") == [("cancel", 14)]


def test_missing_bucket_is_a_clear_error_before_any_launch(tmp_path):
    sky = FakeSky(tmp_path / "bucket", ["SUCCEEDED"])
    with pytest.raises(
        SkyPilotError, match="fine_tune.skypilot.bucket is not set.*checkpoints and the adapter"
    ):
        run_on_skypilot(make_spec(tmp_path), sky_config(bucket=None), lambda line: None, sdk=sky)
    assert sky.calls == []


def test_a_local_base_model_directory_is_refused_before_launch(tmp_path):
    spec = make_spec(tmp_path).model_copy(update={"base_model": str(tmp_path)})
    sky = FakeSky(tmp_path / "bucket", ["SUCCEEDED"])
    with pytest.raises(SkyPilotError, match="local directory"):
        run_on_skypilot(spec, sky_config(), lambda line: None, sdk=sky)
    assert sky.calls == []


def test_terminal_statuses_match_skypilots():
    from sky.jobs import ManagedJobStatus

    assert {s.value for s in ManagedJobStatus.terminal_statuses()} == TERMINAL_STATUSES


def test_log_lines_lose_skypilots_prefixes_only():
    assert clean_log_line("(setup pid=2383) Running setup.") == "Running setup."
    assert clean_log_line("\x1b[36m(myjob, pid=2383)\x1b[0m Hello") == "Hello"
    assert clean_log_line("(head, rank=0, pid=5) x") == "x"
    assert clean_log_line("(worker1, rank=1, pid=5, ip=10.0.0.2) y") == "y"
    assert clean_log_line("(note) not a prefix") == "(note) not a prefix"


def test_line_writer_reassembles_chunks():
    lines: list[str] = []
    with LineWriter(lines.append) as stream:
        for chunk in ["a", "b\nc", "\n\nd"]:
            stream.write(chunk)
    assert lines == ["ab", "c", "", "d"]


# --- d. the job's entry point: the uploaded spec file -> TrainSpec ----------------------------------------


def test_the_spec_file_round_trips_to_the_same_spec(tmp_path):
    spec = make_spec(tmp_path, learning_rate=3e-5, packing=False, max_steps=-1, num_epochs=2.5)

    back = uploaded_spec(build_task(spec, sky_config()))

    assert back.model_dump(exclude={"train_file", "output_dir", "model_cache"}) == spec.model_dump(
        exclude={"train_file", "output_dir", "model_cache"}
    )
    assert back.train_file == TRAIN_FILE_ON_VM
    assert back.output_dir == "/outputs/team/fineflow/run42"
    assert back.model_cache == str(Path("~/.cache/fineflow/models").expanduser())  # the VM's home
    assert uploaded_spec(build_task(spec, sky_config(bucket=BUCKET))).output_dir == "/outputs/run42"


def non_default(value, annotation=None):
    """A valid value other than `value`, of the same type (every knob must visibly travel); for a Literal
    field, another of its allowed values; for a nested section, every field of it changed."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = annotation.model_fields
        return annotation(**{f: non_default(v, fields[f].annotation) for f, v in value.items()})
    choices = [choice for choice in typing.get_args(annotation) if choice != value]
    if typing.get_origin(annotation) is typing.Literal and choices:
        return choices[0]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 3
    if isinstance(value, float):
        return round(value * 0.5, 6) if value else 0.25
    if isinstance(value, list):
        return [*value, "o_proj"]
    return {"cosine": "linear", "auto": "fp32", "none": "nf4"}.get(value, "constant")


def test_every_lora_and_training_field_reaches_the_vm_through_the_spec_file(tmp_path):
    config = load_config()
    sections = {"lora": config.fine_tune.lora, "training": config.fine_tune.training}
    changed = {
        name: section.model_copy(
            update={
                f: non_default(v, type(section).model_fields[f].annotation)
                for f, v in section.model_dump().items()
            }
        )
        for name, section in sections.items()
    }
    for name, section in changed.items():  # every field really differs from the default, and validates
        type(section).model_validate(section.model_dump())
        assert all(section.model_dump()[f] != v for f, v in sections[name].model_dump().items())
    spec = make_spec(tmp_path).model_copy(update=changed)

    on_vm = uploaded_spec(build_task(spec, sky_config()))

    assert on_vm.lora.model_dump() == changed["lora"].model_dump()
    assert on_vm.training.model_dump() == changed["training"].model_dump()


def test_a_new_knob_reaches_the_vm_without_being_named_anywhere_else(tmp_path, monkeypatch):
    # A knob added to the config's model only: no mapping, env or YAML line names it, and it arrives.
    grown = create_model("TrainingConfig", __base__=TrainingConfig, brand_new_knob=(int, Field(ge=0)))
    spec_type = create_model("TrainSpec", __base__=TrainSpec, training=(grown, ...))
    monkeypatch.setattr(train_module, "TrainSpec", spec_type)  # the reader the VM runs
    base = make_spec(tmp_path)
    training = grown(**base.training.model_dump(), brand_new_knob=11)
    spec = spec_type(**(base.model_dump() | {"training": training.model_dump()}))

    on_vm = uploaded_spec(build_task(spec, sky_config()))

    assert on_vm.training.brand_new_knob == 11
    assert "brand_new_knob" not in TASK_YAML.read_text()


def test_a_missing_field_is_named(tmp_path):
    path = build_task(make_spec(tmp_path), sky_config()).file_mounts[SPEC_FILE_ON_VM]
    raw = json.loads(Path(path).read_text())
    del raw["lora"]["alpha"]
    del raw["training"]["save_steps"]
    Path(path).write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as error:
        read_spec(path)
    assert "lora.alpha: Field required" in str(error.value)
    assert "training.save_steps: Field required" in str(error.value)


def test_an_invalid_field_is_named_with_its_value(tmp_path):
    path = build_task(make_spec(tmp_path), sky_config()).file_mounts[SPEC_FILE_ON_VM]
    raw = json.loads(Path(path).read_text())
    raw["lora"]["r"], raw["training"]["precision"] = "eight", "fp8"
    Path(path).write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as error:
        read_spec(path)
    message = str(error.value)
    assert "lora.r:" in message and "(got 'eight')" in message
    assert "training.precision:" in message and "(got 'fp8')" in message


def test_entry_point_exits_with_the_problem_and_never_trains(tmp_path, capsys, monkeypatch):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"run_id": "x"}))
    monkeypatch.setattr(train_module, "train", lambda spec: pytest.fail("trained on a bad spec"))
    assert train_module.main(["--spec", str(path)]) == 2
    assert "base_model: Field required" in capsys.readouterr().err
