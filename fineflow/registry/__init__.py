"""The MLflow side of a model: tracking, registration, references, aliases and lineage."""
