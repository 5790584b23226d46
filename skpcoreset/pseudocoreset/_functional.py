"""Networks as functions of one flat parameter vector, and SGD written on that vector.

Every pseudocoreset divergence evaluates the same architecture at many parameter vectors
(expert checkpoints, posterior samples, coreset-trained iterates). Keeping parameters flat,
shaped ``(P,)`` or ``(S, P)``, lets one ``torch.func.vmap`` evaluate S parameter vectors in a
single batched program and makes trajectories plain ``(n_checkpoints, P)`` tensors.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from .._train import choose_ensemble_strategy
from ..nets._batchnorm import recompute_batchnorm

__all__ = ["FlatModel", "soft_cross_entropy", "inner_sgd"]


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _without_running_statistics(module: nn.Module) -> nn.Module:
    """A copy whose batch norms always normalise with the batch's own statistics.

    With its running buffers removed, a BatchNorm layer normalises with batch statistics in
    train and eval mode alike and writes nothing, so the network stays a pure function of
    (parameters, inputs) that ``vmap`` can batch over parameter vectors.
    """
    module = copy.deepcopy(module)
    for layer in module.modules():
        if isinstance(layer, _BATCH_NORMS):
            layer.track_running_stats = False
            layer.running_mean = layer.running_var = layer.num_batches_tracked = None
    return module


class FlatModel:
    """Evaluate ``module``'s architecture at flat parameter vectors.

    Parameters
    ----------
    module : nn.Module
        Defines the architecture only; its own weights are never used. Batch norms normalise
        with batch statistics while synthesising and sampling (the coreset, or the real batch,
        is one batch); for prediction, :meth:`statistics` computes each parameter vector's
        normalisation statistics on the coreset, so a test row's prediction does not depend on
        the rows it is predicted with. Other buffers are not supported.
    """

    def __init__(self, module: nn.Module):
        batch_norms = [m for m in module.modules() if isinstance(m, _BATCH_NORMS)]
        bn_buffers = {id(b) for m in batch_norms for b in m.buffers(recurse=False)}
        if any(id(b) not in bn_buffers for b in module.buffers()):
            raise ValueError(
                "Pseudocoreset synthesis evaluates the network at many parameter vectors; "
                "buffers other than BatchNorm statistics cannot follow a flat parameter vector."
            )
        self.has_batch_norm = bool(batch_norms)
        self.reference = module.eval()
        self.module = _without_running_statistics(module).eval() if self.has_batch_norm else self.reference
        self.names = [name for name, _ in module.named_parameters()]
        self.shapes = [p.shape for _, p in module.named_parameters()]
        self.sizes = [math.prod(shape) for shape in self.shapes]
        self.n_parameters = sum(self.sizes)
        self.vectorised = choose_ensemble_strategy([self.module, self.module]) == "vmap"
        self.statistic_names = [name for name, _ in module.named_buffers() if not name.endswith("num_batches_tracked")]

    def flatten(self, module: nn.Module) -> torch.Tensor:
        """The parameters of a module of this architecture as one detached ``(P,)`` vector."""
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        chunks = torch.split(theta, self.sizes)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}

    def __call__(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, C)`` of ``X`` under one parameter vector ``theta`` of shape ``(P,)``."""
        return functional_call(self.module, self.unflatten(theta), (X,))

    def batched(self, thetas: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Logits ``(S, N, C)`` of ``X`` under each row of ``thetas`` ``(S, P)``.

        One vmapped program for dense networks and on CUDA; on the CPU, convolutions with
        per-sample weights become grouped convolutions that run about 2x slower than a loop
        over samples (ConvNet-3, width 32, 8 samples), so they loop there.
        """
        if self.vectorised or thetas.device.type == "cuda":
            return vmap(self, in_dims=(0, None))(thetas, X)
        return torch.stack([self(theta, X) for theta in thetas])

    # -- batch-norm statistics for prediction ---------------------------------------------
    def statistics(self, thetas: torch.Tensor, X: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each parameter vector's BatchNorm statistics over ``X``, stacked ``{name: (S, ...)}``.

        One full-batch pass per vector (:func:`~skpcoreset.nets._batchnorm.recompute_batchnorm`).
        Empty without batch norms.
        """
        if not self.has_batch_norm:
            return {}
        probe = copy.deepcopy(self.reference).to(dtype=thetas.dtype)
        per_vector = []
        for theta in thetas:
            probe.load_state_dict(self.unflatten(theta), strict=False)
            buffers = dict(recompute_batchnorm(probe, X.to(thetas.dtype), batch_size=len(X)).named_buffers())
            per_vector.append([buffers[name].clone() for name in self.statistic_names])
        return {name: torch.stack([values[i] for values in per_vector]) for i, name in enumerate(self.statistic_names)}

    def predict_batched(self, thetas: torch.Tensor, statistics: dict, X: torch.Tensor) -> torch.Tensor:
        """Logits ``(S, N, C)`` in eval mode; batch norms use ``statistics`` from :meth:`statistics`."""
        if not self.has_batch_norm:
            return self.batched(thetas, X)
        reference = self.reference.eval()

        def logits(theta, stats):
            return functional_call(reference, {**self.unflatten(theta), **stats}, (X,))

        return vmap(logits)(thetas, statistics)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against label distributions; ``logits`` ``(..., N, C)`` -> ``(...)``."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean(-1)


def inner_sgd(
    model: FlatModel,
    theta: torch.Tensor,
    X: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int,
    lr: float,
    differentiable: bool,
    augment=None,
) -> list[torch.Tensor]:
    """Full-batch SGD on the coreset from ``theta``; returns the iterates ``[theta_0..theta_K]``.

    ``augment`` (``X -> X``), if given, draws a fresh augmentation of the coreset per step.

    With ``differentiable=False`` the iterates are detached from ``X`` and ``targets`` (the
    forward-KL and reverse-KL student, memory flat in ``steps``); with ``True`` the whole
    unrolled graph is kept so the last iterate can be differentiated w.r.t. the coreset
    (Wasserstein / trajectory matching, function space), and memory grows with ``steps``.
    """
    if not differentiable:
        X, targets = X.detach(), targets.detach()
    current = theta.detach().requires_grad_(True)
    iterates = [current]
    with torch.enable_grad():
        for _ in range(steps):
            inputs = X if augment is None else augment(X)
            loss = soft_cross_entropy(model(current, inputs), targets)
            (grad,) = torch.autograd.grad(loss, current, create_graph=differentiable)
            current = current - lr * grad
            if not differentiable:
                current = current.detach().requires_grad_(True)
            iterates.append(current)
    if not differentiable:
        return [it.detach() for it in iterates]
    return iterates
