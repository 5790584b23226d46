"""What every skpcoreset estimator shares: validation, label encoding, devices, seeding, progress.

Estimators inherit :class:`TorchEstimatorMixin` (classifiers :class:`TorchClassifierMixin`)
and implement only their algorithm. The mixin turns numpy arrays, pandas DataFrames or torch
tensors into validated ``float32`` arrays (never modifying the caller's data), keeps
image-shaped inputs image-shaped, encodes labels into ``classes_``, resolves ``device`` into
``device_`` and derives every random number from ``random_state`` without touching torch's
global generator. The parameters every estimator shares (``input_shape``, ``mixed_precision``,
``device``, ``random_state``, ``verbose``) have one constraint and one docstring each, here:
:func:`shared_constraints` and :func:`fill_doc`.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from sklearn.base import _fit_context
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from tqdm.auto import tqdm

from ._persist import pack_torch_state, unpack_torch_state

__all__ = [
    "TorchEstimatorMixin",
    "TorchClassifierMixin",
    "shared_constraints",
    "fill_doc",
    "store_params",
    "resolve_device",
    "seed_from_random_state",
    "torch_seed",
    "make_generator",
    "progress",
    "to_numpy",
    "normalise_proba",
]

_MAX_SEED = 2**31 - 1
# torch_seed seeds torch's process-wide generator; fits running in threads (joblib threading or
# Dask thread workers) must not interleave inside it, or module initialisation stops being
# reproducible.
_GLOBAL_RNG_LOCK = threading.RLock()

# -- the parameters every estimator shares: one constraint and one docstring each --------------
_SHARED_CONSTRAINTS = {
    "input_shape": [None, tuple, list],
    "mixed_precision": [StrOptions({"no", "bf16"})],
    "device": [str, torch.device],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
}

_SHARED_DOCS = {
    "input_shape": """input_shape : tuple of int or None, default=None
        Shape of one sample when flat rows hold images, e.g. ``(1, 8, 8)``; arrays of more than
        two dimensions keep their own shape.""",
    "mixed_precision": """mixed_precision : {'no', 'bf16'}, default='no'
        'bf16' trains with bf16 autocast (and, on CUDA, channels-last images): about 1.2x
        faster on recent GPUs, a little less accurate arithmetic.""",
    "device": """device : {'cpu', 'cuda', 'cuda:N', 'auto'}, default='cpu'
        Where the networks and the data live; 'auto' picks CUDA when it is available (the
        choice is ``device_``). Asking for CUDA where there is none is an error.""",
    "random_state": """random_state : int, RandomState instance or None, default=None
        Seeds every random draw (initialisations, batch orders, augmentation, sampling);
        torch's global generator is left untouched.""",
    "verbose": """verbose : int, default=0
        0 prints nothing; 1 shows a progress bar for every long phase.""",
    "fitted_basics": """classes_ : ndarray of shape (n_classes,)
        The class labels seen in ``fit``.
    n_features_in_ : int
        Number of features of ``X`` (values per sample) seen in ``fit``.
    input_shape_ : tuple of int
        Shape of one sample as the networks see it.
    device_ : torch.device
        The device ``device`` resolved to.""",
    "interrupted": """interrupted_ : str or None
        None after a complete fit; after a KeyboardInterrupt, the phase it stopped (e.g.
        ``'members'``): what was learned until then is kept, and later phases run only where
        the estimator cannot predict without them.""",
    # method pieces (indented for a method docstring)
    "X_y": """Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, *input_shape)
            Training rows: a numpy array, pandas DataFrame or torch tensor; image-shaped
            arrays keep their shape.
        y : array-like of shape (n_samples,)
            Class labels.""",
}
_SHARED_DOCS["fit_X_y"] = (
    _SHARED_DOCS["X_y"]
    + """

        Returns
        -------
        self
            The fitted estimator."""
)


def shared_constraints(*names: str) -> dict:
    """The parameter constraints of the shared parameters ``names`` (see ``_SHARED_CONSTRAINTS``)."""
    return {name: _SHARED_CONSTRAINTS[name] for name in names}


def store_params(estimator, params: dict) -> None:
    """Store the constructor arguments ``params`` (the ``locals()`` of ``__init__``) as given.

    scikit-learn reads an estimator's parameters from its ``__init__`` signature and wants each
    one stored unchanged under its own name, with no logic in ``__init__``; this does exactly
    that, in one place instead of a ``self.x = x`` line per parameter in every estimator. Call
    it first in ``__init__``: ``store_params(self, locals())``.
    """
    for name, value in params.items():
        if name not in ("self", "__class__"):
            setattr(estimator, name, value)


def fill_doc(obj):
    """Replace ``%(name)s`` in the docstrings of ``obj`` by the shared docstring piece ``name``.

    Pieces: ``input_shape``, ``mixed_precision``, ``device``, ``random_state``, ``verbose``
    (parameters), ``fitted_basics``, ``interrupted`` (attributes) and, for methods, ``X_y``
    (the Parameters ``X, y``) and ``fit_X_y`` (with the Returns of ``fit(X, y)``). A class gets
    its own docstring and those of the methods it defines filled. Only these markers are
    replaced, so the rest of a docstring may hold any ``%`` or brace.
    """
    targets = [obj]
    if isinstance(obj, type):
        targets += [member for member in vars(obj).values() if callable(member) and getattr(member, "__doc__", None)]
    for target in targets:
        doc = target.__doc__ or ""
        if "%(" not in doc:
            continue
        for name, piece in _SHARED_DOCS.items():
            doc = doc.replace(f"%({name})s", piece)
        target.__doc__ = doc
    return obj


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'auto'`` into a :class:`torch.device`.

    ``'auto'`` picks CUDA when it is available and the CPU otherwise. Asking for CUDA on a
    machine without it raises instead of silently falling back to the CPU.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto'; got {type(device).__name__}.")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto'; got {device!r}.") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was requested but CUDA is not available on this machine; "
                "use device='cpu' or device='auto'."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} was requested but only {torch.cuda.device_count()} CUDA device(s) are present."
            )
    elif resolved.type not in ("cpu", "mps"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto'; got {device!r}.")
    return resolved


def seed_from_random_state(random_state, n: int | None = None):
    """Draw one seed (or ``n`` seeds) for torch from a sklearn-style ``random_state``."""
    rng = check_random_state(random_state)
    if n is None:
        return int(rng.randint(_MAX_SEED))
    return [int(s) for s in rng.randint(_MAX_SEED, size=n)]


@contextlib.contextmanager
def torch_seed(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run a block with torch's global RNG seeded, restoring the caller's RNG state afterwards.

    Module initialisers draw from torch's global generator; forking keeps ``random_state``
    reproducible without leaking state into (or out of) the user's session. The block holds a
    process-wide lock, so concurrent fits in threads cannot reseed each other's generator.
    """
    devices = []
    if device is not None and torch.device(device).type == "cuda":
        devices = [torch.device(device).index or 0]
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh :class:`torch.Generator` on ``device`` seeded with ``seed``."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(seed)
    return generator


def progress(iterable: Iterable, *, verbose: int, desc: str, total: int | None = None, **kwargs):
    """A tqdm progress bar when ``verbose`` is truthy; the bare iterable otherwise."""
    if not verbose:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, **kwargs)


def to_numpy(X: Any) -> Any:
    """Convert torch tensors to numpy (a copy is made only when the tensor lives off the CPU)."""
    if isinstance(X, torch.Tensor):
        return X.detach().cpu().numpy()
    return X


def normalise_proba(proba) -> np.ndarray:
    """Class probabilities as float64 numpy rows that sum to one exactly."""
    proba = to_numpy(proba).astype(np.float64, copy=False)
    return proba / proba.sum(axis=-1, keepdims=True)


def _sample_shape_of(X: Any) -> tuple[int, ...] | None:
    ndim = getattr(X, "ndim", None)
    if ndim is not None and ndim > 2:
        return tuple(int(d) for d in X.shape[1:])
    return None


@fill_doc
class TorchEstimatorMixin:
    """Validation, label encoding, device and seeding shared by all skpcoreset estimators.

    Subclasses define the parameters ``device``, ``random_state`` and ``verbose``, and may
    define ``input_shape`` to let flat inputs be reshaped into images. A ``net`` parameter
    that is None or a bare ``nn.Module`` class becomes a skorch template as soon as a nested
    ``net__*`` parameter is set (``GridSearchCV`` over ``net__module__width``).
    """

    # -- the template of fit: validation lives here, the estimator writes ``_fit`` ----------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Validate ``(X, y)``, then run the estimator's algorithm (see the class docstring).

        %(fit_X_y)s
        """
        X, y = self._validate_X_y(X, self._fit_target(y))
        return self._fit(X, y)

    def _fit_target(self, y):
        """``y`` as ``_validate_X_y`` takes it (a hook: samplers accept one-vs-all rows)."""
        return y

    def _fit(self, X: np.ndarray, y: np.ndarray):
        """The algorithm, on validated ``X`` and encoded labels ``y`` (``classes_[y]`` are the labels)."""
        raise NotImplementedError

    _requires_y = False  # outlier detectors and transformers that still need labels in fit
    _net_role = "member"  # the preset (skpcoreset._presets) a ``net=None`` stands for

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        if self._requires_y:
            tags.target_tags.required = True
        return tags

    def set_params(self, **params):
        nested_net = any(key.startswith("net__") for key in params)
        if nested_net and "net" in self.get_params(deep=False) and not hasattr(self.net, "set_params"):
            from ._skorch import as_template

            self.net = as_template(self.net, self._net_role)
        return super().set_params(**params)

    # -- inputs ---------------------------------------------------------------------------
    def _flatten_for_validation(self, X):
        X = to_numpy(X)
        sample_shape = _sample_shape_of(X)
        if sample_shape is not None:
            X = np.asarray(X).reshape(len(X), -1)
        return X, sample_shape

    def _resolve_input_shape(self, sample_shape, n_features: int) -> tuple[int, ...]:
        requested = getattr(self, "input_shape", None)
        if requested is not None:
            requested = tuple(int(d) for d in requested)
            if math.prod(requested) != n_features:
                raise ValueError(
                    f"input_shape={requested} holds {math.prod(requested)} values per sample "
                    f"but X has {n_features} features."
                )
            if sample_shape is not None and sample_shape != requested:
                raise ValueError(f"X has samples of shape {sample_shape} but input_shape={requested}.")
            return requested
        return sample_shape if sample_shape is not None else (n_features,)

    def _validate_X(self, X, *, reset: bool, y=None):
        """Validate ``X`` (and ``y`` when given) and return ``float32`` arrays.

        Returns ``X`` shaped ``(n_samples, *input_shape_)``; with ``y`` returns ``(X, y)``.
        """
        flat, sample_shape = self._flatten_for_validation(X)
        if y is None:
            flat = validate_data(self, flat, reset=reset, dtype=np.float32)
        else:
            flat, y = validate_data(self, flat, to_numpy(y), reset=reset, dtype=np.float32)
        if reset:
            self.input_shape_ = self._resolve_input_shape(sample_shape, flat.shape[1])
        elif sample_shape is not None and sample_shape != self.input_shape_:
            raise ValueError(
                f"X has samples of shape {sample_shape} but the estimator was fitted on "
                f"samples of shape {self.input_shape_}."
            )
        X_out = flat.reshape((flat.shape[0], *self.input_shape_))
        return X_out if y is None else (X_out, y)

    def _validate_X_y(self, X, y, *, min_classes: int = 2):
        """Validate training data, encode labels into ``classes_`` and return ``(X, y_int)``."""
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
        X, y = self._validate_X(X, reset=True, y=y)
        y_encoded = self._encode_labels(y, min_classes=min_classes)
        return X, y_encoded

    def _encode_labels(self, y, *, min_classes: int = 2) -> np.ndarray:
        check_classification_targets(y)
        encoder = LabelEncoder()
        y_encoded = encoder.fit_transform(y).astype(np.int64)
        self.classes_ = encoder.classes_
        if len(self.classes_) < min_classes:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least {min_classes} classes in y; "
                f"got {len(self.classes_)} class ({self.classes_.tolist()})."
            )
        return y_encoded

    def _validated_tensor(self, X, dtype=torch.float32) -> torch.Tensor:
        """``X`` validated against the fitted estimator, as a tensor on ``device_``."""
        check_is_fitted(self)
        return self._to_tensor(self._validate_X(X, reset=False), dtype=dtype)

    # -- torch ----------------------------------------------------------------------------
    def _init_torch(self) -> torch.Generator:
        """Resolve ``device_`` and return a generator seeded from ``random_state``."""
        self.device_ = resolve_device(getattr(self, "device", "cpu"))
        self._seed = seed_from_random_state(getattr(self, "random_state", None))
        return make_generator(self._seed, self.device_)

    def _to_tensor(self, X: np.ndarray, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(X), dtype=dtype, device=self.device_)

    def _progress(self, iterable, *, desc: str, total: int | None = None):
        return progress(iterable, verbose=getattr(self, "verbose", 0), desc=desc, total=total)

    # -- persistence ----------------------------------------------------------------------
    def __getstate__(self):
        return pack_torch_state(super().__getstate__())

    def __setstate__(self, state):
        super().__setstate__(unpack_torch_state(state, owner=type(self).__name__))


class TorchClassifierMixin(TorchEstimatorMixin):
    """``predict_proba`` / ``predict`` / ``member_proba`` for classifiers, written once.

    A classifier implements ``_proba(X)`` (validated tensor in, class probabilities out) and,
    for ensembles, ``member_logits(X) -> (n_members, N, n_classes)``; validation, batching,
    normalisation and the label lookup happen here.
    """

    def _proba(self, X: torch.Tensor):
        raise NotImplementedError

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape ``(n_samples, n_classes)`` (columns follow ``classes_``)."""
        return normalise_proba(self._proba(self._validated_tensor(X)))

    def predict(self, X) -> np.ndarray:
        """The most probable class label of each sample."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    def _batched_member_proba(self, member_logits: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor):
        """Softmax of ``member_logits`` in batches, as float64 numpy ``(n_members, N, n_classes)``."""
        from ._train import predict_batched

        proba = predict_batched(lambda xb: member_logits(xb).softmax(-1).transpose(0, 1), X)
        return proba.transpose(0, 1).double().cpu().numpy()
