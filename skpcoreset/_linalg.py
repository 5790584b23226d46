"""Matrix-free linear algebra shared by the post-hoc methods.

:func:`conjugate_gradient` solves ``A x = b`` for a symmetric positive-definite ``A`` given
only as a product ``matvec``. The Laplace posterior's randomize-then-optimize samples
(:mod:`skpcoreset.posthoc.laplace._curvature`, several right-hand sides at once) and the edge
influence of RGE (:mod:`skpcoreset.posthoc.graph._edge_influence`, one inverse-Hessian-vector
product) both use it, and both hear the same :class:`~sklearn.exceptions.ConvergenceWarning`
when ``max_iter`` stops it before the residual reaches ``tol``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from sklearn.exceptions import ConvergenceWarning

from ._base import progress
from .exceptions import warn

__all__ = ["conjugate_gradient"]


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    *,
    tol: float = 1e-10,
    max_iter: int = 1000,
    batched: bool = False,
    advice: str = "",
    verbose: int = 0,
    desc: str = "conjugate gradients",
) -> torch.Tensor:
    """Solve ``A X = rhs`` by conjugate gradients (``A`` symmetric, positive definite for a guarantee).

    Parameters
    ----------
    matvec : callable
        ``V -> A V`` for a tensor shaped like ``rhs`` (with ``batched``, applied row by row).
    rhs : Tensor
        One system of any shape, or with ``batched=True`` one system per row of ``(S, ...)``.
    tol : float, default=1e-10
        Relative residual ``||r|| / ||rhs||`` at which a system counts as solved.
    max_iter : int, default=1000
    batched : bool, default=False
        Solve the rows of ``rhs`` as independent systems (step sizes per row).
    advice : str, default=''
        Appended to the :class:`~sklearn.exceptions.ConvergenceWarning` raised when
        ``max_iter`` stops before every system reaches ``tol``.
    verbose : int, default=0
        1 shows a progress bar over iterations.
    desc : str, default='conjugate gradients'
        Label of the progress bar.

    Returns
    -------
    Tensor shaped like ``rhs``
    """
    dims = tuple(range(1, rhs.ndim)) if batched else tuple(range(rhs.ndim))
    tiny = torch.finfo(rhs.dtype).tiny

    def inner(a, b):
        return (a * b).sum(dim=dims, keepdim=True) if dims else a * b

    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    direction = residual.clone()
    residual_norm = inner(residual, residual)
    target = tol**2 * residual_norm
    for _ in progress(range(max_iter), verbose=verbose, desc=desc):
        if bool((residual_norm <= target).all()):
            break
        curved = matvec(direction)
        curvature = inner(direction, curved)
        # keep the sign: the GCN influence Hessian may be indefinite, where CG still runs (as before)
        step = residual_norm / torch.where(curvature.abs() < tiny, torch.full_like(curvature, tiny), curvature)
        solution += step * direction
        residual -= step * curved
        new_norm = inner(residual, residual)
        direction = residual + (new_norm / residual_norm.clamp_min(tiny)) * direction
        residual_norm = new_norm
    if not bool((residual_norm <= target).all()):
        worst = float((residual_norm / target.clamp_min(tiny)).max().sqrt()) * tol
        warn(
            f"Conjugate gradients stopped after {max_iter} iterations at a relative residual of "
            f"{worst:.2g} (target {tol:g}). {advice}".rstrip(),
            ConvergenceWarning,
        )
    return solution
