"""GeometricEnsembleInfluence: self-influence and train-test influence without Hessians."""

from __future__ import annotations

import hashlib
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ..._base import (
    TorchEstimatorMixin,
    fill_doc,
    make_generator,
    seed_from_random_state,
    shared_constraints,
    store_params,
)
from ..._skorch import as_template, train_spec_from_net
from ...exceptions import NoBenefitWarning, warn
from .._theta_star import fitted_or_trained, warn_if_clone_unfits
from ._baselines import CheckpointTrainer
from ._scorers import SCORERS, InfluenceScorer
from ._threshold import otsu_threshold

__all__ = ["GeometricEnsembleInfluence"]

# Training accuracy of theta* from which it counts as having memorised its labels.
MEMORISED = 0.99


@fill_doc
class GeometricEnsembleInfluence(TorchEstimatorMixin, OutlierMixin, BaseEstimator):
    """Influence of training samples via a geometric ensemble (GEX), with its baselines.

    ``fit`` trains a network theta* on ``(X, y)`` with skpcoreset's training loop (or takes an
    already fitted one), then scores every training sample. With ``method='gex'`` it builds a
    geometric ensemble: ``n_members`` checkpoints that continue training from theta* with SGD
    (momentum 0.9) over one cosine learning-rate cycle each on jittered inputs, FGE-style, with
    normalisation statistics refreshed. The self-influence of a sample ``z = (x, y)`` is

        I(z) = mean_m (l(z; theta_m) - max(l(z; theta*), tau))^2

    and the influence of a training sample on a test sample is ``mean_m dl_m(test) dl_m(train)``
    with the same deviations. Mislabeled samples that theta* memorised have a small loss at
    theta* but a large one at the members, so they get a large self-influence. No per-sample
    gradients and no Hessian are needed.

    By default (``estimate='loo_loss'``) a sample is ranked by its estimated leave-one-out
    loss ``l(z; theta*) + I(z)``: the influence function ``I(z) = g^T H^-1 g`` is the first-order
    rise of z's own loss when z is left out of training, and GEX's ``I(z)`` is its
    geometric-ensemble estimate (the variance of z's loss under a posterior around theta*,
    Kim et al. 2023, Sec. 3). Where theta* memorises its labels (the paper's setting) the loss
    at theta* is near 0 for every sample and the ranking is GEX's; where theta* does not fit a
    mislabeled sample its loss is high at theta* and at every member, its deviation is small,
    and the paper's ``I(z)`` alone under-ranks it while the leave-one-out loss does not.
    ``estimate='self_influence'`` ranks by ``I(z)`` alone, as in the paper, and warns
    (:class:`~skpcoreset.exceptions.NoBenefitWarning`) when theta* fits fewer than 99% of its
    training labels, the regime in which the loss at theta* ranks better.

    The baselines run through the same estimator and the same trained theta*:
    ``'loss'`` (the loss at theta*), ``'grad_norm'`` (``||g_z||^2``, the bilinear influence with
    ``H = I``; train-test ``g_test . g_train``) and ``'tracin'`` (TracIn-CP over ``n_checkpoints``
    checkpoints saved during training).

    As an outlier detector, ``predict`` returns -1 for likely mislabeled samples: those whose
    self-influence exceeds Otsu's threshold (on its square root) or the top ``contamination``
    fraction of the training set.

    Parameters
    ----------
    net : None, nn.Module subclass, skorch NeuralNetClassifier or fitted model, default=None
        The network. Unfitted (None, a module class or a skorch template, see
        :func:`skpcoreset.make_net`): theta* is trained on ``(X, y)``. Fitted (an initialised
        skorch net, a fitted skpcoreset ensemble, an ``nn.Module`` instance, or any of these
        wrapped in :class:`sklearn.frozen.FrozenEstimator` so that ``clone`` keeps it fitted):
        its weights are theta* and are not modified. Its outputs must be logits over the sorted
        classes of ``y``.
    method : {'gex', 'loss', 'grad_norm', 'tracin'}, default='gex'
        The influence score.
    n_members : int, default=8
        Size M of the geometric ensemble (the paper uses 32; 8 in its README example).
    member_epochs : int or 'auto', default='auto'
        Epochs of training per member. 'auto' sizes them to the data: about 100 optimiser
        steps per member (between 1 and 100 epochs), so a 150-row table and a 50,000-image set
        both move their members by a comparable amount. The paper's 800 steps per member are
        about 2 CIFAR-10 epochs.
    member_lr : float, default=0.1
        Initial learning rate of each member's cosine cycle (SGD, momentum 0.9).
    jitter : 'auto' or float, default='auto'
        Standard deviation of the Gaussian noise added to the inputs while members train, in
        the units of ``X``. Together with ``member_lr`` it sets how far members move; without
        it a memorising theta* barely moves and the ranking inverts. 'auto' tries 0.2, 0.4,
        0.8 and 1.6 and keeps the first level at which the median loss change of the members
        reaches ``tau`` (each try rebuilds the ensemble from theta*).
    tau : float, default=0.05
        Loss floor of theta* in the deviations.
    estimate : {'loo_loss', 'self_influence'}, default='loo_loss'
        What ``method='gex'`` ranks by: the estimated leave-one-out loss ``l(z; theta*) + I(z)``
        or the paper's self-influence ``I(z)`` alone (see above). Train-test influence is the
        same for both. Other methods ignore it.
    continuation : {'chain', 'fan'}, default='chain'
        'chain': each member continues from the previous one (FGE, as in the paper). 'fan':
        every member starts from theta*; buffer-free dense networks then train all members at
        once with ``vmap``.
    n_jobs : int or None, default=None
        Workers for 'fan' members trained one after another (other networks than buffer-free
        dense ones): threads, or Dask workers under ``joblib.parallel_config(backend="dask")``,
        with the same result. 'chain' members depend on each other and ignore it.
    n_checkpoints : int, default=5
        Checkpoints saved while training theta*, evenly spaced over the epochs (TracIn-CP).
    contamination : 'otsu' or float in (0, 0.5], default='otsu'
        How ``predict`` flags samples: Otsu's threshold on the square root of the self-influence, or this
        fraction of the training set with the largest self-influence.
    input_shape : tuple of int or None, default=None
        Shape of one sample when flat rows hold images, e.g. ``(1, 8, 8)``.
    device : {'cpu', 'cuda', 'cuda:N', 'auto'}, default='cpu'
    random_state : int, RandomState or None, default=None
    verbose : int, default=0
        1 shows progress bars for training theta* and the members.

    Attributes
    ----------
    self_influence_ : ndarray of shape (n_samples,)
        The ``method``'s score of every training sample (larger: more influential, more likely
        mislabeled); for 'gex' the chosen ``estimate``.
    theta_train_accuracy_ : float
        Accuracy of theta* on the training labels: near 1 where it memorised them (GEX's
        regime), lower where mislabeled samples keep a high loss at theta*.
    theta_at_optimum_ : bool
        False when the members, which continue training from theta*, lowered its mean
        training loss: theta* was not converged, and the default estimate falls back to the loss
        at theta* (with a :class:`~skpcoreset.exceptions.NoBenefitWarning`).
    influence_loss_agreement_ : float
        Spearman correlation of I(z) with the loss at theta* over the training set ('gex' only).
        Below 0 the members left theta*'s basin (their deviations rank samples opposite to how
        hard theta* finds them) and the default estimate falls back to the loss at theta*, with
        a :class:`~skpcoreset.exceptions.NoBenefitWarning`.
    base_losses_ : ndarray of shape (n_samples,)
        Loss of every training sample at theta*.
    member_losses_ : ndarray of shape (n_members, n_samples)
        Loss of every training sample at every member (``method='gex'`` only).
    median_loss_shift_ : float
        Median of ``|member_losses_ - base_losses_|`` (``method='gex'`` only); below ``tau`` the
        members barely moved and a warning is raised.
    member_epochs_ : int
        Epochs each member trained (``method='gex'`` only; sized to the data when 'auto').
    jitter_ : float
        The input noise the members were trained with (``method='gex'`` only).
    predicted_labels_ : ndarray of shape (n_samples,)
        Class predicted for every training sample: by the geometric ensemble (probabilities
        averaged) for 'gex', by theta* otherwise. :meth:`relabel` uses it.
    train_labels_ : ndarray of shape (n_samples,)
        The training labels as given.
    train_fingerprint_ : str
        SHA-1 of the training inputs (as validated ``float32``): ``predict(X)`` without ``y``
        recognises the training set by it and scores it with ``train_labels_``.
    threshold_ : float
        Self-influence above which a sample is flagged.
    offset_ : float
        ``-threshold_``, so that ``decision_function = score_samples - offset_``.
    module_ : nn.Module
        theta*, in eval mode.
    net_ : skorch.NeuralNetClassifier or None
        The trained skorch net (None when a fitted net was passed).
    scorer_ : object
        The fitted scorer of ``method`` (holds the members or checkpoints).
    training_strategy_ : str or None
        How members were trained ('sequential' or 'vmap'; 'gex' only).
    classes_ : ndarray of shape (n_classes,)
    input_shape_ : tuple of int
    n_features_in_ : int
    device_ : torch.device
    interrupted_ : str or None
        None after a complete fit; ``'theta*'`` or ``'members'`` when a KeyboardInterrupt
        stopped that phase. What was learned is kept: members start from the theta* reached so
        far, and the scores use the members finished so far.

    See Also
    --------
    skpcoreset.datasets.add_label_noise : inject label noise to evaluate mislabel detection.

    References
    ----------
    .. [1] S.-Y. Kim, K. Kim and E. Yang, "GEX: A flexible method for approximating influence
       via Geometric Ensemble", NeurIPS 2023.
    .. [2] G. Pruthi, F. Liu, S. Kale and M. Sundararajan, "Estimating training data influence
       by tracing gradient descent", NeurIPS 2020.
    .. [3] T. Garipov et al., "Loss surfaces, mode connectivity, and fast ensembling of DNNs",
       NeurIPS 2018.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skpcoreset import make_net
    >>> from skpcoreset.datasets import add_label_noise
    >>> from skpcoreset.posthoc.influence import GeometricEnsembleInfluence
    >>> X, y = load_digits(return_X_y=True)
    >>> y_noisy, flipped = add_label_noise(y, 0.1, random_state=0)
    >>> gex = GeometricEnsembleInfluence(make_net(max_epochs=20, lr=1e-2), random_state=0)
    >>> flagged = gex.fit_predict(X / 16, y_noisy) == -1
    >>> bool(flipped[flagged].mean() > 0.5)
    True

    Cleaning the data set keeps the rows that are not flagged:

    >>> kept = gex.drop_flagged()
    >>> bool(flipped[kept].mean() < flipped.mean())
    True
    """

    _parameter_constraints = {
        "net": "no_validation",
        "method": [StrOptions(set(SCORERS))],
        "n_members": [Interval(Integral, 1, None, closed="left")],
        "member_epochs": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "member_lr": [Interval(Real, 0, None, closed="neither")],
        "jitter": [StrOptions({"auto"}), Interval(Real, 0, None, closed="left")],
        "tau": [Interval(Real, 0, None, closed="left")],
        "estimate": [StrOptions({"loo_loss", "self_influence"})],
        "continuation": [StrOptions({"chain", "fan"})],
        "n_jobs": [None, Integral],
        "n_checkpoints": [Interval(Integral, 1, None, closed="left")],
        "contamination": [StrOptions({"otsu"}), Interval(Real, 0, 0.5, closed="right")],
        **shared_constraints("input_shape", "device", "random_state", "verbose"),
    }

    def __init__(
        self,
        net=None,
        *,
        method="gex",
        n_members=8,
        member_epochs="auto",
        member_lr=0.1,
        jitter="auto",
        tau=0.05,
        estimate="loo_loss",
        continuation="chain",
        n_jobs=None,
        n_checkpoints=5,
        contamination="otsu",
        input_shape=None,
        device="cpu",
        random_state=None,
        verbose=0,
    ):
        store_params(self, locals())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags

    # -- fitting ------------------------------------------------------------------------------
    def _fit(self, X, y_encoded):
        """Train (or take) theta*, prepare the influence ``method`` and score the training set."""
        generator = self._init_torch()
        X_t, y_t = self._to_tensor(X), self._to_tensor(y_encoded, dtype=torch.long)
        checkpoints = self._fit_base(X_t, y_t)
        scorer = self._make_scorer(checkpoints)
        scorer.fit(X_t, y_t, generator=generator, progress=lambda it: self._progress(it, desc="member"))
        self.scorer_ = scorer
        if self.interrupted_ is None and getattr(scorer, "interrupted", False):
            self.interrupted_ = "members"
        self.training_strategy_ = getattr(scorer, "strategy", None)
        self._record_training_scores(scorer, X_t, y_t)
        self.train_labels_ = self.classes_[y_encoded]
        self.train_fingerprint_ = _fingerprint(X)
        self.threshold_ = self._threshold(self.self_influence_)
        self.offset_ = -self.threshold_
        return self

    def _fit_base(self, X: torch.Tensor, y: torch.Tensor) -> list:
        """Set ``module_`` (theta*) and ``net_``; return the TracIn checkpoints (empty when prefit)."""
        init_seed, shuffle_seed = seed_from_random_state(self._seed, 2)

        def train(net):
            return CheckpointTrainer(
                net.module_,
                train_spec_from_net(self.net, n_samples=len(X)),
                n_checkpoints=self.n_checkpoints,
                generator=make_generator(shuffle_seed, self.device_),
                verbose=self.verbose,
                desc="theta*",
            ).fit(X, y)

        self.module_, self.net_, trainer = fitted_or_trained(self, init_seed=init_seed, train=train)
        self.interrupted_ = "theta*" if trainer is not None and trainer.interrupted else None
        if trainer is None:
            self._check_outputs(X[:2])
            return []
        return trainer.checkpoints

    def __sklearn_clone__(self):
        warn_if_clone_unfits(self.net, type(self).__name__)
        return super().__sklearn_clone__()

    @torch.no_grad()
    def _check_outputs(self, X: torch.Tensor) -> None:
        n_outputs = self.module_(X).shape[-1]
        if n_outputs != len(self.classes_):
            raise ValueError(
                f"The fitted net returns {n_outputs} logits but y has {len(self.classes_)} classes; "
                "its outputs must be logits over the sorted classes of y."
            )

    def _make_scorer(self, checkpoints: list) -> InfluenceScorer:
        settings = {
            "n_members": self.n_members,
            "member_epochs": self.member_epochs,
            "member_lr": self.member_lr,
            "jitter": self.jitter,
            "tau": self.tau,
            "estimate": self.estimate,
            "continuation": self.continuation,
            "n_jobs": self.n_jobs,
            "batch_size": as_template(self.net).batch_size if self.net_ is not None else 128,
        }
        if self.method == "tracin":
            settings["checkpoints"] = checkpoints
        return SCORERS[self.method](self.module_, **settings)

    def _record_training_scores(self, scorer: InfluenceScorer, X: torch.Tensor, y: torch.Tensor) -> None:
        self_influence, predicted = scorer.training_scores(X, y)
        self.self_influence_ = _numpy(self_influence)
        self.base_losses_ = _numpy(scorer.base_losses(X, y))
        self.predicted_labels_ = self.classes_[_numpy(predicted).astype(np.int64)]
        with torch.no_grad():
            fitted = torch.cat([self.module_(X[i : i + 1024]).argmax(1) for i in range(0, len(X), 1024)])
        self.theta_train_accuracy_ = float((fitted == y).double().mean())
        if self.method == "gex":
            self.member_losses_ = _numpy(scorer.member_loss)
            self.median_loss_shift_ = scorer.median_shift
            self.jitter_ = scorer.jitter
            self.member_epochs_ = scorer.member_epochs
            self.influence_loss_agreement_ = scorer.loss_agreement
        self.theta_at_optimum_ = bool(getattr(scorer, "at_optimum", True))
        if self.method == "gex" and not self.theta_at_optimum_:
            ranked = self._loss_fallback(
                "Samples are ranked by the loss at theta* instead (method='loss', which ranks better here)"
            )
            warn(
                "GeometricEnsembleInfluence: the geometric-ensemble members, which continue training from "
                "theta*, lowered its mean training loss "
                f"({self.base_losses_.mean():.3f} -> {self.member_losses_.mean():.3f}; theta* fits "
                f"{self.theta_train_accuracy_:.1%} of its labels): theta* is not at an optimum, so the "
                f"members' loss deviations measure training progress rather than influence. {ranked}; "
                "train theta* to convergence for GEX's ranking.",
                NoBenefitWarning,
            )
        elif self.method == "gex" and not scorer.regime_sound:
            ranked = self._loss_fallback("Samples are ranked by the loss at theta* instead (method='loss')")
            warn(
                "GeometricEnsembleInfluence: the members' self-influence ranks the training samples "
                f"opposite to their loss at theta* (Spearman {self.influence_loss_agreement_:.2f}; member "
                f"mean loss {self.base_losses_.mean():.3f} -> {self.member_losses_.mean():.3f}): the members "
                f"left theta*'s basin and their deviations measure that drift, not influence. {ranked}; "
                "lower member_lr or jitter for GEX's ranking.",
                NoBenefitWarning,
            )
        elif self.method == "gex" and self.estimate == "self_influence" and self.theta_train_accuracy_ < MEMORISED:
            warn(
                f"GeometricEnsembleInfluence: theta* fits only {self.theta_train_accuracy_:.1%} of its "
                "training labels, so mislabeled samples it does not fit keep a high loss at theta* and "
                "at every member and their self-influence is small: the loss at theta* (method='loss') "
                "ranks them better here. estimate='loo_loss' (the default) adds it.",
                NoBenefitWarning,
            )

    def _loss_fallback(self, loo_loss_phrase: str) -> str:
        """What a NoBenefitWarning says ranks instead: the default estimate falls back to the loss."""
        if self.estimate == "loo_loss":
            return loo_loss_phrase
        return "The loss at theta* (method='loss', the default estimate's fallback) ranks better here"

    def _threshold(self, scores: np.ndarray) -> float:
        if self.contamination == "otsu":
            # Self-influence is a mean of squared loss deviations; its square root (the RMS
            # deviation, in loss units) gives the clean and the flagged group comparable
            # spreads, which is what Otsu's two-class split assumes.
            return float(otsu_threshold(np.sqrt(scores)) ** 2)
        return float(np.percentile(scores, 100.0 * (1.0 - self.contamination)))

    # -- scoring ------------------------------------------------------------------------------
    def _tensors(self, X, y):
        """Validated tensors of ``X`` and of ``y`` encoded with ``classes_``.

        ``y=None`` is accepted for the training set only (its rows equal, in the same order,
        to the ``X`` given to ``fit``): its labels are then the training labels.
        """
        check_is_fitted(self)
        X_valid = self._validate_X(X, reset=False)
        if y is None:
            if _fingerprint(X_valid) != self.train_fingerprint_:
                raise ValueError(
                    "Self-influence scores (x, y) pairs, and these rows are not the training set "
                    "given to fit: pass their labels, e.g. predict(X, y). Without y only the "
                    "training set is scored (with the labels fit saw)."
                )
            y = self.train_labels_
        X_t = self._to_tensor(X_valid)
        y = np.asarray(column_or_1d(y))
        if len(y) != len(X_t):
            raise ValueError(f"X and y have inconsistent numbers of samples: {len(X_t)} and {len(y)}.")
        unknown = ~np.isin(y, self.classes_)
        if unknown.any():
            raise ValueError(f"y contains labels not seen in fit: {np.unique(y[unknown]).tolist()}.")
        return X_t, self._to_tensor(np.searchsorted(self.classes_, y), dtype=torch.long)

    def score_samples(self, X, y=None) -> np.ndarray:
        """Minus the self-influence of ``(X, y)``: lower means more likely mislabeled.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, *input_shape)
        y : array-like of shape (n_samples,) or None
            Labels of ``X``. None is allowed only for the training set itself (``X`` equal, row
            for row, to the ``X`` given to ``fit``, detected by a fingerprint of its values):
            its rows are scored with the training labels. Any other ``X`` without ``y``
            raises ValueError.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        X_t, y_t = self._tensors(X, y)
        return -_numpy(self.scorer_.self_influence(X_t, y_t))

    def decision_function(self, X, y=None) -> np.ndarray:
        """``score_samples(X, y) - offset_``: negative for samples flagged as likely mislabeled.

        ``y`` may be omitted for the training set only (see :meth:`score_samples`).
        """
        return self.score_samples(X, y) - self.offset_

    def predict(self, X, y=None) -> np.ndarray:
        """-1 for likely mislabeled samples of ``(X, y)``, +1 otherwise.

        ``predict(X_train)`` flags the training set with the labels ``fit`` saw (the same as
        ``fit_predict``); any other ``X`` needs its labels ``y`` (see :meth:`score_samples`).
        """
        return np.where(self.decision_function(X, y) < 0, -1, 1)

    def fit_predict(self, X, y=None, **kwargs) -> np.ndarray:
        """Fit on ``(X, y)`` and flag the training samples (-1: likely mislabeled)."""
        self.fit(X, y, **kwargs)
        return np.where(self.self_influence_ > self.threshold_, -1, 1)

    def influence(self, X_test, y_test) -> np.ndarray:
        """Influence of every training sample on every test sample.

        Parameters
        ----------
        X_test : array-like of shape (n_test, n_features) or (n_test, *input_shape)
        y_test : array-like of shape (n_test,)

        Returns
        -------
        ndarray of shape (n_test, n_train)
            For 'gex' ``mean_m dl_m(test) dl_m(train)``; for 'grad_norm' ``g_test . g_train``;
            for 'tracin' ``sum_c lr_c g_c(test) . g_c(train)``. 'loss' has no train-test form
            and raises ValueError.
        """
        if y_test is None:
            raise ValueError("influence needs the test labels y_test.")
        X_t, y_t = self._tensors(X_test, y_test)
        return _numpy(self.scorer_.train_test(X_t, y_t))

    # -- applications -------------------------------------------------------------------------
    def drop_flagged(self, fraction: float | None = None) -> np.ndarray:
        """Indices of the training samples kept after dropping the likely mislabeled ones (cleaning).

        Parameters
        ----------
        fraction : float in [0, 1) or None, default=None
            None drops the samples ``fit_predict`` flags (self-influence above ``threshold_``);
            a number drops that fraction of the training set with the *largest* self-influence.

        Returns
        -------
        ndarray of int, sorted

        See Also
        --------
        prune_least_influential : the data-pruning intent, which drops the *smallest* scores.

        Examples
        --------
        The class Examples clean noisy digits by the flags; a ``fraction`` instead drops that
        share of the training set, the largest self-influences first:

        >>> import numpy as np
        >>> from skpcoreset import make_net
        >>> from skpcoreset.posthoc.influence import GeometricEnsembleInfluence
        >>> X = np.random.RandomState(0).normal(size=(200, 4)).astype("float32")
        >>> y = (X[:, 0] > 0).astype(int)
        >>> gex = GeometricEnsembleInfluence(make_net(max_epochs=60, lr=0.1), random_state=0).fit(X, y)
        >>> kept = gex.drop_flagged(fraction=0.25)
        >>> len(kept), bool(gex.self_influence_[kept].max() <= np.delete(gex.self_influence_, kept).min())
        (150, True)
        """
        check_is_fitted(self)
        if fraction is None:
            return np.flatnonzero(self.self_influence_ <= self.threshold_)
        order = np.argsort(-self.self_influence_, kind="stable")  # most influential first
        return np.sort(order[self._n_dropped(fraction) :])

    def prune_least_influential(self, fraction: float) -> np.ndarray:
        """Indices of the training samples kept after dropping the least influential ``fraction`` (data pruning).

        Dataset pruning in the GEX paper's sense: the samples with the smallest self-influence
        are the most redundant, and a model trained on the rest loses least. On noisy labels
        this keeps the mislabeled samples (they are the most influential); to clean a data set
        use :meth:`drop_flagged`.

        Parameters
        ----------
        fraction : float in [0, 1)

        Returns
        -------
        ndarray of int, sorted
        """
        check_is_fitted(self)
        order = np.argsort(self.self_influence_, kind="stable")  # least influential first
        return np.sort(order[self._n_dropped(fraction) :])

    def prune(self, fraction: float) -> np.ndarray:
        """Deprecated: use :meth:`prune_least_influential` (data pruning) or :meth:`drop_flagged` (cleaning).

        The name did not say which samples go: it drops the *least* influential ones, which
        after mislabel detection keeps exactly the flipped labels (issue 18).
        """
        warn(
            "GeometricEnsembleInfluence.prune is deprecated: it drops the LEAST influential samples "
            "(data pruning), which keeps mislabeled ones. Use prune_least_influential(fraction) for "
            "data pruning or drop_flagged() to remove likely mislabeled samples.",
            FutureWarning,
        )
        return self.prune_least_influential(fraction)

    def _n_dropped(self, fraction) -> int:
        if not isinstance(fraction, Real) or not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction must be a number in [0, 1); got {fraction!r}.")
        return int(round(fraction * len(self.self_influence_)))

    def relabel(self) -> np.ndarray:
        """Training labels with every flagged sample set to ``predicted_labels_``.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        flagged = self.self_influence_ > self.threshold_
        return np.where(flagged, self.predicted_labels_, self.train_labels_)


def _fingerprint(X: np.ndarray) -> str:
    """SHA-1 of the validated ``float32`` rows (and their shape): recognises the training set."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    return hashlib.sha1(repr(X.shape).encode() + X.tobytes()).hexdigest()


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()
