"""What data prep returns and publishes as report.json: typed, so callers read attributes, not keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fineflow.config import FineflowConfig
from fineflow.store import DatasetStore
from fineflow.store.layout import dataset_layout


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PrepLineage(_Frozen):
    """Also the metadata of the output and publish commits."""

    inputs: str  # the commit-pinned input URIs, space-separated
    config_hash: str
    code_commit: str
    base_model: str


class PrepCounts(_Frozen):
    """The count identity: rows_in = train + eval + quarantined + removed."""

    rows_in: int
    train: int
    eval: int
    quarantined: int
    removed: int


class StepCounts(_Frozen):
    # report.json keeps its "in"/"out" keys (published datasets already hold them).
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True)

    step: str
    rows_in: int = Field(alias="in")
    rows_out: int = Field(alias="out")
    dropped: dict[str, int]


class PrepReport(_Frozen):
    lineage: PrepLineage
    counts: PrepCounts
    rows_in_by_file: dict[str, int]
    quarantined_by_reason: dict[str, int]
    removed_by_reason: dict[str, int]
    pii_masked_by_type: dict[str, int]
    steps: list[StepCounts]
    # train vs the evaluation sets after decontamination: repeats left (0) and the n-gram overlap share
    eval_overlap: dict[str, float | int]

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2, by_alias=True).encode()


class DataPrepResult(_Frozen):
    commit: str  # the published commit on the main branch
    train_uri: str
    eval_uri: str
    report: PrepReport

    @classmethod
    def published(cls, config: FineflowConfig, commit: str, report: PrepReport) -> DataPrepResult:
        layout, repo = dataset_layout(config), config.store.repo
        return cls(
            commit=commit,
            train_uri=layout.uri(repo, commit, "train"),
            eval_uri=layout.uri(repo, commit, "eval"),
            report=report,
        )


def read_report(store: DatasetStore, config: FineflowConfig, ref: str) -> PrepReport:
    """The report.json written at `ref` (a published commit, or the branch a failed audit kept)."""
    return PrepReport.model_validate_json(store.read(config.store.repo, ref, dataset_layout(config).report))
