"""Person-name masking without an NER model: recall on a labelled set, false positives on the sample.

    .venv/bin/python benchmarks/name_masking.py [--config configs/default.yaml] [--verbose]

1. sample_data/privacy_eval/names.jsonl: support messages (user and assistant turns) written for this
   benchmark, each name labelled ({"role", "text", "names"}): names in greetings, signatures, "this is X
   from Y", vocatives and mid-sentence, US and non-US names, and messages with product vocabulary and
   no name. A name counts as recalled when every character of it is inside a PERSON finding; a PERSON
   finding that touches no labelled name is a false positive.
2. The shipped sample (sample_data/acme_support, every file, parsed as data prep parses it): PERSON
   findings that are not a name the generator planted (MANIFEST.json) are false positives on real
   product text.
The masker is the one data prep and traffic capture use, with the configured `data_prep.pii`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fineflow.config import DEFAULT_CONFIG, load_config  # noqa: E402
from fineflow.privacy.masker import PIIMasker  # noqa: E402
from tasks.data.parse import SUPPORTED_SUFFIXES, parse_and_validate  # noqa: E402

EVAL_SET = Path("sample_data/privacy_eval/names.jsonl")
SAMPLE = Path("sample_data/acme_support")
PERSON = "PERSON"


def person_spans(masker: PIIMasker, text: str) -> list[tuple[int, int]]:
    return [(f.start, f.end) for f in masker.find(text) if f.entity_type == PERSON]


def labelled_spans(text: str, names: list[str]) -> list[tuple[int, int]]:
    spans, position = [], 0
    for name in names:
        start = text.find(name, position)
        if start < 0:
            start = text.find(name)
        spans.append((start, start + len(name)))
        position = start + len(name)
    return spans


def covered(span: tuple[int, int], findings: list[tuple[int, int]]) -> bool:
    return all(any(s <= i < e for s, e in findings) for i in range(*span))


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def eval_set(masker: PIIMasker, verbose: bool) -> dict:
    rows = [json.loads(line) for line in EVAL_SET.read_text().splitlines() if line.strip()]
    names = recalled = false_positives = 0
    for row in rows:
        text, labels = row["text"], labelled_spans(row["text"], row["names"])
        findings = person_spans(masker, text)
        hits = [covered(label, findings) for label in labels]
        extra = [f for f in findings if not any(overlaps(f, label) for label in labels)]
        names, recalled, false_positives = (
            names + len(labels),
            recalled + sum(hits),
            false_positives + len(extra),
        )
        if verbose:
            for label, hit in zip(labels, hits, strict=True):
                if not hit:
                    print(f"  missed  {text[slice(*label)]!r} in {text!r}")
            for span in extra:
                print(f"  extra   {text[slice(*span)]!r} in {text!r}")
    return {"messages": len(rows), "names": names, "recalled": recalled, "false_positives": false_positives}


def sample_rows(masker: PIIMasker, config, verbose: bool) -> dict:
    files = {str(p): p.read_bytes() for p in sorted(SAMPLE.iterdir()) if p.suffix in SUPPORTED_SUFFIXES}
    parsed = parse_and_validate.fn(files, config.data_prep.validation)
    manifest = json.loads((SAMPLE / "MANIFEST.json").read_text())
    planted = {
        e["value"] for item in manifest["planted"] for e in item.get("entities", []) if e["type"] == PERSON
    }
    texts = [m["content"] for row in parsed.rows for m in row["messages"]]
    found: Counter = Counter()
    wrong: Counter = Counter()
    for text in texts:
        for start, end in person_spans(masker, text):
            value = text[start:end]
            found[value] += 1
            if value not in planted:
                wrong[value] += 1
    if verbose:
        for value, count in wrong.most_common():
            print(f"  sample false positive {value!r} x{count}")
    return {
        "texts": len(texts),
        "person_findings": sum(found.values()),
        "planted_names_found": sum(found.values()) - sum(wrong.values()),
        "false_positives": sum(wrong.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--verbose", action="store_true", help="print every miss and false positive")
    args = parser.parse_args()
    config = load_config(args.config)
    masker = PIIMasker(config.data_prep.pii)
    labelled = eval_set(masker, args.verbose)
    sample = sample_rows(masker, config, args.verbose)
    recall = labelled["recalled"] / labelled["names"]
    print(
        f"labelled set ({EVAL_SET}): {labelled['messages']} messages, {labelled['names']} names, "
        f"recall {recall:.1%} ({labelled['recalled']}/{labelled['names']}), "
        f"false positives {labelled['false_positives']}"
    )
    print(
        f"sample ({SAMPLE}): {sample['texts']} message texts, {sample['person_findings']} PERSON findings, "
        f"{sample['planted_names_found']} of them planted names, false positives {sample['false_positives']}"
    )


if __name__ == "__main__":
    main()
