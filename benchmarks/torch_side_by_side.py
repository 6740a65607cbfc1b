"""Two torch processes on the same cores: how much each slows the other, with OpenMP's default wait policy
(the baseline: threads spin at each barrier before they sleep) and with `OMP_WAIT_POLICY=PASSIVE`.

    .venv/bin/python benchmarks/torch_side_by_side.py [--steps 10]

Why: `make run` beside the test suite took 40 minutes where it takes 17 alone (3 December, a 2-core AVX2
machine), its fine-tune at 11 to 28 tokens/s against 149 alone; the suite's two workers run torch side by
side all the time. fineflow sets no wait policy today: this measures whether it should.

Each variant runs in fresh processes: a training step (forward and backward through six transformer layers
of width 576, SmolLM2-135M's, batch 4 x 256 tokens), timed alone, then timed while a second process runs
the same steps. Printed per policy: seconds a step alone and side by side (both processes), and the ratio of
the baseline's side-by-side step to the passive one's. Fair sharing of the cores would double a step.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from fresh_process import figures_in, report, run_child

REPO = Path(__file__).resolve().parent.parent
POLICIES = ("default", "PASSIVE")
WARMUP_STEPS = 2


def child(steps: int) -> None:
    """In a fresh process: seconds a training step, as one JSON line."""
    import torch

    torch.manual_seed(0)
    layers = torch.nn.Sequential(
        *[torch.nn.TransformerEncoderLayer(576, 9, 1536, batch_first=True) for _ in range(6)]
    )
    inputs = torch.randn(4, 256, 576)
    for _ in range(WARMUP_STEPS):
        layers(inputs).sum().backward()
    started = time.perf_counter()
    for _ in range(steps):
        layers(inputs).sum().backward()
    report({"step_seconds": (time.perf_counter() - started) / steps, "threads": torch.get_num_threads()})


def environment(policy: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != "OMP_WAIT_POLICY"}
    return env if policy == "default" else {**env, "OMP_WAIT_POLICY": policy}


def measure(policy: str, steps: int) -> dict:
    arguments = ["--child", "--steps", str(steps)]
    alone = run_child(f"{policy} alone", __file__, arguments, REPO, environment(policy))
    # The other process runs twice the steps, so it is busy for the whole of the measured one's run.
    other = subprocess.Popen(
        [sys.executable, __file__, "--child", "--steps", str(2 * steps)],
        cwd=REPO,
        env=environment(policy),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    measured = run_child(f"{policy} side by side", __file__, arguments, REPO, environment(policy))
    other_output, _ = other.communicate()
    if other.returncode != 0:
        raise SystemExit(f"the second process failed ({other.returncode})")
    return {"alone": alone, "side_by_side": measured, "other": figures_in(other_output)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.steps)
        return
    side_by_side = {}
    for policy in POLICIES:
        figures = measure(policy, args.steps)
        alone = figures["alone"]["step_seconds"]
        side_by_side[policy] = figures["side_by_side"]["step_seconds"]
        print(
            f"{policy}: alone {alone:.3f} s a step ({figures['alone']['threads']} threads); side by side "
            f"{side_by_side[policy]:.3f} s ({side_by_side[policy] / alone:.2f}x alone), the other process "
            f"{figures['other']['step_seconds']:.3f} s",
            flush=True,
        )
    ratio = side_by_side["default"] / side_by_side["PASSIVE"]
    print(f"ratio default / PASSIVE, side by side: {ratio:.2f}")


if __name__ == "__main__":
    main()
