"""Bridge ensembles: Bezier curves, bridges, FLOPs accounting and the deep-ensemble equivalent."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skpcoreset import make_net
from skpcoreset._base import make_generator, torch_seed
from skpcoreset._train import Trainer, TrainSpec
from skpcoreset.ensemble import BridgeEnsembleClassifier, deep_ensemble_equivalent
from skpcoreset.ensemble._bridge import BridgeTrainer, kl_divergence, make_bridge, run_stages
from skpcoreset.ensemble._curve import BezierCurve, CurveTrainer
from skpcoreset.ensemble._flops import count_flops
from skpcoreset.metrics import negative_log_likelihood
from skpcoreset.nets import MLP, CIFARResNet, ConvNet
from skpcoreset.nets._batchnorm import recompute_batchnorm


def _resnet(seed):
    with torch_seed(seed):
        return CIFARResNet((1, 8, 8), 10, depth=8, width=1)


@pytest.fixture(scope="module")
def digits_images(digits):
    X, y = digits
    return X.reshape(-1, 1, 8, 8), y


@pytest.fixture(scope="module")
def shuffled_digits(digits):
    """Digits in a fixed random order (the original order groups writers)."""
    X, y = digits
    order = np.random.RandomState(0).permutation(len(y))
    return X[order], y[order]


def _flat_bridge_ensemble(**params):
    net = make_net(max_epochs=12, lr=3e-3, module__hidden_sizes=(64, 64))
    return BridgeEnsembleClassifier(net, n_modes=3, random_state=0, **params)


@pytest.fixture(scope="module")
def flat_bridges(shuffled_digits):
    """Three MLP modes on 1,400 digits, two curves, two Type I bridges; 397 test digits."""
    X, y = shuffled_digits
    return _flat_bridge_ensemble().fit(X[:1400], y[:1400]), X[1400:], y[1400:]


# -- curves --------------------------------------------------------------------------------------
def test_curve_point_matches_float64_bezier_formula():
    start, end = MLP((5,), 3, hidden_sizes=(4,)), MLP((5,), 3, hidden_sizes=(4,))
    curve = BezierCurve(start, end)
    with torch.no_grad():
        for p in curve.middle:
            p.normal_()
    middle = {n: p.detach().double() for n, p in zip(curve.names, curve.middle, strict=True)}
    for lam in (0.0, 0.3, 0.5, 1.0):
        point = curve.point(lam)
        for name, p0 in start.named_parameters():
            p0, p2 = p0.detach().double(), end.get_parameter(name).detach().double()
            reference = (1 - lam) ** 2 * p0 + 2 * lam * (1 - lam) * middle[name] + lam**2 * p2
            torch.testing.assert_close(point[name].double(), reference, rtol=1e-6, atol=1e-7)


def test_curve_middle_starts_at_the_mean_and_only_it_trains(digits):
    X, y = (torch.as_tensor(a) for a in digits)
    start, end = MLP((64,), 10, hidden_sizes=(16,)), MLP((64,), 10, hidden_sizes=(16,))
    curve = BezierCurve(start, end)
    for (name, p0), p1 in zip(start.named_parameters(), curve.middle, strict=True):
        torch.testing.assert_close(p1, (p0 + end.get_parameter(name)) / 2)
    frozen = [p.detach().clone() for p in [*curve.template.parameters(), *curve.end]]
    middle_before = [p.detach().clone() for p in curve.middle]
    CurveTrainer(curve, TrainSpec(max_epochs=2, batch_size=64, lr=1e-2), generator=make_generator(0)).fit(X, y)
    for before, after in zip(frozen, [*curve.template.parameters(), *curve.end], strict=True):
        torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert any(not torch.equal(b, a) for b, a in zip(middle_before, curve.middle, strict=True))


def test_trained_curve_midpoint_beats_linear_interpolation(digits):
    X, y = (torch.as_tensor(a) for a in digits)
    modes = []
    for seed in (0, 1):
        with torch_seed(seed):
            mode = MLP((64,), 10, hidden_sizes=(32,))
        Trainer(mode, TrainSpec(max_epochs=15, batch_size=64, lr=3e-3), generator=make_generator(seed)).fit(X, y)
        modes.append(mode)
    curve = BezierCurve(*modes)
    with torch.no_grad():
        linear_loss = F.cross_entropy(curve.module_at(0.5)(X), y)
    CurveTrainer(curve, TrainSpec(max_epochs=10, batch_size=64, lr=3e-3), generator=make_generator(2)).fit(X, y)
    with torch.no_grad():
        curve_loss = F.cross_entropy(curve.module_at(0.5)(X), y)
    assert curve_loss < 0.8 * linear_loss


def test_curve_endpoints_reproduce_the_modes_with_batchnorm_recomputed(digits_images):
    X = torch.as_tensor(digits_images[0][:256])
    modes = [_resnet(0), _resnet(1)]
    for mode in modes:  # training-mode passes leave non-trivial running statistics
        mode.train()
        with torch.no_grad():
            mode(X * 2 + 0.5)
        recompute_batchnorm(mode, X)
    curve = BezierCurve(*modes)
    with torch.no_grad():
        torch.testing.assert_close(curve.module_at(0.0, X)(X), modes[0](X), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(curve.module_at(1.0, X)(X), modes[1](X), rtol=1e-4, atol=1e-5)
        stale = copy.deepcopy(curve.template).eval()  # theta_0 weights, statistics left from before
        stale.train()
        stale(X * 3)
        assert (stale.eval()(X) - modes[0](X)).abs().max() > 1e-2
    with pytest.raises(ValueError, match="batch norm"):
        curve.module_at(0.5)


def test_recompute_batchnorm_is_the_exact_dataset_average(digits_images):
    X = torch.as_tensor(digits_images[0][:300])
    net = _resnet(0)
    recompute_batchnorm(net, X, batch_size=100)
    stem_norm = net.stages[0][1]
    with torch.no_grad():
        h = net.stages[0][0](X).double()
        batch_means = torch.stack([b.mean(dim=(0, 2, 3)) for b in h.split(100)])
    torch.testing.assert_close(stem_norm.running_mean.double(), batch_means.mean(0), rtol=1e-5, atol=1e-6)
    assert not net.training


def test_curve_works_for_any_module():
    class Unstaged(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(torch.tanh(self.a(x))) + self.a.bias.sum()

    with torch_seed(0):
        start, end = Unstaged(), Unstaged()
    x = torch.randn(5, 4)
    curve = BezierCurve(start, end)
    torch.testing.assert_close(curve(x, 0.0), start(x))
    torch.testing.assert_close(curve(x, torch.tensor(1.0)), end(x))
    with pytest.raises(ValueError, match="architecture"):
        BezierCurve(start, MLP((4,), 3))


# -- bridges -------------------------------------------------------------------------------------
def test_kl_divergence_matches_float64_reference():
    logits_p, logits_q = torch.randn(7, 5), torch.randn(7, 5)
    p, q = logits_p.double().softmax(-1), logits_q.double().softmax(-1)
    reference = (p * (p.log() - q.log())).sum(-1).mean()
    got = kl_divergence(F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1))
    torch.testing.assert_close(got.double(), reference, rtol=1e-5, atol=1e-6)


def test_type_two_bridge_adapts_concatenated_feature_maps():
    mode = ConvNet((1, 8, 8), 10, width=8, depth=2)
    x = torch.randn(4, 1, 8, 8)
    h = run_stages(mode, x, 0, 1)
    bridge = make_bridge(mode, 1, h, n_inputs=2, seed=0)
    assert isinstance(bridge.adapter, nn.Conv2d) and bridge.adapter.in_channels == 16
    assert bridge([h, h]).shape == (4, 10)
    tail_copy = list(bridge.tail.parameters())[0]
    assert not torch.equal(tail_copy, mode.stages[1][0].weight)  # a fresh copy, not the mode's weights


def test_bridge_loss_with_repulsion_matches_float64_reference():
    with torch_seed(0):
        mode, target = MLP((6,), 4, hidden_sizes=(5, 5)), MLP((6,), 4, hidden_sizes=(5, 5))
    x = torch.randn(9, 6)
    bridge = make_bridge(mode, 1, run_stages(mode, x, 0, 1), n_inputs=1, seed=0)
    trainer = BridgeTrainer(
        bridge, TrainSpec(), sources=[mode], split=1, target=target, repulsion=0.3, mixup_alpha=0.0, seed=0,
        generator=make_generator(0),
    )
    with torch.no_grad():
        p_target, p_mode = target(x).double().softmax(-1), mode(x).double().softmax(-1)
        q = bridge([run_stages(mode, x, 0, 1)]).double().softmax(-1)
    reference = (p_target * (p_target / q).log()).sum(-1).mean() - 0.3 * (p_mode * (p_mode / q).log()).sum(-1).mean()
    torch.testing.assert_close(trainer.loss(x).double(), reference, rtol=1e-5, atol=1e-6)


def test_trained_bridge_imitates_its_curve_point_not_mode_zero(flat_bridges):
    clf, _, _ = flat_bridges
    assert len(clf.bridges_) == 2
    for fidelity in clf.bridge_fidelity_:
        assert fidelity["kl_to_curve"] < 0.3 * fidelity["kl_to_mode0"]
        assert fidelity["kl_to_curve"] < 0.3 * fidelity["curve_kl_to_mode0"]
        assert fidelity["agreement_with_curve"] > 0.9


def test_zero_bridges_is_the_single_base_model(flat_bridges):
    clf, X, _ = flat_bridges
    with torch.no_grad():
        mode0 = clf.modes_[0](torch.as_tensor(X)).softmax(-1).double().numpy()
    np.testing.assert_allclose(clf.predict_proba(X, n_bridges=0), mode0, rtol=1e-5, atol=1e-6)
    assert clf.cost(n_bridges=0) == 1.0


def test_ensemble_members_cost_and_accuracy(flat_bridges):
    clf, X, y = flat_bridges
    members = clf.member_proba(X)
    assert members.shape == (3, len(X), 10)
    np.testing.assert_allclose(clf.predict_proba(X), members.mean(0), rtol=1e-6)
    assert clf.member_proba(X, include_bases=False).shape == (2, len(X), 10)
    assert clf.member_proba(X, n_bridges=1).shape == (2, len(X), 10)
    assert 1.0 < clf.cost_ratio_ < 3
    flops = clf.flops_
    assert clf.cost_ratio_ == pytest.approx(1 + sum(flops["bridges"]) / flops["mode"])
    assert clf.cost(include_bases=False) == pytest.approx((flops["trunk"] + sum(flops["bridges"])) / flops["mode"])
    assert clf.midpoint_proba(X).shape == (2, len(X), 10)
    assert np.mean(clf.predict(X) == y) > 0.85
    with pytest.raises(ValueError, match="n_bridges"):
        clf.predict_proba(X, n_bridges=3)
    with pytest.raises(ValueError, match="empty"):
        clf.predict_proba(X, n_bridges=0, include_bases=False)


def test_member_logits_are_differentiable_in_the_input(flat_bridges):
    clf, X, _ = flat_bridges
    X_t = torch.as_tensor(X[:8]).requires_grad_(True)
    logits = clf.member_logits(X_t)
    assert logits.shape == (3, 8, 10)
    logits.logsumexp(-1).sum().backward()
    assert X_t.grad is not None and X_t.grad.abs().sum() > 0


def test_type_two_bridges_on_images_with_batchnorm(digits_images):
    X, y = digits_images
    net = make_net(CIFARResNet, max_epochs=2, batch_size=64, module__depth=8)
    clf = BridgeEnsembleClassifier(
        net, n_modes=2, bridge_type="II", tail_stages=2, curve_max_epochs=1, bridge_max_epochs=1,
        validation_fraction=0.0, random_state=0,
    ).fit(X[:400], y[:400])
    assert clf.member_proba(X[:50]).shape == (3, 50, 10)
    flops = clf.flops_
    assert clf.cost_ratio_ == pytest.approx(2 + flops["bridges"][0] / flops["mode"])
    # the curve's endpoints are the (BN-recomputed) modes
    assert len(clf.batchnorm_inputs_) == 400
    X_t = torch.as_tensor(X[:64])
    with torch.no_grad():
        torch.testing.assert_close(
            clf.curves_[0].module_at(1.0, clf.batchnorm_inputs_)(X_t), clf.modes_[1](X_t), rtol=1e-4, atol=1e-4
        )
    np.testing.assert_allclose(clf.curve_proba(X[:64], 0.0), clf.predict_proba(X[:64], n_bridges=0), atol=1e-5)


def test_calibration_lowers_test_nll(flat_bridges, shuffled_digits):
    X, y = shuffled_digits
    calibrated = _flat_bridge_ensemble(calibrate=True).fit(X[:1400], y[:1400])
    plain, X_test, y_test = flat_bridges
    assert calibrated.temperature_ != 1.0
    # same seeds, same split: only the temperature differs
    X_t = torch.as_tensor(X_test[:5])
    torch.testing.assert_close(
        calibrated.member_logits(X_t) * calibrated.temperature_, plain.member_logits(X_t), rtol=1e-5, atol=1e-5
    )
    nll_calibrated = negative_log_likelihood(y_test, calibrated.predict_proba(X_test))
    assert nll_calibrated < negative_log_likelihood(y_test, plain.predict_proba(X_test))


def test_keyboard_interrupt_keeps_modes(digits, monkeypatch):
    X, y = digits

    def interrupt(self, tensors):
        raise KeyboardInterrupt

    monkeypatch.setattr(CurveTrainer, "epoch", interrupt)
    net = make_net(max_epochs=3, module__hidden_sizes=(16, 16))
    with pytest.warns(UserWarning, match="interrupted"):
        clf = BridgeEnsembleClassifier(net, n_modes=3, random_state=0).fit(X[:300], y[:300])
    assert clf.interrupted_ and len(clf.curves_) == 1 and clf.bridges_ == []
    assert clf.predict_proba(X[:5]).shape == (5, 10) and clf.cost_ratio_ == 1.0


def test_bridges_need_a_staged_network_and_a_trunk(digits):
    X, y = digits

    class Plain(nn.Module):
        def __init__(self, input_shape, n_classes):
            super().__init__()
            self.linear = nn.Linear(input_shape[0], n_classes)

        def forward(self, x):
            return self.linear(x)

    with pytest.raises(TypeError, match="stages"):
        BridgeEnsembleClassifier(make_net(Plain, max_epochs=1)).fit(X[:100], y[:100])
    with pytest.raises(ValueError, match="tail_stages"):
        BridgeEnsembleClassifier(make_net(max_epochs=1), tail_stages=2).fit(X[:100], y[:100])


# -- FLOPs -----------------------------------------------------------------------------------------
def test_flops_are_counted_from_layer_shapes():
    mlp = MLP((64,), 10, hidden_sizes=(16, 8))
    assert count_flops(mlp, [mlp], torch.zeros(3, 64)) == 2 * (64 * 16 + 16 * 8 + 8 * 10)
    conv = ConvNet((1, 8, 8), 10, width=4, depth=2, norm="none")
    expected = 2 * (4 * 8 * 8 * 9 * 1 + 4 * 4 * 4 * 9 * 4 + 4 * 2 * 2 * 10)
    assert count_flops(conv, [conv], torch.zeros(2, 1, 8, 8)) == expected
    trunk = count_flops(lambda x: run_stages(conv, x, 0, 1), [conv], torch.zeros(1, 1, 8, 8))
    assert trunk == 2 * 4 * 8 * 8 * 9


# -- deep-ensemble equivalent -------------------------------------------------------------------
def test_deep_ensemble_equivalent_interpolates_and_clips():
    table = {1: 0.30, 2: 0.24, 4: 0.20}
    assert deep_ensemble_equivalent(0.27, table) == pytest.approx(1.5)
    assert deep_ensemble_equivalent(0.22, table) == pytest.approx(3.0)
    assert deep_ensemble_equivalent(0.24, table) == pytest.approx(2.0)
    with pytest.warns(UserWarning, match="at most 1"):
        assert deep_ensemble_equivalent(0.35, table) == 1.0
    with pytest.warns(UserWarning, match="at least 4"):
        assert deep_ensemble_equivalent(0.10, table) == 4.0
    assert deep_ensemble_equivalent(0.27, [0.30, 0.24]) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="at least one"):
        deep_ensemble_equivalent(0.2, [])


def test_deep_ensemble_equivalent_reads_the_monotone_envelope():
    # bridge_cpu_sgd.json had DE-3 above DE-2: the first bracket gave DE-3's own NLL 1.87
    # and a model between DE-4 and DE-5 3.68. On the envelope (best NLL with <= k members)
    # every DE-k's own NLL is worth at most k and the bump cannot shrink a size.
    table = [0.30, 0.25, 0.27, 0.22, 0.20]
    for k, nll in enumerate(table, start=1):
        assert deep_ensemble_equivalent(nll, table) <= k + 1e-12
    assert deep_ensemble_equivalent(0.25, table) == pytest.approx(2.0)
    assert deep_ensemble_equivalent(0.235, table) == pytest.approx(3.5)
    assert deep_ensemble_equivalent(0.26, table) == pytest.approx(1.8)
