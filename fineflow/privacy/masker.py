"""The one PII masker (data prep, its audit, evaluation's leak check, traffic capture): each value
replaced by a typed placeholder (<EMAIL>, <PERSON>, <AWS_KEY>).

What finds values:
- Presidio's pattern and checksum recognizers (email, phone, credit card, IBAN, IPv4, US SSN);
- person names from public name lists and context cues (`names.py`), no NER model needed;
- secrets with detect-secrets' plugins, street addresses with pyap, dates of birth and prose passwords
  by their context, compressed IPv6 addresses (`recognizers.py`).
Detection runs on NFKC-normalised text without invisible characters (`text.py`), so full-width or
zero-width-split values are found; the spans they came from are replaced in the original text.

Without an NER model the analyzer runs on a blank spaCy pipeline (tokenizer only) whose lemmas are the
lower-cased words: Presidio's context words ("my ssn is 536228741") compare against lemmas, and a blank
pipeline has none. An installed spaCy pipeline configured as `ner_model` adds its PERSON findings.
Nothing is downloaded. Masked values are never logged: logs and reports carry counts per entity type.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Callable
from functools import cache
from pathlib import Path

from fineflow.config import PIIConfig
from fineflow.privacy.text import normalize

LOWER_LEMMA_PIPE = "fineflow_lower_lemma"
# A masked text is scanned again until clean; placeholders are never findings, so a second pass finds
# nothing unless masking joined a new value. More passes than this means a recognizer matches its own
# placeholders: an error to fix, not text to write.
MAX_MASK_PASSES = 3


class PIIMaskingError(RuntimeError):
    """Masking did not converge: a scan still finds PII in the masker's own output."""


class NerModelMissingError(ValueError):
    """The configured spaCy NER pipeline is not installed."""


def check_ner_model(config: PIIConfig) -> None:
    """Fail before any work when a configured NER pipeline is not installed (nothing is downloaded)."""
    if config.ner_model is None:
        return
    import spacy.util

    if not (spacy.util.is_package(config.ner_model) or Path(config.ner_model).exists()):
        raise NerModelMissingError(
            f"data_prep.pii.ner_model {config.ner_model!r} is not an installed spaCy pipeline or a path; "
            "install it into the environment or set it to null"
        )


class PIIMasker:
    # Presidio imports transformers and torch (seconds): it is loaded here, when masking really runs,
    # so a run served from cache never pays for it.
    def __init__(self, config: PIIConfig):
        import tldextract
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
        from presidio_anonymizer import AnonymizerEngine
        from presidio_anonymizer.entities import OperatorConfig

        from fineflow.privacy.context import IndexedContextEnhancer

        # The email recognizer asks tldextract for the public-suffix list, fetched over the network by
        # default. Use the snapshot bundled with tldextract: no network call, nothing to hang on.
        tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
        check_ner_model(config)
        presidio_remove_duplicates()  # replaced by fineflow's, which keeps the same findings in O(n log n)
        if config.ner_model is None:
            engine = _blank_spacy_engine(SpacyNlpEngine, config.language)
        else:
            engine = SpacyNlpEngine(models=[{"lang_code": config.language, "model_name": config.ner_model}])
        engine.load()
        for nlp in engine.nlp.values():
            nlp.tokenizer = _long_chunk_tokenizer_class()(nlp.tokenizer, config.longest_split_chunk)
        registry = RecognizerRegistry(supported_languages=[config.language])
        presidio_log = logging.getLogger("presidio-analyzer")
        level = presidio_log.level
        presidio_log.setLevel(logging.ERROR)  # silence "recognizer not added: language es/it/pl" noise
        try:
            registry.load_predefined_recognizers(languages=[config.language], nlp_engine=engine)
        finally:
            presidio_log.setLevel(level)
        registry.remove_recognizer("PhoneRecognizer")  # Presidio's regions: see data_prep.pii.phone_regions
        if config.ner_model is None:
            # It reports the pipeline's named entities, and a blank pipeline has none. It would also read
            # every text's NLP artifacts, which find() computes only for a text with a candidate finding.
            registry.remove_recognizer("SpacyRecognizer")
        for recognizer in _extra_presidio_recognizers(config.extra_recognizers, config.language):
            registry.add_recognizer(recognizer)
        for recognizer in _fineflow_recognizers(config):
            registry.add_recognizer(recognizer)
        self.config = config
        self.analyzer = AnalyzerEngine(
            registry=registry,
            nlp_engine=engine,
            supported_languages=[config.language],
            context_aware_enhancer=IndexedContextEnhancer(),  # Presidio's, in O(log n) per finding
        )
        self.anonymizer = AnonymizerEngine()
        self.operators = {
            entity: OperatorConfig("replace", {"new_value": config.placeholders[entity]})
            for entity in config.masked_entities
        }
        self.placeholders = frozenset(config.placeholders.values())

    def find(self, text: str) -> list:
        """Findings with their spans in `text` itself (detection ran on its normalised form)."""
        from presidio_analyzer import RecognizerResult

        normalized = normalize(text)
        artifacts = _lazy_nlp_artifacts(self.analyzer.nlp_engine, normalized.text, self.config.language)
        findings = self.analyzer.analyze(
            text=normalized.text,
            language=self.config.language,
            entities=self.config.masked_entities,
            score_threshold=self.config.score_threshold,
            nlp_artifacts=artifacts,
        )
        # A placeholder is never a finding, even where a pattern accepts it: detect-secrets' BasicAuthDetector
        # takes whatever stands between `://user:` and `@`, so `postgres://u:<SECRET>@db` matched again
        # after masking, and masking such a text never converged (PIIMaskingError failed the shard).
        # Blanks at a finding's ends are not part of the value: Presidio's UK_NINO pattern takes the blank
        # before the number (" ?" first), and masking it joined the placeholder to the word before.
        spans = [(item, *_without_blank_ends(normalized.text, item.start, item.end)) for item in findings]
        results = [
            RecognizerResult(item.entity_type, *normalized.original_span(start, end), item.score)
            for item, start, end in spans
            if end > start and normalized.text[start:end] not in self.placeholders
        ]
        return self._one_per_span(results)

    def _one_per_span(self, results: list) -> list:
        """The best finding of each span, in text order. On equal scores Presidio keeps the last it was
        given, and the order of its results can differ between processes ("912-70-1234", shaped as an
        SSN and as an ITIN at 0.5 each, was masked <US_SSN> by one test process and <US_ITIN> by another):
        the configured order of `entities` decides instead, so every worker masks a text the same way."""
        rank = {entity: index for index, entity in enumerate(self.config.masked_entities)}
        best: dict[tuple[int, int], object] = {}
        for result in sorted(results, key=lambda result: (-result.score, rank[result.entity_type])):
            best.setdefault((result.start, result.end), result)
        return sorted(best.values(), key=lambda result: (result.start, result.end))

    def mask(self, text: str) -> tuple[str, Counter]:
        """`text` with every finding replaced by its placeholder, and the counts replaced by type.

        Masked text is scanned again until a scan finds nothing: replacing values joins the text on either
        side of a placeholder, which could form a new one. So what this returns is always text the last
        scan found clean, which is what lets data prep's audit accept a line the masker emitted without
        scanning it a second time (tasks/data/publish.py). Text with no finding is scanned once.
        """
        found: Counter = Counter()
        for _ in range(MAX_MASK_PASSES):
            findings = self.find(text)
            if not findings:
                return text, found
            masked = self.anonymizer.anonymize(text=text, analyzer_results=findings, operators=self.operators)
            found.update(item.entity_type for item in masked.items)
            text = masked.text
        left = sorted({finding.entity_type for finding in self.find(text)})
        raise PIIMaskingError(f"PII still found after {MAX_MASK_PASSES} masking passes: {left}")


_PRESIDIO_OWN: list[Callable] = []  # Presidio's remove_duplicates, once replaced
_REPLACING = threading.Lock()


def presidio_remove_duplicates() -> Callable:
    """Presidio's own `EntityRecognizer.remove_duplicates`, after replacing it in this process with
    fineflow/privacy/results.py's (the first call replaces it). Presidio calls it through the class, inside
    `analyze` and inside each pattern recognizer, so the class attribute is the one place to change it."""
    from presidio_analyzer import EntityRecognizer

    from fineflow.privacy.results import remove_duplicates

    with _REPLACING:  # two maskers built at once must not keep fineflow's as "Presidio's own"
        if not _PRESIDIO_OWN:
            _PRESIDIO_OWN.append(EntityRecognizer.remove_duplicates)
            EntityRecognizer.remove_duplicates = staticmethod(remove_duplicates)
    return _PRESIDIO_OWN[0]


@cache
def _masker(config_json: str) -> PIIMasker:
    return PIIMasker(PIIConfig.model_validate_json(config_json))


def get_masker(config: PIIConfig) -> PIIMasker:
    """One analyzer per process and config: building it costs more than masking a small dataset."""
    return _masker(config.model_dump_json())


def scan_for_pii(texts: list[str], config: PIIConfig) -> dict[str, int]:
    """Counts of PII findings by type (never the values): the audit's second scan."""
    masker = get_masker(config)
    found: Counter = Counter()
    for text in texts:
        found.update(result.entity_type for result in masker.find(text))
    return dict(found)


def _fineflow_recognizers(config: PIIConfig) -> list:
    """The recognizers fineflow adds to Presidio's. Imported here, not at the top: they subclass Presidio's,
    and importing Presidio loads spaCy, torch and transformers (0.9 GB). A process that imports this
    module without masking (data prep's flow while its workers mask the shards) does not pay for them."""
    from fineflow.privacy.names import NameRecognizer
    from fineflow.privacy.recognizers import (
        BANK_ACCOUNT,
        BANK_ACCOUNT_PATTERNS,
        DATE_OF_BIRTH,
        DATE_OF_BIRTH_PATTERNS,
        ContextPatternRecognizer,
        Ipv6Recognizer,
        PasswordRecognizer,
        SecretsRecognizer,
        SpelledEmailRecognizer,
        StreetAddressRecognizer,
        bank_digits,
    )

    language = config.language
    return [
        _phone_recognizer(config.phone_regions, config.phone_stretches_kept, language),
        NameRecognizer(config.person.not_names, config.person.bare_name_max_rank, language),
        SecretsRecognizer(config.secrets, language),
        StreetAddressRecognizer(config.address_countries, language),
        ContextPatternRecognizer(DATE_OF_BIRTH, DATE_OF_BIRTH_PATTERNS, language),
        ContextPatternRecognizer(BANK_ACCOUNT, BANK_ACCOUNT_PATTERNS, language, accept=bank_digits),
        PasswordRecognizer(config.passphrase_max_words, language),
        Ipv6Recognizer(language),
        SpelledEmailRecognizer(language),
    ]


def _lazy_nlp_artifacts(engine, text: str, language: str):
    """The spaCy pipeline's artifacts for `text`, computed when first read. Only the context words of a
    candidate finding and an NER pipeline's entities read them: most support texts have no candidate,
    nor has the scan of a masked text, so the pipeline runs for few of them
    (benchmarks/masking_passes.py). Whatever reads them gets exactly what Presidio's engine computes."""
    return _lazy_nlp_artifacts_class()(engine, text, language)


@cache
def _lazy_nlp_artifacts_class() -> type:
    from presidio_analyzer.nlp_engine import NlpArtifacts

    class LazyNlpArtifacts(NlpArtifacts):
        def __init__(self, engine, text: str, language: str) -> None:  # noqa: D107 (the fields come on first read)
            self._source = (engine, text, language)

        def __getattr__(self, name: str):  # called only for an attribute not set yet
            # copy's and pickle's probes compute nothing, nor does a name NlpArtifacts does not have
            if name.startswith("_") or "tokens" in self.__dict__:
                raise AttributeError(name)
            engine, text, language = self._source
            self.__dict__.update(vars(engine.process_text(text, language)))
            return object.__getattribute__(self, name)

    return LazyNlpArtifacts


def _without_blank_ends(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _extra_presidio_recognizers(names: list[str], language: str) -> list:
    from presidio_analyzer import predefined_recognizers

    unknown = [name for name in names if not hasattr(predefined_recognizers, name)]
    if unknown:
        raise ValueError(f"data_prep.pii.extra_recognizers: Presidio has no recognizer {unknown}")
    return [getattr(predefined_recognizers, name)(supported_language=language) for name in names]


def _phone_recognizer(regions: list[str], stretches_kept: int, language: str):
    import phonenumbers

    from fineflow.privacy.recognizers import GatedPhoneRecognizer

    unknown = sorted(set(regions) - phonenumbers.SUPPORTED_REGIONS)
    if unknown:
        raise ValueError(f"data_prep.pii.phone_regions: phonenumbers knows no region {unknown} (GB, not UK)")
    return GatedPhoneRecognizer(regions, stretches_kept, language)


def _blank_spacy_engine(spacy_engine_class, language: str):
    """A tokenizer-only spaCy pipeline with lower-cased words as lemmas: enough for the pattern, checksum
    and context recognizers, nothing to download."""

    class BlankSpacyEngine(spacy_engine_class):
        def load(self) -> None:
            import spacy
            from spacy.language import Language

            if not Language.has_factory(LOWER_LEMMA_PIPE):
                Language.component(LOWER_LEMMA_PIPE, func=_lower_lemmas)
            nlp = spacy.blank(language)
            nlp.add_pipe(LOWER_LEMMA_PIPE)
            self.nlp = {language: nlp}

    return BlankSpacyEngine(models=[{"lang_code": language, "model_name": f"blank:{language}"}])


# A long chunk's pieces: a run of word characters, or a run of one other character.
_CHUNK_PIECE = re.compile(r"\w+|(\W)\1*")


@cache
def _long_chunk_tokenizer_class() -> type:
    from spacy.tokens import Doc

    class LongChunkTokenizer:
        """spaCy's tokenizer, except for a chunk (between whitespace) of more than `longest` characters,
        cut into runs of word characters and runs of one other character.

        spaCy strips a chunk's leading and trailing punctuation one piece at a time, copying the rest of
        the chunk each time: quadratic in a run of it ("a@b.co " and 20,000 underscores took 44 s to
        mask; spaCy alone took 10.9 s on "US$" repeated over 8,100 characters, 16.8 s on a word and
        8,000 quotes). Keeping such a chunk as one token would lose the context words inside it
        ("id=1;passport:AB1234567;..." in a key-value dump), so its words stay tokens of their own. A text
        without a long chunk is tokenized by spaCy alone (data_prep.pii.longest_split_chunk)."""

        def __init__(self, tokenizer, longest: int) -> None:
            self.tokenizer = tokenizer
            self.long_chunk = re.compile(rf"(?<!\S)\S{{{longest + 1},}}")

        def __call__(self, text: str):
            if not self.long_chunk.search(text):
                return self.tokenizer(text)
            docs, position = [], 0
            for chunk in self.long_chunk.finditer(text):
                if chunk.start() > position:
                    docs.append(self.tokenizer(text[position : chunk.start()]))
                pieces = [piece.group() for piece in _CHUNK_PIECE.finditer(chunk.group())]
                docs.append(Doc(self.tokenizer.vocab, words=pieces, spaces=[False] * len(pieces)))
                position = chunk.end()
            if position < len(text):
                docs.append(self.tokenizer(text[position:]))
            return Doc.from_docs(docs, ensure_whitespace=False)

    return LongChunkTokenizer


def _lower_lemmas(doc):
    for token in doc:
        token.lemma_ = token.lower_
    return doc
