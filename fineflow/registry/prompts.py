"""Prompts versioned like models, in MLflow's prompt registry.

The text of each prompt lives in a file under configs/prompts/ (named in the config's `prompts` section) and
is versioned with the code; what a model was trained, evaluated and served with is the registered *prompt
version*, an immutable `prompts:/<name>/<version>` that the model version names in its tags:

- `prompt.system`: the system prompt the version is evaluated and served with;
- `prompt.system.trained`: the one its adapter was trained with (the same, unless a changed prompt reused a
  cached fine-tune: flows/fine_tune.py says why);
- the evaluation runs name the system and judge prompt versions they measured with.

Registration is idempotent: each version carries the SHA-256 of its text as a tag, and a text already
registered (unchanged, or changed back) is that version again, never a new one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from fineflow.config import FineflowConfig, PromptFileConfig
from fineflow.registry.tracking import tracking_uri, use_tracking_uri

TEXT_HASH_TAG = "fineflow.text_sha256"
SYSTEM_PROMPT_TAG = "prompt.system"  # on model versions and evaluation runs: the prompt served and measured
TRAINED_PROMPT_TAG = "prompt.system.trained"  # on model versions: the prompt the adapter was trained with
JUDGE_PROMPT_TAG = "prompt.judge_correctness"  # on evaluation runs: the judge's criteria
PROMPT_URI_PREFIX = "prompts:/"


class PromptError(ValueError):
    """A prompt file that cannot be registered, or a recorded prompt version that cannot be loaded."""


@dataclass(frozen=True)
class RegisteredPrompt:
    name: str
    version: int
    text: str

    @property
    def uri(self) -> str:
        """The immutable reference a model version records (MLflow's own URI form, loadable as it is)."""
        return f"{PROMPT_URI_PREFIX}{self.name}/{self.version}"


def register_prompt(config: FineflowConfig, prompt: PromptFileConfig) -> RegisteredPrompt:
    """The registered version holding the file's text now: the existing one when that text is already
    registered under the name, else a new version."""
    text = read_prompt_text(prompt)
    digest = hashlib.sha256(text.encode()).hexdigest()
    client = MlflowClient(tracking_uri(config))
    for version in _versions(client, prompt.name):
        if version.tags.get(TEXT_HASH_TAG) == digest and version.template == text:
            return RegisteredPrompt(prompt.name, int(version.version), text)
    # MLflow links a new prompt to the active experiment through the *global* tracking URI: set it to
    # this store for the call, or MLflow opens (and creates) its default ./mlflow.db in the working directory
    with use_tracking_uri(tracking_uri(config)):
        registered = client.register_prompt(
            prompt.name, text, commit_message=f"from {prompt.file}", tags={TEXT_HASH_TAG: digest}
        )
    return RegisteredPrompt(prompt.name, int(registered.version), text)


def read_prompt_text(prompt: PromptFileConfig) -> str:
    """The prompt's text, with the file's trailing newline (an editor's, not the author's) removed."""
    try:
        text = prompt.file.read_text(encoding="utf-8").rstrip("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptError(f"prompt {prompt.name!r}: cannot read {prompt.file}: {exc}") from exc
    if not text.strip():
        raise PromptError(f"prompt {prompt.name!r}: {prompt.file} is empty")
    return text


def load_prompt(config: FineflowConfig, uri: str) -> RegisteredPrompt:
    """A recorded `prompts:/name/version` as registered."""
    name, _, version = uri.removeprefix(PROMPT_URI_PREFIX).rpartition("/")
    if not uri.startswith(PROMPT_URI_PREFIX) or not name or not version.isdigit():
        raise PromptError(f"{uri!r} is not a prompt version (prompts:/<name>/<version>)")
    try:
        found = MlflowClient(tracking_uri(config)).get_prompt_version(name, version)
    except MlflowException as exc:
        raise PromptError(f"prompt version {uri} is not in the registry at {tracking_uri(config)}") from exc
    if found is None:
        raise PromptError(f"prompt version {uri} is not in the registry at {tracking_uri(config)}")
    return RegisteredPrompt(name, int(found.version), found.template)


def recorded_system_prompt(config: FineflowConfig, tags: dict[str, str]) -> RegisteredPrompt | None:
    """The system prompt a model version records; None for a version registered without one (by older
    code, or by hand): it is served and measured without a system prompt, as it was."""
    uri = tags.get(SYSTEM_PROMPT_TAG)
    return load_prompt(config, uri) if uri else None


def _versions(client: MlflowClient, name: str) -> list:
    """Every registered version of the prompt, newest first; [] when no prompt has that name yet."""
    versions, token = [], None
    while True:
        try:
            page = client.search_prompt_versions(name, max_results=100, page_token=token)
        except MlflowException:  # no prompt of that name: nothing registered yet
            return versions
        versions.extend(page)
        token = page.token
        if not token:
            return sorted(versions, key=lambda v: -int(v.version))
