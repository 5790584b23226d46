"""Bridge ensembles: modes, Bezier curves between them, and cheap bridges to the curves."""

from __future__ import annotations

import dataclasses
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._base import TorchEstimatorMixin, make_generator, seed_from_random_state
from .._skorch import build_member_nets, train_spec_from_net
from .._train import predict_batched, train_members
from ..nets._batchnorm import has_batchnorm, recompute_batchnorm
from ._bridge import BridgeTrainer, kl_divergence, make_bridge, run_stages, stages_of
from ._curve import BezierCurve, CurveTrainer
from ._flops import count_flops

__all__ = ["BridgeEnsembleClassifier"]

# Batch-norm statistics at a curve position are averages; a few thousand inputs pin them down.
_BATCHNORM_SUBSET = 2048


class BridgeEnsembleClassifier(TorchEstimatorMixin, ClassifierMixin, BaseEstimator):
    """A base network plus bridges: light tails that imitate points between trained modes.

    ``n_modes`` networks are trained independently (vectorised for dense networks). Mode 0 is
    joined to every other mode ``j`` by a quadratic Bezier curve whose middle point is trained
    (:class:`~skpcoreset.ensemble._curve.BezierCurve`, any ``nn.Module``). For each curve a
    bridge -- a fresh copy of the network's last ``tail_stages`` stages -- learns to map the
    intermediate features of mode 0 (Type I) or of modes 0 and ``j`` (Type II) to the curve's
    midpoint ``theta(0.5)``, by KL divergence on input-mixup points. The ensemble averages the
    probabilities of the base model(s) and the bridges: with Type I bridges, "Single + k
    bridges" costs ``1 + k c`` forward passes, ``c`` the tail's share of the FLOPs.

    Parameters
    ----------
    net : None, nn.Module subclass or skorch NeuralNetClassifier, default=None
        Template of the modes (see :func:`skpcoreset.make_net`); its epochs, batch size,
        optimiser and learning rate also train curves and bridges. Bridges need a network of
        stages (:class:`~skpcoreset.nets.StagedNet` -- ``MLP``, ``ConvNet``, ``CIFARResNet`` --
        or an ``nn.Sequential``). ``None``: an MLP for flat inputs, a ConvNet for images.
    n_modes : int, default=2
        Independently trained networks; ``n_modes - 1`` curves and bridges are built.
    bridge_type : {'I', 'II'}, default='I'
        'I': bridges read mode 0's features only. 'II': bridge ``j`` reads modes 0 and ``j``,
        which then both belong to the ensemble.
    tail_stages : int or None, default=None
        Number of final stages (the head counts as one) a bridge copies. ``None``: 2, or 1 for
        networks with only two stages. For ``CIFARResNet`` 3 means the last two residual blocks
        plus the head.
    curve_max_epochs, bridge_max_epochs : int or None, default=None
        Epochs of each curve and each bridge; ``None`` uses the template's ``max_epochs``.
    repulsion : float, default=0.0
        Weight ``r`` of ``- r KL(p_mode0 || q_bridge)``, pushing bridges away from mode 0.
    mixup_alpha : float, default=0.4
        Bridges train on input mixup with ``Beta(mixup_alpha, mixup_alpha)`` weights (0: none).
    validation_fraction : float in [0, 1), default=0.1
        Share of the training data held out for ``bridge_fidelity_`` and the temperature.
        With 0 (or too few samples) fidelity is measured on the training data.
    calibrate : bool, default=False
        Fit one temperature on the held-out data, shared by all members' logits.
    ensemble_strategy : {'auto', 'vmap', 'sequential'}, default='auto'
        How the modes are trained; 'auto' vectorises buffer-free dense networks.
    n_jobs : int or None, default=None
        Threads for training the modes one after another (the 'sequential' strategy); -1 uses
        all cores. Under ``joblib.parallel_config(backend="dask")`` modes go to Dask workers.
    input_shape : tuple of int or None, default=None
        Shape of one sample when flat rows hold images, e.g. ``(1, 8, 8)``.
    device : {'cpu', 'cuda', 'cuda:N', 'auto'}, default='cpu'
    random_state : int, RandomState or None, default=None
    verbose : int, default=0
        1 shows a progress bar per trained network.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    modes_ : list of nn.Module
        The trained networks (eval mode); batch-norm statistics recomputed exactly over
        ``batchnorm_inputs_``, as for every curve point, so they are the curves' endpoints.
    curves_ : list of BezierCurve
        ``curves_[j - 1]`` joins mode 0 and mode ``j``.
    midpoints_ : list of nn.Module
        ``theta(0.5)`` of each curve, batch norm recomputed: the bridges' targets.
    bridges_ : list of Bridge
        ``bridges_[j - 1]`` imitates ``midpoints_[j - 1]``.
    bridge_lambdas_ : tuple of float
        Curve positions the bridges imitate: ``(0.5,)`` (empty without bridges).
    batchnorm_inputs_ : Tensor or None
        Up to 2,048 random training inputs over which batch-norm statistics are recomputed
        (modes, midpoints, any curve position in :meth:`curve_proba`); None without batch norm.
    split_ : int
        Index of the first stage a bridge replaces.
    flops_ : dict
        FLOPs per sample counted from the layers that run: ``'mode'`` (one full network),
        ``'trunk'`` (stages before ``split_``) and ``'bridges'`` (list, one per bridge).
    cost_ratio_ : float
        FLOPs of the default ensemble (``predict_proba(X)``) over one base network's.
    bridge_fidelity_ : list of dict
        Per bridge on held-out data: ``kl_to_curve`` = KL(midpoint || bridge), ``kl_to_mode0`` =
        KL(mode 0 || bridge), ``curve_kl_to_mode0`` = KL(midpoint || mode 0) and the top-1
        agreements ``agreement_with_curve`` / ``agreement_with_mode0``.
    temperature_ : float
        Divides every member's logits (1.0 unless ``calibrate=True``).
    ensemble_strategy_ : str
    history_ : dict
        Training losses per epoch: ``'modes'``, ``'curves'``, ``'bridges'``.
    interrupted_ : bool
        True when a KeyboardInterrupt stopped training; later stages were then skipped.
    input_shape_ : tuple of int
    device_ : torch.device
    n_features_in_ : int

    See Also
    --------
    DeepEnsembleClassifier : independent members, the reference for ``deep_ensemble_equivalent``.

    References
    ----------
    .. [1] E. Yun, H. Lee, G. Nam, J. Lee. "Traversing Between Modes in Function Space for Fast
       Ensembling." ICML 2023.
    .. [2] T. Garipov, P. Izmailov, D. Podoprikhin, D. Vetrov, A. G. Wilson. "Loss Surfaces,
       Mode Connectivity, and Fast Ensembling of DNNs." NeurIPS 2018.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skpcoreset import make_net
    >>> from skpcoreset.ensemble import BridgeEnsembleClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> net = make_net(max_epochs=5, module__hidden_sizes=(64, 64))
    >>> clf = BridgeEnsembleClassifier(net, n_modes=3, random_state=0).fit(X / 16, y)
    >>> clf.predict_proba(X[:2] / 16).shape, len(clf.bridges_), clf.cost_ratio_ < 3
    ((2, 10), 2, True)
    """

    _parameter_constraints = {
        "net": "no_validation",
        "n_modes": [Interval(Integral, 2, None, closed="left")],
        "bridge_type": [StrOptions({"I", "II"})],
        "tail_stages": [None, Interval(Integral, 1, None, closed="left")],
        "curve_max_epochs": [None, Interval(Integral, 0, None, closed="left")],
        "bridge_max_epochs": [None, Interval(Integral, 0, None, closed="left")],
        "repulsion": [Interval(Real, 0, None, closed="left")],
        "mixup_alpha": [Interval(Real, 0, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "calibrate": ["boolean"],
        "ensemble_strategy": [StrOptions({"auto", "vmap", "sequential"})],
        "n_jobs": [None, Integral],
        "input_shape": [None, tuple, list],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        net=None,
        n_modes=2,
        bridge_type="I",
        tail_stages=None,
        curve_max_epochs=None,
        bridge_max_epochs=None,
        repulsion=0.0,
        mixup_alpha=0.4,
        validation_fraction=0.1,
        calibrate=False,
        ensemble_strategy="auto",
        n_jobs=None,
        input_shape=None,
        device="cpu",
        random_state=None,
        verbose=0,
    ):
        self.net = net
        self.n_modes = n_modes
        self.bridge_type = bridge_type
        self.tail_stages = tail_stages
        self.curve_max_epochs = curve_max_epochs
        self.bridge_max_epochs = bridge_max_epochs
        self.repulsion = repulsion
        self.mixup_alpha = mixup_alpha
        self.validation_fraction = validation_fraction
        self.calibrate = calibrate
        self.ensemble_strategy = ensemble_strategy
        self.n_jobs = n_jobs
        self.input_shape = input_shape
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # -- fitting -------------------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Train the modes, the curves between mode 0 and each other mode, and the bridges.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, *input_shape)
        y : array-like of shape (n_samples,)

        Returns
        -------
        self
        """
        X, y = self._validate_X_y(X, y)
        self._init_torch()
        seeds = iter(seed_from_random_state(self._seed, 2 * self.n_modes + 3 * (self.n_modes - 1) + 1))
        train, held_out = self._split(len(y), next(seeds))
        X_t, y_t = self._to_tensor(X), self._to_tensor(y, dtype=torch.long)
        X_fit, y_fit = X_t[train], y_t[train]
        self._n_fit = len(train)
        self.history_, self.interrupted_ = {"modes": [], "curves": [], "bridges": []}, False
        self.curves_, self.midpoints_, self.bridges_ = [], [], []
        self._fit_modes(X_fit, y_fit, [next(seeds) for _ in range(2 * self.n_modes)])
        self.split_ = self._resolve_split()
        for j in range(1, self.n_modes):
            if self.interrupted_:
                break
            self._fit_curve(j, X_fit, y_fit, next(seeds))
        for j in range(1, len(self.midpoints_) + 1):
            if self.interrupted_:
                break
            self._fit_bridge(j, X_fit, next(seeds), next(seeds))
        self.flops_ = self._count_flops()
        self.cost_ratio_ = self.cost()
        X_eval = X_t[held_out] if len(held_out) else X_fit
        y_eval = y_t[held_out] if len(held_out) else y_fit
        self.bridge_lambdas_ = (0.5,) if self.bridges_ else ()
        self.temperature_ = 1.0
        self.bridge_fidelity_ = [self._fidelity(j, X_eval) for j in range(1, len(self.bridges_) + 1)]
        if self.calibrate:
            self.temperature_ = self._fit_temperature(X_eval, y_eval)
        return self

    def _split(self, n_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Shuffled indices of the training part and of the held-out part (empty when too small)."""
        n_held = int(round(self.validation_fraction * n_samples))
        order = np.random.RandomState(seed).permutation(n_samples)
        if n_samples - n_held < 2:
            n_held = 0
        return order[n_held:], order[:n_held]

    def _spec(self, max_epochs: int | None):
        spec = train_spec_from_net(self.net, n_samples=self._n_fit)
        return spec if max_epochs is None else dataclasses.replace(spec, max_epochs=max_epochs)

    def _fit_modes(self, X: torch.Tensor, y: torch.Tensor, seeds: list[int]) -> None:
        members = build_member_nets(
            self.net,
            input_shape=self.input_shape_,
            n_classes=len(self.classes_),
            seeds=seeds[: self.n_modes],
            device=self.device_,
        )
        self.modes_ = [member.module_ for member in members]
        stages_of(self.modes_[0])  # fail before training when bridges cannot be built
        self.ensemble_strategy_, self.history_["modes"], self.interrupted_ = train_members(
            self.modes_,
            (X, y),
            self._spec(None),
            seeds=seeds[self.n_modes :],
            strategy=self.ensemble_strategy,
            n_jobs=self.n_jobs,
            verbose=self.verbose,
            desc="mode",
        )
        # Precise BN: curve points get their statistics recomputed on batchnorm_inputs_, so the
        # modes do too, which makes the curves' endpoints equal to the modes.
        self.batchnorm_inputs_ = X[:_BATCHNORM_SUBSET] if has_batchnorm(self.modes_[0]) else None
        for mode in self.modes_:
            if self.batchnorm_inputs_ is not None:
                recompute_batchnorm(mode, self.batchnorm_inputs_)
            mode.eval()

    def _resolve_split(self) -> int:
        n_stages = len(stages_of(self.modes_[0]))
        tail = self.tail_stages if self.tail_stages is not None else min(2, n_stages - 1)
        if not 1 <= tail < n_stages:
            raise ValueError(
                f"tail_stages={self.tail_stages} must leave at least one stage to the trunk: "
                f"the network has {n_stages} stages."
            )
        return n_stages - tail

    def _fit_curve(self, j: int, X: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        curve = BezierCurve(self.modes_[0], self.modes_[j])
        trainer = CurveTrainer(
            curve,
            self._spec(self.curve_max_epochs),
            generator=make_generator(seed, self.device_),
            verbose=self.verbose,
            desc=f"curve 0-{j}",
        ).fit(X, y)
        self.history_["curves"].append(trainer.history)
        self.interrupted_ = trainer.interrupted
        self.curves_.append(curve.eval())
        self.midpoints_.append(curve.module_at(0.5, self.batchnorm_inputs_))

    def _sources(self, j: int) -> list[nn.Module]:
        """The modes whose features bridge ``j`` reads."""
        return [self.modes_[0]] if self.bridge_type == "I" else [self.modes_[0], self.modes_[j]]

    def _fit_bridge(self, j: int, X: torch.Tensor, init_seed: int, train_seed: int) -> None:
        sources = self._sources(j)
        with torch.no_grad():
            example = run_stages(sources[0], X[:2], 0, self.split_)
        bridge = make_bridge(sources[0], self.split_, example, len(sources), init_seed)
        trainer = BridgeTrainer(
            bridge,
            self._spec(self.bridge_max_epochs),
            sources=sources,
            split=self.split_,
            target=self.midpoints_[j - 1],
            repulsion=self.repulsion,
            mixup_alpha=self.mixup_alpha,
            seed=train_seed,
            generator=make_generator(train_seed, self.device_),
            verbose=self.verbose,
            desc=f"bridge {j}",
        ).fit(X)
        self.history_["bridges"].append(trainer.history)
        self.interrupted_ = trainer.interrupted
        self.bridges_.append(bridge.eval())

    # -- cost ------------------------------------------------------------------------------------
    def _count_flops(self) -> dict:
        mode = self.modes_[0]
        example = torch.zeros((1, *self.input_shape_), device=self.device_)
        with torch.no_grad():
            features = run_stages(mode, example, 0, self.split_)
        bridges = [
            count_flops(_fed_with(bridge, len(self._sources(j))), [bridge], features)
            for j, bridge in enumerate(self.bridges_, start=1)
        ]
        return {
            "mode": count_flops(mode, [mode], example),
            "trunk": count_flops(lambda x: run_stages(mode, x, 0, self.split_), [mode], example),
            "bridges": bridges,
        }

    def _plan(self, n_bridges: int | None, include_bases: bool) -> tuple[list[int], list[int]]:
        """(modes run in full, bridge numbers j) of an ensemble."""
        available = len(self.bridges_)
        n_bridges = available if n_bridges is None else n_bridges
        if not isinstance(n_bridges, Integral) or not 0 <= n_bridges <= available:
            raise ValueError(f"n_bridges must be an integer in [0, {available}]; got {n_bridges!r}.")
        bridges = list(range(1, n_bridges + 1))
        if not include_bases:
            if not bridges:
                raise ValueError("include_bases=False with n_bridges=0 leaves an empty ensemble.")
            return [], bridges
        bases = sorted({m for j in bridges for m in self._mode_indices(j)} | {0})
        return bases, bridges

    def _mode_indices(self, j: int) -> list[int]:
        return [0] if self.bridge_type == "I" else [0, j]

    def cost(self, n_bridges: int | None = None, include_bases: bool = True) -> float:
        """FLOPs of an ensemble's forward pass relative to one base network.

        Parameters
        ----------
        n_bridges : int or None, default=None
            Use the first ``n_bridges`` bridges (all when None).
        include_bases : bool, default=True
            Whether the base modes are members (their trunks are paid for either way).

        Returns
        -------
        float
            ``1 + k c`` for the base model and ``k`` Type I bridges.
        """
        check_is_fitted(self, "flops_")
        bases, bridges = self._plan(n_bridges, include_bases)
        trunks = {m for j in bridges for m in self._mode_indices(j)} - set(bases)
        total = (
            len(bases) * self.flops_["mode"]
            + len(trunks) * self.flops_["trunk"]
            + sum(self.flops_["bridges"][j - 1] for j in bridges)
        )
        return total / self.flops_["mode"]

    # -- fidelity and calibration ------------------------------------------------------------------
    @torch.no_grad()
    def _fidelity(self, j: int, X: torch.Tensor) -> dict:
        log_curve = _log_proba_batched(self.midpoints_[j - 1], X)
        log_mode0 = _log_proba_batched(self.modes_[0], X)
        log_bridge = predict_batched(lambda xb: F.log_softmax(self._bridge_logits(j, xb), -1), X)
        curve_top, mode0_top, bridge_top = (t.argmax(-1) for t in (log_curve, log_mode0, log_bridge))
        return {
            "kl_to_curve": float(kl_divergence(log_curve, log_bridge)),
            "kl_to_mode0": float(kl_divergence(log_mode0, log_bridge)),
            "curve_kl_to_mode0": float(kl_divergence(log_curve, log_mode0)),
            "agreement_with_curve": float((bridge_top == curve_top).float().mean()),
            "agreement_with_mode0": float((bridge_top == mode0_top).float().mean()),
        }

    def _fit_temperature(self, X: torch.Tensor, y: torch.Tensor) -> float:
        """The temperature minimising the held-out NLL of the default ensemble."""
        plan = self._plan(None, True)
        logits = predict_batched(lambda xb: self._raw_member_logits(xb, *plan).transpose(0, 1), X)
        logits = logits.transpose(0, 1).double()  # (n_members, N, C)
        rows = torch.arange(len(y), device=y.device)

        def nll(log_t: float) -> float:
            proba = (logits / np.exp(log_t)).softmax(-1).mean(0)
            return float(-proba[rows, y].clamp_min(1e-12).log().mean())

        return float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))

    # -- prediction --------------------------------------------------------------------------------
    def _bridge_logits(self, j: int, X: torch.Tensor, features: dict | None = None) -> torch.Tensor:
        features = {} if features is None else features
        inputs = []
        for m in self._mode_indices(j):
            if m not in features:
                features[m] = run_stages(self.modes_[m], X, 0, self.split_)
            inputs.append(features[m])
        return self.bridges_[j - 1](inputs)

    def _raw_member_logits(self, X: torch.Tensor, bases: list[int], bridges: list[int]) -> torch.Tensor:
        features = {m: run_stages(self.modes_[m], X, 0, self.split_) for m in bases}
        logits = [run_stages(self.modes_[m], features[m], self.split_) for m in bases]
        logits += [self._bridge_logits(j, X, features) for j in bridges]
        return torch.stack(logits)

    def member_logits(self, X: torch.Tensor, n_bridges: int | None = None, include_bases: bool = True) -> torch.Tensor:
        """Differentiable member logits of shape ``(n_members, N, n_classes)``.

        Members are the base mode(s) first, then the bridges; logits are divided by
        ``temperature_``. ``X`` is a float tensor on ``device_`` shaped ``(N, *input_shape_)``;
        gradients flow to it, so the ensemble can serve as a distillation teacher.
        """
        check_is_fitted(self)
        return self._raw_member_logits(X, *self._plan(n_bridges, include_bases)) / self.temperature_

    def member_proba(self, X, n_bridges: int | None = None, include_bases: bool = True) -> np.ndarray:
        """Per-member probabilities, shape ``(n_members, n_samples, n_classes)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, *input_shape)
        n_bridges : int or None, default=None
            Use the first ``n_bridges`` bridges (all when None).
        include_bases : bool, default=True
            Include the base mode(s) (mode 0; with Type II also the partner modes).
        """
        check_is_fitted(self)
        self._plan(n_bridges, include_bases)
        X_t = self._to_tensor(self._validate_X(X, reset=False))
        proba = predict_batched(
            lambda xb: self.member_logits(xb, n_bridges, include_bases).softmax(-1).transpose(0, 1), X_t
        )
        return proba.transpose(0, 1).double().cpu().numpy()

    def predict_proba(self, X, n_bridges: int | None = None, include_bases: bool = True) -> np.ndarray:
        """Mean of the members' probabilities, shape ``(n_samples, n_classes)``.

        ``n_bridges=0`` gives the single base model; see :meth:`member_proba` for the arguments.
        """
        proba = self.member_proba(X, n_bridges, include_bases).mean(axis=0)
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """Most probable class label of the averaged prediction."""
        check_is_fitted(self)
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def midpoint_proba(self, X) -> np.ndarray:
        """Probabilities of the curves' true midpoints ``theta(0.5)``, shape ``(n_curves, n_samples, n_classes)``.

        Each midpoint costs a full forward pass; the bridges approximate them cheaply.
        """
        check_is_fitted(self)
        X_t = self._to_tensor(self._validate_X(X, reset=False))
        if not self.midpoints_:
            return np.zeros((0, len(X_t), len(self.classes_)))
        proba = predict_batched(
            lambda xb: torch.stack([(m(xb) / self.temperature_).softmax(-1) for m in self.midpoints_], 1), X_t
        )
        return proba.transpose(0, 1).double().cpu().numpy()

    def curve_proba(self, X, lam: float, curve: int = 0) -> np.ndarray:
        """Probabilities of the network at position ``lam`` of a curve, shape ``(n_samples, n_classes)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, *input_shape)
        lam : float in [0, 1]
            0 is mode 0, 1 is mode ``curve + 1``.
        curve : int, default=0
            Index into ``curves_``.
        """
        check_is_fitted(self)
        if not 0 <= curve < len(self.curves_):
            raise ValueError(f"curve must be in [0, {len(self.curves_) - 1}]; got {curve}.")
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must lie in [0, 1]; got {lam}.")
        X_t = self._to_tensor(self._validate_X(X, reset=False))
        module = self.curves_[curve].module_at(lam, self.batchnorm_inputs_)
        proba = predict_batched(lambda xb: (module(xb) / self.temperature_).softmax(-1), X_t)
        return proba.double().cpu().numpy()


def _fed_with(bridge: nn.Module, n_inputs: int):
    """``bridge`` as a function of one feature map, repeated for each input it reads."""
    return lambda features: bridge([features] * n_inputs)


def _log_proba_batched(module: nn.Module, X: torch.Tensor) -> torch.Tensor:
    return predict_batched(lambda xb: F.log_softmax(module(xb), dim=-1), X)
