"""The one way to name a registered model version: `name@alias` or `name/<version number>`.

Evaluate, promote, drift, serving and the CLI all parse and resolve references here, so they accept the
same spellings and fail with the same error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

# A version reference names a model without "/" or "@" (MLflow's own registry names have neither), so
# "org/model" base-model names and "./dir" paths are never mistaken for one.
_VERSION_REF = re.compile(r"^(?P<name>[^/@]+)/(?P<version>\d+)$")
_ALIAS_REF = re.compile(r"^(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
USAGE = "use name@alias or name/version"


class ModelRefError(ValueError):
    """A model reference that is malformed or names no registered version."""


@dataclass(frozen=True)
class RegisteredVersion:
    """A resolved reference: the version number and its tags (lineage, gates)."""

    name: str
    version: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        """The pyfunc model's URI, which MLflow downloads and loads."""
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class ModelRef:
    """`name@alias` (alias set, version None) or `name/version` (version set, alias None)."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        if match := _ALIAS_REF.match(text):
            return cls(match["name"], alias=match["alias"])
        if match := _VERSION_REF.match(text):
            return cls(match["name"], version=match["version"])
        raise ModelRefError(f"{text!r} is not a model reference ({USAGE})")

    @classmethod
    def from_uri(cls, uri: str) -> ModelRef:
        """A `models:/name/version` or `models:/name@alias` URI (a RegisteredVersion's `uri`)."""
        return cls.parse(uri.removeprefix("models:/"))

    @staticmethod
    def is_ref(text: str) -> bool:
        """Whether `text` is spelled as a reference (it may still name no registered version)."""
        return bool(_ALIAS_REF.match(text) or _VERSION_REF.match(text))

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"

    def resolve(self, client: MlflowClient) -> RegisteredVersion:
        """The registered version this reference names now (an alias moves; a version number does not)."""
        try:
            if self.alias:
                found = client.get_model_version_by_alias(self.name, self.alias)
            else:
                found = client.get_model_version(self.name, self.version)
        except MlflowException as exc:  # a missing model, alias or version: RestException
            raise ModelRefError(f"no registered model version {str(self)!r} ({USAGE})") from exc
        return RegisteredVersion(self.name, str(found.version), dict(found.tags))


def resolve(client: MlflowClient, text: str) -> RegisteredVersion:
    """Parse and resolve in one call: what every `--model` option needs."""
    return ModelRef.parse(text).resolve(client)
