"""What an evaluation reads: its files (checked before any model is loaded), the evaluation sets at the
version's dataset commit, and the evaluation key that names them for reuse."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from fineflow.config import FineflowConfig, config_hash
from fineflow.registry.prompts import RegisteredPrompt, register_prompt
from fineflow.runtime import IO_RETRIES, code_version, retry_unless, step_logger
from fineflow.store import open_store
from fineflow.store.jsonl import parse_jsonl
from fineflow.store.layout import dataset_layout
from tasks.data.decontaminate import ContaminationError, check_uncontaminated
from tasks.evaluation.classic_metrics import load_eval_prompts
from tasks.evaluation.gates import GateConfig, load_gates
from tasks.evaluation.injection import load_payloads
from tasks.evaluation.measure import EvalSets, read_golden


def check_inputs(config: FineflowConfig) -> GateConfig:
    """The gates, after every evaluation input file is read once: a typo fails in seconds, not after
    minutes of model time."""
    gates = load_gates(config.evaluation.gates_file)
    load_eval_prompts(config.evaluation.classic_metrics.prompts_file)
    load_payloads(config.evaluation.injection_payloads_file)
    return gates


@task(name="register-judge-prompt", cache_policy=NO_CACHE, **IO_RETRIES)
def register_judge_prompt(config: FineflowConfig) -> RegisteredPrompt:
    """The judge's correctness criteria's registered version for the text in its file now."""
    prompt = register_prompt(config, config.prompts.judge_correctness)
    step_logger().info("judge criteria: %s", prompt.uri)
    return prompt


def evaluation_key(
    config: FineflowConfig, dataset_commit: str, drifted_slice: str | None, judge_criteria: RegisteredPrompt
) -> str:
    """Names what a score depends on (eval split commit, golden set, the drifted slice's commit-pinned URI,
    evaluation config, the judge's criteria version, the precision the model generates in, code): a model
    measured on the same key is not measured again. The system prompt is the subject's own (a version's,
    fixed at registration), not the key's."""
    golden = Path(config.evaluation.golden_file).read_bytes()
    precision = config.base_model.inference_precision
    extra = [drifted_slice] if drifted_slice else []  # keys without a slice stay what they were
    return config_hash(
        config.evaluation, dataset_commit, golden, precision, code_version(), judge_criteria.uri, *extra
    )[:24]


@task(
    name="read-eval-sets",
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_unless(ContaminationError),
    **IO_RETRIES,
)
def read_eval_sets(
    config: FineflowConfig, dataset_commit: str, drifted_slice: str | None, judge_criteria: RegisteredPrompt
) -> EvalSets:
    """The golden set, the first evaluation.max_eval_rows rows of the eval split at the commit and the
    drifted slice (a lakefs:// URI, when given); a ContaminationError when the commit's train split repeats
    any golden or eval-split question. The slice's prompts are kept out of training by the split itself
    (exact prompts); near-duplicates across the split are not checked yet."""
    store, layout = open_store(config), dataset_layout(config)
    rows = parse_jsonl(store.read(config.store.repo, dataset_commit, layout.path("eval")))
    train = parse_jsonl(store.read(config.store.repo, dataset_commit, layout.path("train")))
    drifted = parse_jsonl(store.read_uri(drifted_slice)) if drifted_slice else []
    check_uncontaminated(train, rows, config)
    questions, references = read_golden(config.evaluation.golden_file)
    limit = config.evaluation.max_eval_rows
    eval_rows = [row["messages"] for row in rows[:limit]]
    return EvalSets(
        questions,
        references,
        eval_rows,
        drifted_conversations=[r["messages"] for r in drifted],
        judge_criteria=judge_criteria,
    )
