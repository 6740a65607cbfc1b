"""The lineage a registered version carries as tags: what fine-tune must record, and what evaluation and
drift read back (the data at its dataset commit, its base model)."""

from __future__ import annotations

# Every version fine-tune registers names the data, base model, code and config that made it.
REQUIRED_VERSION_TAGS = ("dataset_commit", "base_model", "code_commit", "config_hash")
# The subset evaluation and drift need to measure a version again.
LINEAGE_TAGS = ("dataset_commit", "base_model")


class LineageError(ValueError):
    """A model version without the lineage tags evaluation and drift read (registered by hand, say)."""


def lineage_tags(name: str, version: str, tags: dict[str, str]) -> dict[str, str]:
    """The version's tags, checked to carry every lineage tag."""
    missing = [tag for tag in LINEAGE_TAGS if tag not in tags]
    if missing:
        raise LineageError(
            f"model version {name}/{version} has no {' or '.join(missing)} tag: evaluation and drift read "
            f"the lineage tags fine-tune sets on the versions it registers ({', '.join(LINEAGE_TAGS)}); "
            "set it on the version"
        )
    return tags
