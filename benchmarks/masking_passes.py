"""The masker's four shortcuts against the masker without them, in one process:
- phone numbers: phonenumbers' matcher runs only on the stretches of the text that can hold a number, and
  only for the regions whose shortest valid number fits in the stretch: the region's own shortest unless
  the stretch could be read as another country's number (fineflow/privacy/recognizers.py,
  GatedPhoneRecognizer), and what it finds in a stretch is kept for the next text holding it (each round
  starts with none kept); the baseline is Presidio's PhoneRecognizer, one pass per configured region
  over every whole text;
- secrets: detect-secrets' KeywordDetector runs only on lines holding one of its denylisted words;
- normalisation: ASCII text is taken as it is instead of character by character;
- spaCy's pipeline runs for a scan only when something reads its artifacts (a candidate finding's
  context words; fineflow/privacy/masker.py, `_lazy_nlp_artifacts`); the baseline runs it for every
  scan, as Presidio does, with its SpacyRecognizer, which finds nothing on the blank pipeline.

    nice -n 19 .venv/bin/python benchmarks/masking_passes.py [--rows 5000] [--offset 0] [--rounds 2]

Two kinds of text, as in benchmarks/mask_repeats.py: the distinct texts of the scale benchmark's rows
(benchmarks/data_prep_scale.py: "Ticket 2836", "E8", few long digit runs), and the same with a reference
number appended to every answer ("(ref 1234-5)"), so more texts need more phone passes. `--offset`
takes the rows from further into the generated file, where ticket numbers have six digits ("Ticket
500057"), as in the last shards of a 1M run. Each is masked by
the baseline, by the configured masker, and by the configured masker with the artifacts computed for every
scan, in turn, best of `--rounds` (CPU seconds). Printed: the seconds, the ratio baseline / now, the
lazy artifacts' own ratio and how many scans ran the pipeline, and the phone recognizer's own seconds and
passes. The masked texts and counts must be identical; the benchmark stops if they are not.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def baseline_masker(config):
    """A masker of the same config with Presidio's phone recognizer and every secrets plugin on every line."""
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer, SpacyRecognizer

    from fineflow.privacy.masker import PIIMasker

    masker = PIIMasker(config)
    registry = masker.analyzer.registry
    registry.remove_recognizer("GatedPhoneRecognizer")
    registry.add_recognizer(
        PhoneRecognizer(supported_language=config.language, supported_regions=tuple(config.phone_regions))
    )
    registry.add_recognizer(SpacyRecognizer(supported_language=config.language))
    for recognizer in registry.recognizers:
        if type(recognizer).__name__ == "SecretsRecognizer":
            recognizer.plugins = [(plugin, entity, None) for plugin, entity, _ in recognizer.plugins]
    return masker


def mask_all(masker, texts: list[str], per_character: bool, eager_nlp: bool) -> tuple[float, list]:
    import fineflow.privacy.masker as masker_module
    from fineflow.privacy.text import normalize, normalize_each_character

    lazy = masker_module._lazy_nlp_artifacts
    masker_module.normalize = normalize_each_character if per_character else normalize
    if eager_nlp:
        masker_module._lazy_nlp_artifacts = eager_nlp_artifacts
    try:
        start = time.process_time()
        outputs = [masker.mask(text) for text in texts]
        return time.process_time() - start, outputs
    finally:
        masker_module.normalize = normalize
        masker_module._lazy_nlp_artifacts = lazy


def eager_nlp_artifacts(engine, text: str, language: str):
    """What Presidio's analyzer computes before any recognizer runs when it is given no artifacts."""
    return engine.process_text(text, language)


def pipeline_runs(masker, texts: list[str]) -> tuple[int, int]:
    """(scans that ran spaCy's pipeline, scans) when masking `texts`, counted in a pass of its own."""
    engine, counts = masker.analyzer.nlp_engine, Counter()
    find, process_text = masker.find, engine.process_text

    def counted_find(text: str):
        counts["scans"] += 1
        return find(text)

    def counted_process_text(text: str, language: str):
        counts["runs"] += 1
        return process_text(text, language)

    masker.find, engine.process_text = counted_find, counted_process_text
    try:
        for text in texts:
            masker.mask(text)
    finally:
        del masker.find, engine.process_text  # the instances' own again
    return counts["runs"], counts["scans"]


def phone_seconds(recognizer, texts: list[str]) -> float:
    start = time.process_time()
    for text in texts:
        recognizer.analyze(text, ["PHONE_NUMBER"])
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--offset", type=int, default=0, help="generated rows skipped before the shard")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from mask_repeats import shard_rows

    from fineflow.config import load_config
    from fineflow.privacy.masker import get_masker
    from fineflow.privacy.recognizers import phone_stretches

    config = load_config(REPO / "configs" / "default.yaml").data_prep.pii
    now, baseline = get_masker(config), baseline_masker(config)
    gated = next(r for r in now.analyzer.registry.recognizers if type(r).__name__ == "GatedPhoneRecognizer")
    presidio = next(
        r for r in baseline.analyzer.registry.recognizers if type(r).__name__ == "PhoneRecognizer"
    )
    for label, distinct in (("scale benchmark's rows", False), ("answers with a reference number", True)):
        rows = shard_rows(args.rows, distinct_answers=distinct, offset=args.offset)
        texts = sorted({m["content"] for row in rows for m in row["messages"]})
        stretches = [phone_stretches(t) for t in texts]
        runs = [
            [gated.runs_on(stretch, region) for stretch in found]
            for found in stretches
            for region in config.phone_regions
        ]
        passes, windows = sum(any(run) for run in runs), sum(sum(run) for run in runs)
        variants = {
            "baseline": (baseline, True, True),
            "now": (now, False, False),
            "eager": (now, False, True),
        }
        best = dict.fromkeys(variants, float("inf"))
        outputs = {}
        for _ in range(args.rounds):
            for name, (masker, per_character, eager_nlp) in variants.items():
                gated.numbers_in.cache_clear()  # each round starts with no stretch kept
                seconds, outputs[name] = mask_all(masker, texts, per_character, eager_nlp)
                best[name] = min(best[name], seconds)
        if not outputs["baseline"] == outputs["now"] == outputs["eager"]:
            raise SystemExit(f"{label}: the masked texts differ")
        gated.numbers_in.cache_clear()
        runs, scans = pipeline_runs(now, texts)
        gated.numbers_in.cache_clear()
        phone = {"baseline": phone_seconds(presidio, texts), "now": phone_seconds(gated, texts)}
        every_pass = len(texts) * len(config.phone_regions)
        print(
            f"{label}: {len(texts)} distinct texts; masking {best['baseline']:.2f} s baseline, "
            f"{best['now']:.2f} s now: {best['baseline'] / best['now']:.2f}x, same output. "
            f"Artifacts when read {best['now']:.2f} s vs computed first {best['eager']:.2f} s "
            f"({best['eager'] / best['now']:.2f}x): the pipeline ran for {runs} of {scans} scans. "
            f"Phone recognizer alone {phone['baseline']:.2f} s vs {phone['now']:.2f} s "
            f"({phone['baseline'] / phone['now']:.2f}x): {passes} of {every_pass} region passes run, "
            f"on {windows} stretches",
            flush=True,
        )


if __name__ == "__main__":
    main()
