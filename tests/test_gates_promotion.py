"""Gates decide; aliases move only on a passing decision; rollback; the report a person reads."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from fineflow.cli.errors import exit_code
from fineflow.config import ConfigError, load_config
from fineflow.registry import aliases
from fineflow.registry.aliases import ChampionMovedError, RollbackError, version_by_alias
from tasks.evaluation.eval_report import render_html, render_markdown
from tasks.evaluation.gates import Decision, Gate, GateConfig, StatisticsConfig, decide, load_gates
from tasks.evaluation.promotion import record_decision

ALIASES = aliases.Aliases.of(load_config())  # as configs/default.yaml names them
CHAMPION, PREVIOUS = ALIASES.champion, ALIASES.previous


def promote(client, model, version, note=""):
    """A promotion decided against whatever is champion now."""
    current = version_by_alias(client, model, CHAMPION)
    return aliases.promote(client, model, version, ALIASES, note, expected_champion=current)


def rollback(client, model):
    return aliases.rollback(client, model, ALIASES)


STATISTICS = StatisticsConfig(confidence=0.95, resamples=1000, seed=0, min_items=30)


def gates(*items: Gate, approval: bool = False) -> GateConfig:
    return GateConfig(
        require_approval=approval,
        approval_timeout_s=60,
        approval_poll_s=1,
        statistics=STATISTICS,
        gates=list(items),
    )


def gate(
    metric: str, direction: str = "higher", threshold=None, max_regression=None, blocking=True, judge=False
):
    return Gate(
        metric=metric,
        direction=direction,
        threshold=threshold,
        max_regression=max_regression,
        blocking=blocking,
        judge=judge,
    )


def test_shipped_gates_file_loads():
    config = load_gates("configs/gates.yaml")
    assert {g.metric for g in config.gates} >= {"rouge_l", "pii_leak_rate", "judge_correctness"}
    assert [g.judge for g in config.gates if g.metric == "judge_correctness"] == [True]


def test_threshold_both_directions():
    config = gates(gate("rouge_l", threshold=0.2), gate("pii_leak_rate", "lower", threshold=0.0))
    assert decide(config, {"rouge_l": 0.25, "pii_leak_rate": 0.0}, None, True, "base model").promote
    failing = decide(config, {"rouge_l": 0.15, "pii_leak_rate": 0.1}, None, True, "base model")
    assert not failing.promote
    assert [r.metric for r in failing.failed_blocking] == ["rouge_l", "pii_leak_rate"]
    assert "not >= 0.2" in failing.results[0].reason
    assert Decision.from_json(failing.as_json()) == failing  # a flow's JSON result renders the same table


def test_non_regression_against_the_champion():
    config = gates(gate("token_f1", max_regression=0.02), gate("perplexity", "lower", max_regression=1.0))
    champion = {"token_f1": 0.50, "perplexity": 10.0}
    assert decide(config, {"token_f1": 0.49, "perplexity": 10.9}, champion, True, "champion v1").promote
    worse = decide(config, {"token_f1": 0.47, "perplexity": 11.5}, champion, True, "champion v1")
    assert [(r.metric, r.passed, r.champion_value) for r in worse.results] == [
        ("token_f1", False, 0.50),
        ("perplexity", False, 10.0),
    ]


def test_advisory_gates_never_block_and_missing_metrics_do():
    config = gates(gate("exact_match", threshold=0.9, blocking=False), gate("rouge_l", threshold=0.1))
    assert decide(config, {"exact_match": 0.1, "rouge_l": 0.3}, None, True, "base model").promote
    missing = decide(config, {"exact_match": 0.95}, None, True, "base model")
    assert not missing.promote and missing.failed_blocking[0].reason == "not measured"


def test_judge_gates_are_advisory_unless_the_judge_is_capable():
    config = gates(gate("judge_correctness", threshold=0.5, judge=True))
    weak_judge = decide(config, {"judge_correctness": 0.1}, None, judge_capable=False, baseline="base model")
    assert weak_judge.promote and not weak_judge.results[0].blocking
    assert "advisory: the judge is not marked capable" in weak_judge.results[0].reason
    assert not decide(
        config, {"judge_correctness": 0.1}, None, judge_capable=True, baseline="base model"
    ).promote


def test_a_gate_that_tests_nothing_is_a_config_error(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text(
        "require_approval: false\napproval_timeout_s: 5\napproval_poll_s: 1\n"
        "statistics: {confidence: 0.95, resamples: 1000, seed: 0, min_items: 30}\ngates:\n"
        "  - {metric: rouge_l, direction: higher, threshold: null, max_regression: null, blocking: true}\n"
    )
    with pytest.raises(ConfigError, match="neither a threshold nor a max_regression"):
        load_gates(path)


@pytest.fixture
def registry(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("assistant")
    for _ in range(3):
        client.create_model_version("assistant", source=str(tmp_path))
    return client


def test_promote_keeps_the_old_champion_and_rollback_restores_it(registry):
    assert version_by_alias(registry, "assistant", CHAMPION) is None
    first = promote(registry, "assistant", "1")
    assert (first.champion, first.previous) == ("1", None)
    second = promote(registry, "assistant", "2", note="gates passed")
    assert (second.champion, second.previous) == ("2", "1")
    assert version_by_alias(registry, "assistant", PREVIOUS) == "1"
    assert registry.get_model_version("assistant", "2").tags["promotion_note"] == "gates passed"

    back = rollback(registry, "assistant")
    assert (back.champion, back.previous) == ("1", "2")
    assert version_by_alias(registry, "assistant", CHAMPION) == "1"
    assert rollback(registry, "assistant").champion == "2"  # a second rollback undoes the first


def test_rollback_without_a_previous_champion_is_a_clear_error(registry):
    promote(registry, "assistant", "1")
    with pytest.raises(RollbackError, match="nothing to roll back to"):
        rollback(registry, "assistant")


def test_the_alias_move_is_refused_when_the_champion_moved_since_the_decision(registry):
    """The decision compared the challenger with champion 1; while it waited (for approval, up to a day),
    another promotion made version 2 champion. The move re-reads the champion and refuses."""
    promote(registry, "assistant", "1")
    promote(registry, "assistant", "2")  # the other run, during the wait
    with pytest.raises(
        ChampionMovedError,
        match="decided against champion version 1, but the champion is now champion version 2",
    ):
        aliases.promote(registry, "assistant", "3", ALIASES, "gates passed", expected_champion="1")
    assert version_by_alias(registry, "assistant", CHAMPION) == "2"  # nothing moved
    assert version_by_alias(registry, "assistant", PREVIOUS) == "1"
    assert "promotion.replaces" not in registry.get_model_version("assistant", "3").tags
    with pytest.raises(ChampionMovedError, match="decided against no champion"):
        aliases.promote(registry, "assistant", "3", ALIASES, expected_champion=None)
    assert exit_code(ChampionMovedError("x")) == 1  # the CLI's table knows it


class Crash(RuntimeError):
    """The process dies here (a test double's injected failure on the real MLflow client)."""


def crash_on_call(monkeypatch, client, method: str, call: int) -> None:
    """Make the `call`-th call (1-based) of `client.<method>` fail, as a crash at that write would."""
    real, calls = getattr(client, method), []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == call:
            raise Crash(f"{method} call {call}")
        return real(*args, **kwargs)

    monkeypatch.setattr(client, method, failing)


@pytest.mark.parametrize(
    ("method", "call"),
    [
        ("set_model_version_tag", 1),  # before any alias moved: the intent tag
        ("set_registered_model_alias", 1),  # champion <- 3
        ("set_registered_model_alias", 2),  # between the two alias writes: previous <- 2
        ("delete_model_version_tag", 1),  # both aliases moved, the intent tag not yet removed
    ],
)
def test_a_crash_between_the_alias_writes_leaves_a_working_rollback(registry, monkeypatch, method, call):
    """Champion 2 (previous 1); promoting 3 crashes at one of its writes, on a real SQLite registry.
    Whatever was written, previous-champion never equals the champion, rollback moves the champion to the
    version before it (2 if 3 became champion, else 1), and a rerun of promote finishes the promotion."""
    promote(registry, "assistant", "1")
    promote(registry, "assistant", "2")
    with monkeypatch.context() as patch:
        crash_on_call(patch, registry, method, call)
        with pytest.raises(Crash):
            promote(registry, "assistant", "3")
    champion = version_by_alias(registry, "assistant", CHAMPION)
    assert champion in ("2", "3")

    back = rollback(registry, "assistant")
    assert back.previous == champion and back.champion != champion  # rollback did something
    assert back.champion == {"3": "2", "2": "1"}[champion]  # the version the champion replaced
    assert version_by_alias(registry, "assistant", CHAMPION) == back.champion
    assert version_by_alias(registry, "assistant", PREVIOUS) == champion

    forward = rollback(registry, "assistant")  # a second rollback undoes the first
    assert (forward.champion, forward.previous) == (champion, back.champion)
    again = promote(registry, "assistant", "3")  # the rerun finishes what the crash cut short
    assert version_by_alias(registry, "assistant", CHAMPION) == "3"
    assert version_by_alias(registry, "assistant", PREVIOUS) == again.previous != "3"
    assert "promotion.replaces" not in registry.get_model_version("assistant", "3").tags
    assert rollback(registry, "assistant").champion == again.previous


def test_a_crash_before_the_first_champion_leaves_nothing_to_roll_back(registry, monkeypatch):
    with monkeypatch.context() as patch:
        crash_on_call(patch, registry, "set_registered_model_alias", 2)  # after champion <- 1 (no previous)
        crash_on_call(patch, registry, "delete_model_version_tag", 1)
        with pytest.raises(Crash):
            promote(registry, "assistant", "1")
    assert version_by_alias(registry, "assistant", CHAMPION) == "1"
    with pytest.raises(RollbackError, match="nothing to roll back to"):
        rollback(registry, "assistant")
    promote(registry, "assistant", "1")  # finished
    assert "promotion.replaces" not in registry.get_model_version("assistant", "1").tags


def test_decision_is_recorded_on_the_version_and_rendered(registry):
    config = gates(gate("rouge_l", threshold=0.2), gate("exact_match", threshold=0.5, blocking=False))
    decision = decide(config, {"rouge_l": 0.1, "exact_match": 0.2}, {"rouge_l": 0.3}, True, "champion v1")
    record_decision(registry, "assistant", "3", decision)
    tags = registry.get_model_version("assistant", "3").tags
    assert tags["gates.promote"] == "false" and tags["gate.rouge_l"].startswith("FAIL (blocking)")
    assert tags["gate.exact_match"].startswith("FAIL (advisory)")

    markdown = render_markdown(decision, "challenger v3")
    assert "| rouge_l | 0.1 | 0.2 | 0.3 | **FAIL** |" in markdown and "do not promote" in markdown
    page = render_html(decision, "challenger v3", notes=["judge verdicts are advisory"])
    assert page.count("<tr class=") == 2 and "data:image/png;base64," in page
    assert "judge verdicts are advisory" in page


def test_cli_rollback(prefect_api, tmp_path, monkeypatch):
    """`fineflow rollback` as a user runs it: a clear error with nothing to go back to, then the move. In
    this process (typer's runner, as the other CLI tests): a fresh interpreter per call cost about 40 s on
    2 cores, importing Prefect and MLflow and starting a temporary Prefect server, and tests/test_serving.py
    and tests/test_stack.py already start the `fineflow` command itself."""
    from typer.testing import CliRunner

    from fineflow.cli import app
    from fineflow.config import DATA_DIR_ENV, load_config
    from fineflow.registry.tracking import tracking_uri

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "state"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = load_config()
    client = MlflowClient(tracking_uri(config))
    client.create_registered_model(config.registry.model_name)
    for _ in range(2):
        client.create_model_version(config.registry.model_name, source=str(tmp_path))
    promote(client, config.registry.model_name, "1")

    refused = CliRunner().invoke(app, ["rollback"])
    assert refused.exit_code == 1 and "nothing to roll back to" in refused.output
    promote(client, config.registry.model_name, "2")
    done = CliRunner().invoke(app, ["rollback"])
    assert done.exit_code == 0, done.output
    assert "champion is now version 1" in done.output
    assert version_by_alias(client, config.registry.model_name, CHAMPION) == "1"
    assert version_by_alias(client, config.registry.model_name, PREVIOUS) == "2"


def test_a_gate_on_the_drifted_slice_applies_only_when_it_was_measured():
    """A drift-triggered retrain is measured on its held-out drifted slice and must improve there, paired
    with the champion; an evaluation without a slice (a weekly retrain) is not held to it."""
    from tasks.evaluation.gates import ITEM_SCORES_KEY, Scores

    drifted = Gate(
        metric="drifted_rouge_l",
        direction="higher",
        threshold=None,
        max_regression=None,
        min_improvement=0.0,
        improvement_over="baseline",
        blocking=True,
        when_measured=True,
    )
    config = gates(drifted)
    [skipped] = decide(config, {"rouge_l": 0.3}, {"rouge_l": 0.3}, True, "champion v1").results
    assert skipped.passed and "not applicable" in skipped.reason

    def scores(items: list[float]) -> Scores:
        return Scores.recorded(
            {"drifted_rouge_l": sum(items) / len(items)}, {ITEM_SCORES_KEY: {"drifted_rouge_l": items}}
        )

    champion = scores([0.1 + 0.01 * (i % 5) for i in range(40)])
    learned = scores([0.4 + 0.01 * (i % 5) for i in range(40)])
    unchanged = scores([0.1 + 0.01 * ((i + 1) % 5) for i in range(40)])
    assert decide(config, learned, champion, True, "champion v1").promote
    [same] = decide(config, unchanged, champion, True, "champion v1").results
    assert not same.passed and "paired diff" in same.reason
    [few] = decide(config, scores([0.5] * 5), scores([0.1] * 5), True, "champion v1").results
    assert not few.passed and "not enough evidence" in few.reason  # a small slice is no evidence
    [unmeasured] = decide(config, {"rouge_l": 0.3}, champion, True, "champion v1").results
    assert not unmeasured.passed  # measured for the champion only: the challenger was not, it fails
