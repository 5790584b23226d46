"""scikit-learn (and imbalanced-learn) contract checks over every public estimator.

Estimators are discovered from the package, so a new estimator is checked without editing
this file; it only needs a tiny configuration in ``tests/params/``.
"""

import importlib
import inspect
import pickle
import pkgutil

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.utils.estimator_checks import parametrize_with_checks

import skpcoreset
from tests.params import expected_failed_checks, not_tabular, tiny_params


def _public_estimators():
    found = {}
    for info in pkgutil.walk_packages(skpcoreset.__path__, prefix="skpcoreset."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            is_estimator = inspect.isclass(obj) and issubclass(obj, BaseEstimator) and hasattr(obj, "fit")
            if is_estimator and not inspect.isabstract(obj):
                found[name] = obj
    return dict(sorted(found.items()))


ESTIMATOR_CLASSES = _public_estimators()
TINY = tiny_params()
XFAILS = expected_failed_checks()
NOT_TABULAR = not_tabular()


def _instance(cls):
    return cls(**TINY[cls.__name__], random_state=0)


def _is_sampler(cls):
    return hasattr(cls, "fit_resample")


# An estimator without a tiny configuration fails test_every_estimator_is_discovered (below)
# instead of breaking the collection of everyone else's checks.
ESTIMATORS = [_instance(cls) for name, cls in ESTIMATOR_CLASSES.items() if name in TINY]
SAMPLERS = [est for est in ESTIMATORS if _is_sampler(type(est))]
TABULAR = [est for est in ESTIMATORS if type(est).__name__ not in NOT_TABULAR]


def _xfails(estimator):
    return XFAILS.get(type(estimator).__name__, {})


def test_every_estimator_is_discovered():
    assert "DeepEnsembleClassifier" in ESTIMATOR_CLASSES
    for name in ESTIMATOR_CLASSES:
        assert name in TINY, f"{name} needs a tiny configuration in tests/params/"


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_xfails)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


if SAMPLERS:
    from imblearn.utils.estimator_checks import parametrize_with_checks as imblearn_checks

    def _listed(decorator):
        """imblearn hands pytest a generator of checks, which pytest deprecates: list it."""
        mark = decorator.mark
        names, values = mark.args
        return pytest.mark.parametrize(names, list(values), **mark.kwargs)

    @_listed(imblearn_checks(SAMPLERS, expected_failed_checks=_xfails))
    def test_imblearn_compatible_sampler(estimator, check):
        check(estimator)


# -- the shared bad-input matrix -------------------------------------------------------------
def _fit_data(digits_small):
    X, y = digits_small
    return X.copy(), y.copy()


def _with(X, index, value):
    X = X.copy()
    X[index] = value
    return X


BAD_FIT_INPUTS = {
    "nan": (lambda X, y: (_with(X, (0, 0), np.nan), y), ValueError, "NaN"),
    "inf": (lambda X, y: (_with(X, (0, 0), np.inf), y), ValueError, "infinity"),
    "empty": (lambda X, y: (X[:0], y[:0]), ValueError, "0 sample"),
    "one_class": (lambda X, y: (X, np.zeros_like(y)), ValueError, "class"),
    "1d_X": (lambda X, y: (X[:, 0], y), ValueError, "2D|1D"),
    "string_X": (lambda X, y: (X.astype(str).astype(object) + "a", y), (ValueError, TypeError), "convert|string"),
    "sparse_X": (lambda X, y: (sp.csr_matrix(X), y), TypeError, "[Ss]parse"),
    "y_length": (lambda X, y: (X, y[:-1]), ValueError, "inconsistent numbers of samples"),
    "continuous_y": (lambda X, y: (X, y + 0.5), ValueError, "Unknown label type"),
}


@pytest.mark.parametrize("case", sorted(BAD_FIT_INPUTS))
@pytest.mark.parametrize("estimator", TABULAR, ids=lambda e: type(e).__name__)
def test_bad_fit_input_has_clear_error(estimator, case, digits_small):
    make, error, message = BAD_FIT_INPUTS[case]
    X, y = make(*_fit_data(digits_small))
    with pytest.raises(error, match=message):
        clone(estimator).fit(X, y)


@pytest.fixture(scope="module")
def fitted(request, digits_small):
    cache = {}

    def get(estimator):
        name = type(estimator).__name__
        if name not in cache:
            cache[name] = clone(estimator).fit(*_fit_data(digits_small))
        return cache[name]

    return get


@pytest.mark.parametrize("estimator", TABULAR, ids=lambda e: type(e).__name__)
def test_wrong_n_features_at_predict(estimator, fitted, digits_small):
    model = fitted(estimator)
    X, _ = digits_small
    method = getattr(model, "predict", None) or model.score_samples
    with pytest.raises(ValueError, match="features"):
        method(X[:, :10])


@pytest.mark.parametrize("estimator", TABULAR, ids=lambda e: type(e).__name__)
def test_user_arrays_are_not_modified(estimator, digits_small):
    X, y = _fit_data(digits_small)
    X_before, y_before = X.copy(), y.copy()
    model = clone(estimator).fit(X, y)
    if hasattr(model, "predict_proba"):
        model.predict_proba(X)
    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_array_equal(y, y_before)


@pytest.mark.parametrize("estimator", TABULAR, ids=lambda e: type(e).__name__)
def test_numpy_pandas_and_torch_inputs_agree(estimator, fitted, digits_small):
    pd = pytest.importorskip("pandas")
    model = fitted(estimator)
    X, _ = digits_small
    method = getattr(model, "predict_proba", None) or model.score_samples
    reference = method(X)
    np.testing.assert_allclose(method(torch.from_numpy(X)), reference, rtol=1e-6, atol=1e-7)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    model_pd = clone(estimator).fit(frame, _fit_data(digits_small)[1])
    np.testing.assert_allclose(
        (getattr(model_pd, "predict_proba", None) or model_pd.score_samples)(frame), reference, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("estimator", TABULAR, ids=lambda e: type(e).__name__)
def test_pickle_round_trip(estimator, fitted, digits_small):
    model = fitted(estimator)
    X, _ = digits_small
    method = "predict_proba" if hasattr(model, "predict_proba") else "score_samples"
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(getattr(restored, method)(X), getattr(model, method)(X))


@pytest.mark.parametrize("estimator", TABULAR, ids=lambda e: type(e).__name__)
def test_skops_round_trip(estimator, fitted, digits_small):
    sio = pytest.importorskip("skops.io")
    model = fitted(estimator)
    X, _ = digits_small
    method = "predict_proba" if hasattr(model, "predict_proba") else "score_samples"
    blob = sio.dumps(model)
    restored = sio.loads(blob, trusted=sio.get_untrusted_types(data=blob))
    np.testing.assert_array_equal(getattr(restored, method)(X), getattr(model, method)(X))


@pytest.mark.parametrize("estimator", TABULAR, ids=lambda e: type(e).__name__)
def test_verbose_zero_prints_nothing(estimator, digits_small, capsys):
    clone(estimator).set_params(verbose=0).fit(*_fit_data(digits_small))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
