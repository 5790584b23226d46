"""Students and how they are matched to the teacher.

A student is a single network (it matches the teacher ensemble's mean probability) or a
BatchEnsemble of as many members as the teacher (member ``i`` matches teacher member ``i``, so
the student inherits the teachers' diversity). Both are handled through their *member logits*
``(S, B, C)``: ``S = 1`` for a single network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._base import torch_seed
from .._skorch import build_member_nets
from .._train import user_callbacks
from ..nets._batchensemble import BatchEnsembleNet

__all__ = [
    "STUDENT_KINDS",
    "build_student",
    "student_member_logits",
    "distillation_targets",
    "distillation_loss",
    "latent_factor_penalty",
]

STUDENT_KINDS = ("single", "batchensemble", "latentbe")
_FACTOR_INIT = {"batchensemble": "batchensemble", "latentbe": "latent"}


def build_student(
    kind: str,
    template,
    *,
    input_shape,
    n_classes: int,
    n_members: int,
    seed: int,
    device,
    return_callbacks: bool = False,
):
    """An initialised student module on ``device`` (and, with ``return_callbacks``, the template's callbacks).

    ``template`` (None, an nn.Module class or a skorch net) gives the architecture and the
    training regime; BatchEnsemble students wrap it into ``n_members`` members sharing its
    weights. The callbacks are the template's own, initialised (e.g. the warm-up + cosine
    ``LRScheduler`` of the 'member' preset), for the student's training loop to run.
    """
    (net,) = build_member_nets(template, input_shape=input_shape, n_classes=n_classes, seeds=[seed], device=device)
    callbacks = user_callbacks(net)
    module = _student_module(kind, net.module_, n_members, seed, device)
    return (module, callbacks) if return_callbacks else module


def _student_module(kind: str, base: nn.Module, n_members: int, seed: int, device) -> nn.Module:
    if kind == "single":
        return base
    if n_members < 2:
        raise ValueError(
            f"student={kind!r} matches teacher members one to one and needs a teacher with at "
            f"least 2 members; this teacher has {n_members}. Use student='single'."
        )
    with torch_seed(seed, device):  # the N(1, 0.5) factor draw, reproducible and local
        return BatchEnsembleNet(base, n_members, init=_FACTOR_INIT[kind]).to(device)


def student_member_logits(student: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """Member logits ``(S, B, C)``: BatchEnsemble members, or one row for a single network."""
    if isinstance(student, BatchEnsembleNet):
        return student(X)
    return student(X).unsqueeze(0)


def distillation_targets(teacher_proba: torch.Tensor, n_student_members: int) -> torch.Tensor:
    """What each student member is taught, ``(S, B, C)``.

    ``teacher_proba`` is ``(M, B, C)``. A student with as many members as the teacher matches
    them one to one; any other student matches the ensemble mean (members combined in
    probability space, never in logits).
    """
    if n_student_members == len(teacher_proba) and n_student_members > 1:
        return teacher_proba
    mean = teacher_proba.mean(dim=0, keepdim=True)
    return mean.expand(n_student_members, *mean.shape[1:])


def distillation_loss(
    clean_logits: torch.Tensor,
    perturbed_logits: torch.Tensor,
    y: torch.Tensor,
    teacher_proba: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """``(1 - alpha) CE(f_S(x), y) + alpha T^2 KL(p_T(x') || p_S(x'))``, averaged over members.

    Parameters
    ----------
    clean_logits, perturbed_logits : tensor of shape (S, B, C)
        Student member logits on the clean and on the perturbed batch.
    y : tensor of shape (B,)
        Integer labels.
    teacher_proba : tensor of shape (M, B, C)
        Tempered teacher member probabilities on the perturbed batch.
    alpha, temperature : float
    """
    n_members, batch, n_classes = clean_logits.shape
    cross_entropy = F.cross_entropy(clean_logits.reshape(-1, n_classes), y.repeat(n_members))
    targets = distillation_targets(teacher_proba, n_members).reshape(-1, n_classes)
    log_student = (perturbed_logits / temperature).log_softmax(-1).reshape(-1, n_classes)
    kl = F.kl_div(log_student, targets, reduction="sum") / (n_members * batch)
    return (1 - alpha) * cross_entropy + alpha * temperature**2 * kl


def latent_factor_penalty(student: nn.Module) -> torch.Tensor:
    """Mean squared distance of the rank-one factors from 1 (keeps LatentBE members averageable)."""
    factors = torch.cat([p.flatten() for p in student.factor_parameters()])
    return (factors - 1).pow(2).mean()
