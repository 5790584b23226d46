"""The geometric ensemble of GEX (Kim, Kim & Yang, NeurIPS 2023) and the influences it defines.

Starting from the trained weights theta*, each member continues training with SGD (momentum
0.9) over one cosine learning-rate cycle on jittered inputs, FGE-style: member m starts where
member m-1 ended (``'chain'``). ``'fan'`` instead starts every member from theta* with its own
data order and noise, which lets dense networks train all members at once with ``vmap``.
Normalisation statistics are refreshed after each member. With the losses of every sample at
every member,

- self-influence: ``I(z) = mean_m (l(z; theta_m) - max(l(z; theta*), tau))^2``;
- train-test influence: ``I(z, z') = mean_m dl_m(z) dl_m(z')`` with the same deviations.

No per-sample gradients and no Hessian are needed.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..._base import make_generator
from ..._parallel import map_members
from ..._train import Trainer, TrainSpec, VmapEnsembleTrainer, choose_ensemble_strategy
from ...nets._batchnorm import recompute_batchnorm

__all__ = [
    "JitterTrainer",
    "VmapJitterTrainer",
    "member_spec",
    "train_geometric_members",
    "member_losses_and_proba",
    "loss_deviations",
    "gex_self_influence",
    "gex_train_test",
]


class _JitterLoss:
    """Adds Gaussian noise of std ``noise`` to each batch's inputs before the usual loss."""

    noise: float

    def jitter(self, X: torch.Tensor) -> torch.Tensor:
        if not self.noise:
            return X
        return X + self.noise * torch.randn(X.shape, generator=self.generator, device=X.device, dtype=X.dtype)

    def loss(self, X: torch.Tensor, y: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        return super().loss(self.jitter(X), y, *extra)


class JitterTrainer(_JitterLoss, Trainer):
    """:class:`~skpcoreset._train.Trainer` on inputs jittered with Gaussian noise."""

    def __init__(self, module: nn.Module, spec: TrainSpec, *, noise: float, **kwargs):
        self.noise = noise
        super().__init__(module, spec, **kwargs)


class VmapJitterTrainer(_JitterLoss, VmapEnsembleTrainer):
    """:class:`~skpcoreset._train.VmapEnsembleTrainer` on jittered inputs (noise per member)."""

    def __init__(self, modules: list[nn.Module], spec: TrainSpec, *, noise: float, **kwargs):
        self.noise = noise
        super().__init__(modules, spec, **kwargs)


def member_spec(epochs: int, batch_size: int, lr: float, momentum: float = 0.9) -> TrainSpec:
    """One member's training: SGD with momentum over a single cosine cycle from ``lr``."""
    return TrainSpec(
        max_epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=torch.optim.SGD,
        optimizer_kwargs={"momentum": momentum},
        schedule="cosine",
    )


def _member_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def train_geometric_members(
    base: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    spec: TrainSpec,
    *,
    continuation: str,
    n_members: int,
    noise: float,
    generator: torch.Generator,
    progress=iter,
    n_jobs: int | None = None,
) -> tuple[list[dict[str, torch.Tensor]], str, bool]:
    """The ``n_members`` members of the geometric ensemble around theta* (``base``).

    ``continuation='chain'``: FGE-style members, each continuing from the previous one
    (strategy ``'sequential'``). ``'fan'``: members that all start from theta*, each with its
    own data order and noise; buffer-free dense networks train all members at once with
    ``vmap``, others one after another, each from its own seed drawn from ``generator``, in
    ``n_jobs`` joblib workers (threads, or Dask workers under
    ``joblib.parallel_config(backend="dask")``) with the same result.

    Returns ``(states, strategy, interrupted)``; ``base`` is left untouched. On
    ``KeyboardInterrupt`` the members finished so far are kept.
    """
    if continuation == "chain":
        return _chain_members(copy.deepcopy(base), X, y, spec, noise, generator, progress(range(n_members)))
    modules = [copy.deepcopy(base) for _ in range(n_members)]
    return _fan_members(modules, X, y, spec, noise, generator, progress, n_jobs)


def _chain_members(module: nn.Module, X, y, spec: TrainSpec, noise: float, generator: torch.Generator, rounds):
    """'chain': ``module`` trains on, one member per item of ``rounds``, its state saved after each."""
    states = []
    for _ in rounds:
        trainer = JitterTrainer(module, spec, noise=noise, generator=generator).fit(X, y)
        recompute_batchnorm(module, X, spec.batch_size)
        states.append(_member_state(module))
        if trainer.interrupted:
            return states, "sequential", True
    return states, "sequential", False


def _fan_members(
    modules: list[nn.Module], X, y, spec: TrainSpec, noise: float, generator: torch.Generator, progress, n_jobs
):
    """'fan': each of ``modules`` (copies of theta*) trains as one member."""
    strategy = choose_ensemble_strategy(modules)
    interrupted = False
    if strategy == "vmap":
        interrupted = VmapJitterTrainer(modules, spec, noise=noise, generator=generator).fit(X, y).interrupted
    else:
        seeds = torch.randint(2**31 - 1, (len(modules),), generator=generator, device=generator.device).tolist()
        flags = map_members(
            _train_fan_member,
            modules,
            ({"seed": seed} for seed in progress(seeds)),
            n_jobs=n_jobs,
            stop=bool,
            X=X,
            y=y,
            spec=spec,
            noise=noise,
        )
        modules, interrupted = modules[: len(flags)], any(flags)
    for module in modules:
        recompute_batchnorm(module, X, spec.batch_size)
    return [_member_state(module) for module in modules], strategy, interrupted


def _train_fan_member(module: nn.Module, *, seed: int, X, y, spec: TrainSpec, noise: float) -> bool:
    """One 'fan' member from theta* (picklable, for process workers); returns whether it was interrupted."""
    return JitterTrainer(module, spec, noise=noise, generator=make_generator(seed, X.device)).fit(X, y).interrupted


@torch.no_grad()
def member_losses_and_proba(
    module: nn.Module, states: list[dict[str, torch.Tensor]], X: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample losses at every member ``(M, N)`` and the members' mean probabilities ``(N, C)``.

    ``module`` is overwritten with each member's weights in turn and left in eval mode.
    """
    losses, proba = [], 0.0
    for state in states:
        module.load_state_dict(state)
        module.eval()
        logits = torch.cat([module(X[start : start + batch_size]) for start in range(0, len(X), batch_size)])
        losses.append(F.cross_entropy(logits, y, reduction="none"))
        proba = proba + logits.softmax(dim=1)
    return torch.stack(losses), proba / len(states)


def loss_deviations(member_loss: torch.Tensor, base_loss: torch.Tensor, tau: float) -> torch.Tensor:
    """``l(z; theta_m) - max(l(z; theta*), tau)``, shape ``(M, N)``.

    The floor ``tau`` keeps samples that theta* fits perfectly from all scoring near zero: a
    memorised mislabeled sample has a tiny loss at theta* but a large one at the members.
    """
    return member_loss - base_loss.clamp_min(tau)


def gex_self_influence(member_loss: torch.Tensor, base_loss: torch.Tensor, tau: float) -> torch.Tensor:
    """``mean_m (l(z; theta_m) - max(l(z; theta*), tau))^2``, shape ``(N,)``."""
    return loss_deviations(member_loss, base_loss, tau).pow(2).mean(dim=0)


def gex_train_test(test_deviations: torch.Tensor, train_deviations: torch.Tensor) -> torch.Tensor:
    """``mean_m dl_m(test) dl_m(train)``, shape ``(n_test, n_train)`` from ``(M, n_test)``, ``(M, n_train)``."""
    return test_deviations.T @ train_deviations / len(train_deviations)
