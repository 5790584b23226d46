"""Expert trajectories: networks trained on the full data, a flat checkpoint after every epoch.

The experts are trained by the shared loop (:mod:`skpcoreset._train`) with a
:class:`~skpcoreset._train.ParameterSnapshots` callback, so vectorised (vmap) and sequential
training both produce a ``(n_experts, n_epochs + 1, P)`` tensor that stays on the device for
synthesis. Sequential experts run their skorch net's own callbacks too.
"""

from __future__ import annotations

import torch
from torch import nn

from .._train import TrainSpec, train_members

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
    runs = train_members(
        modules,
        (X, y),
        spec,
        seeds=seeds,
        nets=nets,
        strategy=strategy,
        n_jobs=n_jobs,
        verbose=verbose,
        desc="experts",
        checkpoints=True,
        **trainer_kwargs,
    )
    return runs.checkpoints, runs.strategy, runs.histories, runs.interrupted
