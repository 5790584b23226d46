"""GeometricEnsembleInfluence: maths against naive float64 references, mislabel detection on digits."""

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import roc_auc_score
from torch import nn

from skpcoreset import make_net
from skpcoreset._base import make_generator
from skpcoreset._train import TrainSpec
from skpcoreset.datasets import add_label_noise
from skpcoreset.exceptions import NoBenefitWarning
from skpcoreset.nets._batchnorm import recompute_batchnorm
from skpcoreset.posthoc.influence import GeometricEnsembleInfluence
from skpcoreset.posthoc.influence._baselines import (
    CheckpointTrainer,
    gradient_dot_products,
    squared_gradient_norms,
    tracin_self_influence,
    tracin_train_test,
)
from skpcoreset.posthoc.influence._geometric_ensemble import (
    gex_self_influence,
    gex_train_test,
)
from skpcoreset.posthoc.influence._threshold import otsu_threshold

METHODS = ("gex", "loss", "grad_norm", "tracin")


def _small_net(max_epochs=10):
    return make_net(max_epochs=max_epochs, lr=1e-2, batch_size=64, module__hidden_sizes=(32,))


@pytest.fixture(scope="module")
def noisy_digits(digits):
    X, y = digits
    y_noisy, flipped = add_label_noise(y, 0.1, random_state=0)
    return X, y, y_noisy, flipped


@pytest.fixture(scope="module")
def detectors(noisy_digits):
    """One fit per method on full digits with 10% flipped labels, all from the same theta*.

    theta* is trained long enough to memorise the flipped labels (train accuracy ~1), the regime
    in which the loss at theta* stops separating them.
    """
    X, _, y_noisy, _ = noisy_digits
    net = make_net(max_epochs=100, lr=1e-2, module__hidden_sizes=(256,))
    loss = GeometricEnsembleInfluence(net, method="loss", random_state=0).fit(X, y_noisy)
    theta_star = FrozenEstimator(loss.net_)  # train once; TracIn-CP needs its own run for the checkpoints
    found = {}
    for method in ("gex", "grad_norm"):
        found[method] = GeometricEnsembleInfluence(theta_star, method=method, random_state=0).fit(X, y_noisy)
    found["tracin"] = GeometricEnsembleInfluence(net, method="tracin", random_state=0).fit(X, y_noisy)
    return {"loss": loss, **found}


@pytest.fixture(scope="module")
def small_fit(digits_small):
    X, y = digits_small
    y_noisy, flipped = add_label_noise(y, 0.1, random_state=1)
    est = GeometricEnsembleInfluence(_small_net(), n_members=3, member_epochs=2, random_state=0)
    est.fit(X, y_noisy)
    return est, X, y_noisy, flipped


def _dense_module(seed=0, n_features=5, n_classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_features, 7), nn.Tanh(), nn.Linear(7, n_classes))


def _naive_gradients(module, X, y):
    """Per-sample gradients by one backward pass per sample, in float64."""
    module = copy.deepcopy(module).double()
    grads = []
    for x, target in zip(X.double(), y, strict=True):
        module.zero_grad()
        F.cross_entropy(module(x[None]), target[None]).backward()
        grads.append(torch.cat([p.grad.flatten() for p in module.parameters()]))
    return torch.stack(grads)


# -- acceptance: mislabel detection on digits -------------------------------------------------
def test_gex_beats_every_baseline_on_digits_with_10_percent_flips(detectors, noisy_digits):
    flipped = noisy_digits[3]
    auc = {m: roc_auc_score(flipped, est.self_influence_) for m, est in detectors.items()}
    assert auc["gex"] > 0.95, auc
    for baseline in ("loss", "grad_norm", "tracin"):
        assert auc["gex"] > auc[baseline], auc


def test_all_methods_score_the_same_trained_model(detectors):
    reference = detectors["gex"].base_losses_
    for est in detectors.values():
        np.testing.assert_array_equal(est.base_losses_, reference)
    assert detectors["gex"].median_loss_shift_ > detectors["gex"].tau


def test_relabeling_and_otsu_flags_recover_flipped_labels(detectors, noisy_digits):
    _, y_clean, y_noisy, flipped = noisy_digits
    est = detectors["gex"]
    flagged = est.self_influence_ > est.threshold_
    assert flipped[flagged].mean() > 0.8 and flagged[flipped].mean() > 0.8
    np.testing.assert_array_equal(est.predict(np.asarray(noisy_digits[0]), y_noisy) == -1, flagged)
    assert (est.relabel() == y_clean).mean() > (y_noisy == y_clean).mean() + 0.05


def test_deterministic_under_random_state(digits_small):
    X, y = digits_small
    y_noisy, _ = add_label_noise(y, 0.1, random_state=0)
    params = dict(net=_small_net(max_epochs=3), n_members=2, member_epochs=1, random_state=3)
    first = GeometricEnsembleInfluence(**params).fit(X, y_noisy)
    second = GeometricEnsembleInfluence(**params).fit(X, y_noisy)
    np.testing.assert_array_equal(first.self_influence_, second.self_influence_)
    np.testing.assert_array_equal(first.member_losses_, second.member_losses_)


# -- maths against naive references ----------------------------------------------------------
def test_gex_formulas_match_naive_float64_loops():
    rng = np.random.RandomState(0)
    member = rng.exponential(size=(4, 6))
    base = rng.exponential(scale=0.05, size=6)
    tau = 0.05
    naive = np.array([np.mean([(member[m, i] - max(base[i], tau)) ** 2 for m in range(4)]) for i in range(6)])
    got = gex_self_influence(torch.tensor(member), torch.tensor(base), tau).numpy()
    np.testing.assert_allclose(got, naive, rtol=1e-12)

    test_dev, train_dev = rng.randn(4, 3), rng.randn(4, 6)
    naive_tt = np.array(
        [[np.mean([test_dev[m, a] * train_dev[m, b] for m in range(4)]) for b in range(6)] for a in range(3)]
    )
    np.testing.assert_allclose(gex_train_test(torch.tensor(test_dev), torch.tensor(train_dev)).numpy(), naive_tt)


def test_per_sample_gradients_match_one_backward_per_sample():
    module = _dense_module().double()
    X = torch.randn(11, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (11,))
    naive = _naive_gradients(module, X, y)
    np.testing.assert_allclose(squared_gradient_norms(module, X, y).numpy(), naive.pow(2).sum(1).numpy(), rtol=1e-10)
    X_test, y_test = torch.randn(4, 5, dtype=torch.float64), torch.randint(0, 3, (4,))
    naive_tt = _naive_gradients(module, X_test, y_test) @ naive.T
    got_tt = gradient_dot_products(module, X_test, y_test, X, y)
    np.testing.assert_allclose(got_tt.numpy(), naive_tt.numpy(), rtol=1e-10)


def test_tracin_sums_learning_rate_weighted_gradient_products_over_checkpoints():
    module = _dense_module().double()
    X, y = torch.randn(9, 5, dtype=torch.float64), torch.randint(0, 3, (9,))
    checkpoints = []
    for seed, lr in [(1, 0.1), (2, 0.05), (3, 0.01)]:
        checkpoints.append((copy.deepcopy(_dense_module(seed).double().state_dict()), lr))
    naive_self, naive_tt = 0.0, 0.0
    for state, lr in checkpoints:
        m = _dense_module().double()
        m.load_state_dict(state)
        g = _naive_gradients(m, X, y)
        naive_self = naive_self + lr * g.pow(2).sum(1)
        naive_tt = naive_tt + lr * g[:4] @ g.T
    np.testing.assert_allclose(tracin_self_influence(module, checkpoints, X, y).numpy(), naive_self.numpy(), rtol=1e-10)
    got_tt = tracin_train_test(module, checkpoints, X[:4], y[:4], X, y)
    np.testing.assert_allclose(got_tt.numpy(), naive_tt.numpy(), rtol=1e-10)


def test_checkpoint_trainer_saves_evenly_spaced_checkpoints_ending_at_theta_star():
    module = _dense_module()
    X, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    trainer = CheckpointTrainer(
        module, TrainSpec(max_epochs=6, batch_size=8, lr=0.1), n_checkpoints=3, generator=make_generator(0)
    ).fit(X, y)
    assert [lr for _, lr in trainer.checkpoints] == [0.1, 0.1, 0.1]
    assert len(trainer.checkpoints) == 3
    for name, value in module.state_dict().items():
        torch.testing.assert_close(trainer.checkpoints[-1][0][name], value)


def test_otsu_threshold_matches_brute_force_between_class_variance():
    rng = np.random.RandomState(0)
    values = np.concatenate([rng.normal(0, 1, 50), rng.normal(6, 1.5, 20)])
    t = otsu_threshold(values)

    def between(cut):
        low, high = values[values <= cut], values[values > cut]
        return len(low) * len(high) * (low.mean() - high.mean()) ** 2

    cuts = np.sort(values)[:-1]
    best = max(between(c) for c in cuts)
    assert between(t) == pytest.approx(best)
    assert 1.5 < t < 4.5
    assert otsu_threshold(np.ones(5)) == 1.0


def test_recompute_batchnorm_replaces_stale_running_statistics():
    module = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    module[1].running_mean.fill_(100.0)
    X = torch.randn(64, 3)
    recompute_batchnorm(module, X, batch_size=16)
    with torch.no_grad():
        hidden = module[0](X)
    torch.testing.assert_close(module[1].running_mean, hidden.mean(0), rtol=1e-5, atol=1e-5)
    assert module[1].momentum == 0.1 and not module.training


# -- estimator behaviour ---------------------------------------------------------------------
def test_train_test_influence_of_training_set_has_self_influence_on_its_diagonal(small_fit):
    est, X, y_noisy, _ = small_fit
    influence = est.influence(X[:20], y_noisy[:20])
    assert influence.shape == (20, len(X))
    # the diagonal is I(z); the default estimate ranks by the leave-one-out loss l(z; theta*) + I(z)
    # around an optimum, by the loss at theta* alone where theta* was not converged
    floor = np.maximum(est.base_losses_, est.tau)
    paper = np.mean((est.member_losses_ - floor) ** 2, axis=0)
    np.testing.assert_allclose(np.diag(influence[:, :20]), paper[:20], rtol=1e-5, atol=1e-7)
    at_optimum = est.member_losses_.mean() >= est.base_losses_.mean()
    assert est.theta_at_optimum_ == at_optimum
    expected = est.base_losses_ + paper if at_optimum else est.base_losses_
    np.testing.assert_allclose(est.self_influence_, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(-est.score_samples(X, y_noisy), est.self_influence_, rtol=1e-6)


@pytest.mark.parametrize("method", ["grad_norm", "tracin"])
def test_gradient_methods_train_test_diagonal_is_self_influence(digits_small, method):
    X, y = digits_small
    est = GeometricEnsembleInfluence(_small_net(max_epochs=3), method=method, random_state=0).fit(X, y)
    influence = est.influence(X[:10], y[:10])
    np.testing.assert_allclose(np.diag(influence[:, :10]), est.self_influence_[:10], rtol=1e-4)


def test_loss_method_has_no_train_test_influence(digits_small):
    X, y = digits_small
    est = GeometricEnsembleInfluence(_small_net(max_epochs=2), method="loss", random_state=0).fit(X, y)
    np.testing.assert_allclose(est.self_influence_, est.base_losses_)
    with pytest.raises(ValueError, match="train-test"):
        est.influence(X[:5], y[:5])


def test_members_that_barely_move_warn_with_the_fix(digits_small):
    X, y = digits_small
    with pytest.warns(UserWarning, match="member_lr"):
        GeometricEnsembleInfluence(_small_net(), member_lr=1e-6, jitter=0.0, n_members=2, random_state=0).fit(X, y)


def test_contamination_flags_that_fraction(small_fit):
    est, X, y_noisy, _ = small_fit
    est = clone(est).set_params(contamination=0.1)
    flags = est.fit_predict(X, y_noisy)
    assert (flags == -1).sum() == 30
    np.testing.assert_array_equal(est.predict(X, y_noisy), flags)
    np.testing.assert_array_equal(est.predict(X), flags)


def test_label_free_predict_scores_the_training_set_with_its_training_labels(small_fit):
    """Issue 18: predict(X) after fit(X, y_noisy) scored each row against theta*'s own label."""
    est, X, y_noisy, flipped = small_fit
    flags = np.where(est.self_influence_ > est.threshold_, -1, 1)
    assert (flags == -1).any()
    np.testing.assert_array_equal(est.predict(X), flags)
    np.testing.assert_array_equal(est.predict(X.copy()), est.predict(X, y_noisy))  # equality, not identity
    np.testing.assert_allclose(est.score_samples(X), -est.self_influence_, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(est.decision_function(X), est.decision_function(X, y_noisy))


@pytest.mark.parametrize("rows", [slice(0, 50), slice(None, None, -1)])
def test_label_free_predict_on_other_rows_asks_for_y(small_fit, rows):
    est, X, y_noisy, _ = small_fit
    for method in (est.predict, est.score_samples, est.decision_function):
        with pytest.raises(ValueError, match="pass their labels"):
            method(X[rows])
    assert est.predict(X[rows], y_noisy[rows]).shape == (len(y_noisy[rows]),)


def test_prune_least_influential_drops_the_smallest_scores(small_fit):
    est = small_fit[0]
    kept = est.prune_least_influential(0.25)
    n = len(est.self_influence_)
    assert len(kept) == n - 75 and np.all(np.diff(kept) > 0)
    dropped = np.setdiff1d(np.arange(n), kept)
    assert est.self_influence_[dropped].max() <= est.self_influence_[kept].min()
    np.testing.assert_array_equal(est.prune_least_influential(0.0), np.arange(n))
    with pytest.raises(ValueError, match="fraction"):
        est.prune_least_influential(1.0)
    with pytest.warns(FutureWarning, match="drop_flagged"):
        np.testing.assert_array_equal(est.prune(0.25), kept)


def test_drop_flagged_cleans_the_data_set(small_fit):
    """Issue 18: prune(0.1) after mislabel detection raised the flipped share among kept rows."""
    est, _, _, flipped = small_fit
    n = len(est.self_influence_)
    kept = est.drop_flagged()
    np.testing.assert_array_equal(kept, np.flatnonzero(est.self_influence_ <= est.threshold_))
    assert 0 < len(kept) < n and flipped[kept].mean() < 0.5 * flipped.mean()
    kept_10 = est.drop_flagged(0.1)
    assert len(kept_10) == n - 30 and np.all(np.diff(kept_10) > 0)
    dropped = np.setdiff1d(np.arange(n), kept_10)
    assert est.self_influence_[dropped].min() >= est.self_influence_[kept_10].max()
    assert flipped[kept_10].mean() < flipped.mean() < flipped[est.prune_least_influential(0.1)].mean()
    with pytest.raises(ValueError, match="fraction"):
        est.drop_flagged(-0.1)


def test_unknown_labels_and_missing_test_labels_raise(small_fit):
    est, X, _, _ = small_fit
    with pytest.raises(ValueError, match="not seen in fit"):
        est.score_samples(X[:3], np.array([0, 1, 42]))
    with pytest.raises(ValueError, match="y_test"):
        est.influence(X[:3], None)


def test_string_labels_are_relabeled_in_the_original_label_space(digits_small):
    X, y = digits_small
    names = np.array(list("abcdefghij"))[y]
    est = GeometricEnsembleInfluence(_small_net(max_epochs=3), method="loss", random_state=0).fit(X, names)
    assert set(est.relabel()) <= set(names)
    assert est.score_samples(X[:4], names[:4]).shape == (4,)


def test_prefit_net_is_used_as_theta_star_and_left_unchanged(digits_small):
    X, y = digits_small
    fitted = _small_net(max_epochs=3)
    fitted.set_params(module__input_shape=(64,), module__n_classes=10, verbose=0)
    from skpcoreset.nets import MLP

    fitted.set_params(module=MLP).fit(X, y)
    before = copy.deepcopy(fitted.module_.state_dict())
    est = GeometricEnsembleInfluence(FrozenEstimator(fitted), method="loss", random_state=0)
    clone(est).fit(X, y)  # FrozenEstimator survives clone
    est.fit(X, y)
    with torch.no_grad():
        expected = F.cross_entropy(fitted.module_(torch.as_tensor(X)), torch.as_tensor(y), reduction="none")
    np.testing.assert_allclose(est.base_losses_, expected.numpy(), rtol=1e-5)
    assert est.net_ is None
    for name, value in fitted.module_.state_dict().items():
        torch.testing.assert_close(value, before[name])
    with pytest.raises(ValueError, match="checkpoints"):
        GeometricEnsembleInfluence(fitted, method="tracin").fit(X, y)
    with pytest.raises(ValueError, match="logits"):
        GeometricEnsembleInfluence(fitted, method="loss").fit(X[y < 5], y[y < 5])


@pytest.mark.filterwarnings("ignore:The geometric-ensemble members barely moved")
def test_fan_continuation_trains_dense_members_with_vmap(digits_small):
    X, y = digits_small
    est = GeometricEnsembleInfluence(_small_net(), continuation="fan", n_members=3, random_state=0)
    est.fit(X, y)
    assert est.training_strategy_ == "vmap"
    assert est.member_losses_.shape == (3, len(X))
    restored = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(restored.score_samples(X, y), est.score_samples(X, y))


def test_tracin_matches_captum_tracincp_on_the_same_checkpoints(digits_small):
    captum_influence = pytest.importorskip("captum.influence")
    X, y = digits_small
    est = GeometricEnsembleInfluence(_small_net(max_epochs=3), method="tracin", n_checkpoints=3, random_state=0)
    est.fit(X, y)

    def load_checkpoint(model, checkpoint):
        model.load_state_dict(checkpoint[0])
        return checkpoint[1]

    peer = captum_influence.TracInCP(
        copy.deepcopy(est.module_),
        torch.utils.data.TensorDataset(torch.as_tensor(X), torch.as_tensor(y)),
        checkpoints=list(est.scorer_.checkpoints),
        checkpoints_load_func=load_checkpoint,
        loss_fn=nn.CrossEntropyLoss(reduction="none"),
        batch_size=100,
        sample_wise_grads_per_batch=False,
    ).self_influence(show_progress=False)
    np.testing.assert_allclose(est.self_influence_, peer.double().numpy(), rtol=1e-4)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_keyboard_interrupt_keeps_the_members_built_so_far(digits_small, monkeypatch):
    from skpcoreset.posthoc.influence import _geometric_ensemble

    X, y = digits_small
    calls = {"n": 0}
    original = _geometric_ensemble.JitterTrainer.epoch

    def interrupt_on_third_member(self, tensors):
        calls["n"] += 1
        if calls["n"] == 2 * 2 + 1:  # first epoch of member 3 (2 epochs per member)
            raise KeyboardInterrupt
        return original(self, tensors)

    monkeypatch.setattr(_geometric_ensemble.JitterTrainer, "epoch", interrupt_on_third_member)
    est = GeometricEnsembleInfluence(_small_net(max_epochs=2), n_members=5, member_epochs=2, jitter=0.2)
    est.set_params(random_state=0).fit(X, y)
    assert est.interrupted_
    assert est.member_losses_.shape == (3, len(X))
    assert np.isfinite(est.self_influence_).all()


def test_fitted_skpcoreset_ensemble_lends_its_first_member(digits_small):
    from skpcoreset import DeepEnsembleClassifier

    X, y = digits_small
    ensemble = DeepEnsembleClassifier(_small_net(max_epochs=2), n_members=2, random_state=0).fit(X, y)
    est = GeometricEnsembleInfluence(FrozenEstimator(ensemble), method="loss").fit(X, y)
    proba = ensemble.member_proba(X)[0]
    np.testing.assert_allclose(est.base_losses_, -np.log(proba[np.arange(len(y)), y]), rtol=1e-4, atol=1e-6)


# -- issue 16: the regime GEX's ranking assumes -----------------------------------------------
@pytest.fixture(scope="module")
def noisy_table():
    """Standardised binary table, 10% flipped labels: the panel's noisy_tabular in small."""
    from sklearn.datasets import make_classification
    from sklearn.preprocessing import StandardScaler

    X, y = make_classification(600, n_features=20, n_informative=8, class_sep=1.0, random_state=0)
    X = StandardScaler().fit_transform(X).astype(np.float32)
    y_noisy, flipped = add_label_noise(y, 0.1, random_state=0)
    return X, y_noisy, flipped


@pytest.mark.parametrize("epochs", [2, 150])
def test_loo_loss_ranks_flips_in_both_regimes(noisy_table, epochs):
    """theta* that underfits (2 epochs) or memorises (150): the default estimate l* + I(z) ranks
    the flips at least as well as the loss at theta* and as the paper's I(z) alone."""
    X, y_noisy, flipped = noisy_table
    net = make_net(max_epochs=epochs, lr=1e-2, batch_size=64, module__hidden_sizes=(64,))
    loss = GeometricEnsembleInfluence(net, method="loss", random_state=0).fit(X, y_noisy)
    theta_star = FrozenEstimator(loss.net_)
    default = GeometricEnsembleInfluence(theta_star, random_state=0).fit(X, y_noisy)
    paper = GeometricEnsembleInfluence(theta_star, estimate="self_influence", random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paper.fit(X, y_noisy)
    auc = {
        name: roc_auc_score(flipped, est.self_influence_)
        for name, est in {"loss": loss, "loo_loss": default, "self_influence": paper}.items()
    }
    assert auc["loo_loss"] >= max(auc["loss"], auc["self_influence"]) - 0.01, auc
    fits = default.theta_train_accuracy_
    warned = any(issubclass(w.category, NoBenefitWarning) for w in caught)
    if epochs == 2:  # not converged: the members lower the loss, the paper's I(z) alone falls behind
        assert fits < 0.95 and warned and not default.theta_at_optimum_, fits
        assert auc["loss"] > auc["self_influence"], auc
        np.testing.assert_allclose(default.self_influence_, default.base_losses_, rtol=1e-5)
    else:  # memorised: the loss at theta* no longer separates the flips, GEX does
        assert fits > 0.99 and not warned and default.theta_at_optimum_, fits
        assert auc["loo_loss"] > auc["loss"] + 0.02, auc
        np.testing.assert_allclose(default.self_influence_, paper.self_influence_ + default.base_losses_, rtol=1e-5)


def test_auto_member_epochs_are_sized_to_the_data(digits_small):
    X, y = digits_small
    est = GeometricEnsembleInfluence(_small_net(max_epochs=2), n_members=1, jitter=0.2, random_state=0).fit(X, y)
    assert est.member_epochs_ == 20  # 300 rows / batch 64 -> 5 steps per epoch -> 100 steps
    small = GeometricEnsembleInfluence(_small_net(max_epochs=2), n_members=1, jitter=0.2, random_state=0)
    assert small.fit(X[:40], y[:40]).member_epochs_ == 100  # one step per epoch: capped at 100 epochs


def test_gex_falls_back_to_the_loss_where_self_influence_ranks_against_it():
    # panel cifar10: the members' loss rose 0.68 -> 1.95, I(z) ranked samples opposite to their
    # loss at theta* (Spearman -0.49) and l + I scored AUC 0.646 against the loss's 0.702
    import torch

    from skpcoreset.posthoc.influence._scorers import GexScorer, _spearman

    a = torch.tensor([0.1, 0.5, 0.2, 0.9])
    assert _spearman(a, a) == pytest.approx(1.0) and _spearman(a, -a) == pytest.approx(-1.0)
    assert _spearman(a, torch.ones(4)) == 0.0
    scorer = GexScorer.__new__(GexScorer)
    scorer.settings = {"estimate": "loo_loss"}
    influence, loss = torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0.1, 0.2, 0.3])
    scorer.at_optimum, scorer.loss_agreement = True, 0.5
    torch.testing.assert_close(scorer._estimate(influence, loss), loss + influence)
    scorer.loss_agreement = -0.5
    torch.testing.assert_close(scorer._estimate(influence, loss), loss)
    scorer.at_optimum, scorer.loss_agreement = False, 0.5
    torch.testing.assert_close(scorer._estimate(influence, loss), loss)
