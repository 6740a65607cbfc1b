"""How a benchmark measures a variant in a fresh process: the child prints its figures as one marked JSON
line among whatever else it writes, and the parent runs it and reads that line back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MARK = "RESULT "


def report(figures: dict) -> None:
    """In the child: the figures as the one line the parent reads."""
    print(MARK + json.dumps(figures), flush=True)


def figures_in(output: str) -> dict:
    """In the parent: the figures from the child's standard output."""
    return json.loads(output.split(MARK, 1)[1].splitlines()[0])


def run_child(name: str, script: str, arguments: list[str], cwd: Path, env: dict | None = None) -> dict:
    """Run `script` with `arguments` in a fresh Python, stop the benchmark if it fails, return its figures."""
    command = [sys.executable, script, *arguments]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return figures_in(done.stdout)
