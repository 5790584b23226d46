"""One scorer per influence ``method``, behind a common interface, chosen from one registry.

A scorer owns a copy of the trained module theta*. ``fit`` prepares what the method needs from
the training set (the geometric ensemble, the training gradients' inputs, ...);
``self_influence`` scores labelled samples; ``train_test`` returns the influence of every
training sample on every test sample; ``predicted_labels`` is the method's best guess of the
true class (the ensemble's for GEX, theta*'s otherwise), used for relabeling.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from ...exceptions import warn
from ._baselines import (
    gradient_dot_products,
    per_sample_losses,
    squared_gradient_norms,
    tracin_self_influence,
    tracin_train_test,
)
from ._geometric_ensemble import (
    gex_self_influence,
    gex_train_test,
    loss_deviations,
    member_losses_and_proba,
    member_spec,
    train_geometric_members,
)

__all__ = ["InfluenceScorer", "SCORERS", "JITTER_LADDER"]

_BATCH = 1024
# jitter='auto' tries these input-noise levels in turn and keeps the first whose members move
# by at least tau (median loss change): measured on digits the first passing level also ranks
# best, while a level far above it blurs the ranking (AUC 0.994 at 0.2 vs 0.982 at 0.5).
JITTER_LADDER = (0.2, 0.4, 0.8, 1.6)
# member_epochs='auto': about this many optimiser steps per member, within these epochs. On the
# panel's 124- to 2,000-row sets 100 steps at lr 0.1 ranked best (noisy_tabular AUC 0.977 over
# 3 seeds vs 0.972 at 200 steps and 0.963 at lr 0.4; 4 fixed epochs gave wine 4 steps, AUC 0.87).
MEMBER_STEPS = 100
MEMBER_EPOCH_BOUNDS = (1, 100)


def auto_member_epochs(n_samples: int, batch_size: int) -> int:
    """Epochs giving about :data:`MEMBER_STEPS` optimiser steps per member (bounded)."""
    steps_per_epoch = max(1, math.ceil(n_samples / batch_size))
    low, high = MEMBER_EPOCH_BOUNDS
    return int(min(max(math.ceil(MEMBER_STEPS / steps_per_epoch), low), high))


@torch.no_grad()
def _argmax_labels(module: nn.Module, X: torch.Tensor) -> torch.Tensor:
    module.eval()
    return torch.cat([module(X[start : start + _BATCH]).argmax(dim=1) for start in range(0, len(X), _BATCH)])


class InfluenceScorer:
    """Base scorer: theta* and its per-sample losses; subclasses add the method."""

    key: str

    def __init__(self, module: nn.Module, **settings):
        self.module = module
        self.settings = settings

    def fit(
        self, X: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator, progress: Callable = iter
    ) -> InfluenceScorer:
        """Prepare the method on the training set; ``generator`` drives any randomness."""
        return self

    def base_losses(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return per_sample_losses(self.module, X, y)

    def self_influence(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train_test(self, X_test: torch.Tensor, y_test: torch.Tensor) -> torch.Tensor:
        raise ValueError(
            f"method={self.key!r} scores single samples only; use method='gex', 'grad_norm' or "
            "'tracin' for train-test influence."
        )

    def predicted_labels(self, X: torch.Tensor) -> torch.Tensor:
        return _argmax_labels(self.module, X)

    def training_scores(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(self_influence, predicted_labels)`` of the training set ``fit`` saw."""
        return self.self_influence(X, y), self.predicted_labels(X)


class LossScorer(InfluenceScorer):
    """The loss of each sample at theta*."""

    key = "loss"

    def self_influence(self, X, y):
        return self.base_losses(X, y)


class _TrainingSetMixin:
    """Keeps the training tensors, which gradient methods need for train-test influence."""

    def fit(self, X, y, *, generator, progress=iter):
        self.X_train, self.y_train = X, y
        return self


class GradNormScorer(_TrainingSetMixin, InfluenceScorer):
    """``||g_z||^2``: the bilinear self-influence with the identity in place of the inverse Hessian."""

    key = "grad_norm"

    def self_influence(self, X, y):
        return squared_gradient_norms(self.module, X, y)

    def train_test(self, X_test, y_test):
        return gradient_dot_products(self.module, X_test, y_test, self.X_train, self.y_train)


class TracInScorer(_TrainingSetMixin, InfluenceScorer):
    """TracIn-CP over the checkpoints saved while theta* was trained."""

    key = "tracin"

    def __init__(self, module, *, checkpoints, **settings):
        if not checkpoints:
            raise ValueError(
                "method='tracin' needs the checkpoints saved while training theta*, but the net was "
                "passed already fitted; pass an unfitted net so it is trained here, or use another method."
            )
        super().__init__(module, **settings)
        self.checkpoints = checkpoints
        self.workspace = copy.deepcopy(module)  # checkpoints are loaded here, theta* stays put

    def self_influence(self, X, y):
        return tracin_self_influence(self.workspace, self.checkpoints, X, y)

    def train_test(self, X_test, y_test):
        return tracin_train_test(self.workspace, self.checkpoints, X_test, y_test, self.X_train, self.y_train)


class GexScorer(InfluenceScorer):
    """Geometric-ensemble influence: loss deviations of the members around theta*."""

    key = "gex"

    def fit(self, X, y, *, generator, progress=iter):
        tau = self.settings["tau"]
        jitter = self.settings["jitter"]
        ladder = JITTER_LADDER if jitter == "auto" else (jitter,)
        base_loss = self.base_losses(X, y)
        for self.jitter in ladder:
            self._build_members(X, y, generator, progress)
            self.median_shift = float((self.member_loss - base_loss).abs().median())
            if self.median_shift >= tau or self.interrupted:
                break
        self.train_deviations = loss_deviations(self.member_loss, base_loss, tau)
        # Members continue training from theta*: around an optimum they can only raise the mean
        # training loss. Where they lower it, theta* was not converged and the deviations measure
        # training progress, not a posterior spread (panel cifar10: theta* fits 17% of its labels,
        # the members lower 75% of the losses, I(z) ranks the flips at AUC 0.51).
        self.at_optimum = bool(self.member_loss.mean() >= base_loss.mean())
        # A sample's influence on its own loss grows with how hard theta* must bend to fit it,
        # so I(z) and the loss at theta* rank alike (Spearman 0.49-0.83 on every panel set where
        # GEX ranks best). Where they rank opposite, the members drifted out of theta*'s basin and
        # the deviations measure that drift (panel cifar10 with the members' loss 0.68 -> 1.95:
        # Spearman -0.49, I(z) ranks the flips at AUC 0.50 and adding it to the loss costs 0.06).
        self.loss_agreement = _spearman(self.train_deviations.pow(2).mean(dim=0), base_loss)
        if self.median_shift < tau:
            warn(
                f"The geometric-ensemble members barely moved from theta* (median |loss change| "
                f"{self.median_shift:.2g} < tau={tau} with jitter={self.jitter}); the tau floor then "
                "inverts the ranking. Raise member_lr, member_epochs or jitter."
            )
        return self

    def _build_members(self, X, y, generator, progress):
        s = self.settings
        epochs = s["member_epochs"]
        self.member_epochs = auto_member_epochs(len(X), s["batch_size"]) if epochs == "auto" else epochs
        self.member_states, self.strategy, self.interrupted = train_geometric_members(
            self.module,
            X,
            y,
            member_spec(self.member_epochs, s["batch_size"], s["member_lr"]),
            continuation=s["continuation"],
            n_members=s["n_members"],
            noise=self.jitter,
            generator=generator,
            progress=progress,
            n_jobs=s.get("n_jobs"),
        )
        self.workspace = copy.deepcopy(self.module)
        self.member_loss, self.train_proba = member_losses_and_proba(self.workspace, self.member_states, X, y)

    def _estimate(self, influence: torch.Tensor, base_loss: torch.Tensor) -> torch.Tensor:
        """``I(z)``, or the leave-one-out loss ``l(z; theta*) + I(z)`` (``estimate='loo_loss'``).

        ``'loo_loss'`` where theta* is not at an optimum (``at_optimum`` False) is the loss at
        theta* alone: the deviations then measure training progress, not influence.
        """
        if self.settings.get("estimate", "self_influence") == "loo_loss":
            return base_loss + influence if self.regime_sound else base_loss
        return influence

    @property
    def regime_sound(self) -> bool:
        """Whether the members measure influence: theta* at an optimum and I(z) agreeing with the loss."""
        return getattr(self, "at_optimum", True) and getattr(self, "loss_agreement", 1.0) >= 0.0

    def training_scores(self, X, y):
        # fit already evaluated every member on the training set; reuse it instead of M more passes
        influence = self.train_deviations.pow(2).mean(dim=0)
        scores = self._estimate(influence, self.base_losses(X, y))
        return scores, self.train_proba.argmax(dim=1)

    def deviations(self, X, y):
        member_loss, _ = member_losses_and_proba(self.workspace, self.member_states, X, y)
        return loss_deviations(member_loss, self.base_losses(X, y), self.settings["tau"])

    def self_influence(self, X, y):
        member_loss, _ = member_losses_and_proba(self.workspace, self.member_states, X, y)
        base_loss = self.base_losses(X, y)
        influence = gex_self_influence(member_loss, base_loss, self.settings["tau"])
        return self._estimate(influence, base_loss)

    def train_test(self, X_test, y_test):
        return gex_train_test(self.deviations(X_test, y_test), self.train_deviations)

    def predicted_labels(self, X):
        dummy = torch.zeros(len(X), dtype=torch.long, device=X.device)
        _, proba = member_losses_and_proba(self.workspace, self.member_states, X, dummy)
        return proba.argmax(dim=1)


SCORERS: dict[str, type[InfluenceScorer]] = {
    scorer.key: scorer for scorer in (GexScorer, LossScorer, GradNormScorer, TracInScorer)
}


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (ties share their mean rank; 0 when one is constant)."""
    a, b = (v.detach().double().cpu().numpy() for v in (a, b))
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)
