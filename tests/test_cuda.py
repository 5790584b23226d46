"""Every public estimator on CUDA: it fits and predicts there, agrees with its CPU fit, and a
CUDA-fitted model unpickles on a machine without CUDA.

Run with ``pytest -m cuda tests/test_cuda.py`` (``-n 4 --dist loadgroup`` spreads the estimators
over workers); without CUDA every test is skipped.
``SKPCORESET_TEST_ACCELERATOR=cpu`` runs the same tests with the CPU standing in for the
accelerator (the GPU suite's dry run does this, so the file is exercised on machines without one).

Tolerances. A CUDA fit does not repeat its CPU fit bit for bit: each estimator's generators are
created on its device and torch's CUDA and CPU generators draw different streams from the same
seed, so data order, augmentation, jitter and posterior noise differ, and float reductions run
in another order. The networks start from the same weights (initialisation runs on the CPU), so
the two fits are like two runs with different shuffles, and are compared statistically, with
margins set from how far CPU fits with ``random_state`` 0, 1 and 2 (which also change the
initial weights) spread on this data:

- classifiers (predict_proba on held-out digits): accuracies within ``ACCURACY_MARGIN`` and mean
  total-variation distance between the two fits' probabilities within ``PROBA_TV_MARGIN``.
  Measured spread: accuracy <= 0.03 and TV <= 0.07 for the deep ensemble, Laplace, distiller
  and GCN, TV 0.19 for the bridge ensemble; the tiny pseudocoreset (5 synthesis steps, 2
  posterior samples) 0.11 accuracy and 0.41 TV. The sampler also returns the same number of
  rows per class;
- GEX on digits with 10% flipped labels: ROC-AUC of the self-influence against the flips within
  ``AUC_MARGIN`` (spread 0.07) and Spearman correlation of the two fits' scores at least
  ``MIN_SPEARMAN`` (0.52-0.58 between seeds);
- SGC and RGE solve convex problems with deterministic solvers in float64 (identical across
  seeds): within ``GRAPH_ATOL``.
"""

import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from skpcoreset import DeepEnsembleClassifier
from skpcoreset._base import resolve_device
from skpcoreset.datasets import add_label_noise
from tests.test_common import ESTIMATOR_CLASSES, TINY
from tests.test_rge import make_sbm

ACCELERATOR = os.environ.get("SKPCORESET_TEST_ACCELERATOR", "cuda")
ACCURACY_MARGIN = {"default": 0.05, "PseudocoresetSynthesizer": 0.15}
PROBA_TV_MARGIN = {"default": 0.1, "BridgeEnsembleClassifier": 0.25, "PseudocoresetSynthesizer": 0.5}
AUC_MARGIN = 0.1
MIN_SPEARMAN = 0.4
GRAPH_ATOL = 1e-6
# Same weights, two devices: the arithmetic of one prediction differs only in rounding.
RELOAD_ATOL = 1e-4

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(ACCELERATOR.startswith("cuda") and not torch.cuda.is_available(), reason="needs CUDA"),
]

GRAPH = {"SGCClassifier", "GCNClassifier", "RepulsiveEdgeEliminator"}


def kind_of(name: str) -> str:
    cls = ESTIMATOR_CLASSES[name]
    if name == "RepulsiveEdgeEliminator":
        return "graph_transformer"
    if name in GRAPH:
        return "graph_classifier"
    if hasattr(cls, "fit_resample"):
        return "sampler"
    if hasattr(cls, "score_samples") and not hasattr(cls, "predict_proba"):
        return "influence"
    return "classifier"


# -- data ------------------------------------------------------------------------------------
def _digits():
    """600 class-balanced training rows of digits (10% of their labels flipped for GEX), the rest held out."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    rng = np.random.RandomState(0)
    train = np.concatenate([rng.choice(np.flatnonzero(y == c), 60, replace=False) for c in range(10)])
    test = np.setdiff1d(np.arange(len(y)), train)
    y_noisy, flipped = add_label_noise(y[train], 0.1, random_state=0)
    return {"X": X[train], "y": y[train], "X_test": X[test], "y_test": y[test], "y_noisy": y_noisy, "flipped": flipped}


def _graph():
    """A stochastic block model, half its nodes labeled, a validation mask among them (as test_rge)."""
    X, y, A = make_sbm(n=200, p_in=0.08, p_out=0.03, seed=3)
    y_partial = np.full(len(y), -1)
    y_partial[:100] = y[:100]
    val_mask = np.zeros(len(y), dtype=bool)
    val_mask[50:100] = True
    return {"X": X.astype(np.float32), "y": y, "y_partial": y_partial, "val_mask": val_mask, "A": A}


DATA = {}


def data_for(kind: str) -> dict:
    key = "graph" if kind.startswith("graph") else "digits"
    if key not in DATA:
        DATA[key] = _graph() if key == "graph" else _digits()
    return DATA[key]


# -- fitting and what is compared -------------------------------------------------------------
def fit(name: str, device: str):
    kind, data = kind_of(name), data_for(kind_of(name))
    estimator = ESTIMATOR_CLASSES[name](**TINY[name], random_state=0)
    estimator = clone(estimator).set_params(device=device)
    if kind == "graph_transformer":
        return estimator.fit(data["X"], data["y_partial"], adjacency=data["A"], val_mask=data["val_mask"])
    if kind == "graph_classifier":
        return estimator.fit(data["X"], data["y_partial"], adjacency=data["A"])
    return estimator.fit(data["X"], data["y_noisy"] if kind == "influence" else data["y"])


def outputs(name: str, model) -> dict:
    """What a user reads off the fitted model, as numpy arrays."""
    kind, data = kind_of(name), data_for(kind_of(name))
    if kind == "graph_transformer":
        return {"edge_influence": model.edge_influence_, "kept": model.transform(data["A"]).toarray()}
    if kind == "graph_classifier":
        return {"proba": model.predict_proba(data["X"], adjacency=data["A"])}
    if kind == "influence":
        test_scores = model.score_samples(data["X_test"], data["y_test"])
        return {"train_scores": model.self_influence_, "test_scores": test_scores}
    out = {"proba": model.predict_proba(data["X_test"])}
    if kind == "sampler":
        _, y_coreset = clone(model).fit_resample(data["X"], data["y"])
        out["coreset_counts"] = np.unique(y_coreset, return_counts=True)[1]
    return out


def assert_like_cpu(name: str, accelerated: dict, cpu: dict) -> None:
    """The statistical agreement of the module docstring."""
    kind, data = kind_of(name), data_for(kind_of(name))
    if kind == "graph_transformer":
        np.testing.assert_allclose(accelerated["edge_influence"], cpu["edge_influence"], atol=GRAPH_ATOL)
        np.testing.assert_array_equal(accelerated["kept"], cpu["kept"])
    elif kind == "graph_classifier" and name != "GCNClassifier":
        np.testing.assert_allclose(accelerated["proba"], cpu["proba"], atol=GRAPH_ATOL)
    elif kind == "influence":
        auc = [roc_auc_score(data["flipped"], out["train_scores"]) for out in (accelerated, cpu)]
        assert abs(auc[0] - auc[1]) <= AUC_MARGIN, f"ROC-AUC {auc[0]:.3f} on {ACCELERATOR} vs {auc[1]:.3f} on cpu"
        rho = spearmanr(accelerated["train_scores"], cpu["train_scores"]).statistic
        assert rho >= MIN_SPEARMAN, f"Spearman {rho:.3f} between the {ACCELERATOR} and cpu scores"
    else:
        y_true = data["y"] if kind == "graph_classifier" else data["y_test"]
        accuracy = [float((out["proba"].argmax(1) == y_true).mean()) for out in (accelerated, cpu)]
        margin = ACCURACY_MARGIN.get(name, ACCURACY_MARGIN["default"])
        assert abs(accuracy[0] - accuracy[1]) <= margin, f"accuracy {accuracy} ({ACCELERATOR}, cpu)"
        tv = 0.5 * np.abs(accelerated["proba"] - cpu["proba"]).sum(axis=1).mean()
        margin = PROBA_TV_MARGIN.get(name, PROBA_TV_MARGIN["default"])
        assert tv <= margin, f"mean total variation {tv:.3f} between the {ACCELERATOR} and cpu fits"
        if kind == "sampler":
            np.testing.assert_array_equal(accelerated["coreset_counts"], cpu["coreset_counts"])


FITTED = {}


def fitted(name: str, device: str):
    if (name, device) not in FITTED:
        FITTED[name, device] = fit(name, device)
    return FITTED[name, device]


def _parameters_device(model) -> set:
    """Device types of every torch tensor among the fitted attributes (modules' parameters included)."""
    found = set()
    for key, value in vars(model).items():
        if not key.endswith("_"):
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, torch.Tensor):
                found.add(item.device.type)
            module = item if isinstance(item, torch.nn.Module) else getattr(item, "module_", None)
            if isinstance(module, torch.nn.Module):
                found.update(p.device.type for p in module.parameters())
    return found


# Estimators that fit (parameter objects such as PosteriorSampler are BaseEstimators too).
FITTABLE = sorted(name for name, cls in ESTIMATOR_CLASSES.items() if hasattr(cls, "fit"))
NAMES = [name for name in FITTABLE if name in TINY]
# With pytest-xdist's --dist loadgroup, an estimator's tests share a worker and so its fits.
PER_ESTIMATOR = [pytest.param(name, marks=pytest.mark.xdist_group(name)) for name in NAMES]


def test_every_estimator_has_a_cuda_check():
    assert NAMES == FITTABLE


@pytest.mark.parametrize("name", PER_ESTIMATOR)
def test_fits_on_the_accelerator_like_on_the_cpu(name):
    model = fitted(name, ACCELERATOR)
    assert model.device_.type == torch.device(ACCELERATOR).type
    assert _parameters_device(model) <= {torch.device(ACCELERATOR).type}
    accelerated = outputs(name, model)
    for key, value in accelerated.items():
        assert np.all(np.isfinite(value)), f"{key} has non-finite values"
    assert_like_cpu(name, accelerated, outputs(name, fitted(name, "cpu")))


@pytest.mark.parametrize("name", PER_ESTIMATOR)
def test_accelerator_fit_unpickles_without_cuda(name, monkeypatch):
    model = fitted(name, ACCELERATOR)
    blob = pickle.dumps(model)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored = pickle.loads(blob)
    assert restored.device_.type == "cpu"
    if ACCELERATOR.startswith("cuda"):
        assert any("not available here" in str(w.message) for w in caught)
    assert _parameters_device(restored) <= {"cpu"}
    monkeypatch.undo()
    expected = outputs(name, model)
    for key, value in outputs(name, restored).items():
        np.testing.assert_allclose(value, expected[key], atol=RELOAD_ATOL, rtol=1e-4, err_msg=key)


def test_device_auto_picks_the_accelerator():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    data = data_for("classifier")
    model = DeepEnsembleClassifier(**TINY["DeepEnsembleClassifier"], device="auto", random_state=0)
    model.fit(data["X"], data["y"])
    assert model.device_.type == expected
    assert _parameters_device(model) == {expected}


@pytest.mark.parametrize("name", ["DeepEnsembleClassifier", "PseudocoresetSynthesizer"])
def test_bf16_mixed_precision_fits_like_full_precision(name):
    if "mixed_precision" not in ESTIMATOR_CLASSES[name]().get_params():
        pytest.skip(f"{name} has no mixed_precision parameter yet")
    data = data_for(kind_of(name))
    estimator = ESTIMATOR_CLASSES[name](**TINY[name], device=ACCELERATOR, random_state=0)
    bf16 = clone(estimator).set_params(mixed_precision="bf16").fit(data["X"], data["y"])
    assert_like_cpu(name, outputs(name, bf16), outputs(name, fitted(name, ACCELERATOR)))
