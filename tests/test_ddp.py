"""Training on many processes: a 2-process DDP run (gloo on this CPU) of the tiny model through the
fine-tune flow, as `training.distributed.processes_per_node: 2` runs it on a 2-GPU machine (nccl there).

The GPU and multi-node paths cannot run on this machine (no GPU, one node): they are validated offline
only, the SkyPilot task in tests/test_skypilot.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from fineflow.config import load_config
from fineflow.registry.tracking import tracking_uri
from tests.conftest import TINY_SYSTEM_PROMPT

pytestmark = pytest.mark.slow
ROWS, BATCH, PROCESSES = 16, 2, 2
GLOBAL_STEPS = math.ceil(ROWS / (BATCH * PROCESSES))  # 4; one process would take 8


def train_rows() -> list[dict]:
    return [
        {
            "id": str(i),
            "source": f"s:{i}",
            "messages": [
                {"role": "user", "content": f"Does the Nimbus work with hub number {i}?"},
                {"role": "assistant", "content": f"Yes, hub {i} pairs with the Nimbus through the app."},
            ],
        }
        for i in range(ROWS)
    ]


@pytest.fixture
def published_split(publish_splits) -> str:
    return publish_splits({"train": train_rows()})


# Both precisions on any CPU: `auto` is bf16 only where the CPU has AVX512-BF16, and fp32 once trained each
# process alone (accelerate was not told the CPU was meant), which only a machine without it showed.
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_two_processes_under_torchrun_train_one_adapter_in_sync(tmp_path, tiny_model_dir, precision):
    """The local compute's child process is torchrun with two gloo trainers; what comes back is one
    trainer's output, on the global batch, with replicas that agree."""
    from tasks.training.compute_local import run_locally
    from tasks.training.train import METRIC_PREFIX, TrainSpec

    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(row) + "\n" for row in train_rows()))
    overrides = {**ddp_overrides(tiny_model_dir), "fine_tune.training.precision": precision}
    config = load_config(overrides=overrides)
    spec = TrainSpec(
        run_id="ddp",
        base_model=str(tiny_model_dir),
        model_cache=str(tmp_path / "models"),
        train_file=str(train_file),
        output_dir=str(tmp_path / "output"),
        lora=config.fine_tune.lora,
        training=config.fine_tune.training,
    )
    lines: list[str] = []
    output = run_locally(spec, lines.append)

    summary = json.loads((output / "train_result.json").read_text())
    assert summary["world_size"] == PROCESSES
    assert summary["global_step"] == GLOBAL_STEPS
    assert len(summary["replica_checksums"]) == PROCESSES and len(set(summary["replica_checksums"])) == 1
    # Rank 0 alone reported: one metric line per optimizer step, one done event.
    steps = [
        json.loads(line[len(METRIC_PREFIX) :])["step"] for line in lines if line.startswith(METRIC_PREFIX)
    ]
    assert steps == list(range(1, GLOBAL_STEPS + 1))
    assert sum('"event": "done"' in line for line in lines) == 1
    written = {p.name for p in (output / "adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer_config.json"} <= written
    assert "training_args.bin" not in written  # the Trainer's pickle is not part of an adapter


def ddp_overrides(tiny_model_dir: Path) -> dict:
    return {
        "base_model.name": str(tiny_model_dir),
        "fine_tune.training.distributed.processes_per_node": PROCESSES,
        "fine_tune.training.batch_size": BATCH,
        "fine_tune.training.max_steps": -1,
        "fine_tune.training.num_epochs": 1,
        "fine_tune.training.save_steps": 2,
        "fine_tune.training.max_seq_length": 128,
        # the tiny byte-level model's 128 tokens hold no row after the real system prompt (over 300 bytes)
        "prompts.system.file": str(TINY_SYSTEM_PROMPT),
    }


def test_two_process_ddp_trains_one_adapter_on_the_global_batch(prefect_api, published_split, tiny_model_dir):
    from flows.fine_tune import fine_tune

    overrides = ddp_overrides(tiny_model_dir)
    result = fine_tune(overrides=overrides)
    training = result.training

    # Both ranks trained: the world had two processes, and each took half of every global batch, so one
    # epoch of 16 rows at 2 per process is 4 optimizer steps (one process would have taken 8).
    assert training.world_size == PROCESSES
    assert training.global_step == GLOBAL_STEPS == 4
    # Gradients were synchronised: both replicas ended with the same adapter (summed weights, gathered
    # from each rank after training; different data shards would have left them apart).
    assert len(training.replica_checksums) == PROCESSES
    assert len(set(training.replica_checksums)) == 1

    # Rank 0 alone wrote: one adapter, one summary, one MLflow run with one loss point per step, one version.
    adapter = Path(training.adapter_dir)
    assert sorted(p.name for p in adapter.glob("adapter_model*")) == ["adapter_model.safetensors"]
    assert sorted(p.name for p in adapter.parent.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    config = load_config(overrides=overrides)
    client = MlflowClient(tracking_uri(config))
    [version] = client.search_model_versions(f"name = '{config.registry.model_name}'")
    assert version.tags["config_hash"] == result.lineage.config_hash
    experiment = client.get_experiment_by_name(config.registry.experiment)
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == version.run_id == result.mlflow_run_id
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    distributed = json.loads(run.data.params["training.distributed"])
    assert distributed == config.fine_tune.training.distributed.model_dump()


def test_the_backend_and_fsdp_flags_follow_the_world_and_the_strategy(monkeypatch):
    """Under torchrun (WORLD_SIZE > 1) the collective backend is said outright, nccl on GPUs and gloo on
    CPUs, and `strategy: fsdp` asks the Trainer for full sharding; a plain process gets none of it. FSDP
    itself is not run here (it needs GPUs): these are the flags it would be started with."""
    from fineflow.models.hardware import Hardware
    from tasks.training.train import distributed_flags

    hardware = Hardware(cuda=False, cuda_bf16=False, cpu_flags=frozenset())
    gpu = Hardware(cuda=True, cuda_bf16=True, cpu_flags=frozenset())
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed_flags("ddp", hardware) == {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed_flags("ddp", hardware) == {"ddp_backend": "gloo"}
    fsdp = distributed_flags("fsdp", hardware)
    assert fsdp["fsdp"] == "full_shard auto_wrap" and fsdp["ddp_backend"] == "gloo"
    assert distributed_flags("ddp", gpu) == {"ddp_backend": "nccl"}
