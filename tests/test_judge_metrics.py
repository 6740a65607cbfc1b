"""Judge-scored metrics never turn a failure to judge into a score."""

from __future__ import annotations

import math

from fineflow.config import load_config
from fineflow.registry.prompts import read_prompt_text
from tasks.evaluation.judge_metrics import get_judge, judge_scores


def test_every_failed_verdict_is_counted_and_no_metric_is_scored(tiny_model_dir, tmp_path, monkeypatch):
    config = load_config(overrides={"evaluation.judge.model": str(tiny_model_dir)})
    criteria = read_prompt_text(config.prompts.judge_correctness)  # read before leaving the repository
    monkeypatch.chdir(tmp_path)  # deepeval writes ./.deepeval
    judge = get_judge(config.evaluation.judge, tmp_path / "models")
    # The tiny model's context is shorter than deepeval's prompts: each verdict is refused.
    result = judge_scores(
        judge, ["correctness", "toxicity"], ["Q1?", "Q2?"], ["A1.", "A2."], ["R1.", "R2."], criteria
    )
    assert math.isnan(result["judge_correctness"]) and math.isnan(result["judge_toxicity"])
    assert (result["judge_judged"], result["judge_failures"]) == (0.0, 4.0)
    assert judge.stats.call_errors >= 4
