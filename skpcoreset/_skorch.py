"""skorch as the way networks come in: templates, member construction, fast iteration.

A skorch ``NeuralNetClassifier`` is the user-facing description of a network: its module and
``module__*`` arguments, criterion, optimiser, learning rate, epochs, batch size, callbacks and
validation split. Estimators clone it per member (so ``GridSearchCV`` can tune
``net__module__width`` or ``net__lr``), initialise the clone with ``input_shape`` /
``n_classes`` taken from the data, and train ``net.module_`` with skpcoreset's own loop
(:mod:`skpcoreset._train`), which runs the net's callbacks and records its ``history``.

What a template says is honoured or refused at ``fit`` with an error that names the setting
(:func:`check_template`); nothing is dropped silently. Modules may return logits (criterion
``CrossEntropyLoss``) or, with skorch's default ``NLLLoss``, probabilities (a final softmax);
estimators see every module through :func:`logit_module`, which turns probabilities into
log-probabilities, valid logits of the same distribution.
:class:`DeviceBatchIterator` makes a user's plain skorch ``fit`` serve device-resident batches.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import clone
from skorch import NeuralNet, NeuralNetClassifier
from skorch.dataset import Dataset
from torch import nn
from torch.utils.data import DataLoader

from ._base import seed_from_random_state, torch_seed
from ._train import TrainSpec, native_schedule, train_members
from .nets import default_module

__all__ = [
    "make_net",
    "TemplateNet",
    "as_template",
    "check_template",
    "build_member_nets",
    "fitted_module",
    "logit_module",
    "train_spec_from_net",
    "template_validation_split",
    "TrainedMembers",
    "train_template_members",
    "DeviceBatchIterator",
    "fast_iterator_params",
]

# skorch parameters skpcoreset reads (all others at a non-default value are refused by name).
_HONOURED = {
    "module",
    "criterion",
    "optimizer",
    "lr",
    "max_epochs",
    "batch_size",
    "callbacks",
    "train_split",
    "device",
    "compile",
    "verbose",
    "iterator_train",
    "iterator_valid",
    "dataset",
    "predict_nonlinearity",
    "warm_start",
    "use_caching",
    "torch_load_kwargs",
    "classes",
}
_HONOURED_PREFIXES = ("module__", "criterion__", "optimizer__", "callbacks__", "compile__")
# DataLoader arguments that describe *how* batches are served; skpcoreset serves them from the
# device and ignores these (every other iterator argument is refused).
_IGNORED_ITERATOR_ARGS = {"num_workers", "pin_memory", "persistent_workers", "prefetch_factor", "device"}


class TemplateNet(NeuralNetClassifier):
    """A skorch ``NeuralNetClassifier`` that can leave its module to the data.

    With ``module=None`` it picks :class:`~skpcoreset.nets.MLP` for flat inputs and
    :class:`~skpcoreset.nets.ConvNet` for image arrays ``(N, C, H, W)`` when it is fitted, and
    fills ``module__input_shape`` / ``module__n_classes`` from ``X`` and ``y`` wherever the
    module takes them and they are unset. Everything else is plain skorch, so the template of a
    skpcoreset estimator is also a network you can fit on its own.

    Examples
    --------
    >>> import numpy as np
    >>> from skpcoreset import TemplateNet
    >>> X, y = np.random.RandomState(0).rand(64, 5).astype("float32"), np.arange(64) % 2
    >>> net = TemplateNet(None, max_epochs=2, train_split=None, verbose=0).fit(X, y)
    >>> type(net.module_).__name__, net.module_.stages[0][1].in_features
    ('MLP', 5)
    """

    def initialize_module(self):
        if self.module is None:
            raise ValueError(
                "This template has module=None, which is resolved from the data: call fit(X, y), "
                "or give a module (make_net(MyModule, ...))."
            )
        return super().initialize_module()

    def fit(self, X, y=None, **fit_params):
        if not (self.warm_start and self.initialized_):
            self._fill_from_data(X, y)
        return super().fit(X, y, **fit_params)

    def _fill_from_data(self, X, y) -> None:
        from ._presets import auto_epochs

        X = np.asarray(X.detach().cpu() if isinstance(X, torch.Tensor) else X)
        input_shape = tuple(int(d) for d in X.shape[1:])
        n_classes = len(np.unique(np.asarray(y))) if y is not None else None
        params = _module_params(self, input_shape, n_classes, torch.device(self.device or "cpu"))
        if self.max_epochs == "auto":
            params["max_epochs"] = auto_epochs(len(X), self.batch_size)
        self.set_params(**params)


def make_net(
    module: type[nn.Module] | None = None,
    *,
    max_epochs: int = 30,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
    **kwargs,
) -> TemplateNet:
    """A skorch template for skpcoreset estimators.

    Parameters
    ----------
    module : nn.Module subclass or None
        Returns logits (or probabilities with ``criterion=torch.nn.NLLLoss``, as in skorch).
        ``None`` picks :class:`~skpcoreset.nets.MLP` for flat inputs and
        :class:`~skpcoreset.nets.ConvNet` for images at fit time. ``input_shape`` and
        ``n_classes`` are filled in from the data when the module accepts them.
    max_epochs, batch_size, lr, optimizer
        Training settings, read by skpcoreset's training loop.
    **kwargs
        Any other skorch parameter, e.g. ``module__hidden_sizes=(64,)``,
        ``optimizer__weight_decay=5e-4``, ``callbacks=[EarlyStopping()]`` or
        ``train_split=ValidSplit(5)``. Unlike plain skorch, the default criterion is
        ``CrossEntropyLoss`` and the default ``train_split`` is None (no hold-out).

    Returns
    -------
    TemplateNet
        An unfitted ``NeuralNetClassifier``; estimators clone it per member, and it can be
        fitted on its own.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skpcoreset import make_net
    >>> X, y = load_digits(return_X_y=True)
    >>> net = make_net(max_epochs=5, lr=1e-2, verbose=0).fit((X / 16).astype("float32"), y)
    >>> net.score((X / 16).astype("float32"), y) > 0.9
    True
    """
    kwargs.setdefault("criterion", nn.CrossEntropyLoss)
    kwargs.setdefault("train_split", None)
    return TemplateNet(module, max_epochs=max_epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, **kwargs)


def as_template(net, role: str = "member") -> NeuralNet:
    """``net`` as a skorch template.

    None -> the preset of ``role`` (:func:`skpcoreset._presets.default_net`), a module class ->
    that preset with the class as its module, a skorch net -> itself.
    """
    from ._presets import default_net

    if net is None:
        return default_net(role)
    if isinstance(net, type) and issubclass(net, nn.Module):
        return default_net(role).set_params(module=net)
    if isinstance(net, NeuralNet):
        return net
    raise TypeError(f"net must be None, a torch.nn.Module subclass or a skorch NeuralNet; got {type(net).__name__}.")


# -- what a template says ----------------------------------------------------------------------
def _criterion_class(net: NeuralNet):
    criterion = net.criterion
    return criterion if isinstance(criterion, type) else type(criterion)


def _output_kind_of_criterion(net: NeuralNet) -> str:
    criterion = _criterion_class(net)
    if issubclass(criterion, nn.CrossEntropyLoss):
        return "logits"
    if issubclass(criterion, nn.NLLLoss):
        return "probabilities"
    raise ValueError(
        f"The net's criterion is {net.criterion!r}. skpcoreset trains classifiers whose module returns "
        "logits (criterion=torch.nn.CrossEntropyLoss) or probabilities from a final softmax "
        "(criterion=torch.nn.NLLLoss, skorch's default); other criteria are not supported."
    )


def _non_default_params(net: NeuralNet) -> dict:
    defaults = {name: p.default for name, p in inspect.signature(NeuralNet.__init__).parameters.items()}
    params = net.get_params(deep=False)
    return {
        k: v for k, v in params.items() if not k.startswith("_") and (k not in defaults or _differs(v, defaults[k]))
    }


def _differs(value, default) -> bool:
    if value is default:
        return False
    try:
        return bool(value != default)
    except Exception:  # objects without a usable comparison
        return True


def check_template(net: NeuralNet, *, device: torch.device | None = None) -> None:
    """Raise ``ValueError`` naming every template setting skpcoreset cannot honour.

    Honoured: the module and ``module__*``, criterion (``CrossEntropyLoss`` on logits or
    ``NLLLoss`` on probabilities) and ``criterion__*``, optimiser, ``optimizer__*``, lr,
    ``max_epochs``, ``batch_size`` (and ``iterator_train__batch_size``), callbacks and
    ``callbacks__*``, ``train_split``, ``iterator_train__shuffle``, ``compile`` and
    ``compile__*``. ``verbose`` follows the estimator's ``verbose``; DataLoader tuning
    (``num_workers``, ``pin_memory``, ...) does not apply to device-resident batches.
    """
    _output_kind_of_criterion(net)
    problems = []
    for name, value in _non_default_params(net).items():
        if name in _HONOURED or name.startswith(_HONOURED_PREFIXES):
            continue
        if name.startswith(("iterator_train__", "iterator_valid__")):
            argument = name.split("__", 1)[1]
            if argument in _IGNORED_ITERATOR_ARGS or name in ("iterator_train__shuffle", "iterator_train__batch_size"):
                continue
        problems.append(f"{name}={value!r}")
    for name in ("iterator_train", "iterator_valid"):
        iterator = getattr(net, name)
        if iterator not in (DataLoader, DeviceBatchIterator):
            problems.append(f"{name}={iterator!r} (batches are served from the device by skpcoreset's loop)")
    if net.dataset is not Dataset:
        problems.append(f"dataset={net.dataset!r} (skpcoreset trains on validated arrays)")
    if net.predict_nonlinearity != "auto":
        problems.append(f"predict_nonlinearity={net.predict_nonlinearity!r} (probabilities are the softmax of logits)")
    if net.warm_start:
        problems.append(
            "warm_start=True (members are trained from fresh initialisations; pass a fitted net "
            "to a post-hoc estimator to analyse it)"
        )
    if "param_groups" in net.get_params_for("optimizer"):
        problems.append("optimizer__param_groups (one parameter group per trained module)")
    if device is not None and str(net.device) not in ("cpu", "None") and not _same_device(net.device, device):
        problems.append(
            f"device={net.device!r} differs from the estimator's device {str(device)!r} "
            "(set device on the estimator; it places every member)"
        )
    if problems:
        raise ValueError(
            "skpcoreset cannot honour these settings of the skorch net: " + "; ".join(problems) + ". "
            "Remove them or see skpcoreset._skorch.check_template for what is supported."
        )


def _same_device(requested, device: torch.device) -> bool:
    requested = torch.device(requested)
    index_agrees = requested.index is None or device.index is None or requested.index == device.index
    return requested.type == device.type and index_agrees


def _module_params(net: NeuralNet, input_shape, n_classes, device: torch.device) -> dict:
    """The module (the default one when None) and its data- and device-dependent arguments."""
    from ._presets import default_module_params

    params = {}
    module_cls = net.module
    if module_cls is None:
        module_cls = default_module(input_shape)
        given = net.get_params_for("module")
        params.update(
            {
                k: v
                for k, v in default_module_params(module_cls, device).items()
                if k.removeprefix("module__") not in given
            }
        )
    params["module"] = module_cls
    params.update(_data_dependent_params(module_cls, net, input_shape, n_classes))
    return params


def _data_dependent_params(module_cls, net: NeuralNet, input_shape, n_classes) -> dict:
    """``module__input_shape`` / ``module__n_classes`` where the module takes them and they are unset."""
    try:
        accepted = inspect.signature(module_cls).parameters
    except (TypeError, ValueError):
        return {}
    given = net.get_params_for("module")
    params = {}
    if "input_shape" in accepted and "input_shape" not in given:
        params["module__input_shape"] = tuple(input_shape)
    if "n_classes" in accepted and "n_classes" not in given and n_classes is not None:
        params["module__n_classes"] = n_classes
    return params


# -- logits ------------------------------------------------------------------------------------
class LogProbabilities(nn.Module):
    """A module returning probabilities, seen as one returning logits: ``log(p)``.

    ``softmax(log p) = p``, so every estimator that reads logits gets exactly the module's
    distribution (skorch's NLLLoss convention: the module ends in a softmax).
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        out = self.module(X)
        return torch.log(out.clamp_min(torch.finfo(out.dtype).tiny))


@torch.no_grad()
def _output_kind(module: nn.Module, probe: torch.Tensor, declared: str) -> str:
    """'logits', 'probabilities' or 'log_probabilities', checked on ``probe`` where the criterion is NLLLoss."""
    if declared == "logits":
        return declared
    was_training = module.training
    out = module.eval()(probe).double()
    module.train(was_training)
    if bool(((out >= 0) & (out <= 1)).all()) and torch.allclose(out.sum(-1), torch.ones_like(out[:, 0]), atol=1e-4):
        return "probabilities"
    if torch.allclose(out.logsumexp(-1), torch.zeros_like(out[:, 0]), atol=1e-4):
        return "log_probabilities"
    raise ValueError(
        "The net's criterion is NLLLoss, which in skorch means the module returns probabilities (a final "
        "softmax), but its outputs are neither probabilities nor log-probabilities. Use "
        "criterion=torch.nn.CrossEntropyLoss for a module that returns logits."
    )


def logit_module(module: nn.Module, net: NeuralNet | None, probe: torch.Tensor) -> nn.Module:
    """``module`` as a map to logits: wrapped in :class:`LogProbabilities` when it returns probabilities."""
    declared = "logits" if net is None else _output_kind_of_criterion(net)
    if _output_kind(module, probe, declared) == "probabilities":
        return LogProbabilities(module)
    return module


def train_spec_from_net(
    net, n_samples: int | None = None, *, forward_flops: int | None = None, device: torch.device | str = "cpu"
) -> TrainSpec:
    """Epochs, batch size, optimiser, learning rate, criterion and iteration of a skorch net (or template).

    The criterion is the logit form of the net's: cross-entropy (with the net's
    ``criterion__*`` arguments, e.g. ``weight`` or ``label_smoothing``) for both
    ``CrossEntropyLoss`` and ``NLLLoss`` nets, since :func:`logit_module` turns probabilities
    into log-probabilities. A whole-run ``LRScheduler(WarmupCosineLR)`` (the member preset's)
    becomes the spec's ``schedule``, so it holds in every loop built from the spec; any other
    skorch ``LRScheduler`` runs as one of the net's callbacks.
    ``max_epochs='auto'`` is sized to ``n_samples`` (and, on a CPU, to the network's
    ``forward_flops``: :func:`skpcoreset._presets.auto_epochs`).
    """
    from ._presets import auto_epochs

    template = as_template(net)
    optimizer_kwargs = dict(template.get_params_for("optimizer"))
    optimizer_kwargs.pop("lr", None)
    iterator = template.get_params_for("iterator_train")
    batch_size = int(iterator.get("batch_size", template.batch_size))
    criterion_kwargs = template.get_params_for("criterion")
    compile_kwargs = template.get_params_for("compile")
    batch_size = batch_size if batch_size > 0 else 128
    max_epochs = template.max_epochs
    if max_epochs == "auto":
        if n_samples is None:
            raise ValueError("max_epochs='auto' is sized to the data; pass n_samples.")
        max_epochs = auto_epochs(n_samples, batch_size, forward_flops=forward_flops, device=device)
    warmups = [w for w in map(native_schedule, _template_callbacks(template)) if w is not None]
    return TrainSpec(
        max_epochs=int(max_epochs),
        batch_size=batch_size,
        lr=float(template.lr),
        optimizer=template.optimizer,
        optimizer_kwargs=optimizer_kwargs,
        schedule="warmup_cosine" if warmups else "constant",
        warmup=warmups[0] if warmups else 0.05,
        criterion=nn.CrossEntropyLoss(**criterion_kwargs) if criterion_kwargs else None,
        shuffle=bool(iterator.get("shuffle", True)),
        compile=compile_kwargs or bool(template.compile),
    )


def _template_callbacks(template) -> list:
    """The callbacks a template names (``callbacks`` entries may be ``(name, callback)`` pairs)."""
    entries = template.callbacks if isinstance(template.callbacks, (list, tuple)) else []
    return [entry[1] if isinstance(entry, tuple) else entry for entry in entries]


def template_validation_split(net, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(train, valid) row indices from the net's ``train_split``, or None without one.

    skorch's splits (``ValidSplit`` and any callable with its signature) are called on a
    dataset of row indices, so the split is the one skorch itself would make.
    """
    template = as_template(net)
    if template.train_split is None:
        return None
    indices = np.arange(len(y))
    train, valid = template.train_split(Dataset(indices, y), y)
    return _subset_indices(train, indices), _subset_indices(valid, indices)


def _subset_indices(subset, indices: np.ndarray) -> np.ndarray:
    if isinstance(subset, torch.utils.data.Subset):
        return np.asarray(subset.indices, dtype=np.int64)
    raise ValueError(
        "The net's train_split returned a dataset that is not a split of the training data "
        f"({type(subset).__name__}); skpcoreset supports splits such as skorch's ValidSplit."
    )


def forward_flops(module: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one sample's forward pass through ``module`` (its Linear and Conv2d layers)."""
    from .ensemble._flops import count_flops

    was_training = module.training
    flops = count_flops(module.eval(), [module], example)
    module.train(was_training)
    return flops


# -- members -----------------------------------------------------------------------------------
def fitted_module(net, probe: torch.Tensor | None = None) -> nn.Module | None:
    """The trained torch module inside ``net`` when ``net`` is already fitted, else None.

    Fitted means: a plain ``nn.Module`` instance, an initialised skorch net, a fitted
    skpcoreset ensemble (its first member), any fitted estimator with a ``module_``, or one of
    these wrapped in :class:`sklearn.frozen.FrozenEstimator` (which keeps it fitted through
    ``clone``; a bare fitted skorch net is turned back into an unfitted template by ``clone``).
    Post-hoc estimators use it to tell "analyse this network" from "train one first". With a
    ``probe`` batch, a skorch net with ``NLLLoss`` comes back as its logit view
    (:func:`logit_module`).
    """
    from sklearn.frozen import FrozenEstimator

    if isinstance(net, FrozenEstimator):
        net = net.estimator
    if isinstance(net, nn.Module):
        return net
    if isinstance(net, NeuralNet):
        if not getattr(net, "initialized_", False):
            return None
        return net.module_ if probe is None else logit_module(net.module_, net, probe.to(_device_of(net.module_)))
    if hasattr(net, "member_modules") and hasattr(net, "members_"):
        return net.member_modules()[0]
    module = getattr(net, "module_", None)
    return module if isinstance(module, nn.Module) else None


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def build_member_nets(
    net, *, input_shape, n_classes: int, seeds: list[int], device: torch.device, verbose: int = 0
) -> list[NeuralNet]:
    """Clone the template once per seed and initialise each clone's module on ``device``.

    Parameters
    ----------
    net : None, nn.Module subclass or skorch NeuralNet
        The member template (see :func:`make_net`); checked with :func:`check_template`.
    input_shape : tuple of int
        Shape of one validated sample.
    n_classes : int
    seeds : list of int
        One seed per member; module initialisation is reproducible and leaves torch's global
        generator untouched.
    device : torch.device
    verbose : int, default=0
        The members' ``verbose`` (what their callbacks may print follows the estimator's).

    Returns
    -------
    list of NeuralNet
        Initialised (``net.module_`` exists, callbacks initialised) but untrained.
    """
    template = as_template(net)
    check_template(template, device=device)
    members = []
    for seed in seeds:
        member = clone(template)
        member.set_params(device=str(device), verbose=verbose, **_module_params(member, input_shape, n_classes, device))
        with torch_seed(seed, device):
            member.initialize()
        member.module_.to(device)
        members.append(member)
    return members


def member_logit_modules(nets: list[NeuralNet], probe: torch.Tensor) -> list[nn.Module]:
    """The members' modules as maps to logits (see :func:`logit_module`)."""
    return [logit_module(net.module_, net, probe) for net in nets]


@dataclass
class TrainedMembers:
    """Networks trained from one template: their skorch nets, logit modules and run records."""

    nets: list
    modules: list
    strategy: str
    histories: list
    interrupted: bool


def train_template_members(
    net,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    n_members: int,
    random_state,
    n_classes: int,
    spec: TrainSpec | None = None,
    strategy: str = "auto",
    n_jobs: int | None = None,
    verbose: int = 0,
    desc: str = "member",
    **trainer_kwargs,
) -> TrainedMembers:
    """Clone, initialise and train ``n_members`` members of the template ``net`` on ``(X, y)``.

    The one path from a user's skorch net to trained networks: the template is checked,
    each member is seeded from ``random_state``, the net's ``train_split`` holds out each
    member's validation rows, its callbacks run in each member's loop and its ``history``
    records it. ``spec`` overrides the template's training settings (e.g. epochs chosen by
    the estimator). ``trainer_kwargs`` go to the :class:`~skpcoreset._train.Trainer`
    (``augment``, ``mixed_precision``).
    """
    seeds = seed_from_random_state(random_state, 2 * n_members)
    nets = build_member_nets(
        net,
        input_shape=tuple(X.shape[1:]),
        n_classes=n_classes,
        seeds=seeds[:n_members],
        device=X.device,
        verbose=verbose,
    )
    modules = member_logit_modules(nets, X[:8])
    split = template_validation_split(net, y.cpu().numpy())
    tensors, validation = (X, y), None
    if split is not None:
        train, valid = (torch.as_tensor(index, device=X.device) for index in split)
        tensors, validation = (X[train], y[train]), [(X[valid], y[valid])] * n_members
    runs = train_members(
        modules,
        tensors,
        spec
        if spec is not None
        else train_spec_from_net(
            net, n_samples=len(tensors[0]), forward_flops=forward_flops(modules[0], X[:1]), device=X.device
        ),
        seeds=seeds[n_members:],
        nets=nets,
        validation=validation,
        strategy=strategy,
        n_jobs=n_jobs,
        verbose=verbose,
        desc=desc,
        **trainer_kwargs,
    )
    return TrainedMembers(nets, modules, runs.strategy, runs.histories, runs.interrupted)


# -- fast iteration for plain skorch -----------------------------------------------------------
def _tensors_of(dataset, device: torch.device):
    """(X, y) of a skorch Dataset (or a Subset of one) as tensors on ``device``, cached."""
    cached = getattr(dataset, "_skpcoreset_tensors", None)
    if cached is not None and cached[0] == device:
        return cached[1], cached[2]
    if isinstance(dataset, torch.utils.data.Subset):
        X, y = _tensors_of(dataset.dataset, device)
        idx = torch.as_tensor(dataset.indices, device=device)
        X, y = X[idx], (None if y is None else y[idx])
    else:
        if isinstance(dataset.X, dict):
            raise TypeError("DeviceBatchIterator serves array inputs; got a dict of inputs.")
        X = torch.as_tensor(dataset.X, device=device)
        y = None if dataset.y is None else torch.as_tensor(dataset.y, device=device)
    dataset._skpcoreset_tensors = (device, X, y)
    return X, y


class DeviceBatchIterator:
    """A drop-in for skorch's ``iterator_train`` / ``iterator_valid`` serving device batches.

    The dataset is moved to ``device`` once (and cached on the dataset object); each epoch
    draws one permutation on the device and slices batches by index. Use
    :func:`fast_iterator_params` to configure a skorch net with it.

    Parameters
    ----------
    dataset : skorch.dataset.Dataset or torch.utils.data.Subset of one
    batch_size : int, default=128
    shuffle : bool, default=False
    device : str or torch.device, default='cpu'
    drop_last : bool, default=False
    **ignored
        DataLoader-only arguments (``num_workers``, ``pin_memory``, ...) are accepted and ignored.

    Examples
    --------
    >>> import numpy as np
    >>> from skorch.dataset import Dataset
    >>> from skpcoreset import DeviceBatchIterator
    >>> data = Dataset(np.zeros((10, 2), dtype=np.float32), np.arange(10))
    >>> [len(X) for X, _ in DeviceBatchIterator(data, batch_size=4)]
    [4, 4, 2]
    """

    def __init__(self, dataset, batch_size=128, shuffle=False, device="cpu", drop_last=False, **ignored):
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.device = torch.device(device)
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        X, y = _tensors_of(self.dataset, self.device)
        n = len(X)
        order = torch.randperm(n, device=self.device) if self.shuffle else None
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            if order is None:
                sl = slice(start, start + self.batch_size)
                yield X[sl], (None if y is None else y[sl])
            else:
                idx = order[start : start + self.batch_size]
                yield X[idx], (None if y is None else y[idx])


def fast_iterator_params(device="cpu") -> dict:
    """skorch parameters that switch a net to :class:`DeviceBatchIterator` on ``device``.

    Examples
    --------
    >>> from skorch import NeuralNetClassifier
    >>> from skpcoreset import fast_iterator_params
    >>> from skpcoreset.nets import MLP
    >>> net = NeuralNetClassifier(MLP, module__input_shape=(64,), module__n_classes=10,
    ...                           **fast_iterator_params("cpu"))
    """
    return {
        "iterator_train": DeviceBatchIterator,
        "iterator_valid": DeviceBatchIterator,
        "iterator_train__shuffle": True,
        "iterator_train__device": device,
        "iterator_valid__device": device,
        "device": device,
    }
