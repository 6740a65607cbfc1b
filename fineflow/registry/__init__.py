"""The MLflow side of a model, one module per concern:

- `tracking`: the tracking URI, experiments, `use_tracking_uri`, and fine-tune's run and registration;
- `refs`: `ModelRef` (`name@alias` | `name/version`), resolved to a `RegisteredVersion`; `ModelRefError`;
- `aliases`: champion, challenger and previous-champion names from the config, and how they move;
- `lineage`: the tags every registered version carries, `LineageError`;
- `adapters`: the one atomic local cache of registered LoRA adapters;
- `runs`: `recorded_run`, an MLflow run created, logged into and marked FINISHED or FAILED.
"""
