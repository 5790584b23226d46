"""The panel's datasets: scikit-learn's bundled sets, ``shared/data`` subsets and seeded synthetic families.

Nothing here downloads. Every classification loader returns a :class:`~sklearn.utils.Bunch`
with flat float32 ``X_train``, ``X_test`` (images are flattened rows, so the estimators' default
network for them is the MLP), int64 ``y_train``, ``y_test``, the ``kind`` of data and, when the
training labels carry known noise, the boolean ``flipped`` mask. Graph loaders return
``features``, ``adjacency`` (scipy CSR, symmetric), ``labels`` and the three node masks.

The synthetic families are designed to break what the methods were tuned on:

- :func:`make_noisy_tabular`: standardised binary tabular data whose training labels are 10%
  flipped (the test labels are clean);
- :func:`make_signals`: 10 classes of noisy 1-D sinusoids and chirps whose frequency, chirp
  rate, phase and amplitude jitter per sample;
- :func:`make_imbalanced`: 5 Gaussian-cluster classes with geometric class sizes (1 : 1/2 :
  1/4 : 1/8 : 1/16);
- :func:`make_noisy_sbm`: a stochastic block model whose edges are partly inter-class noise,
  with weakly informative node features.

Every loader takes ``seed`` (the split, subsample and generator) and ``quick`` (a toy size for
tests).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.datasets import load_breast_cancer, load_digits, load_wine, make_classification
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.utils import Bunch

from skpcoreset.datasets import add_label_noise, find_data_file, load_npz_images, load_planetoid

# Training / test rows of the subsampled and synthetic sets (full panel, --quick).
SIZES = {False: (1500, 1000), True: (150, 150)}
LABEL_NOISE = 0.1


def _classification(name, kind, X_train, y_train, X_test, y_test, flipped=None, *, quick: bool, **info) -> Bunch:
    return Bunch(
        name=name,
        kind=kind,
        X_train=np.ascontiguousarray(X_train, dtype=np.float32),
        y_train=np.asarray(y_train, dtype=np.int64),
        X_test=np.ascontiguousarray(X_test, dtype=np.float32),
        y_test=np.asarray(y_test, dtype=np.int64),
        flipped=flipped,
        quick=quick,
        **info,
    )


def _split(X, y, seed: int, quick: bool, *, test_size: float = 0.3):
    """Stratified train/test split; ``quick`` keeps at most the toy sizes of each part."""
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=test_size, stratify=y, random_state=seed)
    if quick:
        n_train, n_test = SIZES[True]
        X_train, y_train = _stratified_head(X_train, y_train, n_train, seed)
        X_test, y_test = _stratified_head(X_test, y_test, n_test, seed)
    return X_train, y_train, X_test, y_test


def _stratified_head(X, y, n: int, seed: int):
    if n >= len(y):
        return X, y
    keep, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=seed)
    keep = np.sort(keep)
    return X[keep], y[keep]


def _standardise(X_train, X_test):
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_test)


# -- scikit-learn's bundled sets ------------------------------------------------------------------
def digits(seed: int = 0, quick: bool = False) -> Bunch:
    """8x8 handwritten digits, 10 classes, pixels scaled to [0, 1], 70/30 split."""
    X, y = load_digits(return_X_y=True)
    return _classification("digits", "image (flat)", *_split(X / 16.0, y, seed, quick), quick=quick)


def breast_cancer(seed: int = 0, quick: bool = False) -> Bunch:
    """Wisconsin breast cancer, 30 standardised features, binary, 70/30 split."""
    X, y = load_breast_cancer(return_X_y=True)
    X_train, y_train, X_test, y_test = _split(X, y, seed, quick)
    X_train, X_test = _standardise(X_train, X_test)
    return _classification("breast_cancer", "tabular", X_train, y_train, X_test, y_test, quick=quick)


def wine(seed: int = 0, quick: bool = False) -> Bunch:
    """Wine recognition, 13 standardised features, 3 classes, 178 rows (a very small set), 70/30 split."""
    X, y = load_wine(return_X_y=True)
    X_train, y_train, X_test, y_test = _split(X, y, seed, quick)
    X_train, X_test = _standardise(X_train, X_test)
    return _classification("wine", "tabular (tiny)", X_train, y_train, X_test, y_test, quick=quick)


# -- shared/data image subsets --------------------------------------------------------------------
def _npz_images(file: str, name: str, seed: int, quick: bool) -> Bunch:
    path = find_data_file(file)
    if path is None:
        raise FileNotFoundError(f"{file} is not in $SKPCORESET_DATA or shared/data (the panel never downloads).")
    n_train, n_test = SIZES[quick]
    data = load_npz_images(path, n_train=n_train, n_test=n_test, random_state=seed)
    flat = (data.X_train.reshape(len(data.X_train), -1), data.X_test.reshape(len(data.X_test), -1))
    return _classification(name, "image (flat)", flat[0], data.y_train, flat[1], data.y_test, quick=quick)


def mnist(seed: int = 0, quick: bool = False) -> Bunch:
    """MNIST, 1,500 / 1,000 random training / test images, flattened, in [0, 1]."""
    return _npz_images("mnist.npz", "mnist", seed, quick)


def fashion_mnist(seed: int = 0, quick: bool = False) -> Bunch:
    """Fashion-MNIST, 1,500 / 1,000 random training / test images, flattened, in [0, 1]."""
    return _npz_images("fashion_mnist.npz", "fashion_mnist", seed, quick)


def cifar10(seed: int = 0, quick: bool = False) -> Bunch:
    """CIFAR-10 (the JPEG subset), 1,500 / 1,000 random training / test images, flattened, in [0, 1]."""
    return _npz_images("cifar10.npz", "cifar10", seed, quick)


# -- synthetic families ---------------------------------------------------------------------------
def make_noisy_tabular(
    seed: int = 0, quick: bool = False, *, n_features: int = 20, noise: float = LABEL_NOISE
) -> Bunch:
    """Binary tabular data, standardised, with ``noise`` of the training labels flipped (test labels clean).

    Two classes of ``make_classification`` (10 informative, 4 redundant features, 2 clusters per
    class); ``flipped`` marks the corrupted training labels.
    """
    n_train, n_test = SIZES[quick]
    X, y = make_classification(
        n_samples=n_train + n_test,
        n_features=n_features,
        n_informative=10,
        n_redundant=4,
        n_clusters_per_class=2,
        class_sep=1.0,
        flip_y=0.0,
        random_state=seed,
    )
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, train_size=n_train, test_size=n_test, stratify=y, random_state=seed
    )
    X_train, X_test = _standardise(X_train, X_test)
    y_noisy, flipped = add_label_noise(y_train, noise, random_state=seed)
    return _classification(
        "noisy_tabular", "tabular, 10% flipped labels", X_train, y_noisy, X_test, y_test, flipped=flipped, quick=quick
    )


def make_signals(
    seed: int = 0, quick: bool = False, *, length: int = 64, noise: float = 1.0, n_classes: int = 10
) -> Bunch:
    """1-D signals: class ``c`` is a sinusoid (even ``c``) or an upward chirp (odd ``c``) at frequency ``2 + c // 2``.

    Each sample draws its frequency (sd 0.2 cycles per window), chirp rate (3 +- 0.3 cycles per
    window squared for chirps, 0 +- 0.3 otherwise), phase (uniform), amplitude (0.6..1.4) and
    white noise (sd ``noise``); a chirp sweeps into the band of the next frequencies, so
    neighbouring classes overlap. 2,000 / 1,000 training / test rows of ``length`` features.
    """
    n_train, n_test = (2000, 1000) if not quick else SIZES[True]
    rng = np.random.RandomState(seed)
    n = n_train + n_test
    y = rng.randint(n_classes, size=n)
    t = np.arange(length) / length
    frequency = 2.0 + (y // 2) + rng.normal(0.0, 0.2, n)
    chirp = np.where(y % 2 == 1, 3.0, 0.0) + rng.normal(0.0, 0.3, n)
    phase = rng.uniform(0.0, 2.0 * np.pi, n)
    amplitude = rng.uniform(0.6, 1.4, n)
    angle = 2.0 * np.pi * (frequency[:, None] * t + 0.5 * chirp[:, None] * t**2) + phase[:, None]
    X = amplitude[:, None] * np.sin(angle) + noise * rng.normal(size=(n, length))
    return _classification("signals", "1-D signals", X[:n_train], y[:n_train], X[n_train:], y[n_train:], quick=quick)


def make_imbalanced(seed: int = 0, quick: bool = False, *, n_classes: int = 5, n_features: int = 16) -> Bunch:
    """Multi-class tabular data with class sizes in ratio 1 : 1/2 : ... : 1/2^(n_classes-1), standardised.

    The test split keeps the same imbalance (the minority class is ~3% of the rows).
    """
    n_train, n_test = SIZES[quick]
    weights = 0.5 ** np.arange(n_classes)
    weights /= weights.sum()
    X, y = make_classification(
        n_samples=n_train + n_test,
        n_features=n_features,
        n_informative=8,
        n_redundant=2,
        n_classes=n_classes,
        n_clusters_per_class=1,
        weights=weights.tolist(),
        class_sep=1.0,
        flip_y=0.0,
        random_state=seed,
    )
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, train_size=n_train, test_size=n_test, stratify=y, random_state=seed
    )
    X_train, X_test = _standardise(X_train, X_test)
    return _classification("imbalanced", "tabular, imbalanced 16:1", X_train, y_train, X_test, y_test, quick=quick)


# -- graphs -----------------------------------------------------------------------------------------
def _row_normalise(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(features.sum(axis=1, keepdims=True), 1e-12)


def _planetoid(name: str, seed: int, quick: bool) -> Bunch:
    """A Planetoid graph with its public split and row-normalised features (the SGC preprocessing).

    The public split is fixed, so ``seed`` only seeds the estimators; ``quick`` has no effect
    (use the synthetic graph for toy runs).
    """
    path = find_data_file(f"graphs/{name}.npz")
    if path is None:
        raise FileNotFoundError(f"graphs/{name}.npz is not in shared/data (the panel never downloads).")
    graph = load_planetoid(path)
    return Bunch(
        name=name,
        kind="citation graph",
        features=_row_normalise(graph.features),
        adjacency=graph.adjacency,
        labels=graph.labels,
        train_mask=graph.train_mask,
        val_mask=graph.val_mask,
        test_mask=graph.test_mask,
    )


def cora(seed: int = 0, quick: bool = False) -> Bunch:
    """Cora, public split (140 / 500 / 1,000 nodes)."""
    return _planetoid("cora", seed, quick)


def citeseer(seed: int = 0, quick: bool = False) -> Bunch:
    """CiteSeer, public split (120 / 500 / 1,000 nodes)."""
    return _planetoid("citeseer", seed, quick)


def make_noisy_sbm(
    seed: int = 0,
    quick: bool = False,
    *,
    n_classes: int = 4,
    mean_degree: float | None = None,
    inter_class_share: float = 0.4,
    n_features: int = 32,
    feature_signal: float = 1.0,
) -> Bunch:
    """A stochastic block model in which ``inter_class_share`` of the edges join different classes.

    Nodes have Gaussian features whose class means differ by ``feature_signal`` standard
    deviations along one axis per class, so the graph carries most of the signal and its noisy
    edges hurt. Split as Planetoid: 20 training nodes per class (10 for ``quick``), then validation and test nodes
    (1,500 nodes: 80 / 400 / 1,020; ``quick``: 120 nodes: 40 / 30 / 50). ``mean_degree`` None is
    6 (3 for ``quick``, which keeps RGE's rounds few).
    """
    n_nodes, n_per_class, n_val = (120, 10, 30) if quick else (1500, 20, 400)
    mean_degree = (3.0 if quick else 6.0) if mean_degree is None else mean_degree
    rng = np.random.RandomState(seed)
    labels = rng.randint(n_classes, size=n_nodes)
    same = labels[:, None] == labels[None, :]
    n_pairs_same = same.sum() - n_nodes
    n_pairs_other = n_nodes * n_nodes - same.sum()
    n_edges = mean_degree * n_nodes  # ordered pairs, i.e. twice the undirected edges
    p_in = (1.0 - inter_class_share) * n_edges / n_pairs_same
    p_out = inter_class_share * n_edges / n_pairs_other
    upper = np.triu(rng.rand(n_nodes, n_nodes) < np.where(same, p_in, p_out), 1)
    adjacency = sp.csr_matrix((upper | upper.T).astype(np.float32))
    features = rng.normal(size=(n_nodes, n_features)) + feature_signal * np.eye(n_classes, n_features)[labels]
    train_mask = np.zeros(n_nodes, dtype=bool)
    for c in range(n_classes):
        train_mask[rng.permutation(np.flatnonzero(labels == c))[:n_per_class]] = True
    rest = rng.permutation(np.flatnonzero(~train_mask))
    val_mask = np.zeros(n_nodes, dtype=bool)
    val_mask[rest[:n_val]] = True
    test_mask = ~(train_mask | val_mask)
    return Bunch(
        name="noisy_sbm",
        kind=f"SBM graph, {inter_class_share:.0%} inter-class edges",
        features=features.astype(np.float32),
        adjacency=adjacency,
        labels=labels.astype(np.int64),
        train_mask=train_mask,
        val_mask=val_mask,
        test_mask=test_mask,
    )


CLASSIFICATION = {
    "digits": digits,
    "breast_cancer": breast_cancer,
    "wine": wine,
    "mnist": mnist,
    "fashion_mnist": fashion_mnist,
    "cifar10": cifar10,
    "noisy_tabular": make_noisy_tabular,
    "signals": make_signals,
    "imbalanced": make_imbalanced,
}
GRAPHS = {"cora": cora, "citeseer": citeseer, "noisy_sbm": make_noisy_sbm}
DATASETS = {**CLASSIFICATION, **GRAPHS}
