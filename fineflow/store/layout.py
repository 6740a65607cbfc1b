"""Where data prep publishes a dataset inside the repository: one home for these paths.

<output_prefix>/train.jsonl, eval.jsonl    the splits (rows)
<output_prefix>/quarantine.jsonl           lines that could not become rows, with reasons
<output_prefix>/removed.jsonl              rows a filter took out, with reasons
<output_prefix>/report.json                counts, lineage and the step table
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from fineflow.store.base import DatasetURI

if TYPE_CHECKING:
    from fineflow.config import FineflowConfig

RecordFile = Literal["train", "eval", "quarantine", "removed"]
RECORD_FILES: tuple[RecordFile, ...] = ("train", "eval", "quarantine", "removed")


@dataclass(frozen=True)
class DatasetLayout:
    prefix: str

    def path(self, name: RecordFile) -> str:
        if name not in RECORD_FILES:
            raise ValueError(f"no dataset file {name!r}; the layout has {RECORD_FILES}")
        return f"{self.prefix}/{name}.jsonl"

    @property
    def report(self) -> str:
        return f"{self.prefix}/report.json"

    def uri(self, repo: str, ref: str, name: RecordFile) -> str:
        return str(DatasetURI(repo, ref, self.path(name)))


def dataset_layout(config: FineflowConfig) -> DatasetLayout:
    return DatasetLayout(config.data_prep.output_prefix)
