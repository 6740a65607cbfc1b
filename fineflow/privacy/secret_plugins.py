"""detect-secrets plugins for credential formats its own plugins do not know, in detect-secrets' documented
shape for custom plugins (a `RegexBasedDetector` with a `secret_type` and a `denylist`). The masker's
secrets recognizer takes them by class name from `data_prep.pii.secrets.plugins`, beside detect-secrets'.

Why: the keys people paste into an LLM product's chats are mostly the AI providers' own, and detect-secrets'
`OpenAIDetector` knows only OpenAI's legacy `sk-...T3BlbkFJ...` key; project keys (`sk-proj-`), Anthropic,
Google and Hugging Face keys, GitHub's fine-grained tokens and AWS secret access keys passed the masker.
The prefixes follow the providers' published formats (as gitleaks' rules spell them). A masker prefers
recall to precision: each pattern takes any length from a plausible minimum, since masking a long random
token that was not a key costs little, and a key that survives into a training set cannot be taken back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from detect_secrets.plugins.base import RegexBasedDetector

# A key ends where its characters end: not inside a longer token.
_END = r"(?![A-Za-z0-9_\-])"


class _PrefixedDetector(RegexBasedDetector):
    """A detector whose every key starts with one of `prefixes`: a line holding none of them is not searched
    (a substring test costs a fraction of a regex search, and nearly every chat line holds no key)."""

    prefixes: tuple[str, ...] = ()

    def analyze_string(self, string: str) -> Iterator[str]:
        if any(prefix in string for prefix in self.prefixes):
            yield from super().analyze_string(string)


class OpenAIProjectKeyDetector(_PrefixedDetector):
    """OpenAI's project, service-account and admin keys, and the plain `sk-` keys of OpenAI-compatible
    providers (48 characters or more after `sk-`)."""

    secret_type = "OpenAI Project Key"
    prefixes = ("sk-",)
    denylist = (
        re.compile(r"\bsk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_\-]{20,}" + _END),
        re.compile(r"\bsk-[A-Za-z0-9]{32,}" + _END),
    )


class AnthropicKeyDetector(_PrefixedDetector):
    """Anthropic's API and admin keys (`sk-ant-api03-...`, `sk-ant-admin01-...`)."""

    secret_type = "Anthropic Key"
    prefixes = ("sk-ant-",)
    denylist = (re.compile(r"\bsk-ant-[a-z]+\d*-[A-Za-z0-9_\-]{20,}" + _END),)


class GoogleApiKeyDetector(_PrefixedDetector):
    """Google Cloud and Gemini API keys: `AIza` and 35 characters."""

    secret_type = "Google API Key"
    prefixes = ("AIza",)
    denylist = (re.compile(r"\bAIza[A-Za-z0-9_\-]{35}" + _END),)


class HuggingFaceTokenDetector(_PrefixedDetector):
    """Hugging Face user access tokens (`hf_`) and organisation tokens (`api_org_`)."""

    secret_type = "Hugging Face Token"
    prefixes = ("hf_", "api_org_")
    denylist = (re.compile(r"\b(?:hf|api_org)_[A-Za-z0-9]{30,}" + _END),)


class GitHubFineGrainedTokenDetector(_PrefixedDetector):
    """GitHub's fine-grained personal access tokens (`github_pat_`); detect-secrets' GitHubTokenDetector
    knows the classic `ghp_`-style tokens only."""

    secret_type = "GitHub Fine-grained Token"
    prefixes = ("github_pat_",)
    denylist = (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}" + _END),)


class UrlPasswordDetector(_PrefixedDetector):
    """The password in a URL's user information (`redis://:pw@cache`, `postgresql://app:x9Kq!2@db`).
    detect-secrets' BasicAuthDetector needs a user name and refuses passwords holding any of `!$&'()*+,;=`,
    which people type unencoded; here a password is whatever stands between the colon and the host's `@`,
    except whitespace, `/`, `?` and `#` (where a URL's path, query or fragment would start)."""

    secret_type = "URL Password"
    prefixes = ("://",)
    # The password runs to the last `@` before the host: people type an `@` in it unencoded. A scheme is short
    # (bounded, or a match tried from every word of a long "a.a.a..." ran to its end).
    denylist = (re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]{0,31}://[^\s:/?#@]*:([^\s/?#]+)@[^\s@/?#]"),)


class AwsSecretAccessKeyDetector(RegexBasedDetector):
    """AWS secret access keys written unquoted: 40 base64 characters, both cases among them, on a line that
    names AWS or a secret or holds an access key id. detect-secrets' AWSKeyDetector finds one only in quotes
    after `aws...key =`. Both cases are required so that a 40-digit hex value (a git commit) is not taken
    for one."""

    secret_type = "AWS Secret Access Key"
    key_id = re.compile(r"(?:A3T[A-Z0-9]|AKIA|ASIA)[A-Z0-9]{16}")
    denylist = (
        re.compile(
            r"(?<![A-Za-z0-9/+])(?=[A-Za-z0-9/+]{0,39}[a-z])(?=[A-Za-z0-9/+]{0,39}[A-Z])"
            r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
        ),
    )

    def analyze_string(self, string: str) -> Iterator[str]:
        lowered = string.lower()
        if "aws" in lowered or "secret" in lowered or self.key_id.search(string):
            yield from super().analyze_string(string)


PLUGINS = (
    OpenAIProjectKeyDetector,
    AnthropicKeyDetector,
    GoogleApiKeyDetector,
    HuggingFaceTokenDetector,
    GitHubFineGrainedTokenDetector,
    UrlPasswordDetector,
    AwsSecretAccessKeyDetector,
)
