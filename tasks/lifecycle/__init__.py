"""The whole-lifecycle run: its pinned config, the reviewed traffic it adds, its typed summary and the
records that link code, dataset and model."""
