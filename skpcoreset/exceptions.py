"""Warnings raised by skpcoreset estimators.

Filter them like any warning, e.g. ``warnings.simplefilter("error", NoBenefitWarning)`` to make
a fit fail when its method does not beat its baseline on held-out data.
"""

import contextlib
import os
import sys
import warnings

__all__ = ["NoBenefitWarning"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` call that makes the warning name the user's line.

    Counts the frames from the caller to the first one outside this package, scikit-learn,
    imbalanced-learn, joblib, skops (loading) and the standard library's context managers
    (``fit`` reaches our code through sklearn's parameter-validation wrapper, or through
    ``GridSearchCV``), so a warning raised deep in a fit points at the user's ``fit`` or search
    call.
    """
    skipped = (_PACKAGE_DIR, contextlib.__file__) + tuple(
        os.path.dirname(sys.modules[name].__file__) + os.sep
        for name in ("sklearn", "imblearn", "joblib", "skops")
        if getattr(sys.modules.get(name), "__file__", None)
    )
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(skipped):
        frame, level = frame.f_back, level + 1
    return level


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """:func:`warnings.warn` with the ``stacklevel`` of :func:`user_stacklevel`: the warning names the user's line."""
    warnings.warn(message, category, stacklevel=user_stacklevel())


class NoBenefitWarning(UserWarning):
    """A fitted estimator's method did not beat its own baseline on held-out data.

    Every estimator that carves a validation split compares its method with the baseline the
    method is meant to improve on (e.g. bridges vs the single base network, a distilled
    student vs one teacher member) and records both in ``validation_scores_``; this warning
    says when the method's benefit was absent there, and what to try.

    Examples
    --------
    >>> import warnings
    >>> from skpcoreset import NoBenefitWarning
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("error", NoBenefitWarning)  # fail instead of warning
    ...     pass
    """
