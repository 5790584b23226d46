import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator

from skpcoreset._base import TorchEstimatorMixin, make_generator, resolve_device, seed_from_random_state, torch_seed


class _Probe(TorchEstimatorMixin, BaseEstimator):
    def __init__(self, input_shape=None, device="cpu", random_state=None, verbose=0):
        self.input_shape = input_shape
        self.device = device
        self.random_state = random_state
        self.verbose = verbose


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_requested_without_cuda_is_an_error_not_a_fallback(device):
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device(device)


@pytest.mark.parametrize("device", ["gpu", "tpu:0", 3])
def test_bad_device_names(device):
    with pytest.raises((ValueError, TypeError), match="device must be"):
        resolve_device(device)


def test_torch_seed_is_reproducible_and_does_not_leak_global_state():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    with torch_seed(7):
        a = torch.rand(3)
    with torch_seed(7):
        b = torch.rand(3)
    assert torch.equal(a, b)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's stream is untouched


def test_seed_from_random_state_is_deterministic():
    assert seed_from_random_state(0) == seed_from_random_state(0)
    assert seed_from_random_state(0, 3) == seed_from_random_state(0, 3)
    g1, g2 = make_generator(5), make_generator(5)
    assert torch.equal(torch.randperm(10, generator=g1), torch.randperm(10, generator=g2))


def test_images_keep_their_shape_and_flat_rows_take_input_shape(digits):
    X, y = digits
    probe = _Probe()
    X_img, _ = probe._validate_X_y(X.reshape(-1, 1, 8, 8), y)
    assert X_img.shape == (len(X), 1, 8, 8) and probe.input_shape_ == (1, 8, 8)
    assert probe.n_features_in_ == 64

    probe = _Probe(input_shape=(1, 8, 8))
    X_flat, _ = probe._validate_X_y(X, y)
    assert X_flat.shape == (len(X), 1, 8, 8) and X_flat.dtype == np.float32
    assert probe._validate_X(X[:3], reset=False).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="shape"):
        probe._validate_X(X[:3].reshape(3, 8, 8, 1), reset=False)


def test_input_shape_must_match_n_features(digits):
    X, y = digits
    with pytest.raises(ValueError, match="input_shape"):
        _Probe(input_shape=(3, 8, 8))._validate_X_y(X, y)


def test_labels_are_encoded_into_classes(digits):
    X, y = digits
    probe = _Probe()
    labels = np.array(["cat", "dog"])[(y % 2)]
    _, encoded = probe._validate_X_y(X, labels)
    assert probe.classes_.tolist() == ["cat", "dog"]
    assert set(np.unique(encoded)) == {0, 1}


def test_verbose_progress_only_when_asked(capsys):
    assert _Probe(verbose=0)._progress(range(3), desc="x") == range(3)
    list(_Probe(verbose=1)._progress(range(3), desc="bar"))
    assert "bar" in capsys.readouterr().err


def test_torch_seed_is_reproducible_under_concurrent_threads():
    from joblib import Parallel, delayed

    def draw(seed):
        with torch_seed(seed):
            torch.rand(1)  # give another thread the chance to reseed in between
            return torch.rand(1000)

    expected = [draw(s) for s in range(8)]
    for _ in range(5):
        got = Parallel(n_jobs=4, prefer="threads")(delayed(draw)(s) for s in range(8))
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_importing_the_package_loads_nothing_heavy():
    """``import skpcoreset`` stays instant: torch, sklearn and skorch load with the first name used."""
    import subprocess
    import sys

    code = "import sys, skpcoreset; print(sorted(m for m in ('torch', 'sklearn', 'skorch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_public_estimator_imports_from_the_top_level():
    import inspect

    import skpcoreset
    from tests.test_common import ESTIMATOR_CLASSES

    for name, cls in ESTIMATOR_CLASSES.items():
        assert getattr(skpcoreset, name) is cls, name
    assert set(ESTIMATOR_CLASSES) <= set(skpcoreset.__all__)
    assert all(inspect.getdoc(getattr(skpcoreset, name)) for name in skpcoreset.__all__ if name != "__version__")


def test_shared_parameters_have_one_docstring_and_one_constraint():
    from skpcoreset._base import _SHARED_DOCS, shared_constraints
    from tests.test_common import ESTIMATOR_CLASSES

    for name, cls in ESTIMATOR_CLASSES.items():
        params = inspect_params(cls)
        for shared in ("input_shape", "mixed_precision", "device", "random_state", "verbose"):
            if shared in params:
                assert cls._parameter_constraints[shared] == shared_constraints(shared)[shared], (name, shared)
                assert "%(" not in cls.__doc__, name
        assert "Examples" in cls.__doc__, f"{name} has no Examples section"
    assert set(_SHARED_DOCS) >= {"device", "random_state", "verbose"}


def inspect_params(cls):
    import inspect

    return inspect.signature(cls.__init__).parameters
