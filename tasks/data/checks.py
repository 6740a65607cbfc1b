"""Everything that can be wrong with a data-prep set-up, checked before any data is touched."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from fineflow.config import FineflowConfig
from fineflow.models.base import check_base_model
from fineflow.privacy.masker import check_ner_model
from tasks.data.ingest import check_inputs
from tasks.data.safety import load_rules


@task(name="check-setup", cache_policy=NO_CACHE)
def check_setup(config: FineflowConfig) -> None:
    prep = config.data_prep
    check_inputs(prep.inputs)
    load_rules(prep.safety.rules_file)
    check_ner_model(prep.pii)
    check_base_model(config.base_model.name)
