"""The training regimes estimators use when the user gives no net (``net=None``).

The methods of this package assume a regime: members that converge (SGD with momentum, warm-up
and cosine decay, weight decay, as every paper's base networks are trained), experts on plain
constant-rate SGD (trajectory matching), and so on. A preset is a skorch template
(:func:`~skpcoreset.make_net`) with that regime, built here and nowhere else, so every
estimator that trains "a member" trains it the same way. A user's own skorch net replaces the
preset entirely.

``max_epochs='auto'`` sizes the run to the data: enough epochs for about ``target_steps``
optimiser steps, within ``[min_epochs, max_epochs]``, so a 300-row table and a 20,000-image set
both get a converged network without a hand-set epoch count. On a CPU the run is also capped at
``CPU_TRAINING_FLOPS`` per network (about a minute of a 2-core CPU): an MLP on a table never
reaches it, a ConvNet on thousands of images does, and trains for fewer epochs there than on
a GPU.
"""

from __future__ import annotations

import math

import torch
from skorch.callbacks import LRScheduler

from ._train import WarmupCosineLR

__all__ = ["PRESETS", "default_net", "auto_epochs", "AUTO_EPOCHS", "CPU_TRAINING_FLOPS", "default_module_params"]

# Optimiser steps an 'auto' run aims for, and the bounds on its epochs.
AUTO_EPOCHS = {"target_steps": 1500, "min_epochs": 20, "max_epochs": 150}
# Training FLOPs (3x the forward pass per sample and epoch) an 'auto' run may spend on a CPU.
CPU_TRAINING_FLOPS = 1.5e12

PRESETS = {
    # Base networks of every family (ensemble members, modes, teachers, theta*): the regime of
    # the papers' base training (SGD + Nesterov momentum, weight decay, warm-up + cosine).
    "member": {
        "optimizer": torch.optim.SGD,
        "lr": 0.05,
        "optimizer__momentum": 0.9,
        "optimizer__nesterov": True,
        "optimizer__weight_decay": 5e-4,
        "batch_size": 128,
        "max_epochs": "auto",
        "schedule": "warmup_cosine",
    },
    # Expert trajectories of pseudocoreset synthesis: plain SGD at a constant rate, one
    # checkpoint per epoch, as in trajectory matching (Cazenavette et al. 2022; Kim et al. 2022).
    "expert": {
        "optimizer": torch.optim.SGD,
        "lr": 0.05,
        "batch_size": 64,
        "max_epochs": 30,
        "schedule": "constant",
    },
}


def default_net(role: str):
    """The preset template of ``role`` (see :data:`PRESETS`), a :class:`~skpcoreset.TemplateNet`."""
    from ._skorch import make_net

    settings = dict(PRESETS[role])
    schedule = settings.pop("schedule")
    if schedule == "warmup_cosine":
        settings["callbacks"] = [("lr_schedule", LRScheduler(WarmupCosineLR, step_every="batch", event_name=None))]
    return make_net(**settings)


def auto_epochs(
    n_samples: int,
    batch_size: int,
    *,
    target_steps: int | None = None,
    forward_flops: int | None = None,
    device: torch.device | str = "cpu",
) -> int:
    """Epochs giving about ``target_steps`` optimiser steps on ``n_samples`` rows (bounded).

    With ``forward_flops`` (one sample's forward pass) on a CPU, the epochs are also capped so
    that training costs at most ``CPU_TRAINING_FLOPS`` (at least one epoch).
    """
    target = AUTO_EPOCHS["target_steps"] if target_steps is None else target_steps
    steps_per_epoch = max(1, math.ceil(n_samples / batch_size))
    epochs = min(max(math.ceil(target / steps_per_epoch), AUTO_EPOCHS["min_epochs"]), AUTO_EPOCHS["max_epochs"])
    if forward_flops and torch.device(device).type == "cpu":
        affordable = CPU_TRAINING_FLOPS / (3 * forward_flops * max(n_samples, 1))
        epochs = min(epochs, max(1, math.floor(affordable)))
    return int(epochs)


def default_module_params(module_cls, device: torch.device) -> dict:
    """Data-free defaults of the default modules: a ConvNet sized to the device.

    The papers' ConvNet-3 has width 128: 74 MFLOPs per 28x28 image, minutes per epoch of a few
    thousand images on a CPU. CPU fits use width 16 (1.3 MFLOPs, about 60x fewer), which keeps
    a default pseudocoreset of 5,000 such images (4 experts x 15 epochs, synthesis, posterior)
    near a minute of a 2-core CPU; CUDA fits use the papers' 128.
    """
    from .nets import ConvNet

    if module_cls is ConvNet:
        return {"module__width": 128 if torch.device(device).type == "cuda" else 16}
    return {}
