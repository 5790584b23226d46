"""Warnings raised by skpcoreset estimators.

Filter them like any warning, e.g. ``warnings.simplefilter("error", NoBenefitWarning)`` to make
a fit fail when its method does not beat its baseline on held-out data.
"""

__all__ = ["NoBenefitWarning"]


class NoBenefitWarning(UserWarning):
    """A fitted estimator's method did not beat its own baseline on held-out data.

    Every estimator that carves a validation split compares its method with the baseline the
    method is meant to improve on (e.g. bridges vs the single base network, a distilled
    student vs one teacher member) and records both in ``validation_scores_``; this warning
    says when the method's benefit was absent there, and what to try.
    """
