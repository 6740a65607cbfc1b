"""Recognizers fineflow adds to Presidio's: secrets (detect-secrets), street addresses (pyap), dates of
birth and passwords written in prose, compressed IPv6 addresses, and Presidio's phone numbers without the
regions a text cannot hold a number of. Each finds spans in the (normalised) text; the masker replaces
them with the entity's configured placeholder."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from itertools import islice

import phonenumbers
from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.predefined_recognizers import PhoneRecognizer as PresidioPhoneRecognizer

from fineflow.config import SecretsConfig

OPENAI_KEY_LITERAL = "T3BlbkFJ"  # in every key detect-secrets' OpenAIDetector finds ("OpenAI" in base64)
NPM_TOKEN_LITERAL = "/:_authToken="  # in every line detect-secrets' NpmDetector finds a token in
PRIVATE_KEY_PLUGIN = "PrivateKeyDetector"  # its match is the BEGIN line: the key is masked to its END
STREET_ADDRESS = "STREET_ADDRESS"
DATE_OF_BIRTH = "DATE_OF_BIRTH"
PASSWORD = "PASSWORD"
BANK_ACCOUNT = "BANK_ACCOUNT"
IP_ADDRESS = "IP_ADDRESS"


class _Recognizer(EntityRecognizer):
    """A recognizer computing spans in Python: subclasses yield (entity, start, end)."""

    score = 0.9  # above Presidio's partial matches, so an overlapping shorter finding loses

    def __init__(self, entities: list[str], language: str):
        super().__init__(supported_entities=entities, supported_language=language, name=type(self).__name__)

    def load(self) -> None:
        pass

    def spans(self, text: str) -> Iterator[tuple[str, int, int]]:
        raise NotImplementedError

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        return [
            RecognizerResult(entity, start, end, self.score)
            for entity, start, end in _merged(span for span in self.spans(text) if span[0] in entities)
        ]


def _merged(spans: Iterable[tuple[str, int, int]]) -> Iterator[tuple[str, int, int]]:
    """Each entity's spans with overlapping ones joined into their union (the anonymizer would replace the
    union anyway). Presidio compares every pair of results, so a recognizer that found the same value at
    every place it repeats made the analysis quadratic: "1 Main St " repeated 800 times yielded 665,600
    address spans and took 26 s to mask."""
    current: tuple[str, int, int] | None = None
    for entity, start, end in sorted(span for span in spans if span[2] > span[1]):
        if current and entity == current[0] and start <= current[2]:
            current = (entity, current[1], max(end, current[2]))
            continue
        if current:
            yield current
        current = (entity, start, end)
    if current:
        yield current


# --------------------------------------------------------------------------------------------- secrets

# Characters of a token: a plugin's match can stop short of the token (the JWT pattern is lazy, the GitHub
# one yields its prefix group), so the masked span runs to the token's ends.
_TOKEN_CHAR = re.compile(r"[A-Za-z0-9_\-+/=.~]")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]*-----|PuTTY-User-Key-File-2")
_KEY_LINE = re.compile(r"[A-Za-z0-9+/=:\- ]*")  # a base64 body line, or a header like Proc-Type: 4,...
_SECRET_FILE = "message.txt"  # detect-secrets picks per-file-type rules from a name; chat text is plain text


class SecretsRecognizer(_Recognizer):
    """detect-secrets' plugins, line by line, each mapped to an entity type in config."""

    def __init__(self, config: SecretsConfig, language: str):
        from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

        from fineflow.privacy.secret_plugins import PLUGINS

        classes = {cls.__name__: cls for cls in (*get_mapping_from_secret_type_to_class().values(), *PLUGINS)}
        limits = {
            "Base64HighEntropyString": config.base64_entropy_limit,
            "HexHighEntropyString": config.hex_entropy_limit,
        }
        unknown = sorted(set(config.plugins) - set(classes))
        if unknown:
            raise ValueError(f"data_prep.pii.secrets.plugins: no detect-secrets plugin named {unknown}")
        self.plugins = [
            (classes[name](**({"limit": limits[name]} if name in limits else {})), entity, _keywords_of(name))
            for name, entity in config.plugins.items()
        ]
        _use_default_detect_secrets_settings()
        super().__init__(sorted(set(config.plugins.values())), language)

    def spans(self, text: str) -> Iterator[tuple[str, int, int]]:
        offset = 0
        for line in text.splitlines(keepends=True):
            for plugin, entity, keywords in self.plugins:
                if keywords is not None and not keywords.search(line):
                    continue
                for secret in plugin.analyze_line(filename=_SECRET_FILE, line=line, line_number=0):
                    if type(plugin).__name__ == PRIVATE_KEY_PLUGIN:
                        yield entity, offset + line.find("-----BEGIN"), _pem_end(text, offset)
                        continue
                    for start, end in _occurrences(line, secret.secret_value):
                        yield entity, offset + start, offset + end
            offset += len(line)


def _keywords_of(plugin_name: str) -> re.Pattern | None:
    """What a line must hold for the plugin to find anything in it, where one search can tell.

    KeywordDetector tries about ten patterns on every line, each starting from a word of its denylist
    ("password", "api_key", ...): about half of detect-secrets' time on chat text, where few lines hold
    one. A line without a denylisted word cannot match any of them. The search is case-insensitive, as
    most of the patterns are.

    OpenAIDetector's one pattern holds the literal `T3BlbkFJ` after a greedy run from every `sk-`, which
    it tries again from each later `sk-` on the line: quadratic ("sk-" repeated over 8,000 characters,
    0.2 s). A line without the literal cannot match it. NpmDetector's (`//.+/:_authToken=...`) runs from
    every `//` to the line's end and back: 16,000 slashes (2,000 prompt tokens) took 2.0 s; a line without
    `/:_authToken=` cannot match it."""
    if plugin_name == "OpenAIDetector":
        return re.compile(re.escape(OPENAI_KEY_LITERAL))
    if plugin_name == "NpmDetector":
        return re.compile(re.escape(NPM_TOKEN_LITERAL))
    if plugin_name != "KeywordDetector":
        return None
    from detect_secrets.plugins.keyword import DENYLIST

    return re.compile("|".join(DENYLIST), re.IGNORECASE)


def _use_default_detect_secrets_settings() -> None:
    """The plugins read their filters from detect-secrets' global settings: set its defaults (what its
    `default_settings()` sets) once for the process. Entering `default_settings()` around every text, as
    before, rebuilt its plugin and filter caches twice per text: an eighth of masking a row
    (benchmarks/data_prep_scale.py rows, cProfile). fineflow is detect-secrets' only user in a process."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.settings import cache_bust, configure_settings_from_baseline

    cache_bust()
    plugins = [{"name": cls.__name__} for cls in get_mapping_from_secret_type_to_class().values()]
    configure_settings_from_baseline({"plugins_used": plugins})


def _occurrences(line: str, value: str) -> Iterator[tuple[int, int]]:
    """Every place `value` stands in `line`, widened to the whole token around it."""
    start = line.find(value) if value else -1
    while start >= 0:
        end = start + len(value)
        while start > 0 and _TOKEN_CHAR.match(line[start - 1]):
            start -= 1
        while end < len(line) and _TOKEN_CHAR.match(line[end]):
            end += 1
        yield start, start + len(line[start:end].rstrip("."))  # not the sentence's full stop
        start = line.find(value, end)


def _pem_end(text: str, line_start: int) -> int:
    """Where a private key that begins on the line at `line_start` ends: its END marker, or, cut short,
    the last line that still looks like key material."""
    end_marker = _PEM_END.search(text, line_start)
    if end_marker:
        return end_marker.end()
    position = text.find("\n", line_start)
    while position >= 0:
        line_end = text.find("\n", position + 1)
        line = text[position + 1 : line_end if line_end >= 0 else len(text)]
        if not line.strip() or not _KEY_LINE.fullmatch(line):
            return position
        position = line_end
    return len(text)


# ------------------------------------------------------------------------------------ context patterns


class ContextPatternRecognizer(_Recognizer):
    """Patterns that carry their context in the regex ("date of birth: ..."): only the `value` group is
    masked, and `accept` may reject a candidate value."""

    def __init__(
        self,
        entity: str,
        patterns: list[re.Pattern],
        language: str,
        accept: Callable[[re.Match], bool] = lambda match: True,
    ):
        self.entity, self.patterns, self.accept = entity, patterns, accept
        super().__init__([entity], language)

    def spans(self, text: str) -> Iterator[tuple[str, int, int]]:
        for pattern in self.patterns:
            for match in pattern.finditer(text):
                if self.accept(match):
                    value = match.group("value")
                    kept = value if value[:1] in "\"'" else value.rstrip(_TRAILING)  # not the full stop
                    yield self.entity, match.start("value"), match.start("value") + len(kept)


_TRAILING = ".,;!?)"
_PLACEHOLDER = re.compile(r"<[A-Z_]+>")
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DATE = (
    r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}"  # 1985-03-07
    r"|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}"  # 03/07/1985, 7.3.85
    rf"|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}"  # March 7th, 1985
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH},?\s+\d{{4}}"  # 7 March 1985
)
# Blanks, then "is"/"was", then one of ":=#-", each optional ("date of birth is: 03/07/1985", "sort code
# - 40-47-84"). Possessive: the blanks are read once ("date of birth" and 20,000 blanks, 318 prompt
# tokens, took 47 s when `\s*(?:is|:)?\s*` split them in every way before failing).
_SEPARATOR = r"\s*+(?:(?:is|was)\s*+)?(?:[:=#-]\s*+)?"
# A date is a date of birth only where the text says so: "renewal on 2024-05-01" stays.
DATE_OF_BIRTH_PATTERNS = [
    re.compile(
        r"\b(?:born(?:\s+on)?|d\.?o\.?b\.?|date\s+of\s+birth|birth\s*date|birthday)"
        rf"{_SEPARATOR}(?P<value>{_DATE})",
        re.IGNORECASE,
    ),
    re.compile(r"\bborn\s+in\s+(?P<value>(?:19|20)\d{2})\b", re.IGNORECASE),  # the year alone
]

# Bank details beside their words only: a bare 8-digit number is as often an order or a ticket. UK sort
# codes ("sort code 40-47-84"), account numbers after "account number", "account no." or "acct #" (a bare
# "account" precedes order and build numbers in support chats, and Presidio's US bank recognizer, which
# takes it as context, masked them; "a/c" is an air conditioner here), US routing numbers after "routing
# number" or "routing #".
BANK_ACCOUNT_PATTERNS = [
    re.compile(rf"\bsort[ \t-]*code{_SEPARATOR}(?P<value>\d\d[-–. ]?\d\d[-–. ]?\d\d)(?![\d-])", re.I),
    # groups of 3 digits or more after the first: "acct # 4412 8891 2231", not "number 31926819 2 units"
    re.compile(
        rf"\b(?:(?:bank[ \t]+)?account|acct)[ \t]*(?:number|no\.?|num|nr\.?|#){_SEPARATOR}"
        r"(?P<value>\d{2,}(?:[ -]\d{3,})*)(?![\d-])",
        re.I,
    ),
    re.compile(rf"\b(?:aba[ \t]+)?routing[ \t]*+(?:number|no\.?|#){_SEPARATOR}(?P<value>\d{{9}})\b", re.I),
]


def bank_digits(match: re.Match) -> bool:
    """A bank detail has 6 to 17 digits (a sort code 6, a routing number 9, an account number up to 17)."""
    return 6 <= sum(char.isdigit() for char in match.group("value")) <= 17


_PASSWORD_WORD = r"\b(?:password|passwd|passcode|passphrase|pwd|pin)\b"
# "pass" and "pw" only before a colon or an equals sign ("user: bob pass: hunter2"), and only before a value
# mixing letters with digits or symbols: "First pass: remove the faceplate", "Test pass: all sensors",
# "pass=12 fail=0", "PW: 1500 watts" are no passwords.
_ASSIGNED_PASSWORD_WORD = r"\b(?P<label>password|passwd|passcode|passphrase|pwd|pin|pass|pw)\b"
_SHORT_LABELS = frozenset({"pass", "pw"})
_PASSWORD_VALUE = r"(?P<value>\"[^\"\n]+\"|'[^'\n]+'|[^\s\"']+)"
# "password: hunter2", "pwd=hunter2": an assignment, any value
_ASSIGNED_PASSWORD = re.compile(rf"{_ASSIGNED_PASSWORD_WORD}\s*+(?P<sep>[:=])\s*+{_PASSWORD_VALUE}", re.I)
# "my password is hunter2": prose, so the value must look like a password (see PasswordRecognizer)
_PROSE_PASSWORD = re.compile(rf"{_PASSWORD_WORD}\s++(?P<sep>is|was)(?:\s*+:)?\s++{_PASSWORD_VALUE}", re.I)
# The next word on the line, for a passphrase's further words.
_NEXT_WORD = re.compile(r"[ \t]+(?P<word>\S+)")
_BLANK_TO_LINE_END = re.compile(r"[^\S\n]*(?:\n|\Z)")  # nothing but blanks left on the line
_LETTER = re.compile(r"[^\W\d_]")
_NOT_LETTER = re.compile(r"[\W\d_]")


# A length stated after "is": a number or range, maybe with its unit joined ("8-64", "6-digit").
_LENGTH = re.compile(r"\d+(?:-\d+)?(?P<unit>-[A-Za-z]+)?")
_UNITS = frozenset({"digit", "digits", "character", "characters", "chars", "letters", "numbers", "long"})


@dataclass(frozen=True)
class _PasswordValue:
    words: list[tuple[int, str]]  # (start, word without a closing mark)
    at_clause_end: bool  # the words ran to the line's end or to a closing mark, not on into prose
    next_word: str  # the word after them on the line ("" at the line's end)


class PasswordRecognizer(_Recognizer):
    """A password after its word: "password: hunter2", "pwd=hunter2", "my password is Tr0ub4dor&3", quoted
    or not. A password of letters only is often a passphrase ("wifi password: correct horse battery
    staple"), and masking its first word left the rest: such a value runs on over the next words of its
    line made of letters or of digits, up to `max_words` in all, and stops before a stop word ("and",
    "the", "please": spaCy's English list) or any other word (a label "user:", a tag, "doesn't"); a word
    ending in punctuation ends it (without the mark). So "password: sunshine and it fails" masks
    "sunshine". A value holding a digit or a symbol ("hunter2", "S3cr3t!") is one word: an answer
    echoing "password: hunter2 exactly as written" must find the "hunter2" of its prompt, which
    evaluation's leak check compares it with.

    After "is" or "was" the words are prose ("my password is wrong", "the PIN is valid 24 hours"): the value
    is a password only when quoted, when its first word holds a digit or a symbol ("my password is
    hunter2"), or when it is a passphrase whose last word does and which runs to the end of its line or
    clause ("the passphrase is Purple Monkey Dishwasher 42."). A value whose first word is a tag is none:
    already masked, or a template's ("password: <YOUR_PASSWORD>"); the masker drops a finding that is one
    of its own placeholders whatever found it (PIIMasker.find), this takes any tag, so an answer quoting a
    template is no leak. "<PASSWORD>hunter2" is a value after a tag."""

    def __init__(self, max_words: int, language: str):
        from spacy.lang.en.stop_words import STOP_WORDS

        self.max_words, self.stop_words = max_words, STOP_WORDS
        super().__init__([PASSWORD], language)

    def spans(self, text: str) -> Iterator[tuple[str, int, int]]:
        for pattern, prose in ((_ASSIGNED_PASSWORD, False), (_PROSE_PASSWORD, True)):
            for match in pattern.finditer(text):
                if match.group("value")[:1] in "\"'":
                    yield PASSWORD, match.start("value"), match.end("value")
                    continue
                value = self._value(text, match)
                if value and self._accepted(match, value, prose):
                    last_start, last = value.words[-1]
                    yield PASSWORD, match.start("value"), last_start + len(last)

    def _accepted(self, match: re.Match, value: _PasswordValue, prose: bool) -> bool:
        first = value.words[0][1]
        if first.lower() in self.stop_words:
            return False  # "password: it is on a sticker", "the PIN is 4 digits long"
        if not prose:
            label = (match.groupdict().get("label") or "").lower()
            return label not in _SHORT_LABELS or bool(_LETTER.search(first) and _NOT_LETTER.search(first))
        length = _LENGTH.fullmatch(first)
        if length and (length.group("unit") or value.next_word.lower() in _UNITS):
            return False  # a length, not a password: "is 8-64 characters", "is 6-digit", "is 4 digits long"
        if _NOT_LETTER.search(first.replace("-", "") if first.islower() else first):
            return True  # "hunter2", "Tr0ub4dor&3"; not "case-sensitive"
        last = value.words[-1][1]
        if len(value.words) == 1 or not _NOT_LETTER.search(last):
            return False
        # "blue sky2 and it fails"; a number alone only where it ends the clause ("Dishwasher 42."): "was
        # changed 2 days ago", "is locked 15 minutes" are prose
        return bool(_LETTER.search(last)) or value.at_clause_end

    def _value(self, text: str, match: re.Match) -> _PasswordValue | None:
        """The value's words; None when the first is a tag. Only a first word of letters runs on, over
        words of letters or digits, and a word holding a digit is its last ("blue sky2")."""
        value = match.group("value")
        first = value.rstrip(_TRAILING)
        if not first or _PLACEHOLDER.fullmatch(first):
            return None
        words, position = [(match.start("value"), first)], match.end("value")
        marked = first != value  # the last word taken ended in a closing mark
        following = _NEXT_WORD.match(text, position)  # the word after those taken, once per position
        while following and not marked and words[-1][1].isalpha() and len(words) < self.max_words:
            raw = following.group("word")
            word = raw.rstrip(_TRAILING)
            if not word.isalnum() or word.lower() in self.stop_words:
                break
            words.append((following.start("word"), word))
            position, marked = following.end(), word != raw
            following = _NEXT_WORD.match(text, position)
        next_word = following.group("word") if following else ""
        at_clause_end = marked or bool(_BLANK_TO_LINE_END.match(text, position))
        return _PasswordValue(words, at_clause_end, next_word.rstrip(_TRAILING))


# --------------------------------------------------------------------------------------------- IPv6

# Candidates for the standard library to validate: Presidio's pattern stops at "::" and masked only
# part of a compressed address (2001:db8::1 became "<IP_ADDRESS>1").
_IPV6_CANDIDATE = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?:%[\w.]+)?(?![\w:])"
)


class Ipv6Recognizer(_Recognizer):
    score = 0.95

    def __init__(self, language: str):
        super().__init__([IP_ADDRESS], language)

    def spans(self, text: str) -> Iterator[tuple[str, int, int]]:
        for match in _IPV6_CANDIDATE.finditer(text):
            try:
                ipaddress.IPv6Address(match.group())
            except ValueError:
                continue
            yield IP_ADDRESS, match.start(), match.end()


# ------------------------------------------------------------------------------ spelled-out emails

EMAIL_ADDRESS = "EMAIL_ADDRESS"
# An address written to slip past email patterns: "john dot smith at gmail dot com", "jsmith [at] example
# [dot] org", "j.smith(at)example.com". Bracketed separators, or the words themselves between spaces.
_SPELLED_AT = r"\s*[\[({<]\s*at\s*[\])}>]\s*|\s+at\s+"
_SPELLED_DOT = r"\s*[\[({<]\s*dot\s*[\])}>]\s*|\s+dot\s+"
_EMAIL_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_%+\-]*[A-Za-z0-9])?"
# Bounded repeats (4 dots before the at, 5 after): with unbounded ones, a match tried from every word of a
# long "a dot a dot ..." ran to its end, quadratic in the text (4.6 s on 24,000 characters).
_SPELLED_EMAIL = re.compile(
    rf"(?<![\w.+\-%])(?P<local>{_EMAIL_LABEL}(?:(?:{_SPELLED_DOT}|\.){_EMAIL_LABEL}){{0,4}})(?P<at>{_SPELLED_AT})"
    rf"(?P<domain>{_EMAIL_LABEL}(?:(?:{_SPELLED_DOT}|\.){_EMAIL_LABEL}){{1,5}})(?![\w\-])",
    re.IGNORECASE,
)
_BRACKETED_AT = re.compile(r"[\[({<]\s*at\s*[\])}>]", re.IGNORECASE)
# A spelled-out dot alone, without the spaces around it (a leading \s* was retried from every place of a
# long run of blanks: quadratic).
_DOT_WORD = re.compile(r"[\[({<]\s*dot\s*[\])}>]|\bdot\b", re.IGNORECASE)
_DOT_SEPARATOR = re.compile(rf"(?:{_SPELLED_DOT})", re.IGNORECASE)
# With a bare " at ", only these endings: many country endings are English words ("hold at the dot in the
# centre" ends in .in, "talk at the dot to" in .to), so a public suffix alone let ordinary sentences through.
_SPELLED_EMAIL_ENDINGS = frozenset(
    {
        "com",
        "org",
        "net",
        "edu",
        "gov",
        "io",
        "uk",
        "de",
        "fr",
        "ca",
        "au",
        "ru",
        "jp",
        "cn",
        "nl",
        "es",
        "ch",
    }
    | {"se", "br", "mx", "info", "biz", "dev", "app", "ai"}
)


class SpelledEmailRecognizer(_Recognizer):
    """Email addresses with "at" and "dot" spelled out. The domain must end in a public suffix (tldextract's
    bundled list, as Presidio's email recognizer checks). A bare " at " counts only with a spelled-out dot
    in the domain ("I ordered at acme.com" is no address) and a common email ending."""

    score = 0.9

    def __init__(self, language: str):
        import tldextract

        # The bundled public-suffix snapshot: tldextract fetches the list over the network by default.
        self.suffixes = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
        super().__init__([EMAIL_ADDRESS], language)

    def spans(self, text: str) -> Iterator[tuple[str, int, int]]:
        if not (_BRACKETED_AT.search(text) or _DOT_WORD.search(text)):
            return  # neither separator spelled out: nothing here for this recognizer
        for match in _SPELLED_EMAIL.finditer(text):
            domain = match.group("domain")
            bracketed = bool(_BRACKETED_AT.search(match.group("at")))
            if not (bracketed or _DOT_WORD.search(domain)):
                continue
            host = _DOT_SEPARATOR.sub(".", domain).lower()
            if not self.suffixes(host).top_domain_under_public_suffix:
                continue
            if bracketed or host.rsplit(".", 1)[-1] in _SPELLED_EMAIL_ENDINGS:
                yield EMAIL_ADDRESS, match.start(), match.end()


# ----------------------------------------------------------------------------------------- addresses

# The parts of a street as _plausible_street reads them. pyap separates a street's house number, name and
# type by spaces or commas only (in each of its US, GB and CA grammars), and its names hold no comma.
_STREET_PART = re.compile(r"[^\s,]+")
# How a part holding a house number ends in pyap's grammars: digits, then at most a letter or two
# ("221B", "12-A", "85th"). A space or a comma always follows it, so a match ends where its part does.
_HOUSE_NUMBER = re.compile(r"\d-?[A-Za-z]{0,2}(?=[\s,])")
# Parts a street can span after its number: pyap's names are at most 41 characters (21 words), then a type.
MAX_STREET_PARTS = 24


class StreetAddressRecognizer(_Recognizer):
    """pyap: full addresses (street, city, region, postcode) and street lines ("77 Oak Lane"). A street
    needs a house number, capitalised name words and a capitalised type: pyap alone also reads
    "5-10 business days" or "and Nimbus Pl(us)" as streets."""

    def __init__(self, countries: list[str], language: str):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # pyap's patterns hold invalid escapes
            from pyap import parser
            from pyap.utils import DEFAULT_FLAGS

        # pyap hands its pattern strings to `re` on every call. phonenumbers' many patterns push them out
        # of `re`'s cache, so they were compiled again for most texts (17 ms each, a third of masking a
        # row): compile them once and run pyap's own parse steps on the compiled patterns.
        self.parsers = [
            (
                address_parser,
                re.compile(address_parser.rules, DEFAULT_FLAGS),
                re.compile(address_parser.single_street_rules, DEFAULT_FLAGS),
            )
            for address_parser in map(parser.AddressParser, countries)
        ]
        super().__init__([STREET_ADDRESS], language)

    def spans(self, text: str) -> Iterator[tuple[str, int, int]]:
        if not _may_hold_street(text):
            return
        for address_parser, full_address, single_street in self.parsers:
            clean = address_parser._normalize_string(text)  # what pyap's parse() matches in
            matches = [*full_address.finditer(clean), *single_street.finditer(clean)]
            streets = {
                address.full_address
                for address in map(address_parser._parse_address, matches)
                if _plausible_street(address)
            }
            for street in sorted(streets):  # a repeated street is looked up once
                # pyap matches in a copy with spaces and dashes tidied: find the span in the text itself
                words = re.findall(r"[^\s,\-‐‑‒–—―]+", street)
                pattern = r"\b" + r"[\s,\-‐‑‒–—―]+".join(re.escape(word) for word in words) + r"\b"
                for found in re.finditer(pattern, text):
                    yield STREET_ADDRESS, found.start(), found.end()


def _may_hold_street(text: str) -> bool:
    """False only where _plausible_street would reject all pyap could find: a cheap test before pyap.

    A plausible street is a part holding its house number, then at least two parts that each start
    with a capital or a digit (its name's words and its type, in either order: "77 Oak Lane", "100 Avenue
    B"), one of them a capitalised type. pyap costs about 20 ms per text it runs on. On
    benchmarks/data_prep_scale.py's rows, the older test (a digit, a space, a capital) let 8% of texts
    through ("24 V setups", "5 GHz", card numbers) and pyap took 29% of masking; this one lets 2.4% through.
    Checked against pyap without it (tests/test_privacy.py): no street is lost. Only the parts after a
    house number are read: splitting every text into parts, as before, was most of this recogniser's time."""
    for number in _HOUSE_NUMBER.finditer(text):
        parts = (part.group() for part in _STREET_PART.finditer(text, number.end()))
        if _street_follows(islice(parts, MAX_STREET_PARTS)):
            return True
    return False


def _street_follows(parts: Iterable[str]) -> bool:
    """`parts` begin with a street's name and type: two or more capitalised or numeric, one capitalised.
    Punctuation between them is passed over (pyap's CA grammar reads "Lane ." as a type)."""
    capitalised, count = False, 0
    for part in parts:
        if not any(char.isalnum() for char in part):
            continue
        if not (part[0].isupper() or part[0].isdigit()):
            return False
        count += 1
        capitalised = capitalised or part[0].isupper()
        if count >= 2 and capitalised:
            return True
    return False


def _plausible_street(address) -> bool:
    name, street_type = address.street_name or "", address.street_type or ""
    words = name.split()
    return (
        bool(words)
        and (address.street_number or "")[:1].isdigit()
        and "." not in name
        and all(word[0].isupper() or word[0].isdigit() for word in words)
        and street_type[:1].isupper()
    )


# ---------------------------------------------------------------------------------------------- phones

# Every character phonenumbers' matcher can put in a candidate (phonenumbermatcher._PATTERN, matched
# case-insensitively as here): digits, its punctuation (with the "x" of "555x1234") and leading "+" and
# brackets, and the labels, separators and digits of an extension ("ext. 12", "anexo 3", ";ext=4", "#").
# tests/test_privacy.py checks it holds every character that pattern can match.
_PHONE_CANDIDATE_CHARS = (
    r"\d+\uff0b(\[\uff08\uff3b)\]\uff09\uff3d"
    r"\-x\u2010-\u2015\u2212\u30fc\uff0d-\uff0f \u00a0\u00ad\u200b\u2060\u3000.\\/~\u2053\u223c\uff5e"
    r"\t,:;=#\uff03\uff0eextnsioa\u00f3\u0301\uff45\uff58\uff54\uff4e\uff49\u0434\u043e\u0431"
)
# From a digit or a plus sign to the last digit of a stretch of those characters: any candidate's digits
# lie inside one, and so do the letters the parser could read as digits (after a plus sign, "+x44...").
_PHONE_DIGIT_SPAN = re.compile(rf"[\d+\uff0b](?:[{_PHONE_CANDIDATE_CHARS}]*\d)?", re.IGNORECASE)
# A whole run of those characters; the ones that hold a digit are the stretches: every candidate of
# phonenumbers' matcher lies inside one. (One pattern for a run with a digit in it, `[...]*\d[...]*`, was
# tried from every character of a run without one and failed at its end: quadratic, 1.0 s for 8,000 "x".)
_PHONE_RUN = re.compile(rf"[{_PHONE_CANDIDATE_CHARS}]+", re.IGNORECASE)
_DIGIT = re.compile(r"\d")
# phonenumbers' plus signs (phonenumberutil._PLUS_CHARS): a number after one is read as international.
_PLUS_SIGN = re.compile("[+\uff0b]")


def _phone_stretches(text: str) -> Iterator[re.Match]:
    """The runs of phone candidate characters that hold a digit, in order."""
    return (run for run in _PHONE_RUN.finditer(text) if _DIGIT.search(text, run.start(), run.end()))


class GatedPhoneRecognizer(PresidioPhoneRecognizer):
    """Presidio's phone recognizer, which runs phonenumbers' matcher once per region over the whole text,
    run instead over the few stretches of the text that can hold a number, and only for the regions whose
    shortest valid number fits in the stretch.

    Where a number can be: phonenumbers' matcher finds candidates with one pattern, made only of the
    characters in _PHONE_CANDIDATE_CHARS (tests/test_privacy.py walks the pattern to check it, and that
    it has no anchor or lookaround), so a candidate never crosses the end of a stretch of those
    characters. Besides the candidate, the matcher reads only the character just before it and the one
    just after (a letter there rejects it) and, for a timestamp, the characters after it that
    ":[0-5]\\d" can match, which are candidate characters. So the matcher run on a stretch with one
    character either side finds what it finds there in the whole text, at the same places. Its limit of
    65,535 rejected candidates per text, which no chat text comes near, then counts per stretch.

    Which regions: a region's matcher keeps a candidate only if it parses to a valid number, whose
    national significant number has one of the lengths phonenumbers' metadata allows for its country
    code. Those digits come from the candidate's digits, or from letters in it (an "x", an extension's
    label), which the parser can read as keypad digits, so a candidate never yields more digits than it
    holds digits and letters. Which country code: the parser reads another country's only after a plus
    sign or the region's international prefix ("00", "011") at the start of a number; otherwise the
    number is the region's own (written with or without its country code). So a stretch with neither
    (no plus sign, no digits where the prefix's pattern matches, no letters the parser could turn into
    digits) needs the region's own shortest number (France 9 digits, Germany 4); one with either, the
    shortest of any country (+43 and four digits, Austria: 6). "Ticket 500057" runs Germany's pass only.

    Presidio's loop over the regions and its results are kept: the same findings, in the same order.
    What the matcher finds in a stretch is kept for the next text that holds the same stretch
    (`stretches_kept`): log lines and tables repeat theirs. benchmarks/masking_passes.py measures it.
    """

    def __init__(self, regions: list[str], stretches_kept: int, language: str):
        from phonenumbers.phonemetadata import PhoneMetadata

        super().__init__(supported_language=language, supported_regions=tuple(regions))
        shortest = _shortest_national_numbers()
        international = min(len(str(code)) + length for code, length in shortest.items())
        self.own_digits = {
            region: shortest[phonenumbers.country_code_for_region(region)] for region in regions
        }
        self.fewest_digits = {region: min(international, self.own_digits[region]) for region in regions}
        self.international_prefixes = {
            region: re.compile(PhoneMetadata.metadata_for_region(region).international_prefix)
            for region in regions
        }
        self.numbers_in = lru_cache(maxsize=stretches_kept)(self._numbers_in)

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        windows = []
        for stretch in _phone_stretches(text):
            # The stretch with the characters either side, which the matcher reads.
            start, end = max(0, stretch.start() - 1), min(len(text), stretch.end() + 1)
            numbers = self.numbers_in(text[start:end], stretch.start() - start, end - stretch.end())
            windows.append((start, numbers))
        results = []
        for index in range(len(self.supported_regions)):  # Presidio's order: region by region
            for start, numbers in windows:
                for offset, raw, number, number_region in numbers[index]:
                    found = phonenumbers.PhoneNumberMatch(start + offset, raw, number)
                    results.append(self._get_recognizer_result(found, text, number_region, nlp_artifacts))
        return EntityRecognizer.remove_duplicates(results)

    def _numbers_in(self, window: str, before: int, after: int) -> tuple[tuple[tuple], ...]:
        """Per region, the matcher's numbers in `window` (its start, text, number and the region Presidio
        names), a stretch with `before` and `after` characters around it. Kept by `numbers_in`: they
        depend on the window alone."""
        stretch = PhoneStretch.of(window, before, len(window) - after)
        return tuple(
            tuple(
                (match.start, match.raw_string, match.number, _region_of(match.raw_string, region))
                for match in phonenumbers.PhoneNumberMatcher(window, region, leniency=self.leniency)
            )
            if self.runs_on(stretch, region)
            else ()
            for region in self.supported_regions
        )

    def runs_on(self, stretch: PhoneStretch, region: str) -> bool:
        """Whether `region`'s matcher runs on `stretch`: whether it holds as many digits as a number found
        there in that region needs."""
        return stretch.digits >= self._needed_digits(stretch, region)

    def _needed_digits(self, stretch: PhoneStretch, region: str) -> int:
        """The fewest digits a number found in `stretch` in `region` can have."""
        prefix = self.international_prefixes[region]
        if stretch.plus or stretch.ascii_digits is None:
            return self.fewest_digits[region]
        if any(prefix.match(stretch.ascii_digits, at) for at in range(len(stretch.ascii_digits))):
            return self.fewest_digits[region]
        return self.own_digits[region]


@dataclass(frozen=True)
class PhoneStretch:
    digits: int  # digits and letters from its first digit (or a plus sign before it) to its last digit
    plus: bool  # a plus sign in it
    ascii_digits: str | None  # its digits as ASCII digits; None where letters lie between them

    @classmethod
    def of(cls, text: str, start: int, end: int) -> PhoneStretch:
        span = _PHONE_DIGIT_SPAN.search(text, start, end).group()
        letters = any(char.isalpha() for char in span)
        return cls(
            digits=_digits_and_letters(span),
            plus=bool(_PLUS_SIGN.search(text, start, end)),
            ascii_digits=None if letters else phonenumbers.normalize_digits_only(span),
        )


def phone_stretches(text: str) -> list[PhoneStretch]:
    """Every stretch of phone candidate characters that holds a digit."""
    return [PhoneStretch.of(text, found.start(), found.end()) for found in _phone_stretches(text)]


def _digits_and_letters(span: str) -> int:
    return sum(1 for char in span if char.isdecimal() or char.isalpha())


def _region_of(number: str, found_in: str) -> str:
    """The region Presidio's explanation names: the number's own, or that of the pass that found it."""
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(number))
    except phonenumbers.NumberParseException:
        return found_in


@cache
def _shortest_national_numbers() -> dict[int, int]:
    """Per country code, the fewest digits of a valid national significant number in any of its regions."""
    from phonenumbers.phonemetadata import PhoneMetadata

    shortest: dict[int, int] = {}
    entries = [PhoneMetadata.metadata_for_region(region) for region in phonenumbers.SUPPORTED_REGIONS]
    entries += map(PhoneMetadata.metadata_for_nongeo_region, phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS)
    for entry in entries:
        length = min(entry.general_desc.possible_length or (1,))  # none listed: any length is possible
        shortest[entry.country_code] = min(shortest.get(entry.country_code, length), length)
    return shortest
