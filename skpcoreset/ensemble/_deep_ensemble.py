"""Deep ensembles: M independently initialised members, probabilities averaged."""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .._base import TorchClassifierMixin, fill_doc, shared_constraints, store_params
from .._skorch import train_template_members
from ..augment import NAMED_AUGMENTATIONS, resolve_augmentation

__all__ = ["DeepEnsembleClassifier"]


@fill_doc
class DeepEnsembleClassifier(TorchClassifierMixin, ClassifierMixin, BaseEstimator):
    """An ensemble of independently trained networks whose probabilities are averaged.

    Members are clones of a skorch template, initialised from different seeds and trained by
    skpcoreset's loop -- all at once with ``torch.func.vmap`` for dense networks, one after
    another otherwise. The template's callbacks (``EarlyStopping``, ``LRScheduler``, ...) and
    ``train_split`` run for every member, as in skorch. It is the deep-ensemble baseline and
    the default teacher of :class:`~skpcoreset.DiverseDistiller`.

    Parameters
    ----------
    net : None, nn.Module subclass or skorch NeuralNetClassifier, default=None
        Member template (see :func:`skpcoreset.make_net`). ``None``: an MLP for flat inputs, a
        ConvNet for images, 30 epochs of Adam. Its parameters are tunable as ``net__*`` (a bare
        module class too: ``net__module__width``).
    n_members : int, default=5
        Ensemble size M.
    ensemble_strategy : {'auto', 'vmap', 'sequential'}, default='auto'
        How members are trained; 'auto' vectorises buffer-free dense networks whose template
        has no callbacks or validation split (those need a run per member).
    n_jobs : int or None, default=None
        Threads for training members one after another (the 'sequential' strategy); -1 uses
        all cores. Under ``joblib.parallel_config(backend="dask")`` members go to Dask workers.
    augment : None, {'shift', 'shift_flip', 'dsa'} or callable, default=None
        Data augmentation of every training batch, on the device (see
        :mod:`skpcoreset.augment`): 'shift' translates each image by up to an eighth of its
        side (pixels shifted in take the data minimum), 'shift_flip' also mirrors half of the
        images (the standard CIFAR augmentation), 'dsa' is differentiable augmentation; a
        callable ``augment(X, generator) -> X`` gets batches ``(B, *input_shape_)``. The named
        options need images (see ``input_shape``).
    %(input_shape)s
    %(mixed_precision)s
    %(device)s
    %(random_state)s
    %(verbose)s

    Attributes
    ----------
    members_ : list of skorch.NeuralNetClassifier
        The trained members (their ``module_`` holds the weights, their ``history`` the run).
    logit_modules_ : list of nn.Module
        The members' modules as maps to logits: ``module_`` itself, or a log-probability view
        of it when the net's criterion is ``NLLLoss`` (a module ending in a softmax).
    ensemble_strategy_ : str
        The training strategy that ran.
    history_ : dict
        ``{'members': [History, ...]}``: each member's skorch ``History`` (one row per epoch:
        ``train_loss``, ``valid_loss`` / ``valid_acc`` with a ``train_split``, ``dur``).
    %(fitted_basics)s
    %(interrupted)s

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skpcoreset import DeepEnsembleClassifier, make_net
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = DeepEnsembleClassifier(make_net(max_epochs=20), n_members=3, random_state=0)
    >>> clf.fit(X / 16, y).score(X / 16, y) > 0.9
    True
    """

    _parameter_constraints = {
        "net": "no_validation",
        "n_members": [Interval(Integral, 1, None, closed="left")],
        "ensemble_strategy": [StrOptions({"auto", "vmap", "sequential"})],
        "n_jobs": [None, Integral],
        "augment": [None, StrOptions(set(NAMED_AUGMENTATIONS)), callable],
        **shared_constraints("input_shape", "mixed_precision", "device", "random_state", "verbose"),
    }

    def __init__(
        self,
        net=None,
        *,
        n_members=5,
        ensemble_strategy="auto",
        n_jobs=None,
        augment=None,
        input_shape=None,
        mixed_precision="no",
        device="cpu",
        random_state=None,
        verbose=0,
    ):
        store_params(self, locals())

    def _fit(self, X, y):
        """Train ``n_members`` members on ``(X, y)``."""
        augment = resolve_augmentation(self.augment, self.input_shape_, fill=float(X.min()))
        self._init_torch()
        run = train_template_members(
            self.net,
            self._to_tensor(X),
            self._to_tensor(y, dtype=torch.long),
            n_members=self.n_members,
            random_state=self._seed,
            n_classes=len(self.classes_),
            strategy=self.ensemble_strategy,
            n_jobs=self.n_jobs,
            verbose=self.verbose,
            desc="member",
            augment=augment,
            mixed_precision=self.mixed_precision,
        )
        self.members_, self.logit_modules_ = run.nets, run.modules
        self.ensemble_strategy_ = run.strategy
        self.history_ = {"members": run.histories}
        self.interrupted_ = "members" if run.interrupted else None
        return self

    def member_modules(self) -> list[torch.nn.Module]:
        """The members' torch modules (in eval mode), mapping ``(N, *input_shape_)`` to logits."""
        check_is_fitted(self)
        return [module.eval() for module in self.logit_modules_]

    def member_logits(self, X: torch.Tensor) -> torch.Tensor:
        """Differentiable member logits of shape ``(n_members, N, n_classes)``.

        ``X`` is a float tensor on ``device_`` shaped ``(N, *input_shape_)``; gradients flow
        to it, so perturbation methods (ODS) can use the ensemble as a teacher.
        """
        return torch.stack([module(X) for module in self.member_modules()])

    def member_proba(self, X) -> np.ndarray:
        """Per-member class probabilities, shape ``(n_members, n_samples, n_classes)``."""
        return self._batched_member_proba(self.member_logits, self._validated_tensor(X))

    def _proba(self, X: torch.Tensor) -> np.ndarray:
        return self._batched_member_proba(self.member_logits, X).mean(axis=0)
