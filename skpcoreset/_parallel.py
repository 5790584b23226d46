"""Independent members (ensemble members, GEX 'fan' members, pseudocoreset experts) on joblib workers.

A member is trained by a picklable function ``train_one(module, **own, **shared) -> result``
that trains ``module`` in place (``own``: the member's seed, its progress label).
:func:`map_members` runs it over the members with joblib and loads each trained state back into
the caller's module, so the caller sees the same thing whether the worker was a thread of this
process (the default with ``n_jobs > 1``, where the module is trained where it lies) or another
process: a loky worker, or a Dask worker under
``joblib.parallel_config(backend="dask")`` -- which may sit on another machine or, with
dask-cuda's ``LocalCUDACluster``, on its own GPU (a CUDA tensor sent there lands on that
worker's ``cuda:0``, and the trained state comes back to the caller's device).

Every member draws its shuffling and augmentation from a generator built from its own seed, so
the result does not depend on the backend nor on the order in which members finish. Randomness a
module draws from torch's process-wide generator (dropout) is not controlled: seeding it per
member would serialise the threads that share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from joblib import Parallel, delayed
from torch import nn

__all__ = ["map_members"]


class _Trained:
    """A trained member's state and ``train_one``'s result, as they travel back from a worker.

    Dask serialises bare tensors (and tuples or dicts of them) with its own torch serializer,
    which goes through numpy and so only takes CPU tensors; an object of this class is pickled
    whole, by torch's own reducers, which keep CUDA tensors on the GPU. The data go out the same
    way, inside the ``shared`` dict (joblib's Dask backend scatters large top-level arguments).
    """

    def __init__(self, state: dict, result: Any):
        self.state = state
        self.result = result


def _train_and_return_state(train_one: Callable, module: nn.Module, own: dict, shared: dict) -> _Trained:
    """Run on the worker: train ``module`` and hand back its state with ``train_one``'s result."""
    result = train_one(module, **own, **shared)
    return _Trained(module.state_dict(), result)


def map_members(
    train_one: Callable[..., Any],
    modules: Sequence[nn.Module],
    per_member: Iterable[dict],
    *,
    n_jobs: int | None = None,
    stop: Callable[[Any], bool] | None = None,
    **shared,
) -> list[Any]:
    """Train every member with ``train_one(module, **own, **shared)``; return the results in order.

    Parameters
    ----------
    train_one : callable
        Trains the module it is given in place and returns something picklable (a history, a
        flag, checkpoints). It must be picklable itself (a module-level function or a
        :func:`functools.partial` of one) for process-based backends.
    modules : sequence of nn.Module
        Trained in place, whatever the backend.
    per_member : iterable of dict
        One per member: its own keyword arguments, e.g. ``{"seed": 3, "desc": "member 2/5"}``.
        The seed should be the member's only source of randomness besides its initial weights.
        Consumed lazily (a progress bar over it advances as members start).
    n_jobs : int or None, default=None
        None or 1: one member after another in this thread, stopping after a member for which
        ``stop(result)`` is true (an interrupted training). Otherwise ``joblib.Parallel(n_jobs)``
        preferring threads; an active ``joblib.parallel_config`` backend (Dask, loky) takes over.
    stop : callable or None, default=None
        See ``n_jobs``.
    **shared
        Passed to every call (the data, the training specification).

    Returns
    -------
    list
        ``train_one``'s results, one per member trained (fewer only when ``stop`` ended the
        local loop early).

    Examples
    --------
    >>> import torch
    >>> from skpcoreset._parallel import map_members
    >>> def shift(module, seed, amount):
    ...     with torch.no_grad():
    ...         module.bias.add_(amount * seed)
    ...     return seed
    >>> layers = [torch.nn.Linear(2, 1) for _ in range(3)]
    >>> map_members(shift, layers, [{"seed": s} for s in range(3)], n_jobs=2, amount=1.0)
    [0, 1, 2]
    """
    if n_jobs in (None, 1):
        results = []
        for module, own in zip(modules, per_member, strict=True):
            results.append(train_one(module, **own, **shared))
            if stop is not None and stop(results[-1]):
                break
        return results
    outputs = Parallel(n_jobs=n_jobs, prefer="threads")(
        delayed(_train_and_return_state)(train_one, module, own, shared)
        for module, own in zip(modules, per_member, strict=True)
    )
    results = []
    for module, trained in zip(modules, outputs, strict=True):
        # A thread worker returns the module's own tensors (copying them onto themselves is a
        # no-op); a process worker returns trained copies, which this puts where the caller is.
        module.load_state_dict(trained.state)
        results.append(trained.result)
    return results
