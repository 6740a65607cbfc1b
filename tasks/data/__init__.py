"""Data prep: ingest, parse, normalise, mask PII, deduplicate, filter unsafe rows, split, publish."""
