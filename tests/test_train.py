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
from fineflow.models.hardware import Hardware, cpu_flags, resolve_precision
from tasks.training.compute_local import REPO_ROOT, TrainingFailedError, run_locally
from tasks.training.train import (
    EVENT_PREFIX,
    METRIC_PREFIX,
    TrainSpec,
    build_trainer,
    last_complete_checkpoint,
    model_load_kwargs,
    precision_flags,
    to_prompt_completion,
    train,
    training_arguments,
)

# The machines precision and QLoRA are decided for, as `detect_hardware` would read them.
EPYC_AVX512_BF16 = Hardware(
    cuda=False, cuda_bf16=False, cpu_flags=frozenset({"avx2", "avx512f", "avx512_bf16"})
)
OLD_X86 = Hardware(cuda=False, cuda_bf16=False, cpu_flags=frozenset({"avx2", "avx512f"}))
A100 = Hardware(cuda=True, cuda_bf16=True, cpu_flags=frozenset({"avx2"}))
T4 = Hardware(cuda=True, cuda_bf16=False, cpu_flags=frozenset({"avx2", "avx512_bf16"}))


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


def test_cpu_flags_are_read_from_x86_and_arm_cpuinfo():
    x86 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\nbugs\t\t: spectre\nprocessor\t: 1\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU part\t: 0xd40\n"
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert {"bf16", "sve"} <= cpu_flags(arm) and "spectre" not in cpu_flags(x86)
    assert cpu_flags("") == frozenset()


@pytest.mark.parametrize(
    ("hardware", "expected"),
    [
        (EPYC_AVX512_BF16, "bf16"),
        (Hardware(cuda=False, cuda_bf16=False, cpu_flags=frozenset({"amx_bf16"})), "bf16"),  # Sapphire Rapids
        (Hardware(cuda=False, cuda_bf16=False, cpu_flags=frozenset({"asimd", "bf16"})), "bf16"),  # Graviton3
        (OLD_X86, "fp32"),  # bf16 would be emulated there: slower than fp32
        (A100, "bf16"),
        (T4, "fp32"),  # the GPU decides, not the host's CPU flags
    ],
)
def test_auto_precision_is_bf16_only_where_the_hardware_computes_it(hardware, expected):
    assert resolve_precision("auto", hardware) == expected


@pytest.mark.parametrize("choice", ["fp32", "bf16", "fp16"])
def test_an_explicit_precision_is_kept_on_any_hardware(choice):
    for hardware in (EPYC_AVX512_BF16, OLD_X86, A100, T4):
        assert resolve_precision(choice, hardware) == choice


def test_precision_flags_turn_on_autocast_and_tell_the_trainer_the_cpu_is_meant():
    assert precision_flags("auto", EPYC_AVX512_BF16) == {"bf16": True, "fp16": False, "use_cpu": True}
    assert precision_flags("auto", OLD_X86) == {"bf16": False, "fp16": False, "use_cpu": False}
    assert precision_flags("auto", A100) == {"bf16": True, "fp16": False, "use_cpu": False}
    assert precision_flags("fp16", T4) == {"bf16": False, "fp16": True, "use_cpu": False}


def test_several_cpu_processes_tell_the_trainer_the_cpu_is_meant_whatever_the_precision(monkeypatch):
    """accelerate sets up DDP over CPU processes only with `use_cpu`: without it, fp32 on a CPU without
    bf16 left each torchrun process training alone (tests/test_ddp.py runs both precisions)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert precision_flags("auto", OLD_X86) == {"bf16": False, "fp16": False, "use_cpu": True}
    assert precision_flags("fp32", EPYC_AVX512_BF16)["use_cpu"] is True
    assert precision_flags("auto", A100)["use_cpu"] is False


def test_training_arguments_wire_precision_and_gradient_checkpointing(tmp_path, tiny_model_dir):
    from trl import SFTConfig

    spec = make_spec(tmp_path, tiny_model_dir, "args", gradient_checkpointing=False)
    kwargs = training_arguments(spec, EPYC_AVX512_BF16)
    # trl's default is on: fineflow's must be what the config says, explicitly
    assert kwargs["gradient_checkpointing"] is False
    assert (kwargs["bf16"], kwargs["fp16"], kwargs["use_cpu"]) == (True, False, True)
    args = SFTConfig(**kwargs)  # the Trainer accepts bf16 on this CPU
    assert args.bf16 and not args.gradient_checkpointing and args.use_cpu
    checkpointed = make_spec(tmp_path, tiny_model_dir, "gc", gradient_checkpointing=True, precision="fp32")
    kwargs = training_arguments(checkpointed, A100)
    assert kwargs["gradient_checkpointing"] is True
    assert (kwargs["bf16"], kwargs["fp16"], kwargs["use_cpu"]) == (False, False, False)


def test_qlora_loads_a_4bit_base_on_a_gpu_and_fails_fast_without_one(tmp_path, tiny_model_dir):
    import torch

    spec = make_spec(tmp_path, tiny_model_dir, "q")
    cpu = {"dtype": torch.float32, "attn_implementation": "eager"}
    assert model_load_kwargs(spec, EPYC_AVX512_BF16, torch) == cpu
    qlora = spec.model_copy(update={"lora": spec.lora.model_copy(update={"base_quantization": "nf4"})})
    kwargs = model_load_kwargs(qlora, A100, torch)
    quantization = kwargs["quantization_config"]
    assert quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "nf4"
    assert quantization.bnb_4bit_compute_dtype == torch.bfloat16 and kwargs["dtype"] == torch.bfloat16
    assert quantization.bnb_4bit_use_double_quant and kwargs["device_map"] == {"": 0}
    assert kwargs["attn_implementation"] == "sdpa"  # auto: the fused kernels on a GPU
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        model_load_kwargs(qlora, EPYC_AVX512_BF16, torch)
    with pytest.raises(ValueError, match="base_quantization"):
        build_trainer(qlora, hardware=OLD_X86)


@pytest.mark.parametrize(
    "override",
    [
        {"fine_tune.training.precision": "fp32"},
        {"fine_tune.training.gradient_checkpointing": True},
        {"fine_tune.lora.base_quantization": "nf4"},
    ],
)
def test_the_lineage_hash_covers_precision_and_the_gpu_knobs(override):
    from tasks.training.register import finetune_config_hash

    assert load_config().fine_tune.training.precision == "auto"
    assert finetune_config_hash(load_config(overrides=override)) != finetune_config_hash(load_config())


def test_the_cpu_loss_scores_completion_tokens_exactly_like_trl(tmp_path, tiny_model_dir):
    """fineflow's CPU loss (LM head over the labelled positions only) against trl's fused head: the same
    loss, gradients and logged metrics on one batch."""
    import torch
    from trl import SFTTrainer

    trainer = build_trainer(make_spec(tmp_path, tiny_model_dir, "same", precision="fp32"), hardware=OLD_X86)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero, which would leave every A gradient zero on both sides
        for parameter in trainable:
            parameter.add_(torch.randn_like(parameter) * 0.05)
    results = []
    for compute_loss in (type(trainer).compute_loss, SFTTrainer.compute_loss):
        trainer._metrics["train"].clear()
        trainer._total_train_tokens = 0
        trainer.model.zero_grad()
        torch.manual_seed(1)  # the same LoRA dropout masks on both sides
        loss = compute_loss(trainer, trainer.model, dict(batch))
        loss.backward()
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
        results.append((loss.item(), [p.grad.clone() for p in trainable], metrics))
    (ours, our_grads, our_metrics), (trls, trl_grads, trl_metrics) = results
    assert ours == pytest.approx(trls, rel=1e-5)
    assert all(g.abs().max() > 0 for g in trl_grads)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(our_grads, trl_grads, strict=True))
    assert our_metrics.keys() == trl_metrics.keys() >= {"entropy", "mean_token_accuracy", "num_tokens"}
    assert our_metrics == pytest.approx(trl_metrics, rel=1e-4)


def test_bf16_trained_adapter_lowers_the_loss_and_generates_in_fp32_and_bf16(
    tmp_path, tiny_model_dir, capsys
):
    import torch

    from fineflow.models.engine import load_model_and_tokenizer

    spec = make_spec(tmp_path, tiny_model_dir, "bf16", max_steps=12, precision="bf16", learning_rate=5e-3)
    summary = train(spec)
    losses = [loss for _, loss in step_losses(capsys.readouterr().out.splitlines())]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model, tokenizer, _ = load_model_and_tokenizer(str(tiny_model_dir), summary["adapter_dir"], precision)
        assert {p.dtype for p in model.parameters()} == {dtype}
        prompt = tokenizer("user How long is the warranty? ", return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**prompt, max_new_tokens=4, do_sample=False)
        assert output.shape[1] > prompt["input_ids"].shape[1]


def test_bf16_precision_runs_the_matmuls_in_bf16_on_this_cpu_path(tmp_path, tiny_model_dir):
    import torch

    spec = make_spec(tmp_path, tiny_model_dir, "autocast", precision="bf16")
    trainer = build_trainer(spec, hardware=OLD_X86)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    seen = []
    layer = trainer.model.get_base_model().model.layers[0].mlp.down_proj
    layer.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    trainer.compute_loss(trainer.model, dict(batch)).backward()
    assert seen == [torch.bfloat16]
    assert layer.weight.dtype == torch.bfloat16  # frozen: cast once, not at every forward
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)
    assert trainer.model.get_input_embeddings().weight.dtype == torch.float32


def test_norm_outputs_cast_once_change_no_forward_value_and_keep_the_gradients(tmp_path, tiny_model_dir):
    """Each norm's output is cast to bf16 once instead of once per consuming matmul: the loss is the same
    to the bit (the matmuls see the same bf16 values), the gradients the same up to bf16 summation order."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    trainer = build_trainer(make_spec(tmp_path, tiny_model_dir, "norms", precision="bf16"), hardware=OLD_X86)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero, which would leave every A gradient zero
        for parameter in trainable:
            parameter.add_(torch.randn_like(parameter) * 0.05)
    norm_dtypes = []
    norm = trainer.model.get_base_model().model.layers[0].input_layernorm
    norm.register_forward_hook(lambda module, args, output: norm_dtypes.append(output.dtype))

    def loss_and_grads():
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        return loss.item(), [p.grad.clone() for p in trainable]

    cast_once, cast_once_grads = loss_and_grads()
    hooks = [handle for handle in trainer.cast_norm_hooks]
    assert len(hooks) == 2 * len(trainer.model.get_base_model().model.layers) + 1  # and the final norm
    for handle in hooks:
        handle.remove()
    for module in trainer.model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = True
    cast_per_use, cast_per_use_grads = loss_and_grads()
    assert norm_dtypes == [torch.bfloat16, torch.float32]
    assert cast_once == cast_per_use
    for ours, theirs in zip(cast_once_grads, cast_per_use_grads, strict=True):
        assert torch.allclose(ours, theirs, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize(
    ("hardware", "expected"),
    [(EPYC_AVX512_BF16, "bfloat16"), (OLD_X86, "float32"), (A100, "bfloat16"), (T4, "float32")],
)
def test_inference_follows_the_training_precision_rule(hardware, expected):
    """`auto` generates in bf16 exactly where training autocasts to it; an explicit choice is kept."""
    import torch

    from fineflow.models.engine import inference_dtype

    assert inference_dtype("auto", hardware) == getattr(torch, expected)
    assert inference_dtype("fp32", hardware) == torch.float32


def test_attention_auto_is_eager_on_a_cpu_and_sdpa_on_a_gpu_and_a_choice_is_kept(tmp_path, tiny_model_dir):
    from tasks.training.train import attention_implementation

    assert attention_implementation("auto", EPYC_AVX512_BF16) == "eager"
    assert attention_implementation("auto", A100) == "sdpa"
    assert attention_implementation("sdpa", EPYC_AVX512_BF16) == "sdpa"
    trainer = build_trainer(make_spec(tmp_path, tiny_model_dir, "attn"), hardware=OLD_X86)
    assert trainer.model.config._attn_implementation == "eager"
