"""Deep-ensemble equivalent: the deep-ensemble size whose NLL a model matches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..exceptions import warn

__all__ = ["deep_ensemble_equivalent"]


def deep_ensemble_equivalent(nll: float, de_nlls: Sequence[float] | Mapping[int, float]) -> float:
    """The (fractional) deep-ensemble size whose test NLL equals ``nll``.

    The "deep-ensemble equivalent" of Ashukha et al. (2020), used by the bridge-network paper:
    NLL is interpolated linearly between consecutive measured ensemble sizes. A measured DE
    curve need not fall monotonically (a noisy DE-3 above DE-2); the size is read off its
    monotone envelope, the best NLL reached with at most ``k`` members, so that adding a
    member never makes the reference worse and a noisy bump cannot hand out a small size.
    The reference NLLs must be measured in the same run (same data, same training budget).

    Parameters
    ----------
    nll : float
        Test NLL of the model to place.
    de_nlls : sequence of float or mapping of int to float
        NLL of deep ensembles: a sequence holds sizes ``1, 2, ..., k``; a mapping gives the
        sizes explicitly, e.g. ``{1: 0.29, 2: 0.23, 4: 0.21}``.

    Returns
    -------
    float
        The equivalent size, clipped to the measured range. Outside it the value is not
        measured and a ``UserWarning`` says so: a model worse than the smallest ensemble gets
        its size (an upper bound), one better than the largest gets the largest size (a lower
        bound; extrapolating would be a guess).

    Examples
    --------
    >>> from skpcoreset.ensemble import deep_ensemble_equivalent
    >>> deep_ensemble_equivalent(0.375, {1: 0.5, 2: 0.25, 4: 0.125})
    1.5

    A DE-3 that came out worse than DE-2 does not make DE-2's NLL worth "less than two":

    >>> deep_ensemble_equivalent(0.25, [0.5, 0.25, 0.3, 0.125])
    2.0
    """
    table = dict(de_nlls) if isinstance(de_nlls, Mapping) else dict(enumerate(de_nlls, start=1))
    if not table:
        raise ValueError("de_nlls must hold the NLL of at least one deep ensemble.")
    sizes = np.array(sorted(table), dtype=np.float64)
    if np.any(sizes < 1):
        raise ValueError(f"Ensemble sizes must be >= 1; got {sizes.tolist()}.")
    nlls = np.array([table[int(s)] for s in sizes], dtype=np.float64)
    if not np.all(np.isfinite(nlls)) or not np.isfinite(nll):
        raise ValueError("NLL values must be finite.")
    envelope = np.minimum.accumulate(nlls)
    if nll > envelope[0]:
        warn(
            f"NLL {nll:.4g} is worse than the smallest measured ensemble (DE-{sizes[0]:g}: "
            f"{envelope[0]:.4g}); its equivalent is at most {sizes[0]:g}."
        )
        return float(sizes[0])
    for i in range(len(sizes) - 1):
        upper, lower = envelope[i], envelope[i + 1]
        if lower <= nll <= upper and lower < upper:
            share = (upper - nll) / (upper - lower)
            return float(sizes[i] + (sizes[i + 1] - sizes[i]) * share)
    if nll < envelope[-1]:
        warn(
            f"NLL {nll:.4g} beats the largest measured ensemble (DE-{sizes[-1]:g}: {envelope[-1]:.4g}); "
            f"its equivalent is at least {sizes[-1]:g} (not extrapolated). Measure larger ensembles "
            "to place it."
        )
        return float(sizes[-1])
    # nll equals a flat stretch of the envelope: the smallest size that reaches it.
    return float(sizes[np.argmax(envelope <= nll)])
