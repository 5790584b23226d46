"""Fitted estimators as plain data, so that pickle and ``skops.io`` both carry them and skops can audit them.

An estimator's ``__getstate__`` walks its state (parameters and fitted attributes alike, through
lists, tuples and dicts and into plain objects) and replaces what neither format should hold
as is:

- torch tensors become :class:`PackedTensor` (numpy arrays plus dtype, shape, device,
  ``requires_grad``; sparse COO tensors as their indices and values);
- ``nn.Module`` instances (skpcoreset's and a user's own) become :class:`PackedModule`: the
  class and the module's ``__dict__`` with its parameters, buffers and child modules packed;
  the module is rebuilt without calling its constructor (``cls.__new__`` then
  ``nn.Module.__init__`` then ``__setstate__``), exactly as pickle would rebuild it;
- skorch nets become :class:`PackedNet`: the class, ``get_params()`` and, for an initialised
  net, its modules and fitted attributes; the net is rebuilt with ``initialize()`` and given
  the saved modules (skorch's own ``__setstate__`` unpickles bytes, so a skorch net never
  travels as itself);
- optimisers become :class:`PackedOptimizer` (class, defaults, parameter groups; the
  momentum buffers, which inference does not need, are dropped);
- other objects that pickle through their ``__dict__`` (skpcoreset's scorers and curvature
  objects, sklearn meta-estimators, ...) become :class:`PackedObject` when something inside
  them was packed, and stay as they are otherwise.

Nothing is ever stored as bytes to be unpickled later, and nothing is loaded with
``torch.load``. On load, ``__setstate__`` rebuilds the objects, putting tensors saved on a
device that is absent here (CUDA on a CPU-only machine) on the CPU.

What a skops user trusts: ``skops.io.get_untrusted_types`` lists the estimator classes, the
``Packed*`` containers above, the module classes (skpcoreset's, torch's layers, the user's own),
and the classes a skorch net names (criterion, optimiser, iterator, dataset, history). Each is
rebuilt from audited values: ``cls.__new__`` plus ``__setstate__``/``__dict__`` for modules and
objects, the class called with the saved parameters for skorch components (so a user's module
constructor runs with its saved arguments). None of them unpickles. skorch's own net classes
are deliberately *not* in the list: their ``__setstate__`` unpickles bytes, so :class:`PackedNet`
names them by path and resolves the path among skorch's modules only.

States written before this format (the fitted attributes as one pickled blob) are refused with
a clear error; :func:`load_legacy_pickle` loads such a *pickle* file on explicit request.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import io
import os
import pickle
import types
from collections import OrderedDict, defaultdict
from typing import Any

import numpy as np
import torch
from torch import nn

from .exceptions import warn

__all__ = [
    "PackedTensor",
    "PackedDtype",
    "PackedModule",
    "PackedNet",
    "PackedOptimizer",
    "PackedObject",
    "pack_torch_state",
    "unpack_torch_state",
    "load_legacy_pickle",
]

FORMAT_KEY = "__skpcoreset_persist__"
FORMAT_VERSION = 1
LEGACY_BLOB_KEY = "__skpcoreset_torch_state__"

_TORCH_DTYPES = {
    str(value).removeprefix("torch."): value for value in vars(torch).values() if isinstance(value, torch.dtype)
}
_LEAF_TYPES = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    bytearray,
    range,
    slice,
    np.ndarray,
    np.generic,
    np.dtype,
    type,
    types.FunctionType,
    types.BuiltinFunctionType,
    torch.device,
)
_BUILTIN_CONTAINERS = (list, tuple, dict, set, frozenset)
# Attributes of a skorch net that its initialize() rebuilds from the parameters.
_SKORCH_REBUILT = {
    "callbacks_",
    "virtual_params_",
    "prefixes_",
    "cuda_dependent_attributes_",
    "initialized_",
    "init_context_",
}
_LEGACY_LOADING = contextvars.ContextVar("skpcoreset_legacy_loading", default=False)


# -- the packed forms -------------------------------------------------------------------------
class PackedTensor:
    """A torch tensor as numpy arrays plus its dtype, shape, layout, device and gradient flag.

    ``arrays`` holds the dense values, or ``(indices, values)`` of a sparse COO tensor. Dtypes
    numpy lacks (``bfloat16``, float8, ...) travel as their raw bytes in a ``uint8`` array.
    """

    def __init__(self, tensor: torch.Tensor, device: str):
        self.requires_grad = bool(tensor.requires_grad)
        self.parameter = isinstance(tensor, nn.Parameter)
        tensor = tensor.detach()
        self.dtype = str(tensor.dtype).removeprefix("torch.")
        self.shape = tuple(int(d) for d in tensor.shape)
        self.layout = "sparse_coo" if tensor.layout == torch.sparse_coo else "strided"
        self.device = device
        if self.layout == "sparse_coo":
            self.coalesced = bool(tensor.is_coalesced())
            self.arrays = (_to_array(tensor._indices()), _to_array(tensor._values()))
        else:
            self.arrays = (_to_array(tensor),)


class PackedDtype:
    """A ``torch.dtype`` by name."""

    def __init__(self, dtype: torch.dtype):
        self.name = str(dtype).removeprefix("torch.")


class PackedModule:
    """An ``nn.Module``: its class and its packed ``__getstate__()`` (parameters, buffers, children)."""

    def __init__(self, cls: type, state: dict | None = None):
        self.cls = cls
        self.state = state


class PackedNet:
    """A skorch net: its class, its ``get_params()`` and, once initialised, its modules and fitted attributes.

    ``net_class`` is skorch's own class by its import path (it is resolved among skorch's
    modules only, see :func:`_skorch_class`), or the class itself when it is defined elsewhere.
    """

    def __init__(self, net_class: str | type, params: dict | None = None):
        self.net_class = net_class
        self.params = params
        self.initialized = False
        self.modules: dict[str, Any] = {}
        self.attributes: dict[str, Any] = {}


class PackedOptimizer:
    """A torch optimiser: its class, defaults and parameter groups (no momentum buffers)."""

    def __init__(self, cls: type, defaults: dict | None = None, param_groups: list | None = None):
        self.cls = cls
        self.defaults = defaults
        self.param_groups = param_groups


class PackedObject:
    """An object that pickles through its ``__dict__``: its class and packed ``__getstate__()``."""

    def __init__(self, cls: type, state: dict | None = None):
        self.cls = cls
        self.state = state


# -- tensors and devices ----------------------------------------------------------------------
def _device_name(tensor: torch.Tensor) -> str:
    return str(tensor.device)


def _to_array(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu().resolve_conj().resolve_neg()
    try:
        return tensor.numpy()
    except TypeError:  # a dtype numpy lacks: keep the raw bytes
        return tensor.contiguous().reshape(-1).view(torch.uint8).numpy()


def _from_array(array: np.ndarray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not array.flags.writeable:
        array = array.copy()
    tensor = torch.from_numpy(array)
    if tensor.dtype != dtype:
        if tensor.dtype != torch.uint8 or tensor.ndim != 1:
            raise TypeError(f"a packed {dtype} tensor holds a {array.dtype} array.")
        tensor = tensor.view(dtype)
    return tensor.reshape(shape)


def _available_device(device: str | torch.device | None) -> torch.device:
    """``device`` when it exists on this machine; the CPU otherwise (CUDA or MPS being absent)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            return torch.device("cuda")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        return torch.device("cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        return torch.device("cpu")
    return device


def _unpack_tensor(packed: PackedTensor) -> torch.Tensor:
    dtype = _TORCH_DTYPES.get(packed.dtype)
    if dtype is None:
        raise TypeError(f"unknown torch dtype {packed.dtype!r} in a packed tensor.")
    shape = tuple(int(d) for d in packed.shape)
    device = _available_device(str(packed.device))
    if packed.layout not in ("strided", "sparse_coo"):
        raise TypeError(f"unknown tensor layout {packed.layout!r} in a packed tensor.")
    arrays = packed.arrays
    n_arrays = 2 if packed.layout == "sparse_coo" else 1
    if not (isinstance(arrays, tuple) and len(arrays) == n_arrays) or not all(
        isinstance(array, np.ndarray) and not array.dtype.hasobject for array in arrays
    ):
        raise TypeError(f"a packed {packed.layout} tensor holds {n_arrays} numpy array(s) of numbers.")
    if packed.layout == "sparse_coo":
        indices, values = arrays
        indices = _from_array(indices, torch.int64, tuple(indices.shape))
        n_sparse = indices.shape[0]
        values = _from_array(values, dtype, (indices.shape[1], *shape[n_sparse:]))
        # The indices come from a file: out-of-range ones must raise here, not corrupt memory later.
        tensor = torch.sparse_coo_tensor(
            indices, values, shape, is_coalesced=bool(packed.coalesced), check_invariants=True
        )
    else:
        tensor = _from_array(arrays[0], dtype, shape)
    tensor = tensor.to(device)
    if packed.parameter:
        return nn.Parameter(tensor, requires_grad=bool(packed.requires_grad))
    return tensor.requires_grad_(bool(packed.requires_grad)) if tensor.is_floating_point() else tensor


# -- classes named in a state -----------------------------------------------------------------
def _is_skorch_net(value) -> bool:
    from skorch import NeuralNet

    return isinstance(value, NeuralNet)


# Modules whose NeuralNet classes are named by path (their classes inherit skorch's unpickling
# __setstate__, so a skops user must never be asked to trust them): skorch's and our TemplateNet's.
_NET_HOMES = ("skorch", "skpcoreset._skorch")


def _is_net_home(module_name: str) -> bool:
    return any(module_name == home or module_name.startswith(home + ".") for home in _NET_HOMES)


def _net_class_reference(cls: type) -> str | type:
    if _is_net_home(cls.__module__):
        return f"{cls.__module__}:{cls.__qualname__}"
    return cls


def _skorch_class(reference: str | type) -> type:
    """The skorch net class a :class:`PackedNet` names.

    skorch's own classes (and skpcoreset's TemplateNet) are named by path and looked up among
    those modules only, so a
    skops file never asks its user to trust a skorch net type: trusting one would let a
    crafted file reach skorch's ``__setstate__``, which unpickles. Other classes (a user's
    own subclass) are class references that skops audits.
    """
    from skorch import NeuralNet

    if isinstance(reference, str):
        module_name, _, qualname = reference.partition(":")
        if not _is_net_home(module_name) or not qualname:
            raise TypeError(f"a packed skorch net names {reference!r}, which is not a class of skorch or skpcoreset.")
        cls = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    else:
        cls = reference
    if not (isinstance(cls, type) and issubclass(cls, NeuralNet)):
        raise TypeError(f"a packed skorch net names {reference!r}, which is not a skorch NeuralNet class.")
    return cls


def _checked_class(cls, base: type, what: str) -> type:
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"a packed {what} names {cls!r}, which is not a subclass of {base.__qualname__}.")
    return cls


def _checked_dict(value, what: str) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"the packed {what} must be a dict with string keys; got {type(value).__name__}.")
    return value


def _has_default_reduce(value) -> bool:
    cls = type(value)
    return cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__


# -- packing ----------------------------------------------------------------------------------
class _OnceEach:
    """A walk over a state that converts each object once, by identity: what was shared stays shared."""

    def __init__(self):
        self._memo: dict[int, tuple[Any, Any]] = {}  # id(source) -> (source, converted)

    def _remember(self, source, converted):
        # Keeping the source alive keeps its id from being reused by a temporary.
        self._memo[id(source)] = (source, converted)
        return converted

    def _seen(self, value) -> tuple[bool, Any]:
        """``(True, value itself or its earlier conversion)`` for leaves and objects already met."""
        if isinstance(value, _LEAF_TYPES):
            return True, value
        if id(value) in self._memo:
            return True, self._memo[id(value)][1]
        return False, None


class _Packer(_OnceEach):
    """Packs a state for saving (see the module docstring)."""

    def pack(self, value):
        done, converted = self._seen(value)
        if done:
            return converted
        if isinstance(value, torch.Tensor):
            return self._remember(value, self._tensor(value))
        if isinstance(value, torch.dtype):
            return PackedDtype(value)
        if isinstance(value, nn.Module):
            return self._module(value)
        if _is_skorch_net(value):
            return self._net(value)
        if isinstance(value, torch.optim.Optimizer):
            return self._optimizer(value)
        if _packs_itself(value):
            return value
        return self._container_or_object(value)

    def _tensor(self, tensor: torch.Tensor) -> PackedTensor:
        if type(tensor) not in (torch.Tensor, nn.Parameter):
            raise TypeError(f"cannot save a tensor of type {type(tensor).__qualname__}; convert it to a plain tensor.")
        if tensor.layout not in (torch.strided, torch.sparse_coo):
            raise TypeError(f"cannot save a tensor with layout {tensor.layout}; convert it to dense or sparse COO.")
        return PackedTensor(tensor, _device_name(tensor))

    def _module(self, module: nn.Module) -> PackedModule:
        packed = self._remember(module, PackedModule(type(module)))
        # Internals still at the value nn.Module.__init__ gives them (empty hook dicts, ...) are
        # left out: loading calls nn.Module.__init__ first. It keeps skops files small.
        state = {k: v for k, v in module.__getstate__().items() if not _is_module_default(k, v)}
        packed.state = self._dict(state)
        return packed

    def _net(self, net) -> PackedNet:
        packed = self._remember(net, PackedNet(_net_class_reference(type(net))))
        packed.params = self._dict(net.get_params(deep=False))
        if getattr(net, "initialized_", False):
            packed.initialized = True
            modules = {f"{name}_" for name in [*net._modules, *net._criteria]}
            rebuilt = {f"{name}_" for name in net._optimizers} | _SKORCH_REBUILT
            for key, value in vars(net).items():
                if key in modules:
                    packed.modules[key] = self.pack(value)
                elif key.endswith("_") and not key.startswith("_") and key not in rebuilt:
                    packed.attributes[key] = self.pack(value)
        return packed

    def _optimizer(self, optimizer: torch.optim.Optimizer) -> PackedOptimizer:
        packed = self._remember(optimizer, PackedOptimizer(type(optimizer)))
        packed.defaults = self._dict(optimizer.defaults)
        packed.param_groups = [self._dict(group) for group in optimizer.param_groups]
        return packed

    def _dict(self, mapping: dict) -> dict:
        return {key: self.pack(value) for key, value in mapping.items()}

    def _container_or_object(self, value):
        """Containers and ``__dict__`` objects are rebuilt only when something inside them was packed."""
        cls = type(value)
        if cls in (list, tuple) or (issubclass(cls, tuple) and hasattr(cls, "_fields")):
            items = [self.pack(item) for item in value]
            if all(new is old for new, old in zip(items, value, strict=True)):
                return value
            packed = list(items) if cls is list else (tuple(items) if cls is tuple else cls(*items))
        elif cls in (dict, OrderedDict, defaultdict):
            items = self._dict(value)
            if all(items[key] is old for key, old in value.items()):
                return value
            packed = cls(value.default_factory, items) if cls is defaultdict else cls(items)
        elif _has_default_reduce(value) and hasattr(value, "__dict__") and not isinstance(value, _BUILTIN_CONTAINERS):
            # (a subclass of a builtin container would lose its items if rebuilt from its __dict__)
            state = value.__getstate__()
            if not isinstance(state, dict):
                return value
            items = self._dict(state)
            if all(items[key] is old for key, old in state.items()):
                return value
            packed = PackedObject(cls, items)
        else:
            return value
        return self._remember(value, packed)


_MODULE_DEFAULTS = vars(nn.Module())


def _is_module_default(key: str, value) -> bool:
    default = _MODULE_DEFAULTS.get(key, _MODULE_DEFAULTS)
    return default is not _MODULE_DEFAULTS and type(value) is type(default) and value == default


def _packs_itself(value) -> bool:
    """skpcoreset estimators nested in a state pack their own state when pickle or skops asks them."""
    from ._base import TorchEstimatorMixin

    return isinstance(value, TorchEstimatorMixin)


# -- unpacking --------------------------------------------------------------------------------
class _Unpacker(_OnceEach):
    """Rebuilds what :class:`_Packer` packed; a packed object seen twice is rebuilt once."""

    def unpack(self, value):
        done, converted = self._seen(value)
        if done:
            return converted
        cls = type(value)
        if cls is PackedTensor:
            return self._remember(value, _unpack_tensor(value))
        if cls is PackedDtype:
            if value.name not in _TORCH_DTYPES:
                raise TypeError(f"unknown torch dtype {value.name!r} in a packed dtype.")
            return _TORCH_DTYPES[value.name]
        if cls is PackedModule:
            return self._module(value)
        if cls is PackedNet:
            return self._net(value)
        if cls is PackedOptimizer:
            return self._optimizer(value)
        if cls is PackedObject:
            return self._object(value)
        if cls in (list, tuple) or (issubclass(cls, tuple) and hasattr(cls, "_fields")):
            items = [self.unpack(item) for item in value]
            rebuilt = items if cls is list else (tuple(items) if cls is tuple else cls(*items))
            return self._remember(value, rebuilt)
        if cls in (dict, OrderedDict, defaultdict):
            items = {key: self.unpack(item) for key, item in value.items()}
            rebuilt = cls(value.default_factory, items) if cls is defaultdict else cls(items)
            return self._remember(value, rebuilt)
        return value

    def _state(self, packed, what: str) -> dict:
        return self.unpack(_checked_dict(packed.state, what))

    def _module(self, packed: PackedModule) -> nn.Module:
        cls = _checked_class(packed.cls, nn.Module, "module")
        module = self._remember(packed, cls.__new__(cls))
        nn.Module.__init__(module)
        module.__setstate__(self._state(packed, "module state"))
        return module

    def _net(self, packed: PackedNet):
        cls = _skorch_class(packed.net_class)
        params = self.unpack(_checked_dict(packed.params, "skorch parameters"))
        initialized = packed.initialized is True
        if initialized and params.get("device") is not None:
            params["device"] = str(_available_device(params["device"]))
        net = self._remember(packed, cls(**params))
        if initialized:
            # initialize() builds the module from the parameters only to be replaced below; it
            # must not move the caller's random stream.
            with torch.random.fork_rng(devices=[]):
                net.initialize()
            for key, module in _checked_dict(packed.modules, "skorch modules").items():
                setattr(net, key, self.unpack(module))
            net.initialize_optimizer()
            for key, value in _checked_dict(packed.attributes, "skorch attributes").items():
                setattr(net, key, self.unpack(value))
        return net

    def _optimizer(self, packed: PackedOptimizer) -> torch.optim.Optimizer:
        cls = _checked_class(packed.cls, torch.optim.Optimizer, "optimiser")
        if not isinstance(packed.param_groups, list):
            raise TypeError("the packed optimiser's parameter groups must be a list.")
        groups = [self.unpack(_checked_dict(group, "parameter group")) for group in packed.param_groups]
        optimizer = self._remember(packed, cls(groups))
        optimizer.defaults = self.unpack(_checked_dict(packed.defaults, "optimiser defaults"))
        return optimizer

    def _object(self, packed: PackedObject):
        if not isinstance(packed.cls, type):
            raise TypeError(f"a packed object names {packed.cls!r}, which is not a class.")
        obj = self._remember(packed, packed.cls.__new__(packed.cls))
        state = self._state(packed, "object state")
        if hasattr(obj, "__setstate__"):
            obj.__setstate__(state)
        else:
            obj.__dict__.update(state)
        return obj


# -- estimator states -------------------------------------------------------------------------
def pack_torch_state(state: dict) -> dict:
    """An estimator's ``__getstate__()`` with every torch object in it packed (see the module docstring)."""
    packed = _Packer()._dict(state)
    packed[FORMAT_KEY] = FORMAT_VERSION
    return packed


def unpack_torch_state(state: dict, *, owner: str) -> dict:
    """Inverse of :func:`pack_torch_state`; tensors saved on an absent device land on the CPU, with a warning."""
    state = dict(_checked_dict(state, f"{owner} state"))
    if LEGACY_BLOB_KEY in state:
        return _unpack_legacy_state(state, owner=owner)
    version = state.pop(FORMAT_KEY, FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"This {owner} was saved in skpcoreset persistence format {version!r}; this version of "
            f"skpcoreset reads formats up to {FORMAT_VERSION}. Upgrade skpcoreset to load it."
        )
    unpacker = _Unpacker()
    state = {key: unpacker.unpack(value) for key, value in state.items()}
    return _on_available_device(state, owner=owner)


def _on_available_device(state: dict, *, owner: str) -> dict:
    fitted_on = state.get("device_")
    if isinstance(fitted_on, torch.device):
        here = _available_device(fitted_on)
        if here != fitted_on:
            warn(f"{owner} was fitted on {fitted_on}, which is not available here; it was loaded on {here}.")
            state["device_"] = here
    return state


# -- states written before this format --------------------------------------------------------
def _legacy_refusal(owner: str) -> ValueError:
    return ValueError(
        f"This {owner} was saved by skpcoreset 0.1.0 before safe persistence: its fitted state is "
        f"one pickled blob ({LEGACY_BLOB_KEY!r}), which is never unpickled when it arrives through "
        "skops.io (it could run any code). Refit the estimator with this version and save it again. "
        "A *pickle* file of such an estimator that you trust can be loaded with "
        "skpcoreset._persist.load_legacy_pickle(path) and pickled again in the current format."
    )


class _MapLocationUnpickler(pickle.Unpickler):
    """The unpickler of the old format: every torch storage lands on ``map_location``."""

    def __init__(self, file, map_location: torch.device):
        super().__init__(file)
        self.map_location = map_location

    def find_class(self, module, name):
        if module == "torch.storage" and name == "_load_from_bytes":
            return self._load_storage
        return super().find_class(module, name)

    def _load_storage(self, payload: bytes):
        return torch.load(io.BytesIO(payload), map_location=self.map_location, weights_only=True)


def _unpack_legacy_state(state: dict, *, owner: str) -> dict:
    if not _LEGACY_LOADING.get():
        raise _legacy_refusal(owner)
    blob = state.pop(LEGACY_BLOB_KEY)
    fitted_on = state.get("device_")
    map_location = _available_device(fitted_on) if isinstance(fitted_on, torch.device) else torch.device("cpu")
    state.update(_MapLocationUnpickler(io.BytesIO(blob), map_location).load())
    return _on_available_device(state, owner=owner)


def load_legacy_pickle(file: str | os.PathLike | io.IOBase):
    """Load a *pickle* file written by skpcoreset before safe persistence (fitted state as one blob).

    Loading a pickle runs whatever code it names, so use this only on files you trust as much as
    code; pickle the result again to store it in the current format. skops files of the old
    format cannot be loaded (refit the estimator).

    Parameters
    ----------
    file : path or binary file object

    Returns
    -------
    object
        The unpickled object.

    Examples
    --------
    >>> import pickle, tempfile
    >>> with tempfile.TemporaryFile() as f:
    ...     pickle.dump({"a": 1}, f)
    ...     _ = f.seek(0)
    ...     load_legacy_pickle(f)
    {'a': 1}
    """
    token = _LEGACY_LOADING.set(True)
    try:
        with contextlib.ExitStack() as stack:
            if isinstance(file, (str, os.PathLike)):
                file = stack.enter_context(open(file, "rb"))
            return pickle.load(file)
    finally:
        _LEGACY_LOADING.reset(token)
