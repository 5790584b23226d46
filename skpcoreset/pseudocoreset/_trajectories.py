"""Expert trajectories: networks trained on the full data, a flat checkpoint after every epoch.

The experts are trained by the shared loop (:mod:`skpcoreset._train`) with a
:class:`~skpcoreset._train.ParameterSnapshots` callback, so vectorised (vmap) and sequential
training both produce a ``(n_experts, n_epochs + 1, P)`` tensor that stays on the device for
synthesis. Sequential experts run their skorch net's own callbacks too.
"""

from __future__ import annotations

import torch
from torch import nn

from .._base import make_generator
from .._train import (
    ParameterSnapshots,
    TrainSpec,
    VmapEnsembleTrainer,
    _needs_own_runs,
    choose_ensemble_strategy,
    flat_parameters,
    train_sequential_members,
)

__all__ = ["train_expert_trajectories"]


def train_expert_trajectories(
    modules: list[nn.Module],
    X: torch.Tensor,
    y: torch.Tensor,
    spec: TrainSpec,
    *,
    seeds: list[int],
    nets: list | None = None,
    strategy: str = "auto",
    verbose: int = 0,
    n_jobs: int | None = None,
    **trainer_kwargs,
) -> tuple[torch.Tensor, str, list, bool]:
    """Train ``modules`` on ``(X, y)`` and return their checkpoints.

    Sequential experts run in ``n_jobs`` joblib workers (threads, or Dask workers under
    ``joblib.parallel_config(backend="dask")``; see :mod:`skpcoreset._parallel`), with the same
    result as one after another.

    Parameters
    ----------
    nets : list of skorch NeuralNet or None
        The experts' skorch nets (their callbacks run, their histories record the runs).

    Returns
    -------
    trajectories : Tensor of shape (n_experts, n_completed_epochs + 1, P)
        Flat parameters at initialisation and after every completed epoch. When training is
        interrupted (or a callback stops an expert early), every expert is cut to the epochs
        all of them completed.
    strategy : str
        'vmap' or 'sequential', the training strategy that ran.
    histories : list of skorch History
    interrupted : bool
    """
    nets = list(nets) if nets is not None else [None] * len(modules)
    own_runs = _needs_own_runs([net for net in nets if net is not None])
    strategy = choose_ensemble_strategy(modules, strategy, per_member_runs=own_runs)
    device = X.device
    if strategy == "vmap":
        trainer = VmapEnsembleTrainer(
            modules,
            spec,
            generator=make_generator(seeds[0], device),
            verbose=verbose,
            desc=f"experts (vmap x{len(modules)})",
            **trainer_kwargs,
        )
        snapshots = ParameterSnapshots(lambda: flat_parameters(trainer.params.values()))
        trainer.extra_callbacks.append(("trajectory", snapshots))
        trainer.fit(X, y)
        return torch.stack(snapshots.snapshots, dim=1), strategy, [trainer.history] * len(modules), trainer.interrupted
    results = train_sequential_members(
        modules,
        (X, y),
        spec,
        seeds=seeds,
        nets=nets,
        validation=[None] * len(modules),
        n_jobs=n_jobs,
        verbose=verbose,
        desc="expert",
        trainer_kwargs=trainer_kwargs,
        checkpoints=True,
    )
    runs = [run.to(device) for _, _, run in results]
    length = min(len(run) for run in runs)
    histories = [history for history, _, _ in results]
    return torch.stack([run[:length] for run in runs]), strategy, histories, any(r[1] for r in results)
