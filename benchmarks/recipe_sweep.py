"""Which LoRA recipe teaches the embedded model the sample's facts within the time budget?

Trains each recipe on the train split the lifecycle publishes (run `fineflow data prep` first), with the
same trainer the lifecycle uses (`python -m tasks.training.train --spec`), then answers the golden set
with the one generation engine and scores it as evaluation does: fact_recall (the key facts an answer
states), ROUGE-L, token F1 and answer length, with a 95% bootstrap interval of fact_recall and its paired
difference against the base model (the plain baseline, measured in the same run).

    .venv/bin/python benchmarks/recipe_sweep.py                       # every recipe below
    .venv/bin/python benchmarks/recipe_sweep.py --recipes qv-r8 all-r16-e3

Prints one table row per recipe and, last, the ratio of each recipe's fact_recall to the base model's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fineflow.config import load_config  # noqa: E402
from fineflow.models.engine import GenerationOptions, load_generator  # noqa: E402
from fineflow.runtime import prepare_environment  # noqa: E402
from fineflow.store import open_store  # noqa: E402
from fineflow.store.layout import dataset_layout  # noqa: E402
from tasks.evaluation.classic_metrics import answer_words, fact_recalls, item_scores  # noqa: E402
from tasks.evaluation.gates import load_gates  # noqa: E402
from tasks.evaluation.measure import read_golden, read_golden_facts  # noqa: E402
from tasks.evaluation.statistics import bootstrap_mean, paired_difference  # noqa: E402

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# name -> overrides of fine_tune.lora / fine_tune.training (the rest: configs/default.yaml)
RECIPES = {
    "qv-r8-40steps": {
        "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        "training": {"max_steps": 40, "learning_rate": 2.0e-4},
    },
    "all-r16-e1-lr1e-3": {
        "lora": {"r": 16, "alpha": 32, "target_modules": ALL_LINEAR},
        "training": {"max_steps": -1, "num_epochs": 1, "learning_rate": 1.0e-3},
    },
    "all-r16-e2-lr1e-3": {
        "lora": {"r": 16, "alpha": 32, "target_modules": ALL_LINEAR},
        "training": {"max_steps": -1, "num_epochs": 2, "learning_rate": 1.0e-3},
    },
    "all-r16-e3-lr1e-3": {
        "lora": {"r": 16, "alpha": 32, "target_modules": ALL_LINEAR},
        "training": {"max_steps": -1, "num_epochs": 3, "learning_rate": 1.0e-3},
    },
    "all-r32-e3-lr2e-3": {
        "lora": {"r": 32, "alpha": 64, "target_modules": ALL_LINEAR},
        "training": {"max_steps": -1, "num_epochs": 3, "learning_rate": 2.0e-3},
    },
}


def train(config, name: str, recipe: dict, train_file: str, work: Path) -> tuple[str, dict]:
    """(adapter directory, train_result) of one recipe, trained by the lifecycle's own entry point."""
    from tasks.training.train import TrainSpec

    lora = config.fine_tune.lora.model_copy(update=recipe["lora"])
    training = config.fine_tune.training.model_copy(update=recipe["training"])
    spec = TrainSpec(
        run_id=f"sweep-{name}",
        base_model=config.base_model.name,
        model_cache=str(config.data_dir / "models"),
        train_file=train_file,
        output_dir=str(work / name),
        lora=lora,
        training=training,
    )
    spec_file = work / f"{name}.json"
    spec_file.write_text(spec.model_dump_json())
    subprocess.run(
        [sys.executable, "-m", "tasks.training.train", "--spec", str(spec_file)],
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
    )
    result = json.loads((work / name / "train_result.json").read_text())
    return str(work / name / "adapter"), result


def answer_golden(config, adapter: str | None) -> list[str]:
    generator = load_generator(
        config.base_model.name, adapter, config.data_dir / "models", config.base_model.inference_precision
    )
    questions, _ = read_golden(config.evaluation.golden_file)
    gen = config.evaluation.generation
    prompts = [[{"role": "user", "content": q}] for q in questions]
    return generator.generate_batch(
        prompts, GenerationOptions(gen.max_new_tokens, gen.do_sample), gen.batch_size
    )


def score(config, answers: list[str]) -> dict:
    _, references = read_golden(config.evaluation.golden_file)
    facts = read_golden_facts(config.evaluation.golden_file)
    items = item_scores(answers, references, config.evaluation.classic_metrics.rouge_use_stemmer)
    items["fact_recall"] = fact_recalls(answers, facts)
    return {"items": items, "words": answer_words(answers)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--config", default="configs/default.yaml")
    args = parser.parse_args()
    config = load_config(args.config)
    prepare_environment(config.data_dir, config.stack.startup_timeout_s)
    store, layout = open_store(config), dataset_layout(config)
    rows = store.read(config.store.repo, config.store.main_branch, layout.path("train"))
    knobs = load_gates(config.evaluation.gates_file).statistics  # the gates' own bootstrap settings
    with tempfile.TemporaryDirectory(prefix="fineflow-sweep-") as folder:
        work = Path(folder)
        train_file = work / "train.jsonl"
        train_file.write_bytes(rows)
        base = score(config, answer_golden(config, None))
        print(
            f"{'recipe':<22} {'train s':>8} {'tok/s':>7} {'loss':>6} {'fact_recall [95% CI]':>24} "
            f"{'diff vs base [CI]':>24} {'rouge_l':>8} {'token_f1':>8} {'words':>6}"
        )
        _row("base model", None, base, None, knobs)
        for name in args.recipes:
            started = time.perf_counter()
            adapter, result = train(config, name, RECIPES[name], str(train_file), work)
            seconds = time.perf_counter() - started
            _row(name, (seconds, result), score(config, answer_golden(config, adapter)), base, knobs)
    return 0


def _row(name: str, trained, scored: dict, base: dict | None, knobs) -> None:
    items = scored["items"]
    ci = bootstrap_mean(items["fact_recall"], knobs.confidence, knobs.resamples, knobs.seed)
    diff = "-"
    if base is not None:
        d = paired_difference(
            items["fact_recall"], base["items"]["fact_recall"], knobs.confidence, knobs.resamples, knobs.seed
        )
        diff = f"{d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
    seconds, result = trained if trained else (0.0, {})
    rate = result.get("tokens_per_second", float("nan"))
    loss = result.get("train_loss", float("nan"))
    mean = sum(items["fact_recall"]) / len(items["fact_recall"])
    print(
        f"{name:<22} {seconds:>8.0f} {rate:>7.0f} {loss:>6.3f} "
        f"{f'{mean:.3f} [{ci.low:.3f}, {ci.high:.3f}]':>24} {diff:>24} "
        f"{sum(items['rouge_l']) / len(items['rouge_l']):>8.3f} "
        f"{sum(items['token_f1']) / len(items['token_f1']):>8.3f} {scored['words']:>6.1f}",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
