"""JSON-schema-constrained decoding, a generation option of the engine (`GenerationOptions.json_schema`).

The core of lm-format-enforcer walks the schema; our own LogitsProcessor and StoppingCriteria connect it to
transformers 5 (the library's own transformers integration imports a module transformers 5 removed).
Decoding stops as soon as the JSON is complete, and `SchemaConstraint` closes the gaps through which
lm-format-enforcer lets schema-valid but unparseable JSON out (raw control characters, escapes, partial
UTF-8 bytes, a comma before `}`, unbounded whitespace and numbers). With a `maxLength` on every free-text
string and a `maxItems` on every list (the judge's `bounded_schema`), even a randomly initialised model
then emits parseable JSON.
"""

from __future__ import annotations

# Bounds the constrained decoder adds to the schema's, so that a degenerate model cannot loop until
# max_new_tokens: whitespace in a row (lm-format-enforcer's own limit does not cover a string's start),
# and the characters of one number.
MAX_CONSECUTIVE_WHITESPACE = 2
MAX_NUMBER_CHARS = 12


class UnsupportedSchemaError(ValueError):
    """A JSON schema that is invalid, or that the constrained decoder cannot follow."""


# The keywords lm-format-enforcer enforces while decoding, and those that only annotate. A schema using any
# other (minimum, maximum, multipleOf, format, uniqueItems, ...) is refused: it would be accepted, and the
# answer then not guaranteed to validate against it (seen: "maximum": 5 answered with 76).
ENFORCED_KEYWORDS = frozenset(
    {"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "enum"}
    | {
        "const",
        "anyOf",
        "allOf",
        "oneOf",
        "minLength",
        "maxLength",
        "pattern",
        "$ref",
        "$defs",
        "definitions",
    }
)
ANNOTATION_KEYWORDS = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment", "readOnly", "writeOnly"}
    | {"deprecated"}
)
_SCHEMA_MAPS = ("properties", "$defs", "definitions")  # keyword -> {name: schema}
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf")  # keyword -> [schema, ...]
_SCHEMA_VALUES = ("items", "additionalProperties")  # keyword -> schema (or a boolean)


def check_schema(json_schema: dict) -> None:
    """Raises UnsupportedSchemaError unless `json_schema` is a valid JSON Schema whose every keyword the
    constrained decoder enforces: cheap (no tokenizer involved), so callers check a schema before they
    queue for the model."""
    import jsonschema
    from lmformatenforcer import JsonSchemaParser

    try:
        jsonschema.validators.validator_for(json_schema).check_schema(json_schema)
    except jsonschema.SchemaError as exc:
        raise UnsupportedSchemaError(f"not a valid JSON Schema: {exc.message}") from None
    _check_keywords(json_schema, "")
    try:
        JsonSchemaParser(json_schema)
    except Exception as exc:  # the library's own errors are of many types: all mean "cannot follow it"
        raise UnsupportedSchemaError(f"not supported by the constrained decoder: {exc}") from None


def _check_keywords(schema, path: str) -> None:
    if not isinstance(schema, dict):
        return
    where = path or "the top level"
    for keyword in schema:
        if keyword not in ENFORCED_KEYWORDS | ANNOTATION_KEYWORDS:
            raise UnsupportedSchemaError(
                f"{keyword!r} (at {where}) is not enforced by the constrained decoder, so the answer could "
                "break it; supported: " + ", ".join(sorted(ENFORCED_KEYWORDS))
            )
    if "pattern" in schema and ("minLength" in schema or "maxLength" in schema):
        raise UnsupportedSchemaError(f"'pattern' with 'minLength'/'maxLength' (at {where}) is not supported")
    if isinstance(schema.get("type"), list):
        raise UnsupportedSchemaError(f"a list of types (at {where}) is not supported: use anyOf")
    for keyword in _SCHEMA_MAPS:
        for name, sub in (schema.get(keyword) or {}).items():
            _check_keywords(sub, f"{path}.{keyword}.{name}".lstrip("."))
    for keyword in _SCHEMA_LISTS:
        for index, sub in enumerate(schema.get(keyword) or []):
            _check_keywords(sub, f"{path}.{keyword}.{index}".lstrip("."))
    for keyword in _SCHEMA_VALUES:
        _check_keywords(schema.get(keyword), f"{path}.{keyword}".lstrip("."))


class TokenVocabulary:
    """What lm-format-enforcer needs to know about a tokenizer (built once per loaded model), plus the token
    sets our extra bounds filter out. Mirrors lmformatenforcer.integrations.transformers, which cannot be
    imported with transformers 5."""

    def __init__(self, tokenizer, vocab_size: int):
        from lmformatenforcer import TokenEnforcerTokenizerData

        token_0 = tokenizer.encode("0", add_special_tokens=False)[-1]
        special = set(tokenizer.all_special_ids)
        regular: list[tuple[int, str, bool]] = []
        for token_id in range(min(vocab_size, len(tokenizer))):
            if token_id in special:
                continue
            # Decoding after "0" keeps the leading space of a word-start token (SentencePiece drops it alone).
            after_0 = tokenizer.decode([token_0, token_id])[1:]
            alone = tokenizer.decode([token_id])
            regular.append((token_id, after_0, len(after_0) > len(alone)))

        def decode(tokens: list[int]) -> str:
            return tokenizer.decode(tokens).rstrip("\ufffd")

        eos = tokenizer.eos_token_id
        tokens = {i: s for i, s, _ in regular}
        self.data = TokenEnforcerTokenizerData(regular, decode, eos, False, vocab_size)
        self.eos_token_id = eos
        # Tokens the schema parser lets through but that make unparseable JSON: raw control characters
        # (JSON allows only \t \n \r \x20 between tokens, and none unescaped in a string), escapes (a
        # lone surrogate \ud800 parses in lm-format-enforcer, not in JSON; judges' strings do without), and
        # partial UTF-8 bytes (decoded alone as U+FFFD, which confuses the parser's character accounting).
        self.never = {
            i
            for i, s, _ in regular
            if "\\" in s or "\ufffd" in s or (any(c < " " for c in s) and s.strip(" \t\n\r"))
        }
        self.whitespace_only = {i for i, s, _ in regular if s and not s.strip()}
        self.raw_whitespace = {i for i in self.whitespace_only if tokens[i].strip(" ")}
        self.leading_whitespace = {i for i, s, _ in regular if s and s[0].isspace()}
        self.number_chars = {i for i, s, _ in regular if s and s[0] in "0123456789.eE+-"}
        self.closing_brace = {i for i, s, _ in regular if s.lstrip(" \t\n\r").startswith("}")}
        self.exponent = {i for i in self.number_chars if any(c in "eE+" for c in tokens[i])}


def _json_parsers(parser) -> list:
    from lmformatenforcer import JsonSchemaParser, UnionParser

    if isinstance(parser, JsonSchemaParser):
        return [parser]
    if isinstance(parser, UnionParser):
        return [p for option in parser.parsers for p in _json_parsers(option)]
    return []


def _in_string(parser) -> bool:
    from lmformatenforcer.jsonschemaparser import StringParsingState

    return (
        isinstance(parser, StringParsingState) and parser.seen_opening_quote and not parser.seen_closing_quote
    )


def json_complete(parser) -> bool:
    """True once the top-level JSON value is closed (a ForceStopParser also ends generation)."""
    from lmformatenforcer import JsonSchemaParser, UnionParser
    from lmformatenforcer.characterlevelparser import ForceStopParser

    if isinstance(parser, ForceStopParser):
        return True
    if isinstance(parser, JsonSchemaParser):
        return parser.can_end()
    if isinstance(parser, UnionParser):
        return any(json_complete(p) for p in parser.parsers)
    return False


class SchemaConstraint:
    """One generation's constraint: a LogitsProcessor (masks every token the schema forbids) and a
    StoppingCriteria (stops as soon as the JSON is complete), sharing one TokenEnforcer."""

    def __init__(self, vocabulary: TokenVocabulary, json_schema: dict):
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer

        self.vocabulary = vocabulary
        parser = JsonSchemaParser(json_schema)
        self.enforcer = TokenEnforcer(vocabulary.data, parser)
        # TokenEnforcer swaps in the tokenizer's alphabet after the parser cached the default one without
        # quotes, which lacks '|', '~' and non-ASCII: a minLength string would accept such a token through
        # the free-text shortcut, then drop it and end the JSON (seen on random models). Re-derive it.
        parser.context.alphabet_without_quotes = parser.config.alphabet.replace('"', "")

    def state(self, sequence: list[int]):
        self.enforcer.get_allowed_tokens(sequence)  # computes and caches the state of this prefix
        return self.enforcer.prefix_states[tuple(sequence)]

    def allowed(self, sequence: list[int]) -> list[int]:
        from lmformatenforcer.jsonschemaparser import (
            NumberParsingState,
            ObjectParsingStage,
            ObjectParsingState,
        )

        vocabulary = self.vocabulary
        allowed = set(self.enforcer.get_allowed_tokens(sequence).allowed_tokens)
        allowed -= vocabulary.never
        parsers = _json_parsers(self.state(sequence).parser)
        if parsers and all(p.num_consecutive_whitespaces >= MAX_CONSECUTIVE_WHITESPACE for p in parsers):
            allowed -= vocabulary.whitespace_only
        parsers = [p for p in parsers if p.object_stack]
        tops = [p.object_stack[-1] for p in parsers]
        if tops and all(
            isinstance(top, ObjectParsingState)
            and top.current_stage == ObjectParsingStage.PARSING_KEY_OR_END
            and p.last_non_whitespace_character == ","
            for p, top in zip(parsers, tops, strict=True)
        ):
            # lm-format-enforcer lets an object close right after a comma while optional keys remain
            allowed -= vocabulary.closing_brace
        if tops and all(_in_string(top) for top in tops):
            allowed -= vocabulary.raw_whitespace
            if not any(top.parsed_string for top in tops):
                # the parser skips whitespace at a string's start, so it would not count towards maxLength
                allowed -= vocabulary.leading_whitespace
        if tops and all(isinstance(top, NumberParsingState) for top in tops):
            allowed -= vocabulary.exponent  # 1e999 parses as infinity; a verdict never needs an exponent
            if all(len(t.parsed_string) >= MAX_NUMBER_CHARS and t.parsed_string[-1].isdigit() for t in tops):
                allowed -= vocabulary.number_chars
        if not allowed:  # nothing valid is left: end here, and the parse failure is counted
            allowed = {vocabulary.eos_token_id}
        return sorted(allowed)

    def logits_processor(self):
        import torch
        from transformers import LogitsProcessor

        constraint = self

        class SchemaLogitsProcessor(LogitsProcessor):
            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
                mask = torch.full_like(scores, float("-inf"))
                for row, sequence in enumerate(input_ids.tolist()):
                    mask[row, constraint.allowed(sequence)] = 0
                return scores + mask

        return SchemaLogitsProcessor()

    def stopping_criteria(self):
        import torch
        from transformers import StoppingCriteria

        constraint = self

        class JsonCompleteCriteria(StoppingCriteria):
            def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
                done = [json_complete(constraint.state(seq).parser) for seq in input_ids.tolist()]
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        return JsonCompleteCriteria()
