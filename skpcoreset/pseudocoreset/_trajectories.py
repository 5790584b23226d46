"""Expert trajectories: networks trained on the full data, a flat checkpoint after every epoch.

The experts are trained by the shared loop (:mod:`skpcoreset._train`); only the ``epoch`` rung
is extended to snapshot the parameters, so vectorised (vmap) and sequential training both
produce a ``(n_experts, n_epochs + 1, P)`` tensor that stays on the device for synthesis.
"""

from __future__ import annotations

import torch
from torch import nn

from .._base import make_generator
from .._parallel import map_members
from .._train import Trainer, TrainSpec, VmapEnsembleTrainer, choose_ensemble_strategy

__all__ = ["train_expert_trajectories"]


def _flat(parameters) -> torch.Tensor:
    return torch.cat([p.detach().reshape(p.shape[0], -1) for p in parameters], dim=1)


class _Checkpointing:
    """Mixin for the shared trainers: snapshot the flat parameters before training and after each epoch."""

    def fit(self, *tensors, validation=None):
        self.checkpoints = [self._snapshot()]
        return super().fit(*tensors, validation=validation)

    def epoch(self, tensors):
        loss = super().epoch(tensors)
        self.checkpoints.append(self._snapshot())
        return loss


class _CheckpointingTrainer(_Checkpointing, Trainer):
    """One expert; a snapshot has shape ``(1, P)``."""

    def _snapshot(self) -> torch.Tensor:
        return _flat(p.unsqueeze(0) for p in self.module.parameters())


class _CheckpointingVmapTrainer(_Checkpointing, VmapEnsembleTrainer):
    """All experts at once; a snapshot holds every member, shape ``(n_experts, P)``."""

    def _snapshot(self) -> torch.Tensor:
        return _flat(self.params.values())


def train_expert_trajectories(
    modules: list[nn.Module],
    X: torch.Tensor,
    y: torch.Tensor,
    spec: TrainSpec,
    *,
    seeds: list[int],
    strategy: str = "auto",
    verbose: int = 0,
    n_jobs: int | None = None,
) -> tuple[torch.Tensor, str, bool]:
    """Train ``modules`` on ``(X, y)`` and return their checkpoints.

    Sequential experts run in ``n_jobs`` joblib workers (threads, or Dask workers under
    ``joblib.parallel_config(backend="dask")``; see :mod:`skpcoreset._parallel`), with the same
    result as one after another.

    Returns
    -------
    trajectories : Tensor of shape (n_experts, n_completed_epochs + 1, P)
        Flat parameters at initialisation and after every completed epoch. When training is
        interrupted, every expert is cut to the epochs all of them completed.
    strategy : str
        'vmap' or 'sequential', the training strategy that ran.
    interrupted : bool
    """
    strategy = choose_ensemble_strategy(modules, strategy)
    device = X.device
    if strategy == "vmap":
        trainer = _CheckpointingVmapTrainer(
            modules, spec, generator=make_generator(seeds[0], device), verbose=verbose,
            desc=f"experts (vmap x{len(modules)})",
        ).fit(X, y)
        return torch.stack(trainer.checkpoints, dim=1), strategy, trainer.interrupted
    per_member = [{"seed": seed, "desc": f"expert {m + 1}/{len(modules)}"} for m, seed in enumerate(seeds)]
    results = map_members(
        _train_expert, modules, per_member[: len(modules)], n_jobs=n_jobs, stop=lambda result: result[1],
        X=X, y=y, spec=spec, verbose=verbose,
    )
    runs = [run.to(device) for run, _ in results]
    length = min(len(run) for run in runs)
    return torch.stack([run[:length] for run in runs]), strategy, any(interrupted for _, interrupted in results)


def _train_expert(module: nn.Module, *, seed: int, desc: str, X, y, spec: TrainSpec, verbose: int):
    """One expert (picklable, for process workers): checkpoints ``(n_epochs + 1, P)``, interrupted."""
    trainer = _CheckpointingTrainer(
        module, spec, generator=make_generator(seed, X.device), verbose=verbose, desc=desc
    ).fit(X, y)
    return torch.cat(trainer.checkpoints), trainer.interrupted
