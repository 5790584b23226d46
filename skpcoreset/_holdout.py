"""The one held-out split of the estimators, and how they score themselves on it.

Estimators that check their own benefit (issue: every method must deliver it on data it was not
tuned on) carve a class-stratified validation split with :func:`holdout_split`, score the method
and its baseline there with :func:`scores`, and report the comparison with
:func:`warn_if_no_benefit`, which raises :class:`~skpcoreset.exceptions.NoBenefitWarning`.
"""

from __future__ import annotations

import numpy as np

from .exceptions import NoBenefitWarning, warn
from .metrics import accuracy, expected_calibration_error, negative_log_likelihood

__all__ = [
    "holdout_split",
    "scores",
    "warn_if_no_benefit",
    "standard_error",
    "paired_nll_standard_error",
    "beats_by_one_standard_error",
]


def holdout_split(y: np.ndarray, fraction: float, random_state) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled (train, held-out) row indices; ``floor(fraction * n_c)`` rows of every class c held out.

    Flooring per class keeps every class in the training part (a class of one row is never
    held out), so the estimator learns every label it will be asked to predict. ``fraction=0``
    holds out nothing.
    """
    rng = np.random.RandomState(random_state) if not isinstance(random_state, np.random.RandomState) else random_state
    order = rng.permutation(len(y))
    shuffled = np.asarray(y)[order]
    _, codes = np.unique(shuffled, return_inverse=True)
    counts = np.bincount(codes)
    by_class = np.argsort(codes, kind="stable")
    rank = np.empty(len(y), dtype=np.int64)
    rank[by_class] = np.arange(len(y)) - np.repeat(np.cumsum(counts) - counts, counts)
    held_out = rank < np.floor(fraction * counts).astype(np.int64)[codes]
    return order[~held_out], order[held_out]


def scores(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, NLL and ECE (15 bins) of class probabilities ``proba`` against integer labels ``y``."""
    return {
        "accuracy": accuracy(y, proba),
        "nll": negative_log_likelihood(y, proba),
        "ece": expected_calibration_error(y, proba),
    }


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of ``values`` (``std(ddof=1) / sqrt(n)``); 0 for fewer than two."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def paired_nll_standard_error(y: np.ndarray, proba: np.ndarray, baseline_proba: np.ndarray) -> float:
    """One standard error of the mean per-sample NLL difference of two predictions of the same rows.

    The margin a method's held-out NLL must beat its baseline's by (pass it to
    :func:`warn_if_no_benefit`); 0 for fewer than two rows.
    """
    rows = np.arange(len(y))
    difference = np.log(np.clip(proba[rows, y], 1e-12, None)) - np.log(np.clip(baseline_proba[rows, y], 1e-12, None))
    return standard_error(difference)


def warn_if_no_benefit(
    owner: str, method: str, baseline: str, validation_scores: dict, advice: str, *, margin: float = 0.0
) -> bool:
    """Warn when ``method``'s held-out NLL is not below ``baseline``'s (by more than ``margin``).

    ``validation_scores`` maps each name to its :func:`scores`. Returns whether the benefit held.
    """
    method_nll = validation_scores[method]["nll"]
    baseline_nll = validation_scores[baseline]["nll"]
    if method_nll < baseline_nll - margin:
        return True
    warn(
        f"{owner}: on the held-out split the {method} (NLL {method_nll:.4f}) did not beat the {baseline} "
        f"(NLL {baseline_nll:.4f}). {advice}",
        NoBenefitWarning,
    )
    return False


def beats_by_one_standard_error(gains: np.ndarray) -> bool:
    """Whether paired per-sample gains (baseline loss minus method loss) are positive beyond noise.

    True when their mean exceeds one standard error (``std / sqrt(n)``); a single held-out row
    is never enough.
    """
    gains = np.asarray(gains, dtype=np.float64)
    return len(gains) > 1 and bool(gains.mean() > standard_error(gains))
