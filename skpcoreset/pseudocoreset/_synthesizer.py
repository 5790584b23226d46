"""PseudocoresetSynthesizer: learn a small synthetic dataset whose posterior matches the data's."""

from __future__ import annotations

import copy
import math
import time
from collections import OrderedDict
from dataclasses import fields
from numbers import Integral, Real

import numpy as np
import torch
from imblearn.base import SamplerMixin
from imblearn.utils import check_target_type
from imblearn.utils._tags import InputTags, SamplerTags, Tags
from imblearn.utils._validation import ArraysTransformer
from sklearn.base import BaseEstimator, ClassifierMixin, OneToOneFeatureMixin, _fit_context, clone
from sklearn.exceptions import NotFittedError
from sklearn.preprocessing import label_binarize
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted
from skorch.history import History

from .._base import TorchClassifierMixin, fill_doc, seed_from_random_state, shared_constraints, store_params
from .._holdout import holdout_split, paired_nll_standard_error, scores, warn_if_no_benefit
from .._skorch import as_template, build_member_nets, logit_module, template_validation_split, train_spec_from_net
from .._train import predict_batched
from ..augment import NAMED_AUGMENTATIONS, resolve_augmentation
from ..exceptions import warn
from ._divergences import DIVERGENCES, SynthesisProblem
from ._functional import FlatModel, inner_sgd
from ._samplers import POSTERIORS, PosteriorSampler, bayesian_model_average
from ._trajectories import train_expert_trajectories
from ._variational import LastLayerPosterior, fresh_parameters, last_layer_features, negative_elbo, predictive_proba

__all__ = ["PseudocoresetSynthesizer"]

# Learned soft labels start at softmax(3 * one_hot): about 0.7 on the true class among 10, far
# enough from saturation for the label logits to receive gradients.
_LABEL_LOGIT_SCALE = 3.0

# Real points per synthesis step in the papers' code: the reverse-KL likelihood batch of Kim et
# al. 2022 (a 128-point batch made the covariance estimator noisy enough to fall below a random
# subset at 50 per class on digits) and the function-space measurement set of Kim, Lee, Lee 2023.
_PAPER_MEASUREMENT_SIZES = {"reverse_kl": 1000, "function_space": 256, "variational": 256}

# Variational pseudocoreset: prior precision lambda of the last layer (features of unit scale,
# a standard normal prior on the weights) and the initial coreset likelihood precision beta
# (learned with the coreset, on a log scale). Our choices; the paper's values were not checked.
_VARIATIONAL_PRIOR_PRECISION = 1.0
_VARIATIONAL_INITIAL_BETA = 1.0
# The regression targets v are this multiple of the label logits, so they start at 9 on the
# true class: softmax of logits regressed on 0/1 targets is nearly uniform, and the targets
# learned at Adam lr 0.03 move by a few units. On digits (one seed, 200 iterations) targets
# starting at 1 / 3 / 9 scored NLL 0.51 / 0.27 / 0.21 at 1 per class, 0.37 / 0.22 / 0.20 at 10.
_VARIATIONAL_TARGET_SCALE = 3.0
# Adam learning rate of the coreset, its targets, log beta and log lambda for lr='auto'. On
# digits 0.03 scored NLL 0.199 / 0.162 (1 / 10 per class) against 0.201 / 0.188 at 0.01.
_VARIATIONAL_LR = 0.03
_DEFAULT_LR = 0.01

# Gaussian samples per side: the reverse-KL covariance estimator takes Kim et al. 2022's S = 30.
# On Fashion-MNIST at 10 per class (2 seeds, benchmarks/results/probe_reverse_kl_samples*.json)
# it scored 0.706 / 0.738 / 0.756 BMA accuracy at S = 8 / 16 / 30 against 0.721 for a random
# subset. Forward KL's difference of means did as well at 8 as at 30 (0.718 vs 0.700) in under
# half the synthesis time (probe_forward_kl_samples*.json).
_DIVERGENCE_SAMPLES = {"reverse_kl": 30}
# 'variational': scales c of the last layer's predictive variance, softmax(mu / sqrt(1 + c pi
# sigma^2 / 8)), among which the held-out split chooses (c = 1: the Gaussian posterior as is; 0:
# its mean alone). Measured in docs/methods.md (section 1, benefit check).
_VARIANCE_SCALES = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
_LOGIT_SCALES = (0.7, 0.85, 1.0, 1.2, 1.4, 1.7, 2.0, 2.4, 2.8, 3.4, 4.0, 5.0)
_DEFAULT_DIVERGENCE_SAMPLES = 8
# K, the inner SGD steps (the papers' 20), and the variational model pool that the opt-in
# pool_module_params='auto' gives the default MLP on flat inputs: 512 units, trained 10 steps per
# visit. On the panel's flat sets it lowered NLL on 11 of 16 set/size pairs against the 128-unit
# pool at 20 steps, with synthesis times within 0.6-1.8x (variational_pool_auto_*.json).
_DEFAULT_INNER_STEPS = 20
_AUTO_POOL_MODULE_PARAMS = {"hidden_sizes": (512,)}
_AUTO_POOL_INNER_STEPS = 10


def _flat(X: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(X).reshape(len(X), -1)


def _n_distinct(X: np.ndarray) -> int:
    return len(np.unique(_flat(X), axis=0))


class _BestSoFar:
    """The coreset with the lowest running mean of the divergence over ``window`` iterations.

    A single surrogate value is too noisy to rank coresets (each step draws a fresh expert
    segment and fresh posterior samples); the mean over the last ``window`` steps is not.
    Snapshots are a copy of the coreset (a few KiB to MiB), taken only on improvement.
    """

    def __init__(self, window: int):
        self.window = window
        self.score = float("inf")
        self.state = None
        self.iteration = None

    def update(self, losses, coreset, label_logits):
        if len(losses) < self.window:
            return
        score = float(torch.stack(losses[-self.window :]).mean())
        if score < self.score:
            self.score, self.iteration = score, len(losses)
            self.state = (coreset.detach().clone(), label_logits.detach().clone())


@fill_doc
class PseudocoresetSynthesizer(
    TorchClassifierMixin, ClassifierMixin, SamplerMixin, OneToOneFeatureMixin, BaseEstimator
):
    """Bayesian pseudocoreset: synthetic inputs whose posterior matches the full-data posterior.

    ``fit`` trains ``n_experts`` networks on the data (saving a checkpoint per epoch), then
    learns ``n_per_class`` synthetic inputs per class by minimising a divergence between the
    full-data posterior and the posterior given the coreset, both approximated around the
    expert trajectories (Kim, Choi, Lee, Lee 2022). It is a sampler -- ``fit_resample``
    returns the coreset, also inside :class:`imblearn.pipeline.Pipeline` -- and a classifier:
    ``predict_proba`` averages the predictions of posterior samples drawn on the coreset only,
    so ``GridSearchCV`` scores the coreset by the Bayesian model average it supports.

    Parameters
    ----------
    divergence : {'forward_kl', 'wasserstein', 'reverse_kl', 'function_space', 'variational', \
'random'}, default='forward_kl'
        'forward_kl': KL(pi_x || pi_u), no back-propagation through the inner loop;
        'wasserstein': trajectory matching (unrolled inner steps); 'reverse_kl':
        KL(pi_u || pi_x) by the covariance estimator; 'function_space': forward KL between
        Gaussian posteriors of network outputs; 'variational': the variational pseudocoreset
        (VBPC, Lee, Lee, Lee 2025): a closed-form Gaussian posterior of the last layer given the
        coreset, scored by the full-data ELBO on real minibatches, over a pool of feature
        extractors trained on the coreset -- no experts, no unrolled inner loop (see Notes);
        'random': a class-balanced random subset of the data (the baseline, no synthesis).
    n_per_class : int, default=10
        Coreset rows per class. A class with fewer training rows starts its coreset rows from
        repeated real rows (a warning names them; ``initial_rows_`` records every start);
        ``divergence='random'`` needs ``n_per_class`` distinct rows in every class.
    net : None, nn.Module subclass or skorch NeuralNetClassifier, default=None
        Architecture and expert training (optimiser, lr, batch size, callbacks); ``None``: an
        MLP for flat inputs, a ConvNet for images (width 16 on the CPU, 128 on CUDA), plain
        SGD lr 0.05, batch 64, as the trajectory-matching papers train their experts.
        BatchNorm is supported (see ``posterior_statistics_``); other buffers are not.
    n_experts : int, default=4
        Expert networks trained on the full data.
    expert_epochs : int, default=15
        Epochs per expert (one checkpoint per epoch).
    target_epochs : int, default=2
        M: the full-data posterior is centred this many expert epochs after the start
        (clipped to ``expert_epochs``).
    max_start_epoch : int or None, default=None
        Start checkpoints are drawn from 0..max_start_epoch; None: expert_epochs - target_epochs.
    n_iterations : int, default=200
        Optimiser steps on the coreset. Harder data may need more: 'variational' with its pool
        at the net's width (``pool_module_params=None``) on the panel's 1-D signals at 10 per
        class scored 0.407 after 200 steps and 0.650 after 1,000 (digits 0.956 -> 0.970), while
        a tiny table over-fits (breast cancer NLL 0.196 -> 0.442); the wider auto pool reaches
        0.703 in 200. Compare ``validation_scores_`` (held-out rows) across values, e.g. in a
        grid search.
    lr : float or 'auto', default='auto'
        Adam learning rate of the coreset inputs (and label logits). 'auto': 0.01, and 0.03 for
        'variational' (its learned targets and precisions; NLL 0.162 vs 0.188 at 0.01 on digits
        at 10 per class). The value used is ``lr_``.
    inner_steps : int or 'auto', default='auto'
        K: SGD steps on the coreset from the expert start ('variational': the steps a drawn
        pool member trains on the coreset after each iteration). 'auto': 20, and 10 for
        'variational' when its pool is the widened default MLP (``pool_module_params='auto'``
        on flat inputs), which keeps its synthesis time at the 128-unit pool's. The value used
        is ``inner_steps_``.
    inner_lr : float or 'auto', default='auto'
        Step size of those SGD steps. 'auto': twice the experts' learning rate when they train
        with SGD (as the papers' experts do), 0.1 otherwise. The inner steps must move the
        coreset student about as far as the experts move in ``target_epochs``; a step far from
        the experts' breaks that: on CIFAR-10 with experts at 0.01, Wasserstein at 10 per class
        reached 0.438 BMA accuracy with ``inner_lr=0.01`` and 0.235 with 0.1, while on digits
        (experts at 0.05) 0.1 beat 0.05 (0.956 vs 0.925). The value used is ``inner_lr_``.
    n_divergence_samples : int or 'auto', default='auto'
        S: Gaussian samples per side (forward / reverse KL). 'auto': 30 for reverse KL (the
        papers' S; its covariance estimator needs them), 8 for forward KL (a difference of
        means, as accurate at 8 as at 30 on Fashion-MNIST). The value used is
        ``n_divergence_samples_``.
    noise_scale : float, default=0.01
        sigma of the Gaussian approximations N(theta, sigma^2 I).
    n_measurement : int or 'auto', default='auto'
        Real points per step: the reverse-KL likelihood batch, the function-space measurement
        inputs, the variational ELBO minibatch (unused by the other divergences). 'auto': the
        papers' sizes, 1000 for reverse KL (Kim et al. 2022 code) and 256 for function space
        (Kim, Lee, Lee 2023); 256 for variational (our choice).
    learn_labels : bool or 'auto', default='auto'
        Also learn soft labels (logits per coreset row). 'auto': True for 'variational' (its
        Gaussian likelihood regresses on real-valued labels, which it learns, as VBPC does),
        False otherwise.
    pool_size : int, default=8
        'variational' only: P, feature extractors in the model pool; one is drawn per
        iteration.
    pool_lifetime : int or 'auto', default='auto'
        'variational' only: SGD steps on the coreset after which a pool member is
        re-initialised; each draw trains it ``inner_steps`` more steps at ``inner_lr_``. Ages
        start staggered so that re-initialisations are spread. 'auto': ``posterior.steps``, the
        steps the prediction networks train, so the pool covers their features' ages.
    pool_module_params : dict, None or 'auto', default=None
        'variational' only: arguments of the net's module that differ for the pool members, e.g.
        ``{'hidden_sizes': (512,)}`` for the default MLP or ``{'width': 64}`` for a ConvNet (as
        ``module__*`` of a skorch net); the prediction networks keep the net's own. None: the
        pool is the net's module. 'auto': ``{'hidden_sizes': (512,)}`` when ``net`` is None and
        the inputs are flat (the default MLP, 128 units, predicts), None otherwise (a user's
        net, or the ConvNet for images). A wider pool synthesises better coresets: on the
        panel's flat data sets (seed 0, ``benchmarks/results/variational_pool_auto_{a,b}.json``)
        1-D signals at 10 per class scored 0.703 / 0.976 (accuracy / NLL) with it instead of
        0.407 / 1.868 with the 128-unit pool (forward KL 0.652 / 1.110), noisy tables 0.865 /
        0.378 instead of 0.805 / 0.469, Fashion-MNIST 0.773 / 0.671 instead of 0.726 / 0.717 at 1
        per class; lower NLL on 11 of 16 set/size pairs, worse on 3 (wine at 1 per class 0.926
        / 0.195 instead of 1.000 / 0.093, digits 0.948 / 0.177 instead of 0.956 / 0.168); the
        resolved value is ``pool_module_params_``. Not the default: on digits at 10 per class its
        synthesis is slower than Wasserstein's (5.7 s against 4.1 s in one run,
        ``pseudocoreset_vbpc_auto_pool_digits.json``), the net's own pool faster (4.5 s against
        6.2 s, ``pseudocoreset_vbpc_calibrated_digits.json``).
    augment : {'auto', 'dsa', 'shift', 'shift_flip'}, callable or None, default='auto'
        Differentiable augmentation of the coreset during synthesis, drawn afresh at every use
        (each inner SGD step and each divergence evaluation), as dataset distillation does.
        'dsa': :class:`~skpcoreset.augment.DifferentiableAugmentation` (colour, crop, cutout,
        flip, scale, rotate; images only); 'auto': DSA for images of at least 16x16 pixels,
        none otherwise; 'shift' / 'shift_flip': translations (and flips) only; a callable
        ``(X, generator) -> X`` on ``(n, *input_shape)`` tensors; None: no augmentation.
        Posterior sampling for prediction never augments.
    posterior : {'sghmc', 'csghmc', 'ensemble'} or PosteriorSampler, default='sghmc'
        How ``predict_proba`` samples the coreset posterior: a :class:`PosteriorSampler` (its
        settings tunable as ``posterior__*``), or a method name with the sampler's default
        settings (8 samples of 300 SGHMC steps at lr 0.05, temperature 0.01).
    validation_fraction : float in [0, 1), default=0.1
        Rows of every class (floored, so a class is never emptied) held out to check the
        coreset's benefit: the experts and the synthesis see the rest, and the held-out
        prediction of the coreset is compared with that of its own random real starting rows
        (``initial_rows_``) through the same posterior procedure (see ``validation_scores_``);
        'variational' also calibrates its predictive there (``predictive_logit_scale_``).
        0, or ``divergence='random'``, skips the check and fits on all rows.
    check_benefit : {'select', 'warn'}, default='select'
        What the held-out check does when the random starting rows predict the held-out rows
        better than the synthesised coreset (lower NLL): 'select' keeps the starting rows as
        the coreset, with their posterior (``selected_ = 'random_subset'``; on a small, easy
        table ten real rows per class can beat any synthetic ten), 'warn' keeps the synthesised
        coreset. Both warn (:class:`~skpcoreset.exceptions.NoBenefitWarning`).
    %(input_shape)s
    n_jobs : int or None, default=None
        Workers for experts trained one after another (other networks than buffer-free dense
        ones): threads, or Dask workers under ``joblib.parallel_config(backend="dask")``, with
        the same trajectories.
    %(mixed_precision)s
    %(device)s
    %(random_state)s
    %(verbose)s

    Attributes
    ----------
    coreset_X_ : ndarray of shape (n_per_class * n_classes, *input_shape_), float32
        The synthetic inputs.
    coreset_y_ : ndarray of shape (n_per_class * n_classes,)
        Their labels, from ``classes_``.
    coreset_label_proba_ : ndarray of shape (n_per_class * n_classes, n_classes)
        Soft labels (one-hot unless ``learn_labels``).
    initial_rows_ : ndarray of shape (n_per_class * n_classes,)
        Index of the training row each coreset row started from (the rows themselves for
        'random'); repeated indices mark classes with fewer than ``n_per_class`` rows.
    n_iterations_ : int
        Synthesis iterations completed (0 for 'random', or when interrupted before synthesis).
    posterior_samples_ : Tensor of shape (posterior.n_samples, P)
        Flat parameters of the posterior samples drawn on the coreset.
    coreset_targets_ : ndarray of shape (n_per_class * n_classes, n_classes)
        'variational' only: the real-valued regression targets v of the coreset likelihood.
    likelihood_precision_ : float
        'variational' only: the learned beta of the coreset likelihood N(v; W^T phi(u), 1/beta)
        (before the N / M weighting).
    prior_precision_ : float
        'variational' only: the learned lambda of the last-layer prior N(0, 1/lambda).
    predictive_variance_scale_, predictive_logit_scale_ : float
        'variational' only: c and t of the predictive softmax(t mu / sqrt(1 + c pi sigma^2 / 8)),
        chosen on the held-out split (grids in ``_VARIANCE_SCALES`` / ``_LOGIT_SCALES``) for the
        lowest BMA NLL; both 1 (the Gaussian posterior as is) without held-out rows. t rescales the
        mean as rescaling the learned regression targets would; the closed-form predictive is
        otherwise under-confident (digits, 10 per class: mean confidence 0.87 at accuracy 0.96).
    posterior_statistics_ : dict of str to Tensor
        Batch-norm statistics of each posterior sample, computed on the coreset (empty for
        networks without batch norms). Batch norms normalise with batch statistics during
        synthesis and sampling, with these statistics for prediction.
    module_ : nn.Module
        The architecture (its own weights are unused).
    sampling_strategy_ : OrderedDict
        Rows per class of the resampled data, ``{class: n_per_class}``.
    history_ : dict
        ``{'experts': [History, ...], 'synthesis': [History]}``: the experts' skorch
        histories and one row per synthesis iteration (``iteration``, ``divergence``).
    lr_ : float
        Adam learning rate of the synthesis (``lr`` resolved).
    n_represented_ : int
        N, the training rows the coreset stands for (those not held out).
    inner_steps_ : int
        Inner SGD steps (``inner_steps`` resolved).
    inner_lr_ : float
        Step size of the inner SGD steps (``inner_lr`` resolved).
    pool_module_params_ : dict or None
        'variational': the pool's module arguments (``pool_module_params`` resolved); None for
        the other divergences.
    n_divergence_samples_ : int
        Gaussian samples per side (``n_divergence_samples`` resolved).
    ensemble_strategy_ : str or None
        How the experts were trained, 'vmap' or 'sequential' (None for 'random').
    fit_seconds_ : dict
        Wall-clock seconds of the fit's phases: ``'experts'``, ``'synthesis'``, ``'posterior'``,
        ``'validation'`` (the baseline's posterior and both held-out predictions).
    interrupted_ : {'experts', 'synthesis', 'posterior'} or None
        The (last) phase a KeyboardInterrupt stopped; None after a complete fit. Interrupted
        experts skip synthesis and posterior sampling: ``fit_resample`` returns the random
        initial rows with a warning that they are no pseudocoreset, and ``predict_proba``
        raises ``NotFittedError``. Interrupted synthesis keeps its best coreset so far (the one
        with the lowest mean divergence over the preceding ``max(1, n_iterations // 20)``
        iterations; a completed synthesis keeps its last coreset, as the papers do) and then
        samples its posterior, which a second Ctrl-C stops cleanly (no posterior: predicting
        raises ``NotFittedError``).
    selected_ : {'pseudocoreset', 'random_subset'}
        What ``coreset_X_`` and the posterior are: the synthesised coreset, or (after
        ``check_benefit='select'`` found it worse on the held-out rows) its random real
        starting rows ``initial_rows_``.
    validation_scores_ : dict or None
        Held-out ``accuracy``, ``nll`` and ``ece`` of ``'pseudocoreset'`` (the fitted
        coreset's Bayesian model average) and ``'random_subset'`` (the same posterior sampler,
        and for 'variational' the same closed-form last layer at the initial targets and
        precisions, on the real rows ``initial_rows_`` the coreset started from: a random
        class-balanced subset of the same size). For 'variational' each of the two calibrates
        its predictive on these rows first (the same two-parameter grid), so both scores are
        slightly optimistic, equally. A :class:`~skpcoreset.exceptions.NoBenefitWarning`
        says when the coreset's NLL is not lower by more than ``benefit_margin_``. None without
        held-out rows, for 'random', or after an interrupted fit (a Ctrl-C during the
        baseline's posterior also skips the check).
    benefit_margin_ : float or None
        One standard error of the paired per-sample held-out NLL difference of the two.
    %(fitted_basics)s

    Notes
    -----
    ``divergence='variational'`` (derivation in :mod:`skpcoreset.pseudocoreset._variational`):
    the last layer W has the prior N(0, 1/lambda), the coreset the likelihood
    N(v_m; W^T phi(u_m), 1/beta) weighted by N / M, so q = N(m, S) with
    S = (beta N/M Phi^T Phi + lambda I)^-1 and m = beta N/M S Phi^T V, through the Woodbury
    identity (an M x M solve) when the coreset has fewer rows than features. Each iteration draws
    a pool member, evaluates the per-point negative ELBO of a real minibatch at q (second-order
    expected log-softmax, KL / N) and back-propagates to u, v, log beta and log lambda (both
    learned by the outer ELBO, our choice) through the solve; after each step the coreset is
    clipped to the range of the training inputs' values (our choice: its rows stay valid inputs,
    e.g. pixels in the data's range, so that a network trained on them, as a continual-learning
    replay memory is, sees inputs like the real ones); the member then trains ``inner_steps``
    SGD steps on the (detached) coreset. Cost per
    iteration: one forward and backward pass of the features over M + ``n_measurement`` rows,
    O(M^2 D + M^3) for the posterior, ``inner_steps`` forward/backward passes over M rows for
    the pool member (no graph kept); memory does not grow with ``inner_steps`` or
    ``pool_lifetime``. ``predict_proba`` replaces the last layer of each posterior network by
    its closed-form posterior on the coreset and averages the probit-style Gaussian predictives,
    one forward pass per network, with the mean and variance scales calibrated on the held-out
    split (``predictive_logit_scale_``, ``predictive_variance_scale_``).

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skpcoreset.pseudocoreset import PseudocoresetSynthesizer
    >>> X, y = load_digits(return_X_y=True)
    >>> pc = PseudocoresetSynthesizer(n_per_class=1, n_iterations=50, random_state=0)
    >>> X_core, y_core = pc.fit_resample(X / 16, y)
    >>> X_core.shape
    (10, 64)

    References
    ----------
    .. [1] B. Kim, J. Choi, S. Lee, Y. Lee, J. Lee. "On Divergence Measures for Bayesian
       Pseudocoresets." NeurIPS 2022.
    .. [2] D. Manousakas, Z. Xu, C. Mascolo, T. Campbell. "Bayesian Pseudocoresets."
       NeurIPS 2020.
    .. [3] B. Kim, H. Lee, J. Lee. "Function Space Bayesian Pseudocoreset for Bayesian Neural
       Networks." NeurIPS 2023.
    .. [4] G. Cazenavette et al. "Dataset Distillation by Matching Training Trajectories."
       CVPR 2022.
    """

    _sampling_type = "bypass"

    _parameter_constraints = {
        "divergence": [StrOptions({*DIVERGENCES, "variational", "random"})],
        "n_per_class": [Interval(Integral, 1, None, closed="left")],
        "net": "no_validation",
        "n_experts": [Interval(Integral, 1, None, closed="left")],
        "expert_epochs": [Interval(Integral, 1, None, closed="left")],
        "target_epochs": [Interval(Integral, 1, None, closed="left")],
        "max_start_epoch": [None, Interval(Integral, 0, None, closed="left")],
        "n_iterations": [Interval(Integral, 0, None, closed="left")],
        "lr": [StrOptions({"auto"}), Interval(Real, 0, None, closed="neither")],
        "inner_steps": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "inner_lr": [StrOptions({"auto"}), Interval(Real, 0, None, closed="neither")],
        "n_divergence_samples": [StrOptions({"auto"}), Interval(Integral, 2, None, closed="left")],
        "noise_scale": [Interval(Real, 0, None, closed="left")],
        "n_measurement": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learn_labels": ["boolean", StrOptions({"auto"})],
        "pool_size": [Interval(Integral, 1, None, closed="left")],
        "pool_lifetime": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "pool_module_params": [dict, None, StrOptions({"auto"})],
        "augment": [None, StrOptions({"auto", *NAMED_AUGMENTATIONS}), callable],
        "posterior": [StrOptions(set(POSTERIORS)), PosteriorSampler],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "check_benefit": [StrOptions({"select", "warn"})],
        "n_jobs": [None, Integral],
        **shared_constraints("input_shape", "mixed_precision", "device", "random_state", "verbose"),
    }

    _net_role = "expert"

    def __init__(
        self,
        divergence="forward_kl",
        *,
        n_per_class=10,
        net=None,
        n_experts=4,
        expert_epochs=15,
        target_epochs=2,
        max_start_epoch=None,
        n_iterations=200,
        lr="auto",
        inner_steps="auto",
        inner_lr="auto",
        n_divergence_samples="auto",
        noise_scale=0.01,
        n_measurement="auto",
        learn_labels="auto",
        pool_size=8,
        pool_lifetime="auto",
        pool_module_params=None,
        augment="auto",
        posterior="sghmc",
        validation_fraction=0.1,
        check_benefit="select",
        input_shape=None,
        n_jobs=None,
        mixed_precision="no",
        device="cpu",
        random_state=None,
        verbose=0,
    ):
        store_params(self, locals())

    # -- public API -----------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit_resample(self, X, y):
        """Fit and return the coreset ``(X_coreset, y_coreset)``.

        ``X_coreset`` has the input's type and dtype: flat ``(n_rows, n_features)`` for flat
        input, ``(n_rows, *input_shape_)`` for image-shaped input. One-vs-all encoded ``y``
        comes back one-vs-all encoded.

        %(X_y)s

        Returns
        -------
        X_coreset : array-like of shape (n_per_class * n_classes, ...)
        y_coreset : array-like of shape (n_per_class * n_classes,)
        """
        arrays_transformer = ArraysTransformer(X, y)
        y_checked, binarize_y = check_target_type(y, indicate_one_vs_all=True)
        X_out, y_out = self._fit_resample(X, y_checked)
        if getattr(X, "ndim", 2) == 2 or isinstance(X, list):
            X_out = X_out.reshape(len(X_out), -1)
        dtype = getattr(X, "dtype", None)
        if isinstance(dtype, np.dtype) and np.issubdtype(dtype, np.floating):
            X_out = X_out.astype(dtype)
        if binarize_y:
            y_out = label_binarize(y_out, classes=self.classes_)
        return arrays_transformer.transform(X_out, y_out)

    def _fit_resample(self, X, y):
        self.fit(X, y)  # the mixin's fit: validation, then _fit
        if self.interrupted_ == "experts" and self.divergence != "random":
            warn(
                "fit was interrupted while training the experts, before any synthesis: the rows "
                "returned are the random initial subset (initial_rows_), not a pseudocoreset."
            )
        return self.coreset_X_, self.coreset_y_

    def predict_proba(self, X) -> np.ndarray:
        """Bayesian model average over the coreset posterior, shape ``(n_samples, n_classes)``."""
        check_is_fitted(self)
        if not hasattr(self, "posterior_samples_"):
            raise NotFittedError(
                f"fit was interrupted during {self.interrupted_!r}, before the coreset posterior was "
                "sampled; the coreset itself is kept (coreset_X_, coreset_y_). Refit to predict."
            )
        # float64: float32 kernels round differently for different batch sizes, and a row's
        # prediction must not depend on the rows it is predicted with.
        return super().predict_proba(X)

    def _validated_tensor(self, X, dtype=torch.float64) -> torch.Tensor:
        return super()._validated_tensor(X, dtype=dtype)

    def _proba(self, X: torch.Tensor) -> torch.Tensor:
        return self._bma_proba(X, self._posterior_state())

    def _posterior_state(self) -> dict:
        """What the prediction needs: the posterior samples and, for 'variational', its last layer."""
        state = {"samples": self.posterior_samples_, "statistics": self.posterior_statistics_}
        if self.divergence == "variational":
            state.update(
                coreset=self.coreset_X_,
                targets=self.coreset_targets_,
                likelihood_precision=self.likelihood_precision_,
                prior_precision=self.prior_precision_,
                scales=(
                    getattr(self, "predictive_variance_scale_", 1.0),
                    getattr(self, "predictive_logit_scale_", 1.0),
                ),
            )
        return state

    def _bma_proba(self, X: torch.Tensor, state: dict) -> torch.Tensor:
        if self.divergence == "variational":
            return self._variational_proba(X, state)
        model = FlatModel(self.module_)
        samples = state["samples"].double()
        statistics = {name: value.double() for name, value in state["statistics"].items()}
        return predict_batched(lambda xb: bayesian_model_average(model, samples, xb, statistics), X)

    # -- fitting --------------------------------------------------------------------------
    def _fit_target(self, y):
        if y is not None and type_of_target(y) == "multilabel-indicator":
            return check_target_type(y)  # one-vs-all rows -> class index; true multilabel raises
        return y

    def _fit(self, X, y):
        """Train the experts, synthesise the coreset and sample its posterior."""
        augment = resolve_augmentation(self.augment, self.input_shape_)  # fail before training
        posterior = PosteriorSampler.of(self.posterior)
        generator = self._init_torch()
        n_classes = len(self.classes_)
        init_seeds = seed_from_random_state(self._seed, self.n_experts + posterior.n_samples + 1)
        self.validation_scores_, self.benefit_margin_ = None, None
        train, held_out = np.arange(len(y)), np.arange(0)
        if self.divergence != "random" and self.validation_fraction > 0:
            train, held_out = holdout_split(y, self.validation_fraction, np.random.RandomState(self._seed % 2**32))
            train = np.sort(train)
        X_all, y_all = X, y
        X, y = X_all[train], y_all[train]
        X_t, y_t = self._to_tensor(X), self._to_tensor(y, dtype=torch.long)
        template = as_template(self.net, self._net_role)
        nets = build_member_nets(
            template,
            input_shape=self.input_shape_,
            n_classes=n_classes,
            seeds=init_seeds[: self.n_experts + posterior.n_samples],
            device=self.device_,
            verbose=self.verbose,
        )
        modules = [logit_module(net.module_, net, X_t[:8]) for net in nets]
        self.module_ = copy.deepcopy(modules[0]).eval()
        model = FlatModel(self.module_)

        rows = self._initial_rows(X, y, n_classes, np.random.RandomState(init_seeds[-1]))
        self.initial_rows_ = train[rows]  # rows of the X passed to fit
        coreset = X_t[rows].clone()
        label_logits = torch.nn.functional.one_hot(y_t[rows], n_classes).float() * _LABEL_LOGIT_SCALE
        initial_coreset, initial_logits = coreset.clone(), label_logits.clone()
        self.history_ = {"experts": [], "synthesis": []}
        self.interrupted_, self.ensemble_strategy_, self.n_iterations_ = None, None, 0
        self.inner_lr_ = self._resolve_inner_lr(template, len(X))
        self.pool_module_params_ = self._resolve_pool_module_params()
        self.inner_steps_ = self._resolve_inner_steps()
        self.lr_ = float(self._for_divergence(self.lr, {"variational": _VARIATIONAL_LR}, _DEFAULT_LR))
        self.n_divergence_samples_ = self._for_divergence(
            self.n_divergence_samples, _DIVERGENCE_SAMPLES, _DEFAULT_DIVERGENCE_SAMPLES
        )
        self.fit_seconds_ = {"experts": 0.0, "synthesis": 0.0, "posterior": 0.0, "validation": 0.0}
        self.n_represented_ = len(X)
        if self.divergence == "variational":
            self.likelihood_precision_ = _VARIATIONAL_INITIAL_BETA
            self.prior_precision_ = _VARIATIONAL_PRIOR_PRECISION
            self.predictive_variance_scale_, self.predictive_logit_scale_ = 1.0, 1.0
            if self.n_iterations > 0:
                coreset, label_logits = self._synthesise_variational(
                    self._pool_module(template, X_t[:8], init_seeds[-1]),
                    X_t,
                    y_t,
                    coreset,
                    label_logits,
                    generator,
                    augment,
                    posterior,
                )
            self.coreset_targets_ = (label_logits * _VARIATIONAL_TARGET_SCALE).detach().cpu().numpy().astype(np.float64)
        elif self.divergence != "random" and self.n_iterations > 0:
            coreset, label_logits = self._synthesise(
                model,
                template,
                nets[: self.n_experts],
                modules[: self.n_experts],
                X_t,
                y_t,
                coreset,
                label_logits,
                generator,
                init_seeds[: self.n_experts],
                augment,
            )
        if not (bool(torch.isfinite(coreset).all()) and bool(torch.isfinite(label_logits).all())):
            raise ValueError(
                f"Synthesis diverged: the coreset holds non-finite values after divergence={self.divergence!r} "
                f"steps at lr={self.lr_:g}. Lower lr (e.g. lr={self.lr_ / 10:g})."
            )
        targets = self._targets(label_logits, y_t[rows], n_classes).detach()
        self.coreset_X_ = coreset.detach().cpu().numpy()
        self.coreset_y_ = self.classes_[y[rows]]
        self.coreset_label_proba_ = targets.cpu().numpy().astype(np.float64)
        self.sampling_strategy_ = OrderedDict((c, self.n_per_class) for c in self.classes_)
        self.selected_ = "pseudocoreset"
        if self.interrupted_ != "experts":  # an unsynthesised coreset gets no posterior to predict with
            posterior_init = torch.stack([model.flatten(m) for m in modules[self.n_experts :]])
            self._sample_posterior(posterior, model, posterior_init, coreset.detach(), targets, len(X), generator)
            self._check_finite_posterior(posterior)
            if self.interrupted_ is None and len(held_out):
                self._check_benefit(
                    posterior,
                    model,
                    posterior_init,
                    initial_coreset,
                    initial_logits,
                    y_t[rows],
                    generator,
                    X_all[held_out],
                    y_all[held_out],
                )
        return self

    def _check_benefit(self, posterior, model, initial, coreset, label_logits, labels, generator, X_val, y_val):
        """``validation_scores_``: the coreset against its random real starting rows, on held-out rows."""
        started = self._clock()
        n_classes = len(self.classes_)
        one_hot = torch.nn.functional.one_hot(labels, n_classes).to(coreset.dtype)
        try:  # the same posterior procedure, on the unsynthesised rows with their one-hot labels
            samples = posterior.sample(
                model, initial, coreset, one_hot, n_represented=self.n_represented_, generator=generator
            )
        except KeyboardInterrupt:
            warn("The benefit check was interrupted; validation_scores_ is None.")
            return
        finally:
            self.fit_seconds_["validation"] = self._clock() - started
        baseline = {"samples": samples, "statistics": model.statistics(samples, coreset)}
        if self.divergence == "variational":  # the closed-form last layer as synthesis started it
            baseline.update(
                coreset=coreset.cpu().numpy(),
                targets=(label_logits * _VARIATIONAL_TARGET_SCALE).cpu().numpy().astype(np.float64),
                likelihood_precision=_VARIATIONAL_INITIAL_BETA,
                prior_precision=_VARIATIONAL_PRIOR_PRECISION,
            )
        X_v = self._to_tensor(X_val, dtype=torch.float64)
        if self.divergence == "variational":  # each calibrates its predictive on the held-out rows
            scales = self._calibrate(X_v, y_val, self._posterior_state())
            self.predictive_variance_scale_, self.predictive_logit_scale_ = scales
            baseline["scales"] = self._calibrate(X_v, y_val, baseline)
        proba = self._bma_proba(X_v, self._posterior_state()).cpu().numpy()
        baseline_proba = self._bma_proba(X_v, baseline).cpu().numpy()
        self.fit_seconds_["validation"] = self._clock() - started
        if self.check_benefit == "select" and scores(y_val, baseline_proba)["nll"] < scores(y_val, proba)["nll"]:
            self._keep_starting_rows(baseline, coreset, one_hot)
        self.validation_scores_ = {
            "pseudocoreset": scores(y_val, proba),
            "random_subset": scores(y_val, baseline_proba),
        }
        self.benefit_margin_ = paired_nll_standard_error(y_val, proba, baseline_proba)
        warn_if_no_benefit(
            type(self).__name__,
            "pseudocoreset",
            "random_subset",
            self.validation_scores_,
            f"It must win by one paired standard error ({self.benefit_margin_:.4f} nats) over the random "
            "real rows it started from (initial_rows_) under the same posterior"
            + (
                "; those rows predict better here, so they are kept as the coreset (selected_='random_subset')."
                if self.selected_ == "random_subset"
                else "."
            )
            + " Synthesise longer or faster (n_iterations, lr)"
            + (", with a wider model pool (pool_module_params)" if self.divergence == "variational" else "")
            + ", or use another divergence.",
            margin=self.benefit_margin_,
        )

    def _check_finite_posterior(self, posterior: PosteriorSampler) -> None:
        samples = getattr(self, "posterior_samples_", None)
        if samples is not None and not bool(torch.isfinite(samples).all()):
            raise ValueError(
                f"The coreset's posterior samples are not finite: the synthesis (lr={self.lr_:g}) or the "
                f"posterior sampler (posterior__lr={posterior.lr:g}) diverged. Lower lr (e.g. "
                f"lr={self.lr_ / 10:g}) or posterior__lr."
            )

    def _keep_starting_rows(self, baseline: dict, rows: torch.Tensor, one_hot: torch.Tensor) -> None:
        """Make the random real starting rows, with the baseline's posterior, the fitted coreset."""
        self.selected_ = "random_subset"
        self.coreset_X_ = rows.detach().cpu().numpy()
        self.coreset_label_proba_ = one_hot.cpu().numpy().astype(np.float64)
        self.posterior_samples_, self.posterior_statistics_ = baseline["samples"], baseline["statistics"]
        if self.divergence == "variational":
            self.coreset_targets_ = baseline["targets"]
            self.likelihood_precision_ = baseline["likelihood_precision"]
            self.prior_precision_ = baseline["prior_precision"]
            self.predictive_variance_scale_, self.predictive_logit_scale_ = baseline["scales"]

    def _sample_posterior(self, posterior, model, initial, coreset, targets, n_represented, generator) -> None:
        started = self._clock()
        try:
            samples = posterior.sample(
                model,
                initial,
                coreset,
                targets,
                n_represented=n_represented,
                generator=generator,
                progress=lambda steps, total: self._progress(
                    steps, desc=f"posterior ({posterior.method})", total=total
                ),
            )
        except KeyboardInterrupt:
            self.interrupted_ = "posterior"
            warn("Posterior sampling interrupted; the coreset is kept, predict_proba needs a refit.")
            return
        finally:
            self.fit_seconds_["posterior"] = self._clock() - started
        self.posterior_samples_ = samples
        self.posterior_statistics_ = model.statistics(samples, coreset)

    def _clock(self) -> float:
        """Wall-clock seconds, after the device's queued work has finished."""
        if self.device_.type == "cuda":
            torch.cuda.synchronize(self.device_)
        return time.perf_counter()

    def _initial_rows(self, X: np.ndarray, y: np.ndarray, n_classes: int, rng) -> np.ndarray:
        """``n_per_class`` random rows of each class, distinct in value where the class has that many.

        Rows equal in value would start the coreset with copies that the synthesis moves alike (a
        replay memory tiled into the data, say); classes with fewer distinct rows repeat rows, with a
        warning.
        """
        rows, short = [], []
        for c in range(n_classes):
            members = np.flatnonzero(y == c)
            chosen = rng.choice(members, self.n_per_class, replace=len(members) < self.n_per_class)
            if _n_distinct(X[chosen]) < self.n_per_class:
                distinct = members[np.sort(np.unique(_flat(X[members]), axis=0, return_index=True)[1])]
                if len(distinct) < self.n_per_class:
                    short.append((self.classes_[c], len(distinct)))
                chosen = rng.choice(distinct, min(self.n_per_class, len(distinct)), replace=False)
                chosen = np.concatenate([chosen, rng.choice(distinct, self.n_per_class - len(chosen))])
            rows.append(chosen)
        if short:
            listed = ", ".join(f"class {c!r} has {n}" for c, n in ((np.asarray(c).item(), n) for c, n in short))
            if self.divergence == "random":
                raise ValueError(
                    f"divergence='random' draws n_per_class={self.n_per_class} distinct rows of every class, "
                    f"but {listed} distinct row(s); lower n_per_class."
                )
            warn(
                f"n_per_class={self.n_per_class} exceeds the distinct rows of some classes ({listed}): their "
                "coreset rows start from repeated real rows (see initial_rows_) and are synthesised apart."
            )
        return np.concatenate(rows)

    def _targets(self, label_logits, labels, n_classes) -> torch.Tensor:
        if self._learns_labels():
            return label_logits.softmax(-1)
        return torch.nn.functional.one_hot(labels, n_classes).to(label_logits.dtype)

    def _synthesise(self, model, template, nets, experts, X, y, coreset, label_logits, generator, seeds, augment):
        started = self._clock()
        X_experts, y_experts = X, y
        split = template_validation_split(template, y.cpu().numpy())
        if split is not None:  # the template's train_split: experts train on its training part
            train = torch.as_tensor(split[0], device=X.device)
            X_experts, y_experts = X[train], y[train]
        trajectories, self.ensemble_strategy_, histories, interrupted = train_expert_trajectories(
            experts,
            X_experts,
            y_experts,
            self._expert_spec(template, len(X_experts)),
            seeds=seeds,
            nets=nets,
            verbose=self.verbose,
            mixed_precision=self.mixed_precision,
            n_jobs=self.n_jobs,
        )
        self.history_["experts"] = histories
        self.fit_seconds_["experts"] = self._clock() - started
        n_epochs = trajectories.shape[1] - 1
        target_epochs = min(self.target_epochs, n_epochs)
        if interrupted or target_epochs < 1:
            self.interrupted_ = "experts"
            return coreset, label_logits
        problem = SynthesisProblem(
            model=model,
            trajectories=trajectories,
            X_real=X,
            y_real=y,
            n_classes=len(self.classes_),
            inner_steps=self.inner_steps_,
            inner_lr=self.inner_lr_,
            target_epochs=target_epochs,
            max_start_epoch=min(
                n_epochs - target_epochs,
                self.max_start_epoch if self.max_start_epoch is not None else n_epochs,
            ),
            n_samples=self.n_divergence_samples_,
            noise_scale=self.noise_scale,
            n_measurement=self._for_divergence(self.n_measurement, _PAPER_MEASUREMENT_SIZES, 256),
            generator=generator,
            augment=augment,
        )
        started = self._clock()
        result = self._optimise_coreset(problem, coreset, label_logits)
        self.fit_seconds_["synthesis"] = self._clock() - started
        return result

    def _learns_labels(self) -> bool:
        if self.learn_labels == "auto":
            return self.divergence == "variational"
        return bool(self.learn_labels)

    def _pool_module(self, template, probe: torch.Tensor, seed: int) -> torch.nn.Module:
        """The model pool's architecture: the net's module, with ``pool_module_params`` where given."""
        if not self.pool_module_params_:
            return self.module_
        pool_template = clone(template).set_params(
            **{f"module__{name}": value for name, value in self.pool_module_params_.items()}
        )
        try:
            (net,) = build_member_nets(
                pool_template,
                input_shape=self.input_shape_,
                n_classes=len(self.classes_),
                seeds=[seed],
                device=self.device_,
            )
        except TypeError as error:
            raise TypeError(
                f"pool_module_params={self.pool_module_params!r}: the net's module does not accept these "
                f"arguments ({error})."
            ) from error
        return logit_module(net.module_, net, probe)

    def _synthesise_variational(self, module, X, y, coreset, label_logits, generator, augment, posterior):
        """Model-pool synthesis of the variational pseudocoreset (see the class Notes); ``module``: the pool's."""
        started = self._clock()
        model = FlatModel(module)
        n_classes, n_real = len(self.classes_), len(X)
        lifetime = posterior.steps if self.pool_lifetime == "auto" else self.pool_lifetime
        n_measurement = min(self._for_divergence(self.n_measurement, _PAPER_MEASUREMENT_SIZES, 256), n_real)
        seeds = iter(seed_from_random_state(self._seed + 1, self.pool_size + self.n_iterations + 1))
        pool = [fresh_parameters(module, model, next(seeds)).to(self.device_) for _ in range(self.pool_size)]
        # Staggered ages (in SGD steps): re-initialisations spread over the run.
        ages = [(i * lifetime) // self.pool_size for i in range(self.pool_size)]
        coreset = coreset.clone().requires_grad_(True)
        label_logits = label_logits.clone().requires_grad_(self._learns_labels())
        log_beta = torch.tensor(math.log(_VARIATIONAL_INITIAL_BETA), device=self.device_, requires_grad=True)
        log_lam = torch.tensor(math.log(_VARIATIONAL_PRIOR_PRECISION), device=self.device_, requires_grad=True)
        labels = label_logits.argmax(-1)
        params = [coreset, log_beta, log_lam] + ([label_logits] if self._learns_labels() else [])
        optimizer = torch.optim.Adam(params, lr=self.lr_)
        best = _BestSoFar(window=max(1, self.n_iterations // 20))
        losses = []
        weight = n_real / len(coreset)
        low, high = X.min(), X.max()  # the coreset stays within the data's range of values
        try:
            for _ in self._progress(range(self.n_iterations), desc="synthesis (variational)"):
                member = int(torch.randint(self.pool_size, (1,), generator=generator, device=generator.device))
                idx = torch.randperm(n_real, generator=generator, device=generator.device)[:n_measurement]
                inputs = coreset if augment is None else augment(coreset, generator)
                phi = last_layer_features(model, pool[member], torch.cat([inputs, X[idx]]))
                phi_core, phi_real = phi[: len(coreset)], phi[len(coreset) :]
                posterior_q = LastLayerPosterior(
                    phi_core, label_logits * _VARIATIONAL_TARGET_SCALE, weight * log_beta.exp(), log_lam.exp()
                )
                loss = negative_elbo(posterior_q, phi_real, y[idx], n_real)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    coreset.clamp_(low, high)
                losses.append(loss.detach())
                best.update(losses, coreset, label_logits)
                targets = self._targets(label_logits, labels, n_classes).detach()
                if ages[member] >= lifetime:
                    pool[member], ages[member] = fresh_parameters(module, model, next(seeds)).to(self.device_), 0
                else:
                    pool[member] = inner_sgd(
                        model,
                        pool[member],
                        coreset.detach(),
                        targets,
                        steps=self.inner_steps_,
                        lr=self.inner_lr_,
                        differentiable=False,
                        augment=None if augment is None else (lambda Z: augment(Z, generator)),
                    )[-1]
                    ages[member] += self.inner_steps_
        except torch.linalg.LinAlgError as error:
            raise ValueError(
                f"Synthesis diverged after {len(losses)} variational step(s) at lr={self.lr_:g}: the coreset's "
                "last-layer system is no longer positive definite (coreset rows collapsed onto each other or "
                f"the precisions ran off). Lower lr (e.g. lr={self.lr_ / 10:g})."
            ) from error
        except KeyboardInterrupt:
            self.interrupted_ = "synthesis"
            if best.state is not None:
                coreset, label_logits = best.state
            warn(f"Synthesis interrupted after {len(losses)} iteration(s); keeping the best coreset so far.")
        self.n_iterations_ = len(losses)
        self.likelihood_precision_ = float(log_beta.detach().exp())
        self.prior_precision_ = float(log_lam.detach().exp())
        values = torch.stack(losses).cpu().tolist() if losses else []
        self.history_["synthesis"] = [History({"iteration": i + 1, "divergence": v} for i, v in enumerate(values))]
        self.fit_seconds_["synthesis"] = self._clock() - started
        return coreset.detach(), label_logits.detach()

    def _variational_moments(self, X: torch.Tensor, state: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per posterior network: the closed-form last layer's logit mean ``(n, C)`` and variance ``(n,)``."""
        model = FlatModel(self.module_)
        samples = state["samples"].double()
        coreset = torch.as_tensor(state["coreset"], dtype=torch.float64, device=samples.device)
        targets = torch.as_tensor(state["targets"], dtype=torch.float64, device=samples.device)
        beta = state["likelihood_precision"] * self.n_represented_ / len(coreset)
        moments = []
        for s, theta in enumerate(samples):
            stats = {name: value[s].double() for name, value in state["statistics"].items()}
            phi_core = last_layer_features(model, theta, coreset, stats)
            posterior_q = LastLayerPosterior(phi_core, targets, beta, state["prior_precision"])

            def predict(xb, q=posterior_q, t=theta, st=stats):
                mu, var = q.predictive(last_layer_features(model, t, xb, st))
                return torch.cat([mu, var[:, None]], dim=1)

            out = predict_batched(predict, X)
            moments.append((out[:, :-1], out[:, -1]))
        return moments

    @staticmethod
    def _average_predictive(moments, scales: tuple[float, float]) -> torch.Tensor:
        return sum(predictive_proba(mu, var, *scales) for mu, var in moments) / len(moments)

    def _variational_proba(self, X: torch.Tensor, state: dict) -> torch.Tensor:
        return self._average_predictive(self._variational_moments(X, state), state.get("scales", (1.0, 1.0)))

    def _calibrate(self, X_val: torch.Tensor, y_val: np.ndarray, state: dict) -> tuple[float, float]:
        """(variance scale, logit scale) of the grids with the lowest held-out BMA NLL."""
        moments = self._variational_moments(X_val, state)
        rows = np.arange(len(y_val))

        def nll(scales):
            proba = self._average_predictive(moments, scales).cpu().numpy()
            return -np.log(np.clip(proba[rows, y_val], 1e-12, None)).mean()

        grid = [(1.0, 1.0)] + [(c, t) for c in _VARIANCE_SCALES for t in _LOGIT_SCALES]  # ties: as is
        return tuple(float(v) for v in min(grid, key=nll))

    def _resolve_pool_module_params(self) -> dict | None:
        if self.divergence != "variational":
            return None
        if self.pool_module_params == "auto":
            return dict(_AUTO_POOL_MODULE_PARAMS) if self.net is None and len(self.input_shape_) == 1 else None
        return self.pool_module_params

    def _resolve_inner_steps(self) -> int:
        if self.inner_steps != "auto":
            return int(self.inner_steps)
        widened = self.pool_module_params == "auto" and self.pool_module_params_ is not None
        return _AUTO_POOL_INNER_STEPS if widened else _DEFAULT_INNER_STEPS

    def _resolve_inner_lr(self, template, n_samples: int) -> float:
        if self.inner_lr != "auto":
            return float(self.inner_lr)
        spec = self._expert_spec(template, n_samples)
        sgd_experts = isinstance(spec.optimizer, type) and issubclass(spec.optimizer, torch.optim.SGD)
        return 2.0 * spec.lr if sgd_experts else 0.1

    def _for_divergence(self, value, defaults: dict, fallback):
        """``value``, or when it is 'auto' this divergence's entry of ``defaults`` (else ``fallback``)."""
        return defaults.get(self.divergence, fallback) if value == "auto" else value

    def _expert_spec(self, template, n_samples: int):
        spec = train_spec_from_net(template, n_samples=n_samples)
        spec.max_epochs = self.expert_epochs
        return spec

    def _optimise_coreset(self, problem, coreset, label_logits):
        coreset = coreset.clone().requires_grad_(True)
        label_logits = label_logits.clone().requires_grad_(self._learns_labels())
        labels = label_logits.argmax(-1)
        params = [coreset, label_logits] if self._learns_labels() else [coreset]
        optimizer = torch.optim.Adam(params, lr=self.lr_)
        divergence = DIVERGENCES[self.divergence]
        best = _BestSoFar(window=max(1, self.n_iterations // 20))
        losses = []
        try:
            for _ in self._progress(range(self.n_iterations), desc=f"synthesis ({self.divergence})"):
                targets = self._targets(label_logits, labels, problem.n_classes)
                loss = divergence(problem, coreset, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.detach())
                best.update(losses, coreset, label_logits)
        except KeyboardInterrupt:
            self.interrupted_ = "synthesis"
            if best.state is not None:
                coreset, label_logits = best.state
                kept = f"the best coreset so far (iteration {best.iteration}, lowest running mean divergence)"
            else:
                kept = "the coreset of the last completed iteration"
            warn(
                f"Synthesis interrupted after {len(losses)} iteration(s); keeping {kept}. Its posterior is "
                "sampled next (Ctrl-C again to skip it)."
            )
        self.n_iterations_ = len(losses)
        values = torch.stack(losses).cpu().tolist() if losses else []
        self.history_["synthesis"] = [History({"iteration": i + 1, "divergence": v} for i, v in enumerate(values))]
        return coreset.detach(), label_logits.detach()

    # -- tags -----------------------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        input_tags = InputTags(
            **{f.name: getattr(tags.input_tags, f.name) for f in fields(tags.input_tags)},
        )
        input_tags.dataframe = True
        values = {f.name: getattr(tags, f.name) for f in fields(tags) if f.name != "input_tags"}
        return Tags(**values, input_tags=input_tags, sampler_tags=SamplerTags())
