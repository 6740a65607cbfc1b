"""Evaluation: generation on the eval sets, metrics, the judge, gates, reports and promotion records."""
