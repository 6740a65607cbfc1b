"""LoRA fine-tuning on a tiny model: entry point, determinism, checkpoint resume after a kill, failures."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fineflow.config import load_config
from tasks.training.compute_local import REPO_ROOT, TrainingFailedError, run_locally
from tasks.training.train import (
    EVENT_PREFIX,
    METRIC_PREFIX,
    TrainSpec,
    last_complete_checkpoint,
    to_prompt_completion,
    train,
)


def rows(count: int) -> list[dict]:
    return [
        {
            "id": str(i),
            "source": f"t:{i}",
            "messages": [
                {"role": "user", "content": f"How long is the warranty on order {i}?"},
                {"role": "assistant", "content": f"Order {i} has a 2-year limited warranty from delivery."},
            ],
        }
        for i in range(count)
    ]


def make_spec(tmp_path: Path, model_dir: Path, name: str, **training) -> TrainSpec:
    train_file = tmp_path / "train.jsonl"
    if not train_file.exists():
        train_file.write_text("".join(json.dumps(row) + "\n" for row in rows(64)))
    config = load_config(overrides={f"fine_tune.training.{k}": v for k, v in training.items()})
    return TrainSpec(
        run_id=name,
        base_model=str(model_dir),
        model_cache=str(tmp_path / "models"),
        train_file=str(train_file),
        output_dir=str(tmp_path / name),
        lora=config.fine_tune.lora,
        training=config.fine_tune.training,
    )


def metric_steps(lines: list[str]) -> list[int]:
    return [
        json.loads(line[len(METRIC_PREFIX) :])["step"] for line in lines if line.startswith(METRIC_PREFIX)
    ]


def step_losses(lines: list[str]) -> list[tuple[int, float]]:
    payloads = [json.loads(line[len(METRIC_PREFIX) :]) for line in lines if line.startswith(METRIC_PREFIX)]
    return [(p["step"], p["loss"]) for p in payloads]


def events(lines: list[str]) -> list[dict]:
    return [json.loads(line[len(EVENT_PREFIX) :]) for line in lines if line.startswith(EVENT_PREFIX)]


def test_prompt_completion_keeps_loss_on_the_last_answer():
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2"},
    ]
    [example] = to_prompt_completion([{"messages": messages}])
    assert example["prompt"] == messages[:4]
    assert example["completion"] == [messages[4]]


def test_training_is_deterministic_on_cpu(tmp_path, tiny_model_dir, capsys):
    # In this process (the child-process path is covered below): same data, config and seed, same weights.
    first = train(make_spec(tmp_path, tiny_model_dir, "a", max_steps=4, save_steps=2))
    assert metric_steps(capsys.readouterr().out.splitlines()) == [1, 2, 3, 4]
    second = train(make_spec(tmp_path, tiny_model_dir, "b", max_steps=4, save_steps=2))
    adapter_a, adapter_b = Path(first["adapter_dir"]), Path(second["adapter_dir"])
    weights_a = load_file(adapter_a / "adapter_model.safetensors")
    weights_b = load_file(adapter_b / "adapter_model.safetensors")
    assert weights_a.keys() == weights_b.keys() and weights_a
    assert all((weights_a[k] == weights_b[k]).all() for k in weights_a)
    assert (adapter_a / "adapter_config.json").exists()
    assert not (adapter_a / "model.safetensors").exists()  # the adapter only, not the base model
    assert first["global_step"] == 4 and first["tokens_per_second"] > 0
    assert json.loads((adapter_a.parent / "train_result.json").read_text()) == first


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_model_dir):
    spec = make_spec(tmp_path, tiny_model_dir, "resume", max_steps=20, save_steps=3, max_seq_length=128)
    Path(spec.output_dir).mkdir(parents=True)
    spec_file = Path(spec.output_dir) / "spec.json"
    spec_file.write_text(spec.model_dump_json())
    trainer = subprocess.Popen(
        [sys.executable, "-m", "tasks.training.train", "--spec", str(spec_file)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed_after = None
    first_session: list[str] = []
    for line in trainer.stdout:
        first_session.append(line)
        steps = metric_steps([line])
        if steps and steps[0] >= 8:  # two checkpoints written (3, 6): kill it mid-way
            trainer.send_signal(signal.SIGKILL)
            killed_after = steps[0]
            break
    trainer.wait()
    assert killed_after is not None and trainer.returncode == -signal.SIGKILL
    checkpoints = sorted(int(p.name.split("-")[1]) for p in Path(spec.output_dir).glob("checkpoint-*"))
    assert checkpoints and checkpoints[-1] >= 6

    lines: list[str] = []
    run_locally(spec, lines.append)  # the same run id: same output dir, resumes
    resume = [e for e in events(lines) if e["event"] == "resume"]
    assert [e["step"] for e in resume] == [checkpoints[-1]]
    steps = metric_steps(lines)
    assert steps[0] == checkpoints[-1] + 1  # at most one checkpoint interval was redone
    assert steps[-1] == 20
    done = [e for e in events(lines) if e["event"] == "done"]
    assert done[0]["global_step"] == 20 and done[0]["resumed_from"].endswith(f"checkpoint-{checkpoints[-1]}")
    # The summary loss is the mean over all 20 steps: those restored from the checkpoint count too.
    loss_by_step = {step: loss for step, loss in step_losses(first_session) if step <= checkpoints[-1]}
    loss_by_step |= dict(step_losses(lines))
    assert sorted(loss_by_step) == list(range(1, 21))
    assert done[0]["train_loss"] == pytest.approx(sum(loss_by_step.values()) / 20, rel=1e-6)


def test_a_cut_off_checkpoint_is_not_resumed_from(tmp_path):
    for step in (3, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-9").mkdir()  # killed while saving: no trainer_state.json yet
    assert last_complete_checkpoint(tmp_path) == (str(tmp_path / "checkpoint-6"), 6)
    assert last_complete_checkpoint(tmp_path / "checkpoint-9") is None


def test_failed_training_raises_with_the_trainers_last_lines(tmp_path, tiny_model_dir):
    spec = make_spec(tmp_path, tiny_model_dir, "broken", max_steps=2).model_copy(
        update={"train_file": str(tmp_path / "missing.jsonl")}
    )
    with pytest.raises(TrainingFailedError) as failure:
        run_locally(spec, lambda _: None)
    assert "exited with code 1" in str(failure.value)
    assert "missing.jsonl" in str(failure.value)
