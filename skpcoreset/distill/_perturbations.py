"""Input perturbations that build a transfer set on which the teacher members disagree.

Pure torch, tensors in and out. Every perturbation maps a batch ``X`` of shape
``(B, *input_shape)`` to ``X'`` of the same shape: ``n_steps`` steps, each of L2 size
``step_size * sqrt(D)`` (``D`` = values per sample) along a direction, or of L-infinity size
``step_size`` along its sign (the ODI variant), clipped to ``[lower, upper]`` after every step.
With a ``scale`` (one value per input coordinate, e.g. each feature's standard deviation) the
steps are taken in the normalised coordinates ``z = x / scale``: the gradient is taken with
respect to ``z`` and the step is mapped back, so a feature measured in thousands moves as far,
in its own units, as one measured in thousandths.

- ``'gaussian'``: isotropic Gaussian noise of the same size (the baseline that should not help);
- ``'ods'``: output-diversified sampling (Tashiro et al., 2020) -- ascend ``sum_c w_c p_c`` of
  one random teacher member, ``w ~ U(-1, 1)^C`` per sample (Nam et al., 2021);
- ``'confods'``: ODS with each sample's step scaled by the confidence (maximum probability) of
  the member whose output ODS diversifies, as in the official code of Nam et al. (2021);
- ``'tdiv_sdiv'``: ascend ``CE(p_Ti, sg p_Tj) - CE(p_Si, sg p_Sj)`` for a random member pair:
  inputs where the teachers disagree but the student members still agree (Nam et al., 2022).

Teachers expose ``n_members``, ``n_classes``, ``member_logits(X) -> (M, B, C)`` and ``member_logit(X, m) ->
(B, C)``; students are callables ``X -> (S, B, C)`` member logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "PerturbationConfig",
    "PERTURBATIONS",
    "GRADIENT_PERTURBATIONS",
    "scaled_step",
    "gaussian_perturbation",
    "ods_perturbation",
    "confods_perturbation",
    "tdiv_sdiv_perturbation",
]

_TINY = 1e-12


@dataclass(frozen=True)
class PerturbationConfig:
    """Size and bounds of a perturbation.

    Attributes
    ----------
    step_size : float
        ``eta`` in input units: one step moves each sample by ``eta * sqrt(D)`` in L2 norm
        (``eta`` per coordinate in L-infinity norm).
    norm : {'l2', 'linf'}
        'l2' normalises the direction; 'linf' takes its sign (ODI).
    n_steps : int
        Number of steps; gradient directions are recomputed at each step.
    lower, upper : float or tensor
        The data range (one value, or one per input coordinate); perturbed inputs are clipped
        to it.
    temperature : float
        Softmax temperature of the probabilities the gradient perturbations differentiate.
    scale : tensor or None
        Per-coordinate scale of the inputs (shape of one sample): steps are taken in
        ``x / scale`` coordinates. None: the raw inputs.
    """

    step_size: float
    norm: str = "l2"
    n_steps: int = 1
    lower: float | torch.Tensor = -math.inf
    upper: float | torch.Tensor = math.inf
    temperature: float = 1.0
    scale: torch.Tensor | None = None


def scaled_step(direction: torch.Tensor, step_size: float, norm: str) -> torch.Tensor:
    """One step along ``direction`` (per sample): L2 size ``step_size * sqrt(D)`` or sign * ``step_size``."""
    flat = direction.flatten(1)
    if norm == "linf":
        return (flat.sign() * step_size).view_as(direction)
    length = flat.norm(dim=1, keepdim=True).clamp_min(_TINY)
    return (flat * (step_size * math.sqrt(flat.shape[1])) / length).view_as(direction)


def _clip(X: torch.Tensor, lower, upper) -> torch.Tensor:
    if isinstance(lower, torch.Tensor) or isinstance(upper, torch.Tensor):
        lower = torch.as_tensor(lower, dtype=X.dtype, device=X.device)
        upper = torch.as_tensor(upper, dtype=X.dtype, device=X.device)
        return torch.maximum(torch.minimum(X, upper), lower)
    return X.clamp(lower, upper)


def _walk(
    X: torch.Tensor,
    direction: Callable[[torch.Tensor], torch.Tensor],
    config: PerturbationConfig,
    shrink: torch.Tensor | None = None,
    *,
    gradient: bool = True,
) -> torch.Tensor:
    """``n_steps`` clipped steps from ``X``; ``shrink`` (B,) shrinks each sample's steps.

    ``direction`` returns an input gradient (``gradient=True``: with a ``config.scale`` it is
    turned into the gradient in normalised coordinates, ``scale * grad``) or a direction
    already in normalised coordinates (noise).
    """
    perturbed = X.detach()
    scale = config.scale
    for _ in range(config.n_steps):
        move = direction(perturbed)
        if scale is not None and gradient:
            move = move * scale
        step = scaled_step(move, config.step_size, config.norm)
        if scale is not None:
            step = step * scale
        if shrink is not None:
            step = step * shrink.view(-1, *([1] * (X.dim() - 1)))
        perturbed = _clip(perturbed + step, config.lower, config.upper).detach()
    return perturbed


def _input_gradient(objective: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """Gradient of a scalar objective with respect to the input only (the nets are not touched)."""
    with torch.enable_grad():
        X = X.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(objective(X), X)
    return gradient


def _random_int(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (1,), generator=generator, device=generator.device))


def gaussian_perturbation(X, *, teacher, student, config: PerturbationConfig, generator):
    """Isotropic Gaussian noise with the same step size as ODS."""

    def noise(x):
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    return _walk(X, noise, config, gradient=False)


def _ods_direction(teacher, X: torch.Tensor, config: PerturbationConfig, generator, member: int | None = None):
    """The ODS direction of one member (random unless given) with fixed random weights ``w ~ U(-1, 1)^C``."""
    if member is None:
        member = _random_int(teacher.n_members, generator)
    weights = 2 * torch.rand(len(X), teacher.n_classes, generator=generator, device=X.device) - 1

    def objective(x):
        proba = (teacher.member_logit(x, member) / config.temperature).softmax(-1)
        return (weights * proba).sum()

    return lambda x: _input_gradient(objective, x)


def ods_perturbation(X, *, teacher, student, config: PerturbationConfig, generator):
    """Output-diversified sampling: a step that moves one teacher member's output at random."""
    return _walk(X, _ods_direction(teacher, X, config, generator), config)


def confods_perturbation(X, *, teacher, student, config: PerturbationConfig, generator):
    """ODS whose step is scaled by the diversified member's maximum probability at ``X``."""
    member = _random_int(teacher.n_members, generator)
    with torch.no_grad():
        confidence = (teacher.member_logit(X, member) / config.temperature).softmax(-1).amax(-1)
    return _walk(X, _ods_direction(teacher, X, config, generator, member), config, shrink=confidence)


def _soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor, temperature: float):
    """``CE(p, sg q) = -sum_c q_c log p_c`` summed over the batch; no gradient through ``q``."""
    target = (target_logits.detach() / temperature).softmax(-1)
    return -(target * (logits / temperature).log_softmax(-1)).sum()


def tdiv_sdiv_perturbation(X, *, teacher, student, config: PerturbationConfig, generator):
    """Ascend teacher disagreement minus student disagreement for a random member pair."""
    n_members = teacher.n_members
    if n_members < 2:
        raise ValueError("perturbation='tdiv_sdiv' needs a teacher with at least 2 members.")
    first = _random_int(n_members, generator)
    second = (first + 1 + _random_int(n_members - 1, generator)) % n_members
    temperature = config.temperature

    def objective(x):
        student_logits = student(x)
        teacher_div = _soft_cross_entropy(teacher.member_logit(x, first), teacher.member_logit(x, second), temperature)
        student_div = _soft_cross_entropy(student_logits[first], student_logits[second], temperature)
        return teacher_div - student_div

    return _walk(X, lambda x: _input_gradient(objective, x), config)


PERTURBATIONS = {
    "gaussian": gaussian_perturbation,
    "ods": ods_perturbation,
    "confods": confods_perturbation,
    "tdiv_sdiv": tdiv_sdiv_perturbation,
}

GRADIENT_PERTURBATIONS = frozenset({"ods", "confods", "tdiv_sdiv"})
