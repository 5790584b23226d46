"""Bridge ensembles: modes, Bezier curves between them, and cheap bridges to the curves."""

from __future__ import annotations

import math
import time
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._base import (
    TorchEstimatorMixin,
    fill_doc,
    make_generator,
    seed_from_random_state,
    shared_constraints,
    store_params,
)
from .._holdout import holdout_split, scores, standard_error, warn_if_no_benefit
from .._presets import PRESETS, auto_epochs
from .._skorch import as_template, build_member_nets, template_validation_split, train_template_members
from .._train import TrainSpec, predict_batched
from ..augment import NAMED_AUGMENTATIONS, resolve_augmentation
from ..nets._batchnorm import has_batchnorm, recompute_batchnorm
from ._bridge import BridgeTrainer, FeatureSplit, children_compose, kl_divergence, make_bridge, stages_of
from ._curve import BezierCurve, CurveTrainer
from ._flops import count_flops

__all__ = ["BridgeEnsembleClassifier"]

# Batch-norm statistics at a curve position are averages; a few thousand inputs pin them down.
_BATCHNORM_SUBSET = 2048
# Curves and bridges train on their own schedule (the official code gives each the base
# network's full SGD + cosine schedule): the member preset's optimiser and epochs sized to the
# data, weight decay 5e-4 on the curve's middle point and 1e-5 on bridges (Yun et al., 2023).
_CURVE_WEIGHT_DECAY = 5e-4
_BRIDGE_WEIGHT_DECAY = 1e-5
# The default tail (two stages) is shortened to the head when it costs this share of a base pass.
_MAX_TAIL_SHARE = 0.4
# A bridge is kept by n_bridges='auto' when it lowers the held-out NLL by more than this (nats)
# and by more than _SELECTION_Z standard errors of the per-sample differences (a dozen held-out
# rows of a small table cannot vouch for a bridge: wine, seed 1, kept one that raised the test NLL).
_SELECTION_MARGIN = 1e-4
_SELECTION_Z = 1.0


@fill_doc
class BridgeEnsembleClassifier(TorchEstimatorMixin, ClassifierMixin, BaseEstimator):
    """A base network plus bridges: light tails that imitate points between trained modes.

    ``n_modes`` networks are trained independently (the member preset of
    :mod:`skpcoreset._presets` when ``net=None``: SGD with Nesterov momentum, weight decay,
    warm-up + cosine, epochs sized to the data). Mode 0 is joined to every other mode ``j`` by
    a quadratic Bezier curve whose middle point is trained
    (:class:`~skpcoreset.ensemble._curve.BezierCurve`, any ``nn.Module``). For each curve a
    bridge -- a fresh copy of the network's tail -- learns to map the intermediate features of
    mode 0 (Type I) or of modes 0 and ``j`` (Type II) to the curve's midpoint ``theta(0.5)``,
    by KL divergence on input-mixup points; the epoch with the lowest held-out KL is kept.
    Curves and bridges get their own schedule (SGD + cosine, weight decay, epochs sized to the
    data and, on a CPU, to the network's FLOPs), whatever the modes' template. The ensemble
    averages the probabilities of the base model(s) and the bridges: with Type I bridges,
    "Single + k bridges" costs ``1 + k c`` forward passes, ``c`` the tail's share of the FLOPs.

    The estimator checks its benefit on held-out data: ``validation_scores_`` compares the
    single mode 0 with the ensemble, and ``n_bridges='auto'`` keeps only the bridges that lower
    the held-out NLL, warning with :class:`~skpcoreset.exceptions.NoBenefitWarning` when it
    keeps none.

    Parameters
    ----------
    net : None, nn.Module subclass or skorch NeuralNetClassifier, default=None
        Template of the modes (see :func:`skpcoreset.make_net`). ``None``: the member preset
        with an MLP for flat inputs, a ConvNet for images. Bridges cut the network after a
        stage: a :class:`~skpcoreset.nets.StagedNet` (``MLP``, ``ConvNet``, ``CIFARResNet``),
        an ``nn.Sequential``, or any module whose named children, applied in order, are its
        forward pass; for any other module name the feature layer with ``feature_layer``.
    n_modes : int, default=2
        Independently trained networks; ``n_modes - 1`` curves and bridges are built.
    bridge_type : {'I', 'II'}, default='I'
        'I': bridges read mode 0's features only. 'II': bridge ``j`` reads the channel
        concatenation of modes 0 and ``j``'s features, so both modes belong to the ensemble.
    n_bridges : 'auto', int or None, default='auto'
        Bridges of the default ensemble (``predict_proba``). 'auto': greedily, the bridges
        that lower the held-out NLL by more than one standard error of the per-sample
        differences (all of them without held-out data); an int ``k``: the first ``k``; None:
        all.
    tail_stages : int or None, default=None
        Number of final stages (the head counts as one) a bridge copies. ``None``: 2 (for
        ``CIFARResNet`` the last residual block plus the head, for ``ConvNet`` the last conv
        block plus the head), or 1 when the network has two stages or its last two cost 0.4
        of a base pass or more (a deep MLP's last hidden layer). A tail that would be a single
        linear readout (an MLP's head) becomes a hidden-layer head whose width costs 0.3 of a
        base forward pass.
    feature_layer : str or None, default=None
        Dotted name of the submodule whose output the bridges read (``module.get_submodule``),
        for networks that are not made of stages; the bridge is then a hidden-layer head on
        that (average-pooled) feature map. On a network of stages, a stage's name cuts after
        that stage.
    curve_max_epochs, bridge_max_epochs : int or None, default=None
        Epochs of each curve and each bridge; ``None`` sizes them to the data like the member
        preset's ``'auto'`` (about 1,500 steps, 20-150 epochs, capped by the CPU FLOP budget).
    repulsion : float, default=0.0
        Weight ``r`` of ``- r mean_k KL(p_k || q_bridge)`` over the modes a bridge reads,
        pushing bridges away from them.
    mixup_alpha : float, default=0.4
        Bridges train on input mixup with ``Beta(mixup_alpha, mixup_alpha)`` weights drawn
        per sample (0: none).
    validation_fraction : float in [0, 1), default=0.1
        Share of every class held out (when the net has no ``train_split`` of its own) for the
        bridges' checkpoints, ``n_bridges='auto'``, ``validation_scores_``,
        ``bridge_fidelity_`` and the temperature. With 0 nothing is held out: every epoch's
        last weights and every bridge are kept and fidelity is measured on the training data.
    calibrate : bool, default=False
        Fit one temperature on the held-out data, shared by all members' logits.
    augment : None, {'shift', 'shift_flip', 'dsa'} or callable, default=None
        Augmentation of every training batch of modes, curves and bridges (see
        :mod:`skpcoreset.augment`; the official recipe uses crop + flip, 'shift_flip').
    ensemble_strategy : {'auto', 'vmap', 'sequential'}, default='auto'
        How the modes are trained; 'auto' vectorises buffer-free dense networks.
    n_jobs : int or None, default=None
        Threads for training the modes one after another (the 'sequential' strategy); -1 uses
        all cores. Under ``joblib.parallel_config(backend="dask")`` modes go to Dask workers.
    %(input_shape)s
    %(device)s
    %(random_state)s
    %(verbose)s

    Attributes
    ----------
    modes_ : list of nn.Module
        The trained networks (eval mode); batch-norm statistics recomputed exactly over
        ``batchnorm_inputs_``, as for every curve point, so they are the curves' endpoints.
    curves_ : list of BezierCurve
        ``curves_[j - 1]`` joins mode 0 and mode ``j``.
    midpoints_ : list of nn.Module
        ``theta(0.5)`` of each curve, batch norm recomputed: the bridges' targets.
    bridges_ : list of Bridge
        ``bridges_[j - 1]`` imitates ``midpoints_[j - 1]`` (all trained bridges).
    bridge_order_ : list of int
        Bridge numbers ``j`` in the order ensembles use them: the kept ones first.
    n_bridges_ : int
        How many bridges (the first of ``bridge_order_``) the default ensemble uses.
    bridge_lambdas_ : tuple of float
        Curve positions the bridges imitate: ``(0.5,)`` (empty without bridges).
    batchnorm_inputs_ : Tensor or None
        Up to 2,048 random training inputs over which batch-norm statistics are recomputed
        (modes, midpoints, any curve position in :meth:`curve_proba`); None without batch norm.
    split_ : FeatureSplit
        Where the networks are cut: ``split_.stage`` (index of the first tail stage) or
        ``split_.layer`` (the feature layer's name).
    flops_ : dict
        FLOPs per sample counted from the layers that run: ``'mode'`` (one full network),
        ``'trunk'`` (the layers before the cut) and ``'bridges'`` (list, one per bridge).
    cost_ratio_ : float
        FLOPs of the default ensemble (``predict_proba(X)``) over one base network's.
    validation_scores_ : dict or None
        Held-out ``accuracy``, ``nll`` and ``ece`` of ``'single'`` (mode 0), ``'ensemble'``
        (the default ensemble) and ``'all_bridges'``; None without held-out data.
    bridge_fidelity_ : list of dict
        Per bridge on held-out data: ``kl_to_curve`` = KL(midpoint || bridge), ``kl_to_mode0`` =
        KL(mode 0 || bridge), ``curve_kl_to_mode0`` = KL(midpoint || mode 0), the top-1
        agreements ``agreement_with_curve`` / ``agreement_with_mode0`` and ``best_epoch``.
    temperature_ : float
        Divides every member's logits (1.0 unless ``calibrate=True``).
    ensemble_strategy_ : str
    history_ : dict
        Training histories: ``'modes'``, ``'curves'``, ``'bridges'`` (skorch ``History``).
    fit_seconds_ : dict
        Wall seconds of each phase: ``'modes'``, ``'curves'``, ``'bridges'``.
    %(fitted_basics)s
    %(interrupted)s

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
    >>> clf = BridgeEnsembleClassifier(net, n_modes=3, n_bridges=None, curve_max_epochs=5,
    ...                                bridge_max_epochs=5, random_state=0).fit(X / 16, y)
    >>> clf.predict_proba(X[:2] / 16).shape, len(clf.bridges_), clf.cost_ratio_ < 2
    ((2, 10), 2, True)
    """

    _parameter_constraints = {
        "net": "no_validation",
        "n_modes": [Interval(Integral, 2, None, closed="left")],
        "bridge_type": [StrOptions({"I", "II"})],
        "n_bridges": [StrOptions({"auto"}), Interval(Integral, 0, None, closed="left"), None],
        "tail_stages": [None, Interval(Integral, 1, None, closed="left")],
        "feature_layer": [None, str],
        "curve_max_epochs": [None, Interval(Integral, 0, None, closed="left")],
        "bridge_max_epochs": [None, Interval(Integral, 0, None, closed="left")],
        "repulsion": [Interval(Real, 0, None, closed="left")],
        "mixup_alpha": [Interval(Real, 0, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "calibrate": ["boolean"],
        "augment": [None, StrOptions(set(NAMED_AUGMENTATIONS)), callable],
        "ensemble_strategy": [StrOptions({"auto", "vmap", "sequential"})],
        "n_jobs": [None, Integral],
        **shared_constraints("input_shape", "device", "random_state", "verbose"),
    }

    def __init__(
        self,
        net=None,
        *,
        n_modes=2,
        bridge_type="I",
        n_bridges="auto",
        tail_stages=None,
        feature_layer=None,
        curve_max_epochs=None,
        bridge_max_epochs=None,
        repulsion=0.0,
        mixup_alpha=0.4,
        validation_fraction=0.1,
        calibrate=False,
        augment=None,
        ensemble_strategy="auto",
        n_jobs=None,
        input_shape=None,
        device="cpu",
        random_state=None,
        verbose=0,
    ):
        store_params(self, locals())

    def _fit(self, X, y):
        """Train the modes, the curves between mode 0 and each other mode, and the bridges."""
        self._init_torch()
        self._augment = resolve_augmentation(self.augment, self.input_shape_, fill=float(X.min()))
        seeds = iter(seed_from_random_state(self._seed, 3 + 3 * self.n_modes))
        X_t, y_t = self._to_tensor(X), self._to_tensor(y, dtype=torch.long)
        own_split = template_validation_split(self.net, y)
        train, held_out = (
            own_split if own_split is not None else holdout_split(y, self.validation_fraction, next(seeds))
        )
        X_fit, y_fit = X_t[train], y_t[train]
        X_val, y_val = (X_t[held_out], y_t[held_out]) if len(held_out) else (None, None)
        self.history_ = {"modes": [], "curves": [], "bridges": []}
        self.fit_seconds_ = {"modes": 0.0, "curves": 0.0, "bridges": 0.0}
        self.interrupted_ = None
        self.curves_, self.midpoints_, self.bridges_, self._best_epochs = [], [], [], []
        self.split_ = self._resolve_split(X_t[:4])
        # a net with its own train_split carves the same held-out rows inside the members' runs
        mode_data = (X_t, y_t) if own_split is not None else (X_fit, y_fit)
        self._timed("modes", self._fit_modes, *mode_data, next(seeds))
        self._mode_flops = count_flops(self.modes_[0], [self.modes_[0]], X_t[:1])
        for j in range(1, self.n_modes):
            if self.interrupted_:
                break
            self._timed("curves", self._fit_curve, j, X_fit, y_fit, next(seeds))
        for j in range(1, len(self.midpoints_) + 1):
            if self.interrupted_:
                break
            self._timed("bridges", self._fit_bridge, j, X_fit, X_val, next(seeds), next(seeds))
        self.flops_ = self._count_flops()
        self.temperature_ = 1.0
        self.bridge_lambdas_ = (0.5,) if self.bridges_ else ()
        self._select_bridges(X_val, y_val)
        self.cost_ratio_ = self.cost()
        X_eval = X_val if X_val is not None else X_fit
        self.bridge_fidelity_ = [self._fidelity(j, X_eval) for j in range(1, len(self.bridges_) + 1)]
        if self.calibrate:
            self.temperature_ = self._fit_temperature(X_eval, y_val if y_val is not None else y_fit)
        del self._augment  # a fit-time setting, not part of the fitted model
        return self

    def _timed(self, phase: str, step, *args) -> None:
        start = time.perf_counter()
        step(*args)
        self.fit_seconds_[phase] += time.perf_counter() - start

    def _fit_modes(self, X: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        run = train_template_members(
            self.net,
            X,
            y,
            n_members=self.n_modes,
            random_state=seed,
            n_classes=len(self.classes_),
            strategy=self.ensemble_strategy,
            n_jobs=self.n_jobs,
            verbose=self.verbose,
            desc="mode",
            augment=self._augment,
        )
        self.modes_ = run.modules
        self.ensemble_strategy_, self.history_["modes"] = run.strategy, run.histories
        self.interrupted_ = "modes" if run.interrupted else None
        # Precise BN: curve points get their statistics recomputed on batchnorm_inputs_, so the
        # modes do too, which makes the curves' endpoints equal to the modes.
        self.batchnorm_inputs_ = X[:_BATCHNORM_SUBSET] if has_batchnorm(self.modes_[0]) else None
        for mode in self.modes_:
            if self.batchnorm_inputs_ is not None:
                recompute_batchnorm(mode, self.batchnorm_inputs_)
            mode.eval()

    def _resolve_split(self, probe: torch.Tensor) -> FeatureSplit:
        """Where bridges cut the network, checked on an untrained module before anything trains."""
        (member,) = build_member_nets(
            self.net, input_shape=self.input_shape_, n_classes=len(self.classes_), seeds=[0], device=self.device_
        )
        module = member.module_.eval()
        composes = children_compose(module, probe)
        names = [name for name, _ in module.named_children()]
        if self.feature_layer is not None:
            try:
                module.get_submodule(self.feature_layer)
            except AttributeError as exc:
                raise ValueError(
                    f"feature_layer={self.feature_layer!r} names no submodule of {type(module).__name__} "
                    f"(its children: {names})."
                ) from exc
            staged = isinstance(module, nn.Sequential) or hasattr(module, "stages")
            if composes and not staged and self.feature_layer in names:
                stage = names.index(self.feature_layer) + 1
                if stage < len(names):
                    return FeatureSplit(stage=stage)
            return FeatureSplit(layer=self.feature_layer)
        if not composes:
            raise TypeError(
                f"Bridges cut the network where its features are read, but {type(module).__name__} is "
                "neither a network of stages (a skpcoreset StagedNet: MLP, ConvNet, CIFARResNet, or an "
                "nn.Sequential) nor a module whose named children, applied in order, give its output "
                f"(children: {names}). Pass feature_layer='<submodule name>' to name the layer whose output "
                "the bridges read. (Bezier curves alone work for any nn.Module.)"
            )
        n_stages = len(stages_of(module))
        if self.tail_stages is not None:
            if not 1 <= self.tail_stages < n_stages:
                raise ValueError(
                    f"tail_stages={self.tail_stages} must leave at least one stage to the trunk: "
                    f"the network has {n_stages} stages. Use feature_layer to cut it elsewhere."
                )
            return FeatureSplit(stage=n_stages - self.tail_stages)
        if n_stages < 2:
            raise ValueError(
                f"{type(module).__name__} has {n_stages} stage: bridges need a trunk and a tail. "
                "Use feature_layer to name the layer whose output the bridges read."
            )
        # the last two stages, unless they cost half a base pass (a deep MLP's last hidden layer)
        mode_flops = count_flops(module, [module], probe[:1])
        for tail in (2, 1):
            if tail >= n_stages:
                continue
            split = FeatureSplit(stage=n_stages - tail)
            with torch.no_grad():
                features = split.features(module, probe[:1])
            tail_flops = count_flops(lambda h, s=split: _run_tail(module, h, s), [module], features)
            if tail == 1 or tail_flops < _MAX_TAIL_SHARE * mode_flops:
                return split
        raise AssertionError("unreachable")  # pragma: no cover

    def _side_spec(self, max_epochs: int | None, forward_flops: int, weight_decay: float) -> TrainSpec:
        """SGD + cosine for curves and bridges: the member preset's optimiser, epochs sized to the data."""
        preset = PRESETS["member"]
        batch_size = int(as_template(self.net).batch_size) if self.net is not None else preset["batch_size"]
        batch_size = batch_size if batch_size > 0 else preset["batch_size"]
        if max_epochs is None:
            max_epochs = auto_epochs(self._n_fit, batch_size, forward_flops=forward_flops, device=self.device_)
        return TrainSpec(
            max_epochs=int(max_epochs),
            batch_size=batch_size,
            lr=preset["lr"],
            optimizer=torch.optim.SGD,
            optimizer_kwargs={
                "momentum": preset["optimizer__momentum"],
                "nesterov": preset["optimizer__nesterov"],
                "weight_decay": weight_decay,
            },
            schedule="cosine",
        )

    def _fit_curve(self, j: int, X: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        self._n_fit = len(X)
        curve = BezierCurve(self.modes_[0], self.modes_[j])
        trainer = CurveTrainer(
            curve,
            self._side_spec(self.curve_max_epochs, self._mode_flops, _CURVE_WEIGHT_DECAY),
            generator=make_generator(seed, self.device_),
            augment=self._augment,
            verbose=self.verbose,
            desc=f"curve 0-{j}",
        ).fit(X, y)
        self.history_["curves"].append(trainer.history)
        self.interrupted_ = "curves" if trainer.interrupted else None
        self.curves_.append(curve.eval())
        self.midpoints_.append(curve.module_at(0.5, self.batchnorm_inputs_))

    def _sources(self, j: int) -> list[nn.Module]:
        """The modes whose features bridge ``j`` reads."""
        return [self.modes_[m] for m in self._mode_indices(j)]

    def _new_bridge(self, j: int, example: torch.Tensor, seed: int) -> nn.Module:
        with torch.no_grad():
            features = self.split_.features(self.modes_[0], example)
        return make_bridge(
            self.modes_[0],
            self.split_,
            features,
            len(self._mode_indices(j)),
            seed,
            n_classes=len(self.classes_),
            mode_flops=self._mode_flops,
        )

    def _fit_bridge(self, j: int, X: torch.Tensor, X_val: torch.Tensor | None, init_seed: int, seed: int) -> None:
        self._n_fit = len(X)
        sources = self._sources(j)
        bridge = self._new_bridge(j, X[:2], init_seed)
        with torch.no_grad():
            features = self.split_.features(self.modes_[0], X[:1])
        bridge_flops = count_flops(_fed_with(bridge, len(sources)), [bridge], features)
        # one step: the sources (logits, for repulsion too) and the midpoint forward, the bridge trained
        step_flops = bridge_flops + math.ceil(((len(sources) + 1) * self._mode_flops) / 3)
        trainer = BridgeTrainer(
            bridge,
            self._side_spec(self.bridge_max_epochs, step_flops, _BRIDGE_WEIGHT_DECAY),
            sources=sources,
            split=self.split_,
            target=self.midpoints_[j - 1],
            repulsion=self.repulsion,
            mixup_alpha=self.mixup_alpha,
            seed=seed,
            generator=make_generator(seed, self.device_),
            augment=self._augment,
            verbose=self.verbose,
            desc=f"bridge {j}",
        ).fit(X, validation=None if X_val is None else (X_val,))
        self.history_["bridges"].append(trainer.history)
        self.interrupted_ = "bridges" if trainer.interrupted else None
        self._best_epochs.append(trainer.best_epoch)
        self.bridges_.append(bridge.eval())

    # -- selection -------------------------------------------------------------------------------
    def _select_bridges(self, X_val: torch.Tensor | None, y_val: torch.Tensor | None) -> None:
        """``bridge_order_`` / ``n_bridges_`` from ``n_bridges``; ``validation_scores_`` on held-out data."""
        available = list(range(1, len(self.bridges_) + 1))
        self.bridge_order_, self.n_bridges_ = available, len(available)
        self.validation_scores_ = None
        if self.n_bridges is not None and self.n_bridges != "auto":
            self.n_bridges_ = min(int(self.n_bridges), len(available))
        if X_val is None:
            return
        members = self._held_out_members(X_val)
        y = y_val.cpu().numpy()

        def ensemble_proba(bridges: list[int]) -> np.ndarray:
            keys = [("mode", 0)] + [("mode", m) for j in bridges for m in self._mode_indices(j) if m != 0]
            keys = list(dict.fromkeys(keys)) + [("bridge", j) for j in bridges]
            proba = np.mean([members[k] for k in keys], axis=0)
            return proba / proba.sum(axis=1, keepdims=True)

        def ensemble_scores(bridges: list[int]) -> dict:
            return scores(y, ensemble_proba(bridges))

        def sample_nll(bridges: list[int]) -> np.ndarray:
            return -np.log(np.clip(ensemble_proba(bridges)[np.arange(len(y)), y], 1e-12, None))

        if self.n_bridges == "auto":
            # greedy: add the bridge that lowers the held-out NLL most, while the drop is larger
            # than its own noise (_SELECTION_Z standard errors of the per-sample NLL differences)
            kept, current = [], sample_nll([])
            while True:
                trials = {j: sample_nll(kept + [j]) for j in available if j not in kept}
                if not trials:
                    break
                j, trial = min(trials.items(), key=lambda item: item[1].mean())
                gain = current - trial
                noise = _SELECTION_Z * standard_error(gain) if len(gain) > 1 else np.inf
                if not gain.mean() > max(_SELECTION_MARGIN, noise):
                    break
                kept, current = kept + [j], trial
            self.bridge_order_ = kept + [j for j in available if j not in kept]
            self.n_bridges_ = len(kept)
        self.validation_scores_ = {
            "single": ensemble_scores([]),
            "ensemble": ensemble_scores(self.bridge_order_[: self.n_bridges_]),
            "all_bridges": ensemble_scores(available),
        }
        if self.n_bridges == "auto" and available and not self.n_bridges_:
            warn_if_no_benefit(
                type(self).__name__,
                "ensemble",
                "single",
                self.validation_scores_,
                "No bridge lowered the held-out NLL, so the ensemble is mode 0 alone. Train longer "
                "(curve_max_epochs, bridge_max_epochs), use more modes or a deeper tail (tail_stages).",
            )

    @torch.no_grad()
    def _held_out_members(self, X: torch.Tensor) -> dict:
        out = {}
        modes = sorted({m for j in range(1, len(self.bridges_) + 1) for m in self._mode_indices(j)} | {0})
        for m in modes:
            out[("mode", m)] = _proba_batched(self.modes_[m], X)
        for j in range(1, len(self.bridges_) + 1):
            out[("bridge", j)] = (
                predict_batched(lambda xb, j=j: self._bridge_logits(j, xb).softmax(-1), X).double().cpu().numpy()
            )
        return out

    # -- cost ------------------------------------------------------------------------------------
    def _count_flops(self) -> dict:
        mode = self.modes_[0]
        example = torch.zeros((1, *self.input_shape_), device=self.device_)
        with torch.no_grad():
            features = self.split_.features(mode, example)
        bridges = [
            count_flops(_fed_with(bridge, len(self._mode_indices(j))), [bridge], features)
            for j, bridge in enumerate(self.bridges_, start=1)
        ]
        return {
            "mode": count_flops(mode, [mode], example),
            "trunk": count_flops(lambda x: self.split_.features(mode, x), [mode], example),
            "bridges": bridges,
        }

    def _plan(self, n_bridges: int | None, include_bases: bool) -> tuple[list[int], list[int]]:
        """(modes run in full, bridge numbers j) of an ensemble."""
        available = len(self.bridge_order_)
        n_bridges = self.n_bridges_ if n_bridges is None else n_bridges
        if not isinstance(n_bridges, Integral) or not 0 <= n_bridges <= available:
            raise ValueError(f"n_bridges must be an integer in [0, {available}]; got {n_bridges!r}.")
        bridges = list(self.bridge_order_[:n_bridges])
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
            Use the first ``n_bridges`` bridges of ``bridge_order_`` (``n_bridges_`` when None).
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
            "best_epoch": self._best_epochs[j - 1],
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
                features[m] = self.split_.features(self.modes_[m], X)
            inputs.append(features[m])
        return self.bridges_[j - 1](inputs)

    def _raw_member_logits(self, X: torch.Tensor, bases: list[int], bridges: list[int]) -> torch.Tensor:
        features, logits = {}, []
        for m in bases:
            mode_logits, features[m] = self.split_.logits_and_features(self.modes_[m], X)
            logits.append(mode_logits)
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
            Use the first ``n_bridges`` bridges of ``bridge_order_`` (``n_bridges_``, the
            default ensemble's, when None).
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


def _run_tail(module: nn.Module, features: torch.Tensor, split: FeatureSplit) -> torch.Tensor:
    for stage in stages_of(module)[split.stage :]:
        features = stage(features)
    return features


def _fed_with(bridge: nn.Module, n_inputs: int):
    """``bridge`` as a function of one feature map, repeated for each input it reads."""
    return lambda features: bridge([features] * n_inputs)


def _log_proba_batched(module: nn.Module, X: torch.Tensor) -> torch.Tensor:
    return predict_batched(lambda xb: F.log_softmax(module(xb), dim=-1), X)


def _proba_batched(module: nn.Module, X: torch.Tensor) -> np.ndarray:
    return predict_batched(lambda xb: module(xb).softmax(-1), X).double().cpu().numpy()
