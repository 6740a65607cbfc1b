"""`fineflow serve`: the OpenAI-compatible schema, the app and PII-masked traffic capture."""
