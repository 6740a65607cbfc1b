"""Privacy: the one PII masker used by data prep, its audit, evaluation and traffic capture."""
