"""What every public estimator promises about its API shape and its long runs.

- parameters after the first are keyword-only (``Est(net, n_members=4)``, never positional);
- a complete fit leaves ``interrupted_`` None;
- a Ctrl-C inside any of its training loops ends ``fit`` normally, keeps what was learned, and
  names the phase it stopped in ``interrupted_``.

Estimators come from tests/test_common.py's discovery, so a new estimator is covered without
editing this file.
"""

import inspect
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV

from skpcoreset import PseudocoresetSynthesizer, _train
from tests.test_common import ESTIMATOR_CLASSES, TABULAR, _fit_data


@pytest.mark.parametrize("cls", list(ESTIMATOR_CLASSES.values()), ids=list(ESTIMATOR_CLASSES))
def test_parameters_after_the_first_are_keyword_only(cls):
    params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    positional = [p.name for p in params[1:] if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert not positional, f"{cls.__name__}: make {positional} keyword-only (put them after a bare *)"


@pytest.mark.parametrize("estimator", TABULAR, ids=lambda e: type(e).__name__)
def test_complete_fit_is_not_interrupted(estimator, digits_small):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = clone(estimator).fit(*_fit_data(digits_small))
    assert getattr(model, "interrupted_", None) is None


@pytest.mark.parametrize("estimator", TABULAR, ids=lambda e: type(e).__name__)
def test_ctrl_c_keeps_what_was_learned_and_names_the_phase(estimator, digits_small, monkeypatch):
    fired = []
    record = _train.Trainer._record

    def interrupt_once(self, *args, **kwargs):
        record(self, *args, **kwargs)
        if not fired:
            fired.append(self.desc)
            raise KeyboardInterrupt

    monkeypatch.setattr(_train.Trainer, "_record", interrupt_once)
    X, y = _fit_data(digits_small)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = clone(estimator).fit(X, y)  # must not raise
    if not fired:
        pytest.skip(f"{type(estimator).__name__} trains no network through the shared loop")
    assert isinstance(model.interrupted_, str) and model.interrupted_, (
        f"{type(estimator).__name__}.interrupted_ = {model.interrupted_!r} after a Ctrl-C in {fired[0]!r}; "
        "it should name the phase"
    )


def test_a_warning_raised_inside_fit_names_the_users_line():
    # NoBenefitWarning and the synthesizer's warnings used to point at skpcoreset/_base.py
    X, y = load_digits(return_X_y=True)
    X, y = (X[:200] / 16).astype(np.float32), y[:200]
    synthesizer = PseudocoresetSynthesizer(n_per_class=30, n_iterations=2, expert_epochs=1, random_state=0)
    with pytest.warns(UserWarning, match="exceeds the distinct rows of some classes") as record:
        synthesizer.fit(X, y)  # the line the warning must name
    assert {w.filename for w in record if "exceeds the distinct rows" in str(w.message)} == {__file__}
    with pytest.warns(UserWarning, match="exceeds the distinct rows of some classes") as record:
        GridSearchCV(synthesizer, {"n_per_class": [30]}, cv=2).fit(X, y)
    assert {w.filename for w in record if "exceeds the distinct rows" in str(w.message)} == {__file__}


@pytest.mark.parametrize("solver", ["lbfgs", "adam"])
def test_sgc_records_an_interrupted_solver(solver, monkeypatch):
    import torch

    from skpcoreset.graph import SGCClassifier

    rng = np.random.RandomState(0)
    X, y = rng.normal(size=(40, 5)).astype(np.float32), rng.randint(3, size=40)
    assert SGCClassifier(solver=solver, max_iter=5).fit(X, y).interrupted_ is None

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if solver == "lbfgs":
        monkeypatch.setattr(torch.optim.LBFGS, "step", interrupt)
    else:
        monkeypatch.setattr(_train.Trainer, "_record", interrupt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = SGCClassifier(solver=solver, max_iter=5).fit(X, y)  # must not raise
    assert clf.interrupted_ == "solver" and clf.predict(X).shape == (40,)
