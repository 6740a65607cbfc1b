"""Sharded data prep: inputs are read in shards of `scale_out.shard_rows` records; each shard is parsed,
normalised, masked, judged by the safety rules and the token limit, and signed for dedup on a worker
of the engine (Dask, through Prefect's task runner). The driver spools each shard's result to disk as it
arrives, so a worker holds one shard and the driver a few (`max_pending_shards`).

Verdicts that need every row (dedup, decontamination) are not taken here: a shard only computes the
per-row facts they need (dedup's signatures; the safety and token-limit verdicts of every masked row;
the signature of what each kept row asks, for decontamination), and the merge (tasks/data/merge.py)
applies them in today's order: dedup first, then safety, then token limit, the split, decontamination.

A shard task is cached under the run key (inputs pinned to commits, the prep config hash), its index and
the shard size, and retried on failure: a rerun after a crash recomputes only the shards that did not
finish. Its persisted result holds masked rows only, as mask-pii's did.
"""

from __future__ import annotations

import pickle
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE, CachePolicy

from fineflow.config import DataPrepConfig, FineflowConfig, ValidationConfig
from fineflow.runtime import step_logger
from fineflow.store import DatasetStore, DatasetURI
from fineflow.store.jsonl import to_jsonl
from tasks.data.cache import run_key_in_context, training_system_prompt, without_run_key_tag
from tasks.data.decontaminate import Ask, AskBatch, ask_of
from tasks.data.dedup import band_keys, signature
from tasks.data.ingest import InputError
from tasks.data.normalize import normalize_rows
from tasks.data.parse import jsonl_record_lines, parsed_line, parsed_records
from tasks.data.pii import mask_pii
from tasks.data.records import Quarantined, Removal, Row, count_reasons, line_digests
from tasks.data.report import CountMismatchError
from tasks.data.safety import filter_unsafe
from tasks.data.split import in_eval
from tasks.data.token_limit import enforce_token_limit


@dataclass(frozen=True)
class ShardModel:
    """What the token limit measures with: the base model's tokenizer and the system prompt training adds."""

    base_model: str
    system_prompt: str | None

    @classmethod
    def of(cls, config: FineflowConfig) -> ShardModel:
        return cls(config.base_model.name, training_system_prompt(config))


@dataclass(frozen=True)
class RawLine:
    """A JSONL line that is a record, not parsed yet: the worker parses it (`parse.parsed_line`)."""

    path: str
    number: int
    raw: bytes


@dataclass(frozen=True)
class ShardInput:
    """One shard's records, pickled into one bytes object: a JSONL file's lines as they are (`RawLine`),
    parsed on the worker; CSV and Parquet records (read whole) and over-long lines parsed by the flow.

    Parsing in the flow (JSON, validation, the row id's hash) took about a tenth of a core in the flow's
    process while the workers masked (py-spy, 100k rows with 2 workers), a core the workers share; on
    a cluster of many workers the flow's one core would bound the whole run. A line longer than
    4 x `max_row_chars` bytes (`max_row_chars` characters of UTF-8 at most) cannot be a row: it is parsed
    here, so a shard carries only its quarantined start, as before.

    Prefect walks every object of a task's inputs looking for futures (twice: for the run's dependencies
    and to swap in Dask's futures), and Dask walks them again to hash the task's key. With a shard's
    5,000 rows of messages those walks took about a quarter of a core in the flow's process while the
    workers masked (py-spy on the 1M run), a core the workers share. One bytes object is one step of each
    walk and one hash; the worker unpickles it (a few hundredths of a second per shard).
    """

    index: int
    rows_in: int
    rows_in_by_file: dict[str, int]
    packed: bytes  # pickled records (RawLine, Row or Quarantined): raw, never persisted (inputs are not)
    run_key: str | None  # the prep run's key, which caches the shard's result (None: not cached)

    @classmethod
    def of(
        cls,
        index: int,
        records: list[RawLine | Row | Quarantined],
        rows_in_by_file: dict[str, int],
        run_key: str | None,
    ) -> ShardInput:
        packed = pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)
        return cls(index, len(records), rows_in_by_file, packed, run_key)

    def records(self, config: ValidationConfig) -> tuple[list[Row], list[Quarantined]]:
        """The shard's valid rows and its quarantined records, each in input order."""
        records = [
            parsed_line(r.path, r.number, r.raw, config) if isinstance(r, RawLine) else r
            for r in pickle.loads(self.packed)  # noqa: S301 (made by `of` in this run's flow)
        ]
        rows = [record for record in records if not isinstance(record, Quarantined)]
        return rows, [record for record in records if isinstance(record, Quarantined)]


@dataclass
class StepVerdict:
    """What the steps after dedup make of one masked row: removed by a step, or the row to keep."""

    step: str | None  # "safety-filter" or "token-limit" when removed
    removal: Removal | None
    row: Row | None  # the row as published (truncated when the token limit truncates)


@dataclass(frozen=True)
class RowVerdict:
    """What the steps after dedup make of one masked row: removed by a step, or the line to publish.

    A kept row travels as its JSONL line, serialised here on the worker: the merge only writes it. The
    row itself travels only when it goes to the eval split, for the merge's eval questions."""

    step: str | None  # "safety-filter" or "token-limit" when removed
    removal: Removal | None
    line: bytes | None  # the row as published, one JSONL line (truncated when the token limit truncates)
    eval_row: Row | None  # the published row when the split sends it to eval


@dataclass
class ShardResult:
    index: int
    rows_in: int
    rows_in_by_file: dict[str, int]
    parsed: int  # valid rows out of parse-validate
    parse_quarantined_by_reason: dict[str, int]
    normalize_removed: list[Removal]
    quarantined: list[Quarantined]  # masked, cut to the excerpt length
    pii_in_rows: dict[str, int]
    pii_in_quarantine: dict[str, int]
    ids: list[str]  # of the masked rows, in input order: what dedup judges
    sources: list[str]
    signatures: np.ndarray  # (len(rows), num_perm) uint32: spooled to disk, read back for suspects only
    band_keys: np.ndarray  # (len(rows), bands) uint64: what the merge holds to find dedup's suspects
    asks: AskBatch  # one per row: decontamination's ask of each kept row (an empty ask for the others)
    verdicts: list[RowVerdict]  # one per row
    emitted: np.ndarray  # sha256 of every JSONL line of this shard's masker output (records.line_digests)


def iter_shards(
    store: DatasetStore, pinned: list[str], prep: DataPrepConfig, run_key: str | None
) -> Iterator[ShardInput]:
    """The inputs' records in input order, cut every `shard_rows` records (across file boundaries). Files
    are streamed from the store line by line: the driver holds the shards in flight, never a whole file."""
    size = prep.scale_out.shard_rows
    index, records, rows_in_by_file = 0, [], {}
    seen_paths: set[str] = set()
    for item in pinned:
        uri = DatasetURI.parse(item)
        if uri.path in seen_paths:
            raise InputError(f"two inputs have the same path {uri.path!r}; rows could not be told apart")
        seen_paths.add(uri.path)
        lines = store.read_lines(uri.repo, uri.ref, uri.path)
        for record in shard_records(uri.path, lines, prep.validation):
            records.append(record)
            rows_in_by_file[uri.path] = rows_in_by_file.get(uri.path, 0) + 1
            if len(records) == size:
                yield ShardInput.of(index, records, rows_in_by_file, run_key)
                index, records, rows_in_by_file = index + 1, [], {}
    if records or index == 0:
        yield ShardInput.of(index, records, rows_in_by_file, run_key)


def shard_records(
    path: str, lines: Iterable[bytes], config: ValidationConfig
) -> Iterator[RawLine | Row | Quarantined]:
    """A file's records for the shards: a JSONL file's lines unparsed (over-long ones parsed, to cut
    them), other formats parsed."""
    if PurePosixPath(path).suffix.lower() != ".jsonl":
        yield from parsed_records(path, lines, config)
        return
    longest = 4 * config.max_row_chars  # bytes: a character is at most 4 bytes of UTF-8
    for number, raw in jsonl_record_lines(lines):
        yield parsed_line(path, number, raw, config) if len(raw) > longest else RawLine(path, number, raw)


@task(name="count-shards", cache_policy=NO_CACHE)
def count_shards(store: DatasetStore, pinned: list[str], prep: DataPrepConfig) -> int:
    """1 when every input record fits in one shard, else 2: it reads no further than the second shard."""
    return sum(1 for _ in islice(iter_shards(store, pinned, prep, None), 2))


@dataclass
class ShardCache(CachePolicy):
    """`data-prep-shard-<run key>-<shard size>-<index>`: a rerun of the same run reuses finished shards."""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs):
        shard: ShardInput = inputs["shard"]
        if shard.run_key is None:
            return None
        prep: DataPrepConfig = inputs["prep"]
        return f"data-prep-shard-{shard.run_key}-{prep.scale_out.shard_rows}-{shard.index}"


@task(
    name="prepare-shard",
    task_run_name="prepare-shard-{shard.index}",
    cache_policy=ShardCache(),
    persist_result=True,
    retries=2,
    retry_delay_seconds=[1, 5],
)
def prepare_shard(shard: ShardInput, prep: DataPrepConfig, model: ShardModel) -> ShardResult:
    """Parse's output for one shard through normalise, mask, safety and token limit, plus signatures."""
    logger = step_logger()
    parsed, parse_quarantined = shard.records(prep.validation)
    normalized = normalize_rows.fn(parsed, prep.normalize)
    excerpt_chars = prep.validation.quarantine_excerpt_chars
    # Rows and quarantine masked apart: the report counts types in order of first finding, rows first.
    rows, _, pii_in_rows = mask_pii.fn(normalized.rows, [], prep.pii, excerpt_chars)
    _, quarantined, pii_in_quarantine = mask_pii.fn([], parse_quarantined, prep.pii, excerpt_chars)
    accounted = len(rows) + len(normalized.removed) + len(quarantined)
    if accounted != shard.rows_in:  # the count identity, per shard
        raise CountMismatchError(f"shard {shard.index}: {shard.rows_in} in, {accounted} accounted for")
    step_verdicts, remasked = _verdicts(rows, prep, model)
    signatures = np.array([signature(row, prep.dedup) for row in rows], dtype=np.uint32).reshape(
        len(rows), prep.dedup.num_perm
    )
    asks = _asks([v.row for v in step_verdicts], prep)
    verdicts = _published(step_verdicts, prep)
    # The exact JSONL lines write-outputs will write, hashed for the audit (tasks/data/publish.py).
    lines = [v.line for v in verdicts if v.line is not None]
    emitted = line_digests(lines + [to_jsonl([item.as_json()]) for item in quarantined])
    result = ShardResult(
        index=shard.index,
        rows_in=shard.rows_in,
        rows_in_by_file=shard.rows_in_by_file,
        parsed=len(parsed),
        parse_quarantined_by_reason=count_reasons(parse_quarantined),
        normalize_removed=normalized.removed,
        quarantined=quarantined,
        pii_in_rows=dict(Counter(pii_in_rows) + Counter(remasked)),
        pii_in_quarantine=pii_in_quarantine,
        ids=[row["id"] for row in rows],
        sources=[row["source"] for row in rows],
        signatures=signatures,
        band_keys=band_keys(signatures, prep.dedup),
        asks=asks,
        verdicts=verdicts,
        emitted=emitted,
    )
    logger.info(
        "shard %d: %d records in: %d quarantined %s, %d removed by normalize, %d masked rows for dedup",
        shard.index,
        shard.rows_in,
        len(quarantined),
        result.parse_quarantined_by_reason,
        len(normalized.removed),
        len(rows),
    )
    return result


def _asks(kept: list[Row | None], prep: DataPrepConfig) -> AskBatch:
    """What each kept row asks, keyed here on the worker: the merge then only looks the keys up (train
    rows against the eval questions) instead of reading and hashing every row on one core."""
    config = prep.decontamination
    removed = Ask(np.zeros(config.num_perm, dtype=np.uint32), 0, np.zeros(0, dtype=np.uint64))
    asks = [removed if row is None else ask_of(row["messages"], config) for row in kept]
    return AskBatch.of(asks, config.num_perm)


def _published(step_verdicts: list[StepVerdict], prep: DataPrepConfig) -> list[RowVerdict]:
    """The verdicts as the merge reads them: a kept row as its line, and as itself if it goes to eval."""
    return [
        RowVerdict(
            v.step,
            v.removal,
            None if v.row is None else to_jsonl([v.row]),
            v.row if v.row is not None and in_eval(v.row["id"], prep.split) else None,
        )
        for v in step_verdicts
    ]


def _verdicts(
    rows: list[Row], prep: DataPrepConfig, model: ShardModel
) -> tuple[list[StepVerdict], dict[str, int]]:
    """Safety and token-limit verdicts for every masked row (sources are unique per input record)."""
    safe = filter_unsafe.fn(rows, prep.safety)
    limited = enforce_token_limit.fn(safe.rows, model.base_model, prep.token_limit, model.system_prompt)
    unsafe = {removal.source: removal for removal in safe.removed}
    too_long = {removal.source: removal for removal in limited.removed}
    kept = {row["source"]: row for row in limited.rows}
    # A truncated answer is a new text: mask it again so every published row is the masker's output.
    masked_ids = {row["id"] for row in rows}
    truncated = [row for row in limited.rows if row["id"] not in masked_ids]
    remasked_counts: dict[str, int] = {}
    if truncated:
        remasked, _, remasked_counts = mask_pii.fn(truncated, [], prep.pii, 0)
        kept |= {row["source"]: row for row in remasked}
    verdicts = []
    for row in rows:
        source = row["source"]
        if source in unsafe:
            verdicts.append(StepVerdict("safety-filter", unsafe[source], None))
        elif source in too_long:
            verdicts.append(StepVerdict("token-limit", too_long[source], None))
        else:
            verdicts.append(StepVerdict(None, None, kept[source]))
    return verdicts, remasked_counts


@dataclass
class ShardSpool:
    """What the merge needs from every shard: small facts in memory, rows and verdicts on disk."""

    directory: Path
    shards: int = 0
    rows_in: int = 0
    rows_in_by_file: Counter = field(default_factory=Counter)
    parsed: int = 0
    parse_quarantined_by_reason: Counter = field(default_factory=Counter)
    normalize_removed: list[Removal] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    pii_in_rows: Counter = field(default_factory=Counter)
    pii_in_quarantine: Counter = field(default_factory=Counter)
    shard_rows: list[int] = field(default_factory=list)  # masked rows per shard, in shard order
    key_parts: list[np.ndarray] = field(default_factory=list)
    emitted_parts: list[np.ndarray] = field(default_factory=list)

    def add(self, result: ShardResult) -> None:
        if result.index != self.shards:
            raise RuntimeError(f"shard {result.index} arrived while shard {self.shards} was expected")
        self.shards += 1
        self.rows_in += result.rows_in
        self.rows_in_by_file.update(result.rows_in_by_file)
        self.parsed += result.parsed
        self.parse_quarantined_by_reason.update(result.parse_quarantined_by_reason)
        self.normalize_removed += result.normalize_removed
        self.quarantined += result.quarantined
        self.pii_in_rows.update(result.pii_in_rows)
        self.pii_in_quarantine.update(result.pii_in_quarantine)
        self.shard_rows.append(len(result.ids))
        self.key_parts.append(result.band_keys)
        self.emitted_parts.append(result.emitted)
        # Dedup's facts apart from the rows: the merge reads them for its suspects without the rows.
        self._dump(self._path(result.index, "dedup"), (result.ids, result.sources, result.signatures))
        self._dump(self._path(result.index, "rows"), (result.verdicts, result.asks))

    def pii_counts(self) -> dict[str, int]:
        """Findings by type, in order of first finding over all rows, then all quarantined records."""
        counts = Counter(self.pii_in_rows)
        counts.update(self.pii_in_quarantine)
        return dict(counts)

    def band_keys(self) -> np.ndarray:
        """Every masked row's band keys, in input order."""
        return np.concatenate(self.key_parts) if self.key_parts else np.zeros((0, 0), dtype=np.uint64)

    def rows_at(self, positions: np.ndarray) -> tuple[list[str], list[str], np.ndarray]:
        """Ids, sources and signatures of the masked rows at `positions` (ascending), from the spool."""
        ids, sources, signatures = [], [], []
        bounds = np.cumsum([0, *self.shard_rows])
        for index in range(self.shards):
            wanted = positions[(positions >= bounds[index]) & (positions < bounds[index + 1])] - bounds[index]
            if not len(wanted):
                continue
            shard_ids, shard_sources, shard_signatures = self._load(self._path(index, "dedup"))
            ids += [shard_ids[i] for i in wanted]
            sources += [shard_sources[i] for i in wanted]
            signatures.append(shard_signatures[wanted])
        width = signatures[0].shape[1] if signatures else 0
        return ids, sources, np.concatenate(signatures) if signatures else np.zeros((0, width), np.uint32)

    def shards_in_order(self) -> Iterator[tuple[list[RowVerdict], AskBatch]]:
        """Each shard's verdicts on its masked rows and what they ask, in input order, one shard in
        memory at a time."""
        for index in range(self.shards):
            yield self._load(self._path(index, "rows"))

    @staticmethod
    def _dump(path: Path, value: tuple) -> None:
        with path.open("wb") as handle:
            pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def _load(path: Path) -> tuple:
        with path.open("rb") as handle:
            return pickle.load(handle)  # noqa: S301 (our own spool, written by _dump)

    def _path(self, index: int, part: str) -> Path:
        return self.directory / f"shard-{index:07d}.{part}.pkl"


def prepare_in_shards(
    store: DatasetStore,
    pinned: list[str],
    prep: DataPrepConfig,
    model: ShardModel,
    spool_dir: Path,
) -> ShardSpool:
    """Submit every shard to the flow's task runner, at most `max_pending_shards` at a time, and spool
    their results in input order."""
    spool = ShardSpool(spool_dir)
    pending: deque = deque()
    logger = step_logger()
    # A shard carries its run's key in its input (ShardCache), so its runs need not carry the key's tag.
    run_key = run_key_in_context()
    with without_run_key_tag():
        for shard in iter_shards(store, pinned, prep, run_key):
            pending.append(prepare_shard.submit(shard, prep, model))
            del shard  # the future holds it until the task has it
            if len(pending) >= prep.scale_out.max_pending_shards:
                _collect(pending.popleft(), spool, logger)
        while pending:
            _collect(pending.popleft(), spool, logger)
    return spool


def _collect(future, spool: ShardSpool, logger) -> None:
    spool.add(future.result())
    logger.info("prep: %d shard(s) done, %d records so far", spool.shards, spool.rows_in)
