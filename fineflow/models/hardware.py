"""What the machine computes fast, read once: the one home of the precision decision that training and
inference (the engine) both take."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# CPU features that make bf16 matmuls fast: AVX512-BF16 and AMX on x86, the BF16 extension on Arm.
# Without them autocast emulates bf16 and is slower than fp32.
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@dataclass(frozen=True)
class Hardware:
    """What precision and QLoRA depend on, read once; tests build their own."""

    cuda: bool
    cuda_bf16: bool
    cpu_flags: frozenset[str]


def detect_hardware(cpuinfo: Path = Path("/proc/cpuinfo")) -> Hardware:
    import torch

    cuda = torch.cuda.is_available()
    return Hardware(
        cuda=cuda,
        cuda_bf16=cuda and torch.cuda.is_bf16_supported(),
        cpu_flags=cpu_flags(cpuinfo.read_text() if cpuinfo.exists() else ""),
    )


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of /proc/cpuinfo: x86 lists them as `flags`, Arm as `Features`."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def resolve_precision(choice: str, hardware: Hardware) -> str:
    """`auto`: bf16 where the hardware computes it natively (a GPU with bf16, a CPU with AVX512-BF16/AMX or
    Arm BF16), else fp32. fp16 is never picked automatically: it needs loss scaling, and no CPU gains."""
    if choice != "auto":
        return choice
    if hardware.cuda:
        return "bf16" if hardware.cuda_bf16 else "fp32"
    return "bf16" if hardware.cpu_flags & CPU_BF16_FLAGS else "fp32"
