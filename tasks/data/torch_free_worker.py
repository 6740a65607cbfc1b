"""Preloaded by the embedded cluster's workers when no configured model of data prep needs torch
(tasks/data/engine.py), and imported first by the audit's scanner process (tasks/data/audit_scan.py): it
makes torch look not installed in them.

spaCy (through thinc) and Presidio (its device detector and its transformer-based recognizers) import
torch whenever it is installed, though masking with pattern, checksum, name and context recognizers on a
tokenizer-only pipeline never calls it, and tokenizing needs only the tokenizers library. Measured here:
a worker held 1.13 GB of RSS with torch after loading the masker and the shard code, 0.36 GB without.
A None entry in sys.modules is Python's documented way to say a module is absent: `import torch` raises
ModuleNotFoundError and importlib.util.find_spec("torch") returns None, which these libraries read as
"not installed", as on a machine without torch.
"""

from __future__ import annotations

import os
import sys

TORCH = "torch"

if sys.modules.get(TORCH) is not None:
    # A preload runs before the worker takes any task; torch already loaded means something imported it
    # at start-up, and hiding it now would leave half its users with it and half without.
    raise RuntimeError("torch was imported before the torch-free preload ran in this Dask worker")
sys.modules[TORCH] = None
# transformers then warns on import that "PyTorch was not found. Models won't be available": expected here
# (the token limit needs only its tokenizers), and read as a fault in every worker's log. It is one of
# transformers' advisory warnings, which this variable silences.
os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
