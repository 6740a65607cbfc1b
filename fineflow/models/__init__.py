"""Base models and the one generation engine that everything producing text goes through."""
