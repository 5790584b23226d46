"""Loaders for bundled and local data; nothing here downloads.

- :func:`load_digits_images`: scikit-learn's bundled 8x8 digits as ``(N, 1, 8, 8)`` images.
- :func:`load_npz_images`: an ``.npz`` with ``X_train, y_train, X_test, y_test`` (the MNIST /
  Fashion-MNIST / CIFAR-10 layout of ``shared/data``), as float32 NCHW in [0, 1].
- :func:`load_planetoid`: a Planetoid graph ``.npz`` (features, edge_index, labels, masks).
- :func:`add_label_noise`: uniform label flips for mislabel-detection experiments.
- :func:`find_data_file`: where the shared datasets are, for tests and benchmarks.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.utils import Bunch, check_random_state

__all__ = [
    "load_digits_images",
    "load_npz_images",
    "load_planetoid",
    "add_label_noise",
    "find_data_file",
]


def find_data_file(name: str) -> Path | None:
    """Locate ``name`` in ``$SKPCORESET_DATA``, ``./shared/data`` or ``../shared/data``."""
    here = Path(__file__).resolve().parent.parent
    candidates = [os.environ.get("SKPCORESET_DATA"), here / "shared" / "data", here.parent / "shared" / "data"]
    for folder in candidates:
        if folder and (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def load_digits_images(*, return_X_y: bool = False):
    """The 1,797 8x8 digits bundled with scikit-learn, as ``(N, 1, 8, 8)`` float32 in [0, 1]."""
    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    if return_X_y:
        return X, y
    return Bunch(data=X, target=y, target_names=digits.target_names)


def _subsample(X, y, n, rng):
    if n is None or n >= len(y):
        return X, y
    idx = np.sort(rng.choice(len(y), size=n, replace=False))
    return X[idx], y[idx]


IMAGE_LAYOUTS = ("auto", "NHWC", "NCHW", "NHW")
_CHANNEL_COUNTS = (1, 3, 4)


def image_layout(shape: tuple[int, ...], layout: str = "auto") -> str:
    """The layout of an image array of ``shape``: 'NHW' (grey), 'NHWC' or 'NCHW'.

    'auto' reads it from the shape: 3-D arrays are grey ``(N, H, W)``; a 4-D array whose last
    axis holds 1, 3 or 4 channels (and whose second does not) is channels-last, the reverse
    channels-first; where both axes could hold channels, square images decide (``(N, 4, 4, 3)``
    is four-by-four RGB). An array that still fits both or neither is ambiguous and raises,
    naming the shape: pass the layout explicitly.
    """
    if layout not in IMAGE_LAYOUTS:
        raise ValueError(f"layout must be one of {IMAGE_LAYOUTS}; got {layout!r}.")
    expected_ndim = {"NHW": 3, "NHWC": 4, "NCHW": 4}
    if layout != "auto":
        if len(shape) != expected_ndim[layout]:
            raise ValueError(f"layout={layout!r} needs a {expected_ndim[layout]}-D array; got shape {shape}.")
        return layout
    if len(shape) == 3:
        return "NHW"
    if len(shape) != 4:
        raise ValueError(f"Image arrays are (N, H, W), (N, H, W, C) or (N, C, H, W); got shape {shape}.")
    last, second = shape[3] in _CHANNEL_COUNTS, shape[1] in _CHANNEL_COUNTS
    if last and not second:
        return "NHWC"
    if second and not last:
        return "NCHW"
    if last and second and (shape[1] == shape[2]) != (shape[2] == shape[3]):
        return "NHWC" if shape[1] == shape[2] else "NCHW"
    raise ValueError(
        f"Cannot tell whether images of shape {shape} are channels-last (N, H, W, C) or channels-first "
        "(N, C, H, W); pass layout='NHWC' or layout='NCHW' (--layout on the command line)."
    )


def to_nchw(X: np.ndarray, layout: str = "auto") -> np.ndarray:
    """uint8 images in any :func:`image_layout` as float32 ``(N, C, H, W)`` in [0, 1]."""
    layout = image_layout(X.shape, layout)
    X = X.astype(np.float32) / 255.0
    if layout == "NHW":
        return X[:, None]
    return np.ascontiguousarray(X.transpose(0, 3, 1, 2)) if layout == "NHWC" else np.ascontiguousarray(X)


def load_npz_images(path, *, n_train=None, n_test=None, random_state=0, layout="auto") -> Bunch:
    """Load an image ``.npz`` (``X_train, y_train, X_test, y_test``; uint8 NHW, NHWC or NCHW).

    Parameters
    ----------
    path : str or Path
        The file; it is never downloaded.
    n_train, n_test : int or None
        Keep a random subset of this many samples (all when None).
    random_state : int, RandomState or None
        Seed of the subset.
    layout : {'auto', 'NHWC', 'NCHW', 'NHW'}, default='auto'
        How the image arrays are laid out; 'auto' reads it from their shape (see
        :func:`image_layout`) and raises when the shape is ambiguous.

    Returns
    -------
    Bunch
        ``X_train``, ``X_test`` as float32 ``(N, C, H, W)`` in [0, 1]; ``y_train``, ``y_test`` int64.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such data file: {path} (skpcoreset never downloads data).")
    rng = check_random_state(random_state)
    with np.load(path, allow_pickle=False) as data:
        missing = {"X_train", "y_train", "X_test", "y_test"} - set(data.files)
        if missing:
            raise ValueError(f"{path} lacks the keys {sorted(missing)}.")
        X_train, y_train = _subsample(data["X_train"], data["y_train"], n_train, rng)
        X_test, y_test = _subsample(data["X_test"], data["y_test"], n_test, rng)

    return Bunch(
        X_train=to_nchw(X_train, layout),
        y_train=y_train.astype(np.int64),
        X_test=to_nchw(X_test, layout),
        y_test=y_test.astype(np.int64),
    )


def load_planetoid(path) -> Bunch:
    """Load a Planetoid graph ``.npz`` (see ``shared/data/graphs/SOURCES.md``).

    Returns
    -------
    Bunch
        ``features`` (float32, ``(N, F)``, raw, or None when the file has none), ``adjacency``
        (scipy CSR, symmetric, ``(N, N)``), ``edge_index`` (int64, ``(2, E)``), ``labels``,
        ``train_mask``, ``val_mask``, ``test_mask``.
    """
    import scipy.sparse as sp

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such graph file: {path} (skpcoreset never downloads data).")
    with np.load(path, allow_pickle=False) as data:
        labels = data["labels"].astype(np.int64)
        edge_index = data["edge_index"].astype(np.int64)
        n = len(labels)
        adjacency = sp.csr_matrix(
            (np.ones(edge_index.shape[1], dtype=np.float32), (edge_index[0], edge_index[1])), shape=(n, n)
        )
        return Bunch(
            features=data["features"].astype(np.float32) if "features" in data.files else None,
            adjacency=adjacency,
            edge_index=edge_index,
            labels=labels,
            train_mask=data["train_mask"].astype(bool),
            val_mask=data["val_mask"].astype(bool),
            test_mask=data["test_mask"].astype(bool),
        )


def add_label_noise(y, rate: float, *, random_state=None, n_classes: int | None = None):
    """Flip a fraction ``rate`` of labels uniformly to a *different* class.

    Returns
    -------
    y_noisy : ndarray
        A copy of ``y`` with flipped entries (``y`` itself is not modified).
    flipped : ndarray of bool
        True where the label was changed.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1]; got {rate}.")
    y = np.asarray(y)
    classes = np.unique(y) if n_classes is None else np.arange(n_classes)
    if len(classes) < 2:
        raise ValueError("add_label_noise needs at least 2 classes.")
    rng = check_random_state(random_state)
    n_flip = int(round(rate * len(y)))
    flipped = np.zeros(len(y), dtype=bool)
    flipped[rng.choice(len(y), size=n_flip, replace=False)] = True
    y_noisy = y.copy()
    position = np.searchsorted(classes, y[flipped])
    shift = rng.randint(1, len(classes), size=n_flip)  # never 0: always a different class
    y_noisy[flipped] = classes[(position + shift) % len(classes)]
    return y_noisy, flipped
