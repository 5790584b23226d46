"""The trained network a post-hoc method analyses: the one it was given, or one trained here.

Post-hoc estimators (:class:`~skpcoreset.posthoc.ConnectivityLaplaceClassifier`,
:class:`~skpcoreset.posthoc.GeometricEnsembleInfluence`) take ``net`` as either a *fitted* model
(analysed as is, never modified) or an unfitted template (trained on ``(X, y)`` first).
:func:`fitted_or_trained` makes that choice once for both, and :func:`warn_if_clone_unfits`
says when :func:`sklearn.base.clone` is about to turn a fitted net into a template (which
``GridSearchCV``, ``cross_val_score`` and ``Pipeline`` clones then silently re-train).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from sklearn.frozen import FrozenEstimator
from torch import nn

from .._skorch import build_member_nets, fitted_module
from ..exceptions import warn

__all__ = ["fitted_or_trained", "warn_if_clone_unfits"]


def fitted_or_trained(estimator, *, init_seed: int, train: Callable):
    """``(module, net_, trained)``: the theta* of ``estimator.net`` and how it was obtained.

    A fitted ``net`` (see :func:`skpcoreset._skorch.fitted_module`) gives a copy of its module
    on the estimator's ``device_`` in eval mode, ``net_ = None`` and ``trained = None``;
    ``train`` is not called. Otherwise the template is built into a skorch net ``net_`` for the
    estimator's ``input_shape_`` and ``classes_`` (module initialised from ``init_seed``),
    ``trained = train(net_)`` trains its module in place, and the module comes back in eval
    mode.
    """
    net, device = estimator.net, estimator.device_
    prefit = fitted_module(net)
    if prefit is not None:
        return copy.deepcopy(prefit).to(device).eval(), None, None
    (net_,) = build_member_nets(
        net, input_shape=estimator.input_shape_, n_classes=len(estimator.classes_), seeds=[init_seed], device=device
    )
    trained = train(net_)
    return net_.module_.eval(), net_, trained


def warn_if_clone_unfits(net, owner: str) -> None:
    """Warn when cloning ``owner`` would turn its fitted ``net`` into an unfitted template.

    :func:`sklearn.base.clone` re-creates estimator parameters from their ``get_params``: a
    fitted skorch net (or skpcoreset ensemble) comes back unfitted, and the clone then trains a
    new network on its own data instead of analysing this one. Module instances (deep-copied)
    and :class:`~sklearn.frozen.FrozenEstimator` wrappers (kept fitted) are safe.
    """
    if isinstance(net, (FrozenEstimator, nn.Module, type)) or not hasattr(net, "get_params"):
        return
    if fitted_module(net) is None:
        return
    warn(
        f"clone() turns the fitted net given to {owner} into an unfitted template, so the clone "
        "(as GridSearchCV, cross_val_score or a Pipeline make) trains a new network on its own data "
        "instead of analysing this one. Pass net=FrozenEstimator(net) (sklearn.frozen) to keep it fitted."
    )
