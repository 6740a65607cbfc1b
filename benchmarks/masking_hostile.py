"""Hostile shapes for the masker's context patterns: a context word, a long run of blanks and no value.

    nice -n 19 .venv/bin/python benchmarks/masking_hostile.py [--lengths 2000 4000 8000]

The date-of-birth, bank and password patterns read the blanks around an optional separator
("date of birth: ...", "sort code is ..."). Written `\\s*(?:is|:)?\\s*`, the two quantifiers split a run of
blanks in every way before the value failed: quadratic in the run ("date of birth" and 20,000 blanks took
47 s to mask, and a served request is masked for traffic capture whole, 318 prompt tokens there). The
patterns now take those blanks possessively (`\\s*+`); tests/test_privacy.py checks they match what the
backtracking ones matched.

Baseline: the patterns as they read those blanks before (`OLD_SEPARATOR`), in this process. For each shape and
length it prints the seconds of one search with each and the ratio; then the whole masker (every
recognizer) on each shape at 20,000 blanks, which the baseline cannot finish in reasonable time.

Then texts dense in findings: 8,000 colons (2,000 prompt tokens; 4,000 IPv6 candidates "::" for
Presidio's IP recognizer) and "://a:" repeated (1,600 IPv6 findings in 8,000 characters). Presidio
de-duplicates findings pairwise and walks the tokens for each finding's context words; the masker uses
fineflow/privacy/results.py and context.py instead. Baseline: the same masker with Presidio's own two,
in this process; the masked texts must be equal. Last, 16,000 slashes: detect-secrets' NpmDetector
(`//.+/:_authToken=`) alone, and the masker, which runs it only on lines holding `/:_authToken=`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


# How the patterns read the blanks around their separator before 4 December: two quantifiers around an
# optional separator, which split a run of blanks in every way before failing.
OLD_SEPARATOR = r"\s*(?:is|was|:|=|-|#)?\s*"


def pattern_pairs() -> list[tuple[str, re.Pattern, re.Pattern]]:
    """(name, the pattern as configured, the pattern as it read blanks before: the baseline)."""
    from fineflow.privacy.recognizers import (
        _PASSWORD_VALUE,
        _PASSWORD_WORD,
        _PROSE_PASSWORD,
        _SEPARATOR,
        BANK_ACCOUNT_PATTERNS,
        DATE_OF_BIRTH_PATTERNS,
    )

    def old(pattern: re.Pattern) -> str:
        return pattern.pattern.replace(_SEPARATOR, OLD_SEPARATOR).replace("*+", "*").replace("++", "+")

    pairs = [
        ("date of birth", DATE_OF_BIRTH_PATTERNS[0], old(DATE_OF_BIRTH_PATTERNS[0])),
        ("password is", _PROSE_PASSWORD, rf"{_PASSWORD_WORD}\s+(?P<sep>is|was)\s*:?\s+{_PASSWORD_VALUE}"),
    ]
    names = ["sort code", "account number", "routing number"]
    pairs += [(name, new, old(new)) for name, new in zip(names, BANK_ACCOUNT_PATTERNS, strict=True)]
    return [(name, new, re.compile(old_pattern, new.flags)) for name, new, old_pattern in pairs]


def hostile(lead: str, blanks: int) -> str:
    """The context word, `blanks` blanks, then a character no value starts with."""
    return lead + " " * blanks + '"'


def search_seconds(pattern: re.Pattern, text: str) -> float:
    start = time.perf_counter()
    list(pattern.finditer(text))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[2000, 4000, 8000], help="blanks per text")
    args = parser.parse_args()
    print("shape            blanks         before          now   ratio")
    for name, new, old in pattern_pairs():
        for blanks in args.lengths:
            text = hostile(name, blanks)
            if [m.span() for m in new.finditer(text)] != [m.span() for m in old.finditer(text)]:
                raise SystemExit(f"{name}: the patterns match differently on {blanks} blanks")
            before, after = search_seconds(old, text), search_seconds(new, text)
            print(f"{name:15s} {blanks:7d} {before:12.3f} s {after:10.5f} s {before / after:9.0f}x")

    from fineflow.config import load_config
    from fineflow.privacy.masker import PIIMasker

    masker = PIIMasker(load_config(REPO / "configs/default.yaml").data_prep.pii)
    masker.mask("warm up")
    for name, _, _ in pattern_pairs():
        text = hostile(name, 20_000)
        start = time.perf_counter()
        masker.mask(text)
        print(f"whole masker, {name!r} and 20,000 blanks: {time.perf_counter() - start:.2f} s")
    dense_findings(masker)
    slashes(masker)


def dense_findings(masker) -> None:
    """The masker as configured against the same masker with Presidio's de-duplication and enhancer."""
    from presidio_analyzer import EntityRecognizer
    from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer

    from fineflow.privacy.masker import presidio_remove_duplicates

    variants = {
        "presidio": (presidio_remove_duplicates(), LemmaContextAwareEnhancer()),
        "fineflow": (EntityRecognizer.remove_duplicates, masker.analyzer.context_aware_enhancer),
    }
    for label, text in [("8,000 colons", ":" * 8000), ("'://a:' x 1,600", "://a:" * 1600)]:
        seconds, masked = {}, {}
        for name, (remove_duplicates, enhancer) in variants.items():
            EntityRecognizer.remove_duplicates = staticmethod(remove_duplicates)
            masker.analyzer.context_aware_enhancer = enhancer
            start = time.perf_counter()
            masked[name] = masker.mask(text)
            seconds[name] = time.perf_counter() - start
        if masked["presidio"] != masked["fineflow"]:
            raise SystemExit(f"{label}: the masked texts differ")
        before, after = seconds["presidio"], seconds["fineflow"]
        counts = dict(masked["fineflow"][1])
        print(f"{label}: presidio {before:.2f} s, fineflow {after:.2f} s, {before / after:.1f}x, {counts}")


def slashes(masker) -> None:
    """detect-secrets' NpmDetector alone on 16,000 slashes (2,000 prompt tokens), which the masker runs only
    on lines holding its literal, against the whole masker on the same text."""
    from detect_secrets.plugins.npm import NpmDetector

    text = "/" * 16_000
    start = time.perf_counter()
    list(NpmDetector().analyze_line(filename="x", line=text, line_number=1))
    ungated = time.perf_counter() - start
    start = time.perf_counter()
    masker.mask(text)
    masked = time.perf_counter() - start
    print(f"16,000 slashes: NpmDetector alone {ungated:.2f} s, the whole masker {masked:.2f} s")


if __name__ == "__main__":
    main()
