"""L2-regularised softmax regression on propagated node features (the SGC model), two solvers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._train import Trainer, TrainSpec
from ..exceptions import warn

__all__ = ["fit_softmax_regression"]


def fit_softmax_regression(
    Z: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    *,
    weight_decay: float,
    solver: str,
    max_iter: int,
    lr: float,
    generator: torch.Generator | None,
    verbose: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Minimise ``mean CE(Z W + b, y) + weight_decay / 2 * (||W||^2 + ||b||^2)``.

    The objective is strictly convex: 'lbfgs' starts from zero and reaches the unique optimum
    (which the influence function assumes); 'adam' (``max_iter`` full-batch epochs at ``lr``)
    starts from a random ``generator`` draw.

    Returns
    -------
    coef : tensor of shape (n_features, n_classes)
    intercept : tensor of shape (n_classes,)
    n_iter : int
        Adam epochs or L-BFGS iterations run.
    interrupted : bool
        Whether a KeyboardInterrupt stopped the solver (the weights reached so far are returned).
    """
    linear = torch.nn.Linear(Z.shape[1], n_classes, device=Z.device, dtype=Z.dtype)
    n_iter, interrupted = _SOLVERS[solver](
        linear, Z, y, weight_decay=weight_decay, max_iter=max_iter, lr=lr, generator=generator, verbose=verbose
    )
    return linear.weight.detach().T.contiguous(), linear.bias.detach().clone(), n_iter, interrupted


def _adam(linear: torch.nn.Linear, Z, y, *, weight_decay, max_iter, lr, generator, verbose) -> tuple[int, bool]:
    """The SGC paper's full-batch Adam through the shared training loop."""
    # Adam stops short of the optimum, so where it starts matters: nn.Linear's default range
    bound = 1.0 / max(Z.shape[1], 1) ** 0.5
    torch.nn.init.uniform_(linear.weight, -bound, bound, generator=generator)
    torch.nn.init.uniform_(linear.bias, -bound, bound, generator=generator)
    spec = TrainSpec(
        max_epochs=max_iter,
        batch_size=len(Z),
        lr=lr,
        optimizer=torch.optim.Adam,
        optimizer_kwargs={"weight_decay": weight_decay},
    )
    trainer = Trainer(linear, spec, generator=generator, verbose=verbose, desc="sgc").fit(Z, y)
    return len(trainer.history), bool(trainer.interrupted)


def _lbfgs(linear: torch.nn.Linear, Z, y, *, weight_decay, max_iter, **_) -> tuple[int, bool]:
    """L-BFGS from zero, on the row space of ``Z`` when features outnumber samples.

    The stationarity condition ``Z^T R / n + weight_decay W = 0`` puts the optimal ``W`` in
    the row space of ``Z``. With ``Z = U S V^T`` and ``W = V B`` the penalty is unchanged
    (``||W|| = ||B||``), so fitting ``B`` on ``U S`` (rank <= n columns) gives the same optimum
    with far fewer unknowns.
    """
    basis = None
    if Z.shape[1] > len(Z):
        U, S, basis = torch.linalg.svd(Z, full_matrices=False)
        Z = U * S
    reduced = torch.nn.Linear(Z.shape[1], linear.out_features, device=Z.device, dtype=Z.dtype)
    torch.nn.init.zeros_(reduced.weight)
    torch.nn.init.zeros_(reduced.bias)
    optimizer = torch.optim.LBFGS(
        reduced.parameters(),
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad(set_to_none=True)
        penalty = reduced.weight.square().sum() + reduced.bias.square().sum()
        loss = F.cross_entropy(reduced(Z), y) + 0.5 * weight_decay * penalty
        loss.backward()
        return loss

    interrupted = False
    try:
        optimizer.step(closure)
    except KeyboardInterrupt:  # L-BFGS updates in place: the weights reached so far are kept
        interrupted = True
        warn("SGC fit interrupted; keeping the weights reached so far.")
    with torch.no_grad():
        linear.weight.copy_(reduced.weight if basis is None else reduced.weight @ basis)
        linear.bias.copy_(reduced.bias)
    return int(optimizer.state[optimizer.param_groups[0]["params"][0]].get("n_iter", 0)), interrupted


_SOLVERS = {"lbfgs": _lbfgs, "adam": _adam}
