"""The masker beyond Presidio's defaults: names without an NER model, secrets (detect-secrets), addresses,
dates of birth, prose passwords, context words on a blank pipeline, compressed IPv6, evasions by
full-width or invisible characters; then a hostile set through data prep and traffic capture with no
survivor anywhere, raw rows never persisted by Prefect, and private state files."""

from __future__ import annotations

import json
import os
import random
import stat
import time
from collections import Counter
from pathlib import Path

import pytest

import fineflow.privacy.masker as masker_module
from fineflow.config import DATA_DIR_ENV, load_config
from fineflow.privacy.masker import get_masker, scan_for_pii
from fineflow.store import open_store
from tasks.data.parse import parse_and_validate
from tasks.data.pii import mask_pii

REPO_ROOT = Path(__file__).resolve().parent.parent
PII = load_config(REPO_ROOT / "configs/default.yaml").data_prep.pii

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5"
    "MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM_BODY = "MIIEpAIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0"
PEM = f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\nMIIEpAIBAAKCAQEAx9Qz+/w==\n-----END RSA PRIVATE KEY-----"
ANTHROPIC_KEY = "sk-ant-api03-R2D2C3P0BEEP_BOOP_BUZZ_WHIRR_CLICK_SPIN_TURN_JUMP_SKIP_HOP_DANCE-xYzAA"
GITHUB_PAT = "github_pat_11ABCDEFG0abcdefghijkl_mnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

# (text, the values that must not survive, the placeholder that must appear)
CASES = [
    ("Hi, this is Sarah Thompson from Brightline Dental.", ["Sarah", "Thompson"], "<PERSON>"),
    ("Thanks for your patience, Maria.", ["Maria"], "<PERSON>"),
    ("Can you help?\n\nBest regards,\nPeter Novak", ["Peter", "Novak"], "<PERSON>"),
    ("My name is Kenji Watanabe.", ["Kenji", "Watanabe"], "<PERSON>"),
    ("It still shows E3. Regards, Mary-Jane Watson", ["Mary-Jane", "Watson"], "<PERSON>"),
    ("We bought it from Ana de la Cruz downtown.", ["Ana", "Cruz"], "<PERSON>"),
    ("key AKIAIOSFODNN7EXAMPLE leaked", ["AKIAIOSFODNN7EXAMPLE"], "<AWS_KEY>"),
    (
        "token ghp_aBcdEfGhIjKlMnOpQrStUvWxYz0123456789 in CI",
        ["ghp_aBcdEfGhIjKlMnOpQrStUvWxYz0123456789"],
        "<GITHUB_TOKEN>",
    ),
    (
        "use sk-proj-abcdefghijklmnopqrstT3BlbkFJabcdefghijklmnopqrst",
        ["T3BlbkFJabcdefghijklmnopqrst"],
        "<OPENAI_KEY>",
    ),
    (
        "slack xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx ok",
        ["xoxb-123456789012"],
        "<SLACK_TOKEN>",
    ),
    (f"Authorization: Bearer {JWT}", [JWT.split(".")[0], JWT.split(".")[2]], "<JWT>"),
    # formats detect-secrets' own plugins miss (fineflow/privacy/secret_plugins.py)
    ("my key is sk-proj-4fJ9kQ2mZx7LpW3nR8tY1vB6cH0dS5aE2gK9uI4oP7lM3qN", ["4fJ9kQ2mZx7L"], "<OPENAI_KEY>"),
    (f"OPENAI_API_KEY=sk-{'Zq7' * 16}", ["Zq7Zq7"], "<OPENAI_KEY>"),
    (f"use {ANTHROPIC_KEY} for the judge", [ANTHROPIC_KEY[7:]], "<SECRET>"),
    ("maps key AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", ["AIzaSyD", "MnMX-a7eZSW0"], "<SECRET>"),
    ("hf_xYzAbCdEfGhIjKlMnOpQrStUvWxYzAbCd is my hugging face token", ["xYzAbCdEfGh"], "<SECRET>"),
    (f"pat {GITHUB_PAT} expires soon", [GITHUB_PAT[11:]], "<GITHUB_TOKEN>"),
    (f"id AKIAIOSFODNN7EXAMPLE secret {AWS_SECRET}", ["AKIAIOSFODNN7EXAMPLE", AWS_SECRET[:12]], "<AWS_KEY>"),
    (f"my aws secret access key is {AWS_SECRET}.", [AWS_SECRET[12:]], "<AWS_KEY>"),
    ("cache at redis://:s3cr3tPw@cache:6379/0", ["s3cr3tPw"], "<SECRET>"),
    ("DATABASE_URL=postgres://app:Tr0ub@dor99@db.internal/prod", ["Tr0ub", "dor99"], "<SECRET>"),
    (f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}", [AWS_SECRET[:12]], "<AWS_KEY>"),
    ('DATABASE_URL="postgresql://app:x9Kq!2&z@db/prod"', ["x9Kq!2&z", "x9Kq"], "<SECRET>"),
    # BasicAuthDetector's own match: masking it never converged (its pattern took the placeholder again)
    ("db at postgres://admin:S3cretPassw0rd@db.internal:5432/prod", ["S3cretPassw0rd"], "<SECRET>"),
    (f"my key:\n{PEM}\nthanks", [PEM_BODY, "x9Qz+/w=="], "<PRIVATE_KEY>"),
    ("password: hunter2", ["hunter2"], "<PASSWORD>"),
    ("my password is Tr0ub4dor&3.", ["Tr0ub4dor"], "<PASSWORD>"),
    ("password: <PASSWORD>hunter2", ["hunter2"], "<PASSWORD>"),  # a placeholder does not shield a value
    ("wifi password: correct horse battery staple", ["correct", "horse", "battery", "staple"], "<PASSWORD>"),
    ("The wifi passphrase is Purple Monkey Dishwasher 42", ["Purple", "Monkey", "Dishwasher"], "<PASSWORD>"),
    ("user: bob pass: hunter2", ["hunter2"], "<PASSWORD>"),
    ("pw=hunter2", ["hunter2"], "<PASSWORD>"),
    ("hi my name is maria garcia and the E3 is back", ["maria", "garcia"], "<PERSON>"),
    ("My name is Priya sharma.", ["Priya", "sharma"], "<PERSON>"),
    ("Ship to 42 Elm Street, Springfield, IL 62704 please", ["42 Elm Street", "62704"], "<ADDRESS>"),
    ("my address is 77 Oak Lane", ["77 Oak Lane"], "<ADDRESS>"),
    ("I was born on 1985-03-07.", ["1985-03-07"], "<DATE_OF_BIRTH>"),
    ("DOB: March 7, 1985", ["March 7, 1985"], "<DATE_OF_BIRTH>"),
    ("my ssn is 536228741", ["536228741"], "<US_SSN>"),
    ("router at 2001:db8::1 now", ["2001:db8::1", "db8"], "<IP_ADDRESS>"),
    ("link-local fe80::1ff:fe23:4567:890a", ["fe80", "890a"], "<IP_ADDRESS>"),
    ("loopback ::1 only", ["::1"], "<IP_ADDRESS>"),
    ("mail ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ", ["ｊｏｈｎ", "ｅｘａｍｐｌｅ"], "<EMAIL>"),
    ("mail jo\u200bhn.sm\u2060ith@exa\ufeffmple.com", ["jo\u200bhn", "mple.com"], "<EMAIL>"),
    ("email me: john dot smith at gmail dot com", ["john", "smith", "gmail"], "<EMAIL>"),
    ("reach me at jsmith(at)example(dot)org please", ["jsmith", "example"], "<EMAIL>"),
    ("john.smith [at] gmail.com", ["john.smith", "gmail"], "<EMAIL>"),
    ("call 212\u200b555\u00ad0187 now", ["555"], "<PHONE>"),
    # national formats of GB and FR: Presidio's default regions name them UK and FE, unknown to phonenumbers
    ("call me on 020 7946 0958 please", ["7946"], "<PHONE>"),
    ("appelez le 01 42 68 53 00 svp", ["42 68"], "<PHONE>"),
    # UK national IDs, passports, postcodes: Presidio's recognizers (data_prep.pii.extra_recognizers)
    ("national insurance: AB123456D", ["AB123456D"], "<UK_NINO>"),
    ("passport: AB1234567", ["AB1234567"], "<PASSPORT>"),
    ("My postcode is SW1A 1AA.", ["SW1A 1AA"], "<POSTCODE>"),
    # bank details beside their words
    ("Account no. 31926819, sort code 40-47-84", ["31926819", "40-47-84"], "<BANK_ACCOUNT>"),
    ("acct # 4412 8891 2231", ["4412", "2231"], "<BANK_ACCOUNT>"),
    ("routing number 021000021", ["021000021"], "<BANK_ACCOUNT>"),
]


@pytest.fixture(scope="module")
def masker():
    return get_masker(PII)


@pytest.mark.parametrize(("text", "values", "placeholder"), CASES, ids=[c[2] + c[0][:20] for c in CASES])
def test_each_kind_is_masked_with_its_placeholder(masker, text, values, placeholder):
    masked, counts = masker.mask(text)
    assert placeholder in masked, masked
    assert [value for value in values if value in masked] == [], masked


def test_a_placeholder_is_never_a_finding(masker):
    """Masked text holds placeholders where patterns accept any token (a URL's password, a quoted value):
    each placeholder there is left as it is, counted nowhere, so masking converges."""
    templates = ["postgres://admin:{}@db:5432/prod", 'api_key = "{}"', "redis://:{}@cache", "password: {}"]
    for placeholder in sorted(set(PII.placeholders.values())):
        for template in templates:
            text = template.format(placeholder)
            assert masker.mask(text) == (text, Counter()), text


def test_equal_scores_on_one_span_are_decided_by_the_configured_order(masker):
    """Presidio keeps the last of two equal findings on one span, and the order of its results can differ
    between processes (an SSN-shaped ITIN gave <US_SSN> in one and <US_ITIN> in another): the configured
    order of entities decides."""
    from presidio_analyzer import RecognizerResult

    ssn, nino = RecognizerResult("US_SSN", 13, 24, 0.5), RecognizerResult("UK_NINO", 13, 24, 0.5)
    higher = RecognizerResult("UK_NINO", 13, 24, 0.6)
    for given in ([ssn, nino], [nino, ssn]):
        assert [result.entity_type for result in masker._one_per_span(given)] == ["US_SSN"]
    assert masker._one_per_span([ssn, higher]) == [higher]


def test_an_unknown_extra_recognizer_is_named(masker):
    from fineflow.privacy.masker import _extra_presidio_recognizers

    with pytest.raises(ValueError, match="no recognizer.*UkNinRecognizer"):
        _extra_presidio_recognizers(["UkNinoRecognizer", "UkNinRecognizer"], "en")


def test_blanks_at_a_findings_ends_are_kept(masker):
    # Presidio's UK_NINO pattern takes the blank before the number
    assert masker.mask("NI number AB123456D, thanks")[0] == "NI number <UK_NINO>, thanks"


def test_the_nlp_pipeline_runs_only_for_a_text_whose_findings_read_it(masker, monkeypatch):
    """find() gives Presidio NLP artifacts computed when first read (context words, an NER pipeline's
    entities): a text with no candidate finding runs no spaCy pipeline, and every text's findings are
    the ones the artifacts computed first give."""
    engine = masker.analyzer.nlp_engine
    runs = []
    process_text = engine.process_text
    monkeypatch.setattr(
        engine, "process_text", lambda text, language: runs.append(text) or process_text(text, language)
    )
    texts = [text for text, _, _ in CASES] + ["Thanks, that fixed it. The thermostat shows E8 again."]
    lazily = [_spans(masker.find(text)) for text in texts]
    assert lazily[-1] == [] and texts[-1] not in runs
    assert "passport: AB1234567" in runs  # its pattern scores under the threshold without its context word
    monkeypatch.setattr(
        masker_module,
        "_lazy_nlp_artifacts",
        lambda engine, text, language: engine.process_text(text, language),
    )
    assert [_spans(masker.find(text)) for text in texts] == lazily


def test_an_installed_ner_pipeline_adds_its_person_findings(tmp_path):
    """A spaCy pipeline as `ner_model` (here a blank one with an entity ruler, saved to a path: nothing
    to download) reports its PERSON entities through Presidio's SpacyRecognizer, which the blank default
    leaves out."""
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns([{"label": "PERSON", "pattern": "Zorblax Quux"}])
    nlp.to_disk(tmp_path / "ruler")
    config = load_config(
        REPO_ROOT / "configs/default.yaml", overrides={"data_prep.pii.ner_model": str(tmp_path / "ruler")}
    ).data_prep.pii
    text = "Please ask Zorblax Quux about the thermostat."
    assert get_masker(config).mask(text) == ("Please ask <PERSON> about the thermostat.", Counter(PERSON=1))
    assert get_masker(PII).mask(text) == (text, Counter())  # neither word is on the name lists


def test_a_long_chunk_is_cut_into_runs_and_its_words_still_give_context(masker):
    """spaCy's tokenizer strips a chunk's punctuation one piece at a time, copying the rest each time:
    "a@b.co " then 20,000 underscores (625 prompt tokens) took 44 s to mask. A chunk longer than
    data_prep.pii.longest_split_chunk is cut into runs of word characters and runs of one other character;
    a text without one is tokenized by spaCy alone."""
    import spacy

    nlp, spacy_alone = masker.analyzer.nlp_engine.nlp[PII.language], spacy.blank(PII.language).tokenizer
    longest = PII.longest_split_chunk
    for text in [
        "(" + "a" * (longest - 2) + ") ok",
        "Hi, I'm Ann (ann@x.io)!\n\nRef: A-12/b.",
        "$" * longest,
    ]:
        assert [t.text for t in nlp(text)] == [t.text for t in spacy_alone(text)]
    assert [t.text for t in nlp("(" + "a" * (longest - 1) + ")")] == ["(", "a" * (longest - 1), ")"]
    hostile = ["_" * 20_000, "US$" * 6_000, "x" + '"' * 19_000, "$(" * 9_000, ("$" * 3000 + "\n") * 6]
    assert [len(nlp(text)) for text in hostile] == [1, 12_000, 2, 18_000, 12]  # linear in the text
    assert all(nlp(text).text == text for text in hostile)
    assert masker.mask("write to a@b.co " + "_" * 20_000) == (
        "write to <EMAIL> " + "_" * 20_000,
        Counter(EMAIL_ADDRESS=1),
    )
    # A key-value dump: "passport" inside the chunk is a context word still (the number scores under
    # the threshold without one).
    dump = "record id=123;passport:AB1234567;name=Jo;" + "k=v;" * 60
    assert len(dump) > longest
    assert masker.mask(dump)[0].startswith("record id=123;passport:<PASSPORT>;name=<PERSON>;k=v;")


def _spans(findings: list) -> list[tuple]:
    return [(f.entity_type, f.start, f.end, f.score) for f in findings]


def test_a_git_commit_beside_aws_is_not_taken_for_a_secret_key(masker):
    """An AWS secret access key has both letter cases; a 40-digit lower-case hex commit does not."""
    text = "see commit 3f786850e387550fdab836ed7e6dc881de23001b on the aws branch"
    assert masker.mask(text) == (text, Counter())


def test_a_repeated_value_is_one_finding_not_one_per_pair_of_places():
    """A recognizer's overlapping spans of one entity are joined: pyap's street, found again at every
    place it repeats, gave 41,600 overlapping spans for 200 repeats (665,600 for 800: 26 s of Presidio
    comparing them pairwise); now disjoint spans, no more than the repeats, covering every one of them."""
    from fineflow.privacy.recognizers import StreetAddressRecognizer

    text = "1 Main St " * 200
    recognizer = StreetAddressRecognizer(PII.address_countries, PII.language)
    spans = sorted((r.start, r.end) for r in recognizer.analyze(text, ["STREET_ADDRESS"]))
    assert 0 < len(spans) <= 200
    assert all(end < next_start for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False))
    covered = {i for start, end in spans for i in range(start, end)}
    assert all(i in covered for i, char in enumerate(text) if not char.isspace())


def test_an_unknown_phone_region_is_refused_by_name():
    from fineflow.privacy.masker import PIIMasker

    with pytest.raises(ValueError, match=r"phone_regions: phonenumbers knows no region \['UK'\]"):
        PIIMasker(PII.model_copy(update={"phone_regions": ["US", "UK"]}))


def _regex_nodes(items):
    """Every node of a parse tree from Python's own regex parser (re._parser), as (op, argument), the
    nodes inside character sets, alternatives, repeats and groups included."""
    import re._constants as sre

    for op, argument in items:
        yield op, argument
        if op is sre.IN:
            yield from _regex_nodes(argument)
        elif op is sre.BRANCH:
            for branch in argument[1]:
                yield from _regex_nodes(branch)
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
            yield from _regex_nodes(argument[2])
        elif op is sre.SUBPATTERN:
            yield from _regex_nodes(argument[3])


def test_international_prefixes_match_the_same_wherever_the_search_starts():
    """The phone recognizer tries each region's international prefix at every digit of a stretch
    (`pattern.match(digits, position)`): right only for patterns without anchors or lookarounds, which
    read the text before the position. Every region phonenumbers knows, so any configured one holds."""
    import re._constants as sre
    import re._parser as parser

    import phonenumbers
    from phonenumbers.phonemetadata import PhoneMetadata

    allowed = {sre.LITERAL, sre.IN, sre.RANGE, sre.BRANCH, sre.MAX_REPEAT, sre.MIN_REPEAT, sre.SUBPATTERN}
    allowed |= {sre.CATEGORY, sre.NEGATE}
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        prefix = PhoneMetadata.metadata_for_region(region).international_prefix
        if prefix is not None:
            found = {op for op, _ in _regex_nodes(parser.parse(prefix))}
            assert found <= allowed, (region, prefix, found - allowed)


def test_phone_candidate_characters_hold_every_character_phonenumbers_can_match():
    """The phone recognizer runs phonenumbers' matcher on stretches of these characters: if the matcher's
    candidate pattern could match a character outside them, a candidate could span two stretches and be
    missed. An anchor or a lookaround in it would read the text around the stretch. Walk the pattern's
    parse tree (Python's own regex parser) for every character it names and every kind of node."""
    import re
    import re._constants as sre
    import re._parser as parser

    from phonenumbers.phonenumbermatcher import _PATTERN

    from fineflow.privacy.recognizers import _PHONE_CANDIDATE_CHARS

    named, categories = set(), set()
    containers = {sre.IN, sre.BRANCH, sre.MAX_REPEAT, sre.MIN_REPEAT, sre.SUBPATTERN}
    for op, argument in _regex_nodes(parser.parse(_PATTERN.pattern, _PATTERN.flags)):
        if op is sre.LITERAL:
            named.add(chr(argument))
        elif op is sre.RANGE:
            named.update(map(chr, range(argument[0], argument[1] + 1)))
        elif op is sre.CATEGORY:
            categories.add(argument)
        elif op not in containers:  # ANY, NOT_LITERAL, NEGATE, AT (an anchor), ASSERT (a lookaround), ...
            raise AssertionError(f"phonenumbers' pattern has {op}: the stretches could miss a number")
    assert categories == {sre.CATEGORY_DIGIT}
    candidate_char = re.compile(f"[{_PHONE_CANDIDATE_CHARS}]", re.IGNORECASE)
    assert set("+(x-#;=e") <= named  # the walk reached the lead, the punctuation and the extension labels
    assert sorted(char for char in named if not candidate_char.fullmatch(char)) == []


def test_keyword_detector_is_skipped_only_on_lines_without_a_denylisted_word(masker):
    """The secrets recognizer skips KeywordDetector on a line without one of its denylisted words: sound
    only while every pattern it tries starts from one."""
    from detect_secrets.plugins import keyword

    denylist = "|".join(keyword.DENYLIST)
    tables = [table for name, table in vars(keyword).items() if name.endswith("_REGEX_TO_GROUP")]
    tried = {pattern for table in tables for pattern in table}
    assert keyword.QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP in tables  # what it tries on a .txt line
    assert len(tried) > 5 and all(denylist in pattern.pattern for pattern in tried)
    masked, counts = masker.mask('config: api_key = "f8Kq2LmN9pXz4RtY"')
    assert "f8Kq2LmN9pXz4RtY" not in masked and counts == {"SECRET": 1}, masked


def test_openai_detector_is_skipped_only_on_lines_without_its_literal(masker):
    """Sound only while each of OpenAIDetector's patterns holds the literal the gate looks for."""
    from detect_secrets.plugins.openai import OpenAIDetector

    from fineflow.privacy.recognizers import OPENAI_KEY_LITERAL

    assert OpenAIDetector.denylist and all(OPENAI_KEY_LITERAL in p.pattern for p in OpenAIDetector.denylist)
    masked, counts = masker.mask(f"old key sk-{'a' * 20}{OPENAI_KEY_LITERAL}{'b' * 20} here")
    assert OPENAI_KEY_LITERAL not in masked and counts == {"OPENAI_KEY": 1}, masked


def test_npm_detector_is_skipped_only_on_lines_without_its_literal(masker):
    """Sound only while NpmDetector's pattern holds the literal the gate looks for (escaped in it)."""
    from detect_secrets.plugins.npm import NpmDetector

    from fineflow.privacy.recognizers import NPM_TOKEN_LITERAL

    assert NpmDetector.denylist and all(r"\/:_authToken=" in p.pattern for p in NpmDetector.denylist)
    assert NPM_TOKEN_LITERAL == "/:_authToken="
    line = f"//registry.npmjs.org{NPM_TOKEN_LITERAL}npm_{'Ab1' * 12}"
    masked, counts = masker.mask(f"my .npmrc has {line} in it")
    assert "Ab1Ab1" not in masked and counts == {"SECRET": 1}, masked


def _short_example_numbers(most_digits: int) -> list:
    """phonenumbers' example numbers, of every region and type, of at most `most_digits` digits counting
    the country code."""
    import phonenumbers

    examples = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in sorted(vars(phonenumbers.PhoneNumberType).values(), key=str):
            if not isinstance(kind, int):
                continue
            number = phonenumbers.example_number_for_type(region, kind)
            if number is None:
                continue
            digits = len(str(number.country_code)) + len(phonenumbers.national_significant_number(number))
            if digits <= most_digits:
                examples.append(number)
    return examples


def _phone_texts() -> list[str]:
    """Texts for comparing the gated phone recognizer with Presidio's: every region's example numbers in
    national and international form, short national numbers, and random strings of digits, separators,
    letters ("1-800-FLOWERS"), extensions and plus signs around and inside numbers."""
    import phonenumbers

    texts = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE):
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                for form in (
                    phonenumbers.PhoneNumberFormat.NATIONAL,
                    phonenumbers.PhoneNumberFormat.INTERNATIONAL,
                ):
                    texts.append(f"call {phonenumbers.format_number(number, form)} ext. 12 today")
    pieces = [
        "0",
        "1",
        "2",
        "3",
        "5",
        "7",
        "9",
        "12",
        "030",
        "4567",
        "(",
        ")",
        "+",
        "-",
        " ",
        " ",
        ".",
        "/",
        "x",
        "ext",
        "ext. ",
        " anexo ",
        ";ext=",
        "#",
        "FLOWERS",
        "CALL",
        "abc",
        "Ticket ",
        "E8",
        ":",
        ",",
        "\u0663",
    ]
    rng = random.Random(13)
    for _ in range(1500):
        texts.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 14))))
    for length in range(3, 12):
        for _ in range(40):
            texts.append("ruf 0" + "".join(rng.choice("0123456789") for _ in range(length)) + " an")
    # Several numbers among words, at the start and the end of the text, with letters, currency signs,
    # percent signs and timestamps right next to them: what the matcher reads around a candidate.
    words = [
        "call",
        "me",
        "on",
        "My",
        "mobile:",
        "or",
        "b",
        "Q",
        "$",
        "%",
        "\n",
        "at 10",
        ":30",
        "\u00e9",
        "phone",
    ]
    numbers = [*pieces, "+44 20 7946 0958", "020 7946 0958", "(415) 555-0100", "030 1234567", "2024-05-01 10"]
    for _ in range(800):
        texts.append("".join(rng.choice([*words, *numbers, " "]) for _ in range(rng.randint(2, 16))))
    # The shortest numbers of any country (of 6 to 9 digits with the country code, shorter than some
    # configured region's own), after a plus sign and after each configured region's international prefix.
    for example in _short_example_numbers(9):
        code, national = example.country_code, phonenumbers.national_significant_number(example)
        for form in ("+{} {}", "00{}{}", "011 {} {}", "012{}{}", "0015{}{}", "{}{}", "\uff0b{}{}"):
            texts.append("Ticket " + form.format(code, national) + " done")
    # Other countries' numbers after each configured region's international prefix, or its look-alikes,
    # and numbers of 4 to 9 digits with none: which country code the parser reads decides the bound.
    prefixes = ["00", "011", "012", "0015", "0", "+", "\uff0b", "0 0", "(00)", "x"]
    for _ in range(1200):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 11)))
        prefix = rng.choice([*prefixes, "", "", "Ticket "])
        texts.append(
            f"{rng.choice(['call ', 'Ticket ', ''])}{prefix}{rng.choice(['43', '49', '1', '44', ''])}{digits}"
        )
    return texts


def _findings(recognizer, text: str) -> list[tuple]:
    """Where and how sure. Not the explanation's region: after a number it can parse, Presidio's loop
    names that number's region for the next number of the same pass that it cannot parse (it reassigns
    its loop variable); ours names the pass's region. Masking reads neither."""
    return [(r.start, r.end, r.score) for r in recognizer.analyze(text, ["PHONE_NUMBER"])]


def test_phone_stretches_are_the_single_patterns_matches_found_in_linear_time():
    """The stretches come from runs of candidate characters that hold a digit: the same spans as the single
    pattern they replace (`[...]*\\d[...]*`, whose search from every character of a digit-free run was
    quadratic), on random texts of candidate characters, digits, letters and other characters."""
    import re

    from fineflow.privacy.recognizers import _PHONE_CANDIDATE_CHARS, _phone_stretches

    single = re.compile(rf"[{_PHONE_CANDIDATE_CHARS}]*\d[{_PHONE_CANDIDATE_CHARS}]*", re.IGNORECASE)
    rng = random.Random(7)
    alphabet = "0123456789+-() .x/extEXTabc,:;#\u00a0\u2013\uff10\uff0bQ!?\n"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 80))) for _ in range(3000)]
    for text in [*texts, "x" * 500, "x" * 500 + "1", "- " * 300 + "555 0199"]:
        expected = [(m.start(), m.end()) for m in single.finditer(text)]
        assert [(m.start(), m.end()) for m in _phone_stretches(text)] == expected, text


def test_phone_recognizer_finds_what_presidios_finds_in_each_region():
    """The recognizer runs the matcher only on the stretches that can hold a number, for the regions whose
    shortest valid number fits in them. Region by region (with all regions, one region's pass would hide
    another's misses) and with all of them: the findings must be Presidio's own, in the same order, also
    when they come from the kept stretches, and on these texts passes must have been skipped."""
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer as PresidioPhoneRecognizer

    from fineflow.privacy.recognizers import GatedPhoneRecognizer, phone_stretches

    texts, skipped, found = _phone_texts(), Counter(), Counter()
    for regions in [[region] for region in PII.phone_regions] + [PII.phone_regions]:
        gated = GatedPhoneRecognizer(regions, PII.phone_stretches_kept, "en")
        presidio = PresidioPhoneRecognizer(supported_regions=tuple(regions))
        for text in texts:
            ours = _findings(gated, text)
            assert ours == _findings(presidio, text), (regions, text)
            assert _findings(gated, text) == ours  # again, from the kept stretches
            found[tuple(regions)] += bool(ours)
            skipped[tuple(regions)] += sum(
                not any(gated.runs_on(stretch, region) for stretch in phone_stretches(text))
                for region in regions
            )
    assert all(found[(region,)] > 300 and skipped[(region,)] > 200 for region in PII.phone_regions), (
        found,
        skipped,
    )
    assert gated.fewest_digits["DE"] == 4 and gated.fewest_digits["US"] == 6  # +43 and four digits (Austria)
    assert gated.own_digits["FR"] == 9 and gated.own_digits["US"] == 7


def test_masked_text_is_scanned_again_until_a_scan_finds_nothing():
    from presidio_analyzer import Pattern, PatternRecognizer

    from fineflow.privacy.masker import PIIMasker, PIIMaskingError

    masker = PIIMasker(PII)  # its own analyzer: the recognizers added here must not reach other tests
    # A value that exists only once the email inside it is masked, as a join around a placeholder could
    # form one: the first pass masks the email, the second the value it made.
    joined = Pattern("joined-by-masking", r"<EMAIL>, 7", 0.9)
    masker.analyzer.registry.add_recognizer(PatternRecognizer(supported_entity="US_SSN", patterns=[joined]))
    text, counts = masker.mask("write to ann@example.com, 7 days a week")
    assert text == "write to <US_SSN> days a week"
    assert counts == {"EMAIL_ADDRESS": 1, "US_SSN": 1}

    # A recognizer that matches its own placeholder alone finds nothing there: a placeholder is never a
    # finding. One whose matches keep forming around its placeholder never converges: an error, not text
    # to write.
    own = Pattern("own-placeholder", r"<US_SSN>", 0.9)
    masker.analyzer.registry.add_recognizer(PatternRecognizer(supported_entity="US_SSN", patterns=[own]))
    assert masker.mask("it reads <US_SSN> here") == ("it reads <US_SSN> here", {})
    around = Pattern("around-own-placeholder", r"\w+ <US_SSN>", 0.9)
    masker.analyzer.registry.add_recognizer(PatternRecognizer(supported_entity="US_SSN", patterns=[around]))
    with pytest.raises(PIIMaskingError, match="US_SSN"):
        masker.mask("one two three four <US_SSN> five")


def test_what_must_survive(masker):
    kept = [
        "Does Away Assist need Nimbus Plus, and when does Auto-Schedule start learning?",
        "Amazon Alexa, Google Home and Apple Home (via Matter) work with the Acme Nimbus.",
        "My renewal on 2024-05-01 charged $49.",  # a date, but not a date of birth
        "My password is wrong and the E3 error is back.",  # no password value in it
        # prose after "is" whose words are letters only, up to a stop word: no password in it
        "My password is not working since 3pm, and the PIN is forgotten too.",
        "A weak password is a common cause, so change it.",
        # after "my name is", a lower-case word is a name only when it is a listed given name
        "my name is spelled wrong on the invoice and my name is on the account",
        # ordinary support text after a password word or "name:" (a review found these masked)
        "The PIN is valid 24 hours. Your password was changed 2 days ago.",
        "Your PIN is locked 15 minutes after 5 wrong tries.",
        "Your Wi-Fi password is stored encrypted (AES-256) on the Nimbus.",
        "My password is correct (I typed it twice).",
        "First pass: remove the faceplate. Test pass: all sensors responding. Self-test: pass=12 fail=0.",
        "PW: 1500 watts. Day pass: $10 for the install.",
        "Set Schedule name: summer and Mode: heat. Give the schedule a name: summer, winter or holiday.",
        "Zone name: sandy beach house",
        "my name is ok but the email is wrong, my name is long so it gets cut off",
        # the second review's
        "The Wi-Fi password is case-sensitive. The PIN is 4 digits long; the passcode is 6-digit.",
        "The password is 8-64 characters. Check the router password: it is on a sticker.",
        "Zone name: Upstairs. Device name: Hallway Thermostat. Wi-Fi name: HomeNet.",
        "My A/C no. 20231104 stopped cooling. The A/C # 240000 BTU unit. HVAC routing 100200300.",
        "Hold the dial 10 seconds; 5-10 business days; up to 2 heat + 2 cool stages.",
        "Thanks! Let me know if the C-wire adapter helps.",
        # model answers evaluation once counted as leaked names: rare given names that are ordinary words
        "I'm sorry for your loss, but as a German AI, I'm unable to access your current account.",
        "The app is available on both Windows and Mac.",
        "It is the best Thermostat.",  # a closing word without its comma is no signature
        "I ordered at acme.com yesterday.",  # a bare " at " needs a spelled-out dot to be an address
        "Look at the dot on the screen; meet at 5 dot 30.",
        "Write to support at acme dot nimbus.",  # no public suffix
        # a bare " at " with an ending that is also an English word ("in", "is", "to")
        "Press and hold at the dot in the center for five seconds.",
        "The light at the dot is red now.",
        "How do I make the thermostat talk to Google Home?",
        "Thanks, that worked. Cheers, Mate",  # a closing before one capitalised word that is no given name
        "Best, Regards",
        "Set it to Away de Luxe mode.",  # a particle joins capitalised words only inside a found name
        # a template's tag, not one of the masker's placeholders (those are tested above), is no password
        "Log in with password: <YOUR_PASSWORD>, then my password is <NEW_PASSWORD>.",
        # numbers and codes without their context words: no passport, account or driving licence
        "Ticket 500057 is about order 123456789.",
        "Can you explain error code E1? The C7 light and firmware v2 are on model T-1000.",
        "Send it to M1 1AE please.",  # a postcode alone is masked only beside the word
        # numbers beside the context words of Presidio's US recognizers, which are not used
        "Your customer id is 482913756; check build 20231104 and order 987654321 in your account.",
        # a bare "account" before a number, a sort code's shape in a longer number: no bank detail
        "Your account 2 has 3 devices; the account number is on the invoice; sort code 12-34-56-78 is none.",
    ]
    for text in kept:
        assert masker.mask(text) == (text, {}), text


def test_a_passphrase_runs_to_where_the_prose_resumes(masker):
    """A password of letters runs over the next words of its line made of letters or digits until a stop
    word or any other word, and at most data_prep.pii.passphrase_max_words words; a password holding a
    digit or a symbol is one word."""
    expected = {
        "password: correct horse battery staple.": "password: <PASSWORD>.",
        "password: sunshine and it fails": "password: <PASSWORD> and it fails",
        "password: sunshine doesn't work": "password: <PASSWORD> doesn't work",
        "password: blue sky - thanks": "password: <PASSWORD> - thanks",
        "pwd=hunter2 user=bob": "pwd=<PASSWORD> user=bob",
        "pwd: blue sky <EMAIL> wrote": "pwd: <PASSWORD> <EMAIL> wrote",
        "password: blue sky, then reboot": "password: <PASSWORD>, then reboot",
        "password: blue sky\nthen it asks again": "password: <PASSWORD>\nthen it asks again",
        "password: hunter2 exactly as written": "password: <PASSWORD> exactly as written",
        "my wifi password is blue elephant 42, ok?": "my wifi password is <PASSWORD>, ok?",
        "user: bob pass: hunter2 thanks": "user: bob pass: <PASSWORD> thanks",
        "wifi password: blue sky2": "wifi password: <PASSWORD>",  # a word with a digit ends it
        "my wifi password is blue sky2 and it fails": "my wifi password is <PASSWORD> and it fails",
        "my date of birth is: 03/07/1985": "my date of birth is: <DATE_OF_BIRTH>",
        "My account number is: 31926819, 2 units": "My account number is: <BANK_ACCOUNT>, 2 units",
    }
    assert {text: masker.mask(text)[0] for text in expected} == expected
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    masked, counts = masker.mask("password: " + " ".join(words))
    assert masked == "password: <PASSWORD> " + " ".join(words[PII.passphrase_max_words :]), masked
    assert counts == {"PASSWORD": 1}


def test_an_answer_echoing_the_prompts_password_is_no_leak():
    """Evaluation's leak check takes a finding the prompt holds for an echo: an answer repeating the
    user's password before more words must find the same value."""
    from tasks.evaluation.classic_metrics import pii_in_answers

    prompts = ["my wifi password: hunter2 and it still fails", "my wifi password is hunter2"]
    answers = ["Try entering the password: hunter2 exactly as written.", "Your password is hunter3 now."]
    assert pii_in_answers(prompts, answers, PII, []).leaked == [False, True]


def test_context_patterns_read_a_run_of_blanks_once_and_find_what_the_backtracking_ones_found():
    """The date-of-birth, bank and password patterns take the blanks around an optional separator
    possessively: "\\s*(?:is|:)?\\s*" split a run of blanks between its two quantifiers in every way before
    failing ("date of birth", 20,000 blanks, no date: 47 s). Neither a separator nor a value starts with a
    blank, so each pattern matches exactly where and what its backtracking form (every possessive
    quantifier made greedy) matches: checked on random texts of context words, blanks, separators, values
    and other words."""
    import re

    from fineflow.privacy.recognizers import (
        _ASSIGNED_PASSWORD,
        _DATE,
        _PROSE_PASSWORD,
        BANK_ACCOUNT_PATTERNS,
        DATE_OF_BIRTH_PATTERNS,
    )

    possessive = [DATE_OF_BIRTH_PATTERNS[0], _ASSIGNED_PASSWORD, _PROSE_PASSWORD, *BANK_ACCOUNT_PATTERNS]
    backtracking = {new: new.pattern.replace("*+", "*").replace("++", "+") for new in possessive}
    assert _DATE in DATE_OF_BIRTH_PATTERNS[0].pattern
    assert all(old != new.pattern for new, old in backtracking.items())  # each reference differs
    pieces = ["date of birth", "dob", "born on", "password", "pwd", "pass", "passphrase", "pin", "is", "was"]
    pieces += ["sort code", "account number", "acct #", "routing", "number", ":", "=", "-", "#", '"', "'"]
    pieces += ["1985-03-07", "March 7, 1985", "404784", "40-47-84", "31926819", "021000021", "hunter2", "x"]
    pieces += ["is:", "routing #", "4412 8891", "sky2", "blue"]
    blanks = [" ", "  ", "\t", "\n", " \n ", ""]
    rng = random.Random(11)
    texts = [
        "".join(rng.choice(pieces) + rng.choice(blanks) for _ in range(rng.randrange(1, 9)))
        for _ in range(4000)
    ]
    for new, old in backtracking.items():
        reference = re.compile(old, new.flags)
        for text in texts:
            found = [(m.span(), m.groupdict()) for m in new.finditer(text)]
            assert found == [(m.span(), m.groupdict()) for m in reference.finditer(text)], (new.pattern, text)


def test_duplicates_are_removed_as_presidio_removes_them(masker):
    """fineflow/privacy/results.py keeps exactly the findings Presidio's pairwise scan keeps, in its order:
    random findings of three types with nested, overlapping, equal and zero-score spans."""
    from presidio_analyzer import RecognizerResult

    from fineflow.privacy.masker import presidio_remove_duplicates
    from fineflow.privacy.results import remove_duplicates

    presidios = presidio_remove_duplicates()
    assert presidios is not remove_duplicates  # Presidio's own, which the masker replaced

    def key(result):
        return (-result.score, result.start, result.start - result.end)

    rng = random.Random(5)
    for _ in range(3000):
        findings = []
        for _ in range(rng.randrange(0, 30)):
            start = rng.randrange(-12, 40)  # a caller's offsets may be negative
            end = start + rng.randrange(0, 12)
            score = rng.choice([0, 0.1, 0.4, 0.4, 0.85, 1.0])
            findings.append(RecognizerResult(rng.choice("ABC"), start, end, score))
        ours, theirs = remove_duplicates(list(findings)), presidios(list(findings))
        assert [id(result) for result in ours] == [id(result) for result in theirs], findings  # in order
        assert [key(result) for result in ours] == sorted(key(result) for result in ours)


def test_context_words_are_the_ones_presidios_enhancer_collects(masker):
    """fineflow/privacy/context.py finds a finding's context words by bisection: the same words as
    Presidio's enhancer, which walks the tokens, at every offset of random texts of context words, values,
    stop words and punctuation (and the same error past the last token)."""
    from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer

    from fineflow.privacy.context import IndexedContextEnhancer

    ours, presidios = IndexedContextEnhancer(), LemmaContextAwareEnhancer()
    engine = masker.analyzer.nlp_engine
    words = ["passport", "SSN", "phone", "number", "is", "the", "my", "and", ":", "-", "://a:", "536228741"]
    words += ["AB1234567", "Card", "expiry", "of", "  ", "\n", ".", "IBAN", "routing", "cvv", "x@y.io", "lic"]
    rng = random.Random(3)
    for _ in range(300):
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(1, 40)))
        artifacts = engine.process_text(text, "en")
        for start in range(len(text) + 2):
            try:
                expected = set(presidios._extract_surrounding_words(artifacts, "w", start))
            except ValueError:
                with pytest.raises(ValueError, match="Did not find word"):
                    ours._extract_surrounding_words(artifacts, "w", start)
                continue
            assert set(ours._extract_surrounding_words(artifacts, "w", start)) == expected, (text, start)


def test_a_name_without_a_cue_is_found_when_common_or_addressed(masker):
    assert masker.mask("I told David about the E3 error.")[0] == "I told <PERSON> about the E3 error."
    # Fatima is beyond bare_name_max_rank, but she is addressed
    addressed = "Good question, Fatima. It is in Plus."
    assert masker.mask(addressed)[0] == "Good question, <PERSON>. It is in Plus."
    # A served answer echoing the user's name at its start (seen in captured traffic: "Maria, welcome to
    # the Acme Home"), or at a sentence's start
    assert masker.mask("Maria, welcome to the Acme Home.")[0] == "<PERSON>, welcome to the Acme Home."
    opening = "Thanks for waiting. David, your order shipped."
    assert masker.mask(opening)[0] == "Thanks for waiting. <PERSON>, your order shipped."


STREETS = [
    "42 Elm Street",
    "77 Oak Lane",
    "100 Avenue B",
    "221B Baker Street",
    "1600 Pennsylvania Avenue NW",
    "12-A Saint-Denis Road",
    "350 5th Ave",
    "9 Élysée Walk",
    "77 O'Neil Court",
    "123 1/2 Main St",
]
PREFIXES = ["", "Ship to ", "my address is\n", "Office: Unit 5, ", "(", "No. "]
SUFFIXES = ["", " please", ", Springfield, IL 62704", ", London SW1A 1AA", ", Toronto, ON M5V 2T6", "."]


def test_the_street_gate_skips_text_only_where_no_plausible_street_is(masker):
    """pyap runs only on text the gate lets through (fineflow/privacy/recognizers.py). The gate must never
    skip a street pyap would find and the plausibility rule keep: checked against pyap run without it."""
    from fineflow.privacy.recognizers import StreetAddressRecognizer, _may_hold_street, _plausible_street

    recognizers = masker.analyzer.registry.recognizers
    recognizer = next(r for r in recognizers if isinstance(r, StreetAddressRecognizer))

    def pyap_streets(text: str) -> list[str]:
        found = []
        for parser, full_address, single_street in recognizer.parsers:
            clean = parser._normalize_string(text)
            matches = [*full_address.finditer(clean), *single_street.finditer(clean)]
            found += [a.full_street for a in map(parser._parse_address, matches) if _plausible_street(a)]
        return found

    rng = random.Random(13)
    texts = [
        rng.choice(PREFIXES) + street.replace(" ", separator, 1) + rng.choice(SUFFIXES)
        for street in STREETS * 4
        for separator in [rng.choice([" ", "  ", ", ", "\t"])]
    ]
    # What it skips: a number before a capital that no street follows (the benchmark's commonest cases)
    skipped = [
        "Most 24 V setups are supported.",
        "It's a 2.4 GHz-only device, so 5 GHz networks won't show up.",
        "card number 5555 5555 5555 4444, please update it",
        "Ticket 15: Always Set up the schedule",
    ]
    with_street = [text for text in texts + skipped if pyap_streets(text)]
    assert len(with_street) >= len(texts) // 2  # the check below is not vacuous (27 of 40 hold one)
    assert all(map(_may_hold_street, with_street)), [t for t in with_street if not _may_hold_street(t)]
    assert not any(map(_may_hold_street, skipped))


def test_masking_leaves_text_around_an_evasion_untouched(masker):
    text = "Write to ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ — café ½ price…"
    assert masker.mask(text)[0] == "Write to <EMAIL> — café ½ price…"  # only the value's span is replaced


def test_no_person_found_in_the_sample_except_planted_names(masker):
    """Product vocabulary survives: on every message of the shipped sample, PERSON findings are exactly
    the names the generator planted (MANIFEST.json)."""
    sample = REPO_ROOT / "sample_data/acme_support"
    files = {
        str(p): p.read_bytes() for p in sorted(sample.iterdir()) if p.suffix in (".jsonl", ".csv", ".parquet")
    }
    parsed = parse_and_validate.fn(
        files, load_config(REPO_ROOT / "configs/default.yaml").data_prep.validation
    )
    manifest = json.loads((sample / "MANIFEST.json").read_text())
    planted = {
        e["value"] for i in manifest["planted"] for e in i.get("entities", []) if e["type"] == "PERSON"
    }
    found = {
        text[f.start : f.end]
        for row in parsed.rows
        for text in (m["content"] for m in row["messages"])
        for f in masker.find(text)
        if f.entity_type == "PERSON"
    }
    assert found == planted


def test_quarantine_detail_repeats_no_raw_value_and_excerpt_is_masked_before_the_cut():
    validation = load_config(REPO_ROOT / "configs/default.yaml").data_prep.validation
    role_line = {
        "messages": [{"role": "jane.doe@example.com", "content": "hi"}, {"role": "assistant", "content": "a"}]
    }
    key_line = {"dana.k@example.org": "x"}
    data = (json.dumps(role_line) + "\n" + json.dumps(key_line) + "\n").encode()
    parsed = parse_and_validate.fn({"raw/q.jsonl": data}, validation)
    assert [q.reason for q in parsed.quarantined] == ["unknown_role", "missing_field"]
    for item in parsed.quarantined:
        assert "example" not in item.detail, item.detail
    # An email across the excerpt's cut: masked whole first, so no half of it is kept.
    prefix = '{"prompt": "' + "x" * 30 + " reach me at "
    line = prefix + 'jane.doe@example.com", "response": 42}'
    cut = len(prefix) + 6
    parsed = parse_and_validate.fn({"raw/c.jsonl": line.encode()}, validation)
    _, quarantined, counts = mask_pii.fn([], parsed.quarantined, PII, cut)
    assert quarantined[0].excerpt == (prefix + "<EMAIL>")[:cut]
    assert "jane" not in quarantined[0].excerpt and counts == {"EMAIL_ADDRESS": 1}


# ------------------------------------------------------------------------- end to end, no survivors

HOSTILE = [
    ("Hi, I'm Harold Jenkins. My password is hunter2!", "No problem, Harold. Reset it under Account."),
    ("token ghp_aBcdEfGhIjKlMnOpQrStUvWxYz0123456789 and key AKIAIOSFODNN7EXAMPLE", "Please revoke both."),
    ("Mail ｈａｒｏｌｄ＠ｅｘａｍｐｌｅ．ｃｏｍ or call 646\u200b555\u200b0199", "Thanks, Harold."),
    (
        "my ssn is 536228741, born on 1961-04-12, at 42 Elm Street, Springfield, IL 62704",
        "We never need those.",
    ),
    (f"Bearer {JWT} from 2001:db8::7", "Regards,\nYusuf Demir"),
    (f"db is postgres://admin:S3cretPassw0rd@db.internal:5432/prod, key {ANTHROPIC_KEY}", "Rotate both now."),
    # spaCy's tokenizer took 44 s on this (quadratic on a run of punctuation); a served request with it
    # held the server's event loop for 38 s (data_prep.pii.longest_split_chunk).
    ("write to hj.ops@example.net " + "_" * 19_000, "Noted."),
    # a context word, a long run of blanks and no value: 47 s for a date-of-birth pattern that split the
    # blanks between two quantifiers (318 prompt tokens); the passphrase and the sort code before it
    ("wifi password: correct horse battery staple, sort code 40-47-84, dob" + " " * 19_000 + "?", "Noted."),
]
SECRETS = [
    "Harold",
    "Jenkins",
    "hunter2",
    "ghp_aBcdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "AKIAIOSFODNN7EXAMPLE",
    "ｈａｒｏｌｄ",
    "harold@example.com",
    "0199",
    "536228741",
    "1961-04-12",
    "Elm Street",
    JWT.split(".")[2],
    "2001:db8::7",
    "Yusuf",
    "Demir",
    "S3cretPassw0rd",
    "horse battery",
    "40-47-84",
    ANTHROPIC_KEY[7:],
    "hj.ops@example.net",
]


def _survivors(blob: str) -> list[str]:
    return [value for value in SECRETS if value in blob]


def test_hostile_set_through_data_prep_leaves_no_survivor_and_no_raw_pickle(
    prefect_api, tmp_path, monkeypatch, byte_tokenizer_dir
):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    from flows.data_prep import data_prep

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "state"))
    monkeypatch.chdir(REPO_ROOT)
    rows = [{"prompt": user, "response": answer} for user, answer in HOSTILE]
    rows += [
        {"prompt": f"Filler question {i} about the E{i % 9 + 1} error?", "response": f"Answer {i}."}
        for i in range(10)
    ]
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    lines.append('{"prompt": "Harold Jenkins, password: hunter2, AKIAIOSFODNN7EXAMPLE" broken')  # quarantined
    raw = tmp_path / "hostile.jsonl"
    raw.write_text("\n".join(lines) + "\n")
    overrides = {
        "base_model.name": str(byte_tokenizer_dir),
        "data_prep.audit.min_rows": 5,
        "data_prep.audit.min_eval_rows": 0,
        "data_prep.audit.max_quarantine_share": 0.5,
    }
    started = time.time()
    result = data_prep(inputs=[str(raw)], overrides=overrides)
    config = load_config(overrides=overrides)
    store, repo = open_store(config), config.store.repo
    published = {
        path: store.read(repo, result.commit, path).decode()
        for path in store.list(repo, result.commit, f"{config.data_prep.output_prefix}/")
    }
    assert set(published) >= {
        f"prepared/{n}" for n in ("train.jsonl", "eval.jsonl", "quarantine.jsonl", "report.json")
    }
    assert _survivors("\n".join(published.values())) == []
    assert "<PERSON>" in "\n".join(published.values())
    assert json.loads(published["prepared/quarantine.jsonl"].splitlines()[0])["excerpt"].count("<") >= 3

    # Prefect's persisted results of this run hold no raw value (the raw steps are never persisted).
    storage = Path(PREFECT_LOCAL_STORAGE_PATH.value())
    written = [p for p in storage.rglob("*") if p.is_file() and p.stat().st_mtime >= started - 1]
    assert written  # the masked steps' results are there, so the check below looked at something
    assert _survivors("\n".join(p.read_bytes().decode("utf-8", "replace") for p in written)) == []


def test_hostile_set_through_traffic_capture_leaves_no_survivor(tmp_path, monkeypatch):
    from fineflow.serving.capture import Exchange, TrafficCapture

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "state"))
    monkeypatch.chdir(REPO_ROOT)
    config = load_config()
    capture = TrafficCapture(config, open_store(config), get_masker(config.data_prep.pii))
    capture.start(background=False)
    for user, answer in HOSTILE:
        capture.record(Exchange("m", [{"role": "user", "content": user}], answer, "stop", 3, 2, 0.1))
    spool = capture.spool_path.read_bytes().decode()
    assert stat.S_IMODE(capture.spool_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(capture.spool_dir.stat().st_mode) == 0o700
    capture.close()
    store, repo = open_store(config), config.store.repo
    ref = store.resolve(repo, config.serve.traffic.branch)
    committed = "".join(store.read(repo, ref, p).decode() for p in store.list(repo, ref, "traffic/captured/"))
    assert committed and _survivors(spool + committed) == []
    records = [json.loads(line) for line in committed.splitlines()]
    texts = [m["content"] for r in records for m in r["messages"]] + [r["response"] for r in records]
    assert scan_for_pii(texts, config.data_prep.pii) == {}  # masked text holds nothing to find again


def test_prepare_environment_makes_state_private(tmp_path, monkeypatch):
    from fineflow.runtime import prepare_environment

    monkeypatch.setattr(os, "environ", os.environ.copy())  # it exports Prefect's home: not for other tests
    data_dir = tmp_path / "state"
    data_dir.mkdir(mode=0o755)
    before = os.umask(0o022)
    try:
        prepare_environment(data_dir, 60)
        (data_dir / "mlflow.db").write_text("x")
        (data_dir / "spool").mkdir()
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((data_dir / "mlflow.db").stat().st_mode) == 0o600
        assert stat.S_IMODE((data_dir / "spool").stat().st_mode) == 0o700
    finally:
        os.umask(before)
