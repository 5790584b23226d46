"""The one minibatch training loop of skpcoreset, and its vectorised twin for ensembles.

Every estimator trains through :class:`Trainer`. The data live on the device for the whole run,
batches are gathered by index from a permutation drawn on the device, and the loss is read back
to the host once per epoch, so the hot path holds no DataLoader, no per-sample Python and no
per-step synchronisation. Method families customise one rung, as in skorch:

- :meth:`Trainer.loss` -- the objective on one batch (distillation, bridges, curves override it);
- :meth:`Trainer.step` -- one optimiser step;
- :meth:`Trainer.epoch` -- one pass over the data;
- :meth:`Trainer.fit` -- epochs, validation, callbacks, interruption.

Everything else is a skorch callback, fired at the same points as in skorch's own loop
(``on_train_begin``, ``on_epoch_begin``, ``on_batch_begin``, ``on_grad_computed``,
``on_batch_end``, ``on_epoch_end``, ``on_train_end``): the learning-rate schedule, the progress
bar, checkpoints, and the callbacks of a user's skorch net (``EarlyStopping``, ``Checkpoint``,
``LRScheduler`` with any policy, ``GradientNormClipping``, custom ones). Callbacks receive the
skorch net being trained (or, for networks that have none, a :class:`LoopState` with the same
``history`` / ``module_`` / ``optimizer_`` attributes), and the loop records ``train_loss``,
``valid_loss``, ``valid_acc``, their ``*_best`` flags and ``dur`` in a skorch ``History`` before
``on_epoch_end``, as skorch's default callbacks do. A callback that raises ``KeyboardInterrupt``
(skorch's ``EarlyStopping``) ends training normally; a Ctrl-C from the user ends it too and sets
``interrupted``, keeping what was learned.

:class:`VmapEnsembleTrainer` trains M identically shaped members in one vectorised program
(``torch.func.stack_module_state`` + ``vmap``); :func:`train_members` picks it or the sequential
loop per architecture, so an ensemble never trains slower than one member after another.
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from skorch.callbacks import Callback, LRScheduler
from skorch.dataset import Dataset
from skorch.history import History
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from ._base import make_generator
from ._parallel import map_members
from .exceptions import warn

__all__ = [
    "TrainSpec",
    "LoopState",
    "Trainer",
    "VmapEnsembleTrainer",
    "ParameterSnapshots",
    "train_members",
    "choose_ensemble_strategy",
    "predict_batched",
    "schedule_factor",
    "WarmupCosineLR",
    "user_callbacks",
]

SCHEDULES = ("constant", "cosine", "warmup_cosine", "step")
MIXED_PRECISION = ("no", "bf16")


@dataclass
class TrainSpec:
    """How to train a module: epochs, batch size, optimiser, schedule and loss.

    Built from a skorch net template by :func:`skpcoreset._skorch.train_spec_from_net`, or
    directly by estimators that own their inner training.

    Attributes
    ----------
    max_epochs, batch_size, lr : int, int, float
    optimizer : type
        A ``torch.optim.Optimizer`` class, built on the trained parameters with ``lr`` and
        ``optimizer_kwargs``.
    schedule : {'constant', 'cosine', 'warmup_cosine', 'step'}
        Learning-rate factor over the whole run, stepped every batch: 'cosine' anneals to 0,
        'warmup_cosine' rises linearly over the first ``warmup`` share of the steps and then
        anneals, 'step' is x0.1 at 50% and 75% of the steps. A skorch ``LRScheduler`` on the
        net runs in addition, as its own callback.
    warmup : float
        Share of the steps spent warming up ('warmup_cosine' only).
    criterion : nn.Module or None
        Loss of logits and integer labels; None: cross-entropy.
    shuffle : bool
        Draw a fresh permutation every epoch (skorch's ``iterator_train__shuffle``).
    compile : bool
        Wrap the forward pass in :func:`torch.compile` (skorch's ``compile``).
    """

    max_epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: type = torch.optim.Adam
    optimizer_kwargs: dict = field(default_factory=dict)
    schedule: str = "constant"
    warmup: float = 0.05
    criterion: nn.Module | None = None
    shuffle: bool = True
    compile: bool = False

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}; got {self.schedule!r}.")
        if self.max_epochs < 0 or self.batch_size < 1:
            raise ValueError("max_epochs must be >= 0 and batch_size >= 1.")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be a share of the steps in [0, 1); got {self.warmup!r}.")


def schedule_factor(schedule: str, total_steps: int, warmup: float = 0.05):
    """The learning-rate factor of ``schedule`` as a function of the step (for ``LambdaLR``)."""
    total_steps = max(total_steps, 1)
    warmup_steps = int(warmup * total_steps) if schedule == "warmup_cosine" else 0

    def cosine(step: int) -> float:
        progress = min(step - warmup_steps, total_steps - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    if schedule == "constant":
        return lambda step: 1.0
    if schedule == "cosine":
        return cosine
    if schedule == "warmup_cosine":
        return lambda step: (step + 1) / warmup_steps if step < warmup_steps else cosine(step)
    return lambda step: 0.1 ** ((step >= 0.5 * total_steps) + (step >= 0.75 * total_steps))


class WarmupCosineLR(torch.optim.lr_scheduler.LambdaLR):
    """Linear warm-up over the first ``warmup`` share of the steps, then cosine annealing to 0.

    A torch LR scheduler to step every batch, for a skorch template:
    ``callbacks=[LRScheduler(WarmupCosineLR, step_every="batch")]``. With ``total_steps=None``
    skpcoreset's loop fills in the run's number of steps, so the schedule spans the whole run
    whatever ``max_epochs`` and the data size are.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    total_steps : int or None, default=None
    warmup : float in [0, 1), default=0.05

    Examples
    --------
    >>> from skorch.callbacks import LRScheduler
    >>> from skpcoreset import WarmupCosineLR, make_net
    >>> net = make_net(lr=0.1, callbacks=[LRScheduler(WarmupCosineLR, step_every="batch")])
    >>> import torch
    >>> optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    >>> schedule = WarmupCosineLR(optimizer, total_steps=100, warmup=0.1)
    >>> [round(group["lr"], 3) for group in optimizer.param_groups]  # 1/10 of the way up
    [0.01]
    """

    def __init__(self, optimizer, total_steps: int | None = None, warmup: float = 0.05, last_epoch: int = -1):
        if total_steps is None:
            raise ValueError(
                "WarmupCosineLR needs total_steps; skpcoreset's training loop sets it for LRScheduler "
                "callbacks, give it explicitly elsewhere."
            )
        super().__init__(optimizer, schedule_factor("warmup_cosine", total_steps, warmup), last_epoch=last_epoch)


class LoopState:
    """What callbacks see as ``net`` when the trained module has no skorch net of its own.

    It offers the attributes skorch's callbacks read -- ``history``, ``module_``,
    ``optimizer_``, ``verbose`` -- and the net-level hooks that keep the history, as
    ``skorch.NeuralNet`` does.
    """

    def __init__(self, module: nn.Module, verbose: int = 0):
        self.module_ = module
        self.history = History()
        self.optimizer_ = None
        self.verbose = verbose
        self.callbacks_: list = []

    def on_epoch_begin(self, net, **kwargs):
        self.history.new_epoch()
        self.history.record("epoch", len(self.history))

    def on_batch_begin(self, net, **kwargs):
        self.history.new_batch()

    def __getattr__(self, name: str):
        if name.startswith("on_"):
            return _no_op
        raise AttributeError(name)


def _no_op(*args, **kwargs):
    return None


def native_schedule(callback) -> float | None:
    """The warm-up share of a whole-run :class:`WarmupCosineLR` callback, or None for any other.

    ``LRScheduler(WarmupCosineLR, step_every='batch')`` without ``total_steps`` (the member
    preset's schedule, or a user's) spans the whole run. The loop runs it itself, as
    ``TrainSpec(schedule='warmup_cosine')``: then it holds wherever a spec is built from a
    template (:func:`skpcoreset._skorch.train_spec_from_net`), whether or not the template's
    net drives the loop, and members can still be trained together with ``vmap``.
    """
    if not isinstance(callback, LRScheduler) or callback.policy is not WarmupCosineLR:
        return None
    if callback.step_every != "batch" or getattr(callback, "total_steps", None) is not None:
        return None
    return float(getattr(callback, "warmup", 0.05))


def user_callbacks(net) -> list:
    """The initialised callbacks of a skorch net, without skorch's default logging callbacks.

    skorch's defaults (epoch timer, loss scoring, ``valid_acc``, the printed log) are replaced
    by this loop's own history records and progress bar; a whole-run :class:`WarmupCosineLR`
    runs as the spec's schedule (:func:`native_schedule`).
    """
    callbacks = getattr(net, "callbacks_", None) or []
    defaults = {name for name, _ in net.get_default_callbacks()} if hasattr(net, "get_default_callbacks") else set()
    return [(name, cb) for name, cb in callbacks if name not in defaults and native_schedule(cb) is None]


def _overrides(callback: Callback, hook: str) -> bool:
    return getattr(type(callback), hook, None) is not getattr(Callback, hook)


class _ProgressBar(Callback):
    """A tqdm bar over epochs, with the last epoch's losses (only when ``verbose``)."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc = total, desc

    def on_train_begin(self, net, **kwargs):
        self.bar = tqdm(total=self.total, desc=self.desc, leave=False, dynamic_ncols=True)

    def on_epoch_end(self, net, **kwargs):
        row = net.history[-1]
        self.bar.set_postfix({k: f"{row[k]:.4g}" for k in ("train_loss", "valid_loss") if k in row}, refresh=False)
        self.bar.update()

    def on_train_end(self, net, **kwargs):
        self.bar.close()


class ParameterSnapshots(Callback):
    """Keeps a detached copy of the trained parameters before training and after chosen epochs.

    Parameters
    ----------
    snapshot : callable
        ``snapshot() -> Tensor``, the current parameters in the form the caller wants.
    epochs : set of int or None
        1-based epochs after which to snapshot; None: after every epoch.
    """

    def __init__(self, snapshot, epochs: set[int] | None = None):
        self.snapshot = snapshot
        self.epochs = epochs

    def on_train_begin(self, net, **kwargs):
        self.snapshots = [self.snapshot()]

    def on_epoch_end(self, net, **kwargs):
        if self.epochs is None or len(net.history) in self.epochs:
            self.snapshots.append(self.snapshot())


class Trainer:
    """Minibatch training of one module on device-resident tensors.

    Parameters
    ----------
    module : nn.Module
        Trained in place; it maps inputs to logits.
    spec : TrainSpec
        Epochs, batch size, optimiser, schedule, criterion.
    generator : torch.Generator
        Source of the shuffling permutations (must live on the data's device).
    net : skorch NeuralNet or None, default=None
        The skorch net ``module`` belongs to: its callbacks run in this loop (skorch's default
        logging callbacks excepted, which this loop replaces) and its ``history`` records the
        run. None: a :class:`LoopState` stands in.
    callbacks : list of (name, Callback), default=()
        Further callbacks of the caller (initialised), run after the net's own.
    augment : callable or None, default=None
        ``augment(X, generator) -> X``, applied to the inputs of every training batch (see
        :mod:`skpcoreset.augment`); validation batches are never augmented.
    mixed_precision : {'no', 'bf16'}, default='no'
        'bf16': bf16 autocast for the forward pass and the loss; on CUDA, 4-D inputs also use
        the channels-last memory format.
    verbose : int, default=0
        Show a progress bar over epochs.
    desc : str
        Label of the progress bar and of warnings.

    Attributes
    ----------
    history : skorch.history.History
        One row per epoch: ``epoch``, ``train_loss``, ``valid_loss``/``valid_acc`` when
        validating, their ``*_best`` flags, ``dur``.
    interrupted : bool
        True when a KeyboardInterrupt from the user (not from a callback) stopped training.
    stopped_by_callback : bool
        True when a callback ended training early (e.g. ``EarlyStopping``).
    """

    def __init__(
        self,
        module: nn.Module,
        spec: TrainSpec,
        *,
        generator: torch.Generator,
        net=None,
        callbacks=(),
        augment=None,
        mixed_precision: str = "no",
        verbose: int = 0,
        desc: str = "train",
    ):
        if mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}; got {mixed_precision!r}.")
        self.module = module
        self.spec = spec
        self.generator = generator
        self.device = generator.device
        self.net = net if net is not None else LoopState(module, verbose)
        self.extra_callbacks = list(callbacks)
        self.augment = augment
        self.amp = mixed_precision == "bf16"
        self.channels_last = self.amp and self.device.type == "cuda"
        self.verbose = verbose
        self.desc = desc
        self.criterion = spec.criterion if spec.criterion is not None else nn.CrossEntropyLoss()
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.model = torch.compile(module) if spec.compile else module
        self.interrupted = False
        self.stopped_by_callback = False

    @property
    def history(self) -> History:
        return self.net.history

    # -- rungs --------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        """Parameter groups handed to the optimiser (override to exempt parameters from decay)."""
        return [{"params": [p for p in self.module.parameters() if p.requires_grad]}]

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return self.spec.optimizer(self.parameter_groups(), lr=self.spec.lr, **self.spec.optimizer_kwargs)

    def prepare_input(self, X: torch.Tensor) -> torch.Tensor:
        if self.channels_last and X.dim() == 4:
            return X.contiguous(memory_format=torch.channels_last)
        return X

    def augment_input(self, X: torch.Tensor) -> torch.Tensor:
        """The training batch's inputs as the loss sees them (augmented, if ``augment`` is set)."""
        return X if self.augment is None else self.augment(X, self.generator)

    def loss(self, X: torch.Tensor, y: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        """Objective on one batch; the spec's criterion (cross-entropy) on integer labels by default."""
        return self.criterion(self.model(self.prepare_input(X)), y)

    def step(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """One optimiser step; returns the detached loss (no host synchronisation)."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = self.loss(*batch)
        loss.backward()
        if self._grad_hooks:
            self._notify(
                "on_grad_computed",
                self._grad_hooks,
                named_parameters=list(self.module.named_parameters()),
                batch=batch,
                training=True,
            )
        self.optimizer.step()
        return loss.detach()

    def batch_indices(self, n_samples: int):
        """Index tensors of one epoch's minibatches (a fresh permutation on the device)."""
        if self.spec.shuffle:
            order = torch.randperm(n_samples, generator=self.generator, device=self.device)
        else:
            order = torch.arange(n_samples, device=self.device)
        batch_size = self.spec.batch_size
        for start in range(0, n_samples, batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2 and n_samples > 1:
                break  # a batch of one breaks batch statistics and adds nothing
            yield idx

    def set_train_mode(self) -> None:
        self.module.train()

    def epoch(self, tensors: tuple[torch.Tensor, ...]) -> float:
        """One pass over ``tensors`` (all indexed along their first axis); returns the mean loss."""
        self.set_train_mode()
        total = torch.zeros((), device=self.device)
        n_steps = 0
        for idx in self.batch_indices(len(tensors[0])):
            X, *rest = (t[idx] for t in tensors)
            batch = (self.augment_input(X), *rest)
            self.net.on_batch_begin(self.net, batch=batch, training=True)  # a batch row, as skorch keeps
            self._notify("on_batch_begin", self._batch_hooks, batch=batch, training=True)
            loss = self.step(batch)
            self.history.record_batch("train_batch_size", idx.shape[-1])
            self._notify("on_batch_end", self._batch_hooks, batch=batch, training=True, loss=loss)
            total += loss
            n_steps += 1
        return float(total) / max(n_steps, 1)

    @torch.no_grad()
    def validation_scores(self, tensors: tuple[torch.Tensor, ...]) -> dict[str, float]:
        """``valid_loss`` (the ``loss`` rung on unaugmented batches) and, for the default loss,
        ``valid_acc``, in eval mode."""
        self.module.eval()
        default_loss = type(self).loss is Trainer.loss
        total, correct, count = 0.0, 0.0, 0
        for start in range(0, len(tensors[0]), 1024):
            batch = tuple(t[start : start + 1024] for t in tensors)
            if default_loss:
                logits = self.model(self.prepare_input(batch[0]))
                total += float(self.criterion(logits, batch[1])) * len(batch[0])
                correct += float((logits.argmax(-1) == batch[1]).sum())
            else:
                total += float(self.loss(*batch)) * len(batch[0])
            count += len(batch[0])
        scores = {"valid_loss": total / max(count, 1)}
        if default_loss:
            scores["valid_acc"] = correct / max(count, 1)
        return scores

    def validation_loss(self, tensors: tuple[torch.Tensor, ...]) -> float:
        return self.validation_scores(tensors)["valid_loss"]

    def steps_per_epoch(self, n_samples: int) -> int:
        full, rest = divmod(n_samples, self.spec.batch_size)
        return full + (rest >= 2 or (n_samples == 1))

    # -- callbacks ----------------------------------------------------------------------------
    def _build_callbacks(self, total_steps: int) -> list:
        callbacks = []
        if self.spec.schedule != "constant":
            schedule = LRScheduler(
                policy=torch.optim.lr_scheduler.LambdaLR,
                lr_lambda=schedule_factor(self.spec.schedule, total_steps, self.spec.warmup),
                step_every="batch",
                event_name=None,
            )
            callbacks.append(("skpcoreset_schedule", schedule.initialize()))
        callbacks += user_callbacks(self.net) + self.extra_callbacks
        for _, callback in callbacks:
            if isinstance(callback, LRScheduler) and "total_steps" in _policy_parameters(callback):
                if getattr(callback, "total_steps", None) is None:
                    callback.total_steps = total_steps  # our policies anneal over the whole run
        if self.verbose:
            callbacks.append(("skpcoreset_progress", _ProgressBar(self.spec.max_epochs, self.desc)))
        return callbacks

    def _notify(self, hook: str, callbacks: list, **kwargs) -> None:
        for _, callback in callbacks:
            getattr(callback, hook)(self.net, **kwargs)

    def _notify_all(self, hook: str, **kwargs) -> None:
        getattr(self.net, hook)(self.net, **kwargs)
        self._notify(hook, self.callbacks, **kwargs)

    # -- driver -------------------------------------------------------------------------------
    def fit(self, *tensors: torch.Tensor, validation: tuple[torch.Tensor, ...] | None = None):
        """Train on ``tensors`` (e.g. ``X, y``) for ``spec.max_epochs`` epochs.

        A ``KeyboardInterrupt`` stops training after the current step and keeps what was
        learned; ``interrupted`` records it. Callbacks may end training early the skorch way.
        """
        total_steps = max(1, self.spec.max_epochs * self.steps_per_epoch(len(tensors[0])))
        self.optimizer = self.configure_optimizer()
        self.net.optimizer_ = self.optimizer
        self.callbacks = self._build_callbacks(total_steps)
        self._batch_hooks = [
            cb for cb in self.callbacks if _overrides(cb[1], "on_batch_begin") or _overrides(cb[1], "on_batch_end")
        ]
        self._grad_hooks = [cb for cb in self.callbacks if _overrides(cb[1], "on_grad_computed")]
        labels = tensors[1] if len(tensors) > 1 else None
        datasets = {"dataset_train": Dataset(tensors[0], labels), "dataset_valid": None}
        if validation is not None:
            datasets["dataset_valid"] = Dataset(validation[0], validation[1] if len(validation) > 1 else None)
        best = {}
        self._notify_all("on_train_begin", X=tensors[0], y=labels)
        try:
            for _ in range(self.spec.max_epochs):
                self._notify_all("on_epoch_begin", **datasets)
                started = time.perf_counter()
                scores = {"train_loss": self.epoch(tensors)}
                if validation is not None:
                    scores.update(self.validation_scores(validation))
                self._record(scores, best, time.perf_counter() - started)
                try:
                    self._notify_all("on_epoch_end", **datasets)
                except KeyboardInterrupt:  # skorch's way for a callback to end training
                    self.stopped_by_callback = True
                    break
        except KeyboardInterrupt:
            self.interrupted = True
            warn(f"{self.desc}: interrupted after {len(self.history)} epoch(s); keeping the weights learned so far.")
        self._notify_all("on_train_end", X=tensors[0], y=labels)
        self.module.eval()
        return self

    def _record(self, scores: dict, best: dict, seconds: float) -> None:
        for name, value in scores.items():
            self.history.record(name, value)
            lower_is_better = not name.endswith("_acc")
            improved = name not in best or (value < best[name] if lower_is_better else value > best[name])
            if improved:
                best[name] = value
            self.history.record(f"{name}_best", improved)
        self.history.record("dur", seconds)


def _policy_parameters(callback: LRScheduler):
    policy = callback.policy_ if hasattr(callback, "policy_") else callback._get_policy_cls()
    try:
        return inspect.signature(policy).parameters
    except (TypeError, ValueError):
        return {}


class VmapEnsembleTrainer(Trainer):
    """Train M members of one architecture at once with ``torch.func.vmap``.

    Each member sees its own permutation of the data. The members' parameters are stacked
    into leaves of shape ``(M, ...)``; since the loss is a sum of per-member losses, every
    member receives exactly the gradient it would get alone, and element-wise optimisers
    (SGD, Adam, AdamW) update each member exactly as if it were trained separately. Members
    share one run, so callbacks of skorch nets cannot run per member (see :func:`train_members`).
    """

    def __init__(self, modules: list[nn.Module], spec: TrainSpec, **kwargs):
        self.members = modules
        self.params, self.buffers = stack_module_state(modules)
        self.template = copy.deepcopy(modules[0]).to("meta")
        super().__init__(modules[0], spec, **kwargs)
        self.model = vmap(self._member_forward, randomness="different")

    def _member_forward(self, params, buffers, X):
        return functional_call(self.template, (params, buffers), (X,))

    def parameter_groups(self) -> list[dict]:
        return [{"params": list(self.params.values())}]

    def batch_indices(self, n_samples: int):
        n_members = len(self.members)
        keys = torch.rand(n_members, n_samples, generator=self.generator, device=self.device)
        orders = keys.argsort(dim=1)
        batch_size = self.spec.batch_size
        for start in range(0, n_samples, batch_size):
            idx = orders[:, start : start + batch_size]
            if idx.shape[1] < 2 and n_samples > 1:
                break
            yield idx

    def augment_input(self, X: torch.Tensor) -> torch.Tensor:
        """Inputs ``(M, B, ...)``: each member's batch augmented independently."""
        if self.augment is None:
            return X
        return self.augment(X.flatten(0, 1), self.generator).view_as(X)

    def loss(self, X: torch.Tensor, y: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        logits = self.model(self.params, self.buffers, X)  # (M, B, C)
        return vmap(self.criterion)(logits, y).sum()

    def set_train_mode(self) -> None:
        for member in self.members:
            member.train()

    def epoch(self, tensors: tuple[torch.Tensor, ...]) -> float:
        return super().epoch(tensors) / len(self.members)

    def fit(self, *tensors: torch.Tensor, validation=None):
        if validation is not None:
            raise ValueError("VmapEnsembleTrainer does not support validation; members train one run together.")
        for p in self.params.values():
            p.requires_grad_(True)
        super().fit(*tensors)
        self._write_back()
        return self

    @torch.no_grad()
    def _write_back(self):
        for m, member in enumerate(self.members):
            for name, value in self.params.items():
                member.get_parameter(name).copy_(value[m])
            for name, value in self.buffers.items():
                member.get_buffer(name).copy_(value[m])
            member.eval()


def _is_vmap_friendly(module: nn.Module) -> bool:
    """Buffer-free stacks of dense layers: the case where vmap beats sequential training."""
    if any(True for _ in module.buffers()):
        return False
    dense = (nn.Linear, nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.Identity, nn.Flatten, nn.Dropout)
    leaves = [m for m in module.modules() if not list(m.children())]
    return all(isinstance(m, dense) for m in leaves)


def choose_ensemble_strategy(modules: list[nn.Module], strategy: str = "auto", *, per_member_runs: str = "") -> str:
    """Resolve ``'auto'`` into ``'vmap'`` or ``'sequential'`` for these members.

    Measured (on an H100, DESIGN.md section 0): vmap trains MLP members 1.6x (M=4) to 3.9x
    (M=8) faster than sequential and 1.0-1.2x on 2 CPU cores, but ConvNets 0.8x (slower), so
    'auto' vectorises only buffer-free dense networks.

    Parameters
    ----------
    per_member_runs : str, default=''
        Why members need runs of their own (e.g. the skorch net's callbacks or validation
        split); non-empty makes 'auto' sequential and 'vmap' an error that says why.
    """
    if strategy not in ("auto", "vmap", "sequential"):
        raise ValueError(f"ensemble_strategy must be 'auto', 'vmap' or 'sequential'; got {strategy!r}.")
    if per_member_runs:
        if strategy == "vmap":
            raise ValueError(
                f"ensemble_strategy='vmap' trains all members in one run, but {per_member_runs} "
                "need a run per member; use ensemble_strategy='auto' or 'sequential'."
            )
        return "sequential"
    if strategy != "auto":
        return strategy
    if len(modules) > 1 and all(_is_vmap_friendly(m) for m in modules):
        return "vmap"
    return "sequential"


def _needs_own_runs(nets) -> str:
    """What in the members' skorch nets needs a training run per member ('' when nothing)."""
    if not nets:
        return ""
    reasons = []
    names = [name for name, _ in user_callbacks(nets[0])]
    if names:
        reasons.append(f"the net's callbacks {names}")
    if getattr(nets[0], "train_split", None) is not None:
        reasons.append("the net's train_split")
    return " and ".join(reasons)


class MemberRuns(NamedTuple):
    """What :func:`train_members` ran: the strategy, each member's history, whether it was stopped, checkpoints."""

    strategy: str
    histories: list[History]
    interrupted: bool
    checkpoints: torch.Tensor | None = None


def train_members(
    modules: list[nn.Module],
    tensors: tuple[torch.Tensor, ...],
    spec: TrainSpec,
    *,
    seeds: list[int],
    nets: list | None = None,
    validation: list | None = None,
    strategy: str = "auto",
    n_jobs: int | None = None,
    verbose: int = 0,
    desc: str = "members",
    checkpoints: bool = False,
    **trainer_kwargs,
) -> MemberRuns:
    """Train ``modules`` in place on ``tensors``.

    Parameters
    ----------
    nets : list of skorch NeuralNet or None
        The members' skorch nets (``nets[m]`` owns ``modules[m]``): their callbacks run in each
        member's loop and their histories record it. Callbacks or a validation split force
        sequential training.
    validation : list of tuple of Tensor or None
        Per member, the held-out tensors to validate on each epoch (or None).
    checkpoints : bool
        Also keep every member's flat parameters at initialisation and after each epoch:
        ``MemberRuns.checkpoints`` of shape ``(n_members, n_completed_epochs + 1, P)``, on the
        data's device. When training is interrupted (or a callback stops a member early),
        every member is cut to the epochs all of them completed.

    Returns
    -------
    MemberRuns
        ``(strategy, histories, interrupted, checkpoints)``: 'vmap' or 'sequential', one skorch
        History per member, whether training was stopped (Ctrl-C), the checkpoints or None.

    Sequential members run in ``n_jobs`` threads (joblib; torch releases the GIL inside its
    kernels), or on the workers of an active joblib backend such as Dask (processes too; see
    :mod:`skpcoreset._parallel`), with the same result.
    """
    nets = list(nets) if nets is not None else [None] * len(modules)
    validation = list(validation) if validation is not None else [None] * len(modules)
    own_runs = _needs_own_runs([n for n in nets if n is not None])
    if any(v is not None for v in validation) and not own_runs:
        own_runs = "validation splits"
    strategy = choose_ensemble_strategy(modules, strategy, per_member_runs=own_runs)
    device = tensors[0].device
    if strategy == "vmap":
        trainer = VmapEnsembleTrainer(
            modules,
            spec,
            generator=make_generator(seeds[0], device),
            verbose=verbose,
            desc=f"{desc} (vmap x{len(modules)})",
            **trainer_kwargs,
        )
        if checkpoints:
            snapshots = ParameterSnapshots(lambda: flat_parameters(trainer.params.values()))
            trainer.extra_callbacks.append(("trajectory", snapshots))
        trainer.fit(*tensors)
        for net in nets:
            if net is not None:
                net.history = copy.deepcopy(trainer.history)
        trajectories = torch.stack(snapshots.snapshots, dim=1) if checkpoints else None
        return MemberRuns(strategy, [trainer.history] * len(modules), trainer.interrupted, trajectories)
    # Members are independent: map_members runs them here, in threads or on other processes
    # (Dask workers), and hands back (history, interrupted, checkpoints or None) per member.
    per_member = [
        {"seed": seeds[m], "net": nets[m], "validation": validation[m], "desc": f"{desc} {m + 1}/{len(modules)}"}
        for m in range(len(modules))
    ]
    runs = map_members(
        _train_one_member,
        modules,
        per_member,
        n_jobs=n_jobs,
        stop=lambda run: run[1],
        tensors=tensors,
        spec=spec,
        verbose=verbose,
        trainer_kwargs=trainer_kwargs,
        checkpoints=checkpoints,
    )
    for net, (history, _, _) in zip(nets, runs, strict=False):
        if net is not None:  # a process worker recorded into its copy of the net
            net.history = history
    trajectories = None
    if checkpoints:
        length = min(len(run) for _, _, run in runs)
        trajectories = torch.stack([run[:length].to(device) for _, _, run in runs])
    histories = [history for history, _, _ in runs]
    return MemberRuns(strategy, histories, any(interrupted for _, interrupted, _ in runs), trajectories)


def flat_parameters(parameters) -> torch.Tensor:
    """Parameters stacked along a leading member axis, flattened to ``(n_members, P)`` (detached)."""
    return torch.cat([p.detach().reshape(p.shape[0], -1) for p in parameters], dim=1)


def _train_one_member(
    module, *, seed, net, validation, desc, tensors, spec, verbose, trainer_kwargs, checkpoints
) -> tuple[History, bool, torch.Tensor | None]:
    """One sequential member, as a picklable function: (history, interrupted, checkpoints or None)."""
    callbacks = []
    if checkpoints:
        snapshots = ParameterSnapshots(lambda: flat_parameters(p.unsqueeze(0) for p in module.parameters()))
        callbacks.append(("trajectory", snapshots))
    trainer = Trainer(
        module,
        spec,
        generator=make_generator(seed, tensors[0].device),
        net=net,
        verbose=verbose,
        desc=desc,
        callbacks=callbacks,
        **trainer_kwargs,
    ).fit(*tensors, validation=validation)
    return trainer.history, trainer.interrupted, torch.cat(snapshots.snapshots) if checkpoints else None


@torch.no_grad()
def predict_batched(fn, X: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Apply ``fn`` to ``X`` in batches and concatenate (inference mode, no autograd)."""
    if len(X) == 0:
        raise ValueError("Cannot predict on an empty input.")
    return torch.cat([fn(X[start : start + batch_size]) for start in range(0, len(X), batch_size)])
