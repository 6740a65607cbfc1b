"""The one rule for the registered system prompt of the version served, in process (`app`) and in front of
an upstream (`gateway`) alike: a client's system message is refused, the prompt goes first in every
conversation (`fineflow.models.engine.with_system_prompt`: the engine's render in process, the forwarded
body in a gateway), and responses name the prompt version in `x-fineflow-system-prompt`. A version with no
registered prompt (a bare base model, or one registered before prompts were versioned) takes the
conversation as sent."""

from __future__ import annotations

from fineflow.serving.schema import APIError

MODEL_VERSION_HEADER = "x-fineflow-model-version"
SYSTEM_PROMPT_HEADER = "x-fineflow-system-prompt"


def refuse_client_system_message(system_prompt: str | None, messages: list[dict]) -> None:
    """A 400 for a client's system message when the version served has a registered system prompt
    (`system_prompt`: its prompts:/name/version; None: none).

    The system prompt is the operator's policy, versioned, evaluated and gated with the model. A client's
    system message must not silently replace it (the engine keeps a conversation's own system message), nor
    be merged into it: the system role is the one a model is tuned to obey, so client text placed there
    would speak with the operator's voice ("ignore the rules above"). Refused, and named, instead: the
    client sends its instructions as a user message, which the model weighs as the user's."""
    if system_prompt is None:
        return
    index = next((i for i, m in enumerate(messages) if m["role"] == "system"), None)
    if index is not None:
        raise APIError(
            400,
            f"messages[{index}] is a system message; this model version is served with its registered "
            f"system prompt ({system_prompt}), which a request may not replace: send your "
            "instructions as a user message",
            "messages",
            "system_message_not_allowed",
        )


def version_headers(version: str, system_prompt: str | None) -> dict[str, str]:
    """`x-fineflow-model-version`: the registered version that answered ("" for a bare base model);
    `x-fineflow-system-prompt`: the registered system prompt version applied, when it has one."""
    prompt = {SYSTEM_PROMPT_HEADER: system_prompt} if system_prompt else {}
    return {MODEL_VERSION_HEADER: version, **prompt}
