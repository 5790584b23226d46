"""Bridge ensembles: Bezier curves, bridges, FLOPs accounting and the deep-ensemble equivalent."""

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skpcoreset import make_net
from skpcoreset._base import make_generator, torch_seed
from skpcoreset._train import Trainer, TrainSpec
from skpcoreset.ensemble import BridgeEnsembleClassifier, deep_ensemble_equivalent
from skpcoreset.ensemble._bridge import BridgeTrainer, FeatureSplit, kl_divergence, make_bridge, run_stages
from skpcoreset.ensemble._curve import BezierCurve, CurveTrainer
from skpcoreset.ensemble._flops import count_flops
from skpcoreset.exceptions import NoBenefitWarning
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
    params = {"n_bridges": None, "curve_max_epochs": 30, "bridge_max_epochs": 30, **params}
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


def test_type_two_bridge_feeds_the_concatenation_straight_into_the_tail():
    mode = ConvNet((1, 8, 8), 10, width=8, depth=2)
    x = torch.randn(4, 1, 8, 8)
    h = run_stages(mode, x, 0, 1)
    bridge = make_bridge(mode, 1, h, n_inputs=2, seed=0)
    first = bridge.tail[0][0]
    assert isinstance(first, nn.Conv2d) and first.in_channels == 16 and first.out_channels == 8
    assert not hasattr(bridge, "adapter")  # no dense 2w -> w layer in front of the tail
    assert bridge([h, h]).shape == (4, 10)
    assert not torch.equal(bridge.tail[1][1].weight, mode.stages[1][1].weight)  # fresh, not the mode's


@pytest.mark.parametrize("depth", [8, 14])  # the last block: a projection shortcut (8), an identity (14)
def test_type_two_residual_tail_gets_a_projection_shortcut(depth):
    with torch_seed(0):
        mode = CIFARResNet((1, 8, 8), 10, depth=depth)
    x = torch.randn(2, 1, 8, 8)
    split = mode.n_stages - 2
    h = run_stages(mode, x, 0, split)
    bridge = make_bridge(mode, split, h, n_inputs=2, seed=0)
    block = bridge.tail[0]
    shortcut = block.shortcut if isinstance(block.shortcut, nn.Conv2d) else block.shortcut[0]
    assert block.conv1.in_channels == 2 * h.shape[1] and shortcut.in_channels == 2 * h.shape[1]
    assert bridge([h, h]).shape == (2, 10)


def test_bridge_loss_with_repulsion_matches_float64_reference():
    with torch_seed(0):
        mode, target = MLP((6,), 4, hidden_sizes=(5, 5)), MLP((6,), 4, hidden_sizes=(5, 5))
    x = torch.randn(9, 6)
    bridge = make_bridge(mode, 1, run_stages(mode, x, 0, 1), n_inputs=1, seed=0)
    trainer = BridgeTrainer(
        bridge,
        TrainSpec(),
        sources=[mode],
        split=1,
        target=target,
        repulsion=0.3,
        mixup_alpha=0.0,
        seed=0,
        generator=make_generator(0),
    )
    with torch.no_grad():
        p_target, p_mode = target(x).double().softmax(-1), mode(x).double().softmax(-1)
        q = bridge([run_stages(mode, x, 0, 1)]).double().softmax(-1)
    reference = (p_target * (p_target / q).log()).sum(-1).mean() - 0.3 * (p_mode * (p_mode / q).log()).sum(-1).mean()
    torch.testing.assert_close(trainer.loss(x).double(), reference, rtol=1e-5, atol=1e-6)


def test_type_two_repulsion_pushes_away_from_both_endpoints():
    with torch_seed(0):
        modes = [MLP((6,), 4, hidden_sizes=(5,)) for _ in range(3)]
    start, end, target = modes
    x = torch.randn(9, 6)
    features = [run_stages(m, x, 0, 1) for m in (start, end)]
    bridge = make_bridge(start, 1, features[0], n_inputs=2, seed=0, n_classes=4, mode_flops=200)
    trainer = BridgeTrainer(
        bridge,
        TrainSpec(),
        sources=[start, end],
        split=1,
        target=target,
        repulsion=0.3,
        mixup_alpha=0.0,
        seed=0,
        generator=make_generator(0),
    )

    def kl(p, q):
        return (p * (p / q).log()).sum(-1).mean()

    with torch.no_grad():
        p_target, p_start, p_end = (m(x).double().softmax(-1) for m in (target, start, end))
        q = bridge(features).double().softmax(-1)
    reference = kl(p_target, q) - 0.3 * (kl(p_start, q) + kl(p_end, q)) / 2
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
        net,
        n_modes=2,
        bridge_type="II",
        tail_stages=2,
        curve_max_epochs=1,
        bridge_max_epochs=1,
        validation_fraction=0.0,
        random_state=0,
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
            return self.linear(x) * 2  # its one child is not its forward pass

    with pytest.raises(TypeError, match="feature_layer"):
        BridgeEnsembleClassifier(make_net(Plain, max_epochs=1)).fit(X[:100], y[:100])
    with pytest.raises(ValueError, match="tail_stages"):
        BridgeEnsembleClassifier(make_net(max_epochs=1), tail_stages=2).fit(X[:100], y[:100])
    with pytest.raises(ValueError, match="names no submodule"):
        BridgeEnsembleClassifier(make_net(Plain, max_epochs=1), feature_layer="body").fit(X[:100], y[:100])


# -- issue 16: cost, mixup, checkpoints, selection; issue 17: a user's own module ----------------
@pytest.mark.parametrize("bridge_type", ["I", "II"])
@pytest.mark.parametrize(
    ("module", "shape", "module_params"),
    [
        (MLP, (64,), {}),
        (MLP, (784,), {}),
        (ConvNet, (1, 28, 28), {}),
        (CIFARResNet, (3, 32, 32), {"module__depth": 20}),
    ],
    ids=["mlp64", "mlp784", "convnet", "resnet20"],
)
def test_every_bridge_costs_under_half_a_base_pass(module, shape, module_params, bridge_type):
    rng = np.random.RandomState(0)
    X, y = rng.rand(16, *shape).astype(np.float32), np.arange(16) % 4
    net = make_net(module, max_epochs=1, batch_size=16, **module_params)
    clf = BridgeEnsembleClassifier(
        net, bridge_type=bridge_type, curve_max_epochs=1, bridge_max_epochs=1, random_state=0
    ).fit(X, y)
    (bridge_flops,) = clf.flops_["bridges"]
    assert 0 < bridge_flops < 0.5 * clf.flops_["mode"]
    if module is MLP:  # a hidden-layer head on the (concatenated) features, no adapter in front
        assert sum(isinstance(m, nn.Linear) for m in clf.bridges_[0].modules()) == 2
    bases = 1 if bridge_type == "I" else 2
    assert clf.cost_ratio_ == pytest.approx(bases + bridge_flops / clf.flops_["mode"])


def test_mixup_draws_one_weight_per_sample():
    mode = MLP((32,), 3, hidden_sizes=(4,))
    trainer = BridgeTrainer(
        make_bridge(mode, 1, torch.zeros(2, 4), 1, seed=0),
        TrainSpec(),
        sources=[mode],
        split=1,
        target=mode,
        repulsion=0.0,
        mixup_alpha=0.4,
        seed=0,
        generator=make_generator(0),
    )
    X = torch.eye(32)
    mixed = trainer.mix(X)
    weights = mixed.diagonal()  # row i is w_i e_i + (1 - w_i) e_perm(i)
    moved = weights < 1  # rows paired with another row
    assert moved.sum() > 20 and len(torch.unique(weights[moved])) == int(moved.sum())
    torch.testing.assert_close(mixed.sum(1), torch.ones(32))
    images = torch.rand(8, 1, 4, 4)
    assert trainer.mix(images).shape == images.shape


def test_bridge_keeps_the_checkpoint_with_the_best_validation_loss(digits):
    X = torch.as_tensor(digits[0][:600])
    with torch_seed(0):
        mode, target = MLP((64,), 10, hidden_sizes=(16,)), MLP((64,), 10, hidden_sizes=(16,))
    bridge = make_bridge(mode, 1, run_stages(mode, X[:2], 0, 1), 1, seed=0, n_classes=10, mode_flops=5000)
    spec = TrainSpec(max_epochs=12, batch_size=32, lr=0.5, optimizer=torch.optim.SGD)  # a noisy run
    trainer = BridgeTrainer(
        bridge,
        spec,
        sources=[mode],
        split=1,
        target=target,
        repulsion=0.0,
        mixup_alpha=0.4,
        seed=0,
        generator=make_generator(0),
    ).fit(X[:500], validation=(X[500:],))
    losses = trainer.history[:, "valid_loss"]
    assert trainer.best_epoch == int(np.argmin(losses)) + 1
    with torch.no_grad():
        kept = float(trainer._divergence(X[500:], 0.0))
    assert kept == pytest.approx(min(losses), rel=1e-5)
    if trainer.best_epoch < spec.max_epochs:
        assert kept < losses[-1]


def test_auto_drops_a_useless_bridge_and_warns(digits):
    X, y = digits
    net = make_net(max_epochs=15, lr=3e-3, module__hidden_sizes=(32,))
    # an untrained curve: the midpoint is the mean of two unrelated modes, a useless target
    clf = BridgeEnsembleClassifier(net, curve_max_epochs=0, bridge_max_epochs=10, random_state=0)
    with pytest.warns(NoBenefitWarning, match="held-out"):
        clf.fit(X[:800], y[:800])
    assert len(clf.bridges_) == 1 and clf.n_bridges_ == 0 and clf.cost_ratio_ == 1.0
    scores = clf.validation_scores_
    assert scores["all_bridges"]["nll"] > scores["single"]["nll"] == scores["ensemble"]["nll"]
    np.testing.assert_allclose(clf.predict_proba(X[800:]), clf.predict_proba(X[800:], n_bridges=0))
    assert clf.member_proba(X[800:850], n_bridges=1).shape == (2, 50, 10)


def test_auto_keeps_a_bridge_that_lowers_the_held_out_nll():
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=1200, n_features=20, n_informative=10, n_classes=5, flip_y=0.05, random_state=0
    )
    net = make_net(max_epochs=60, lr=3e-3, module__hidden_sizes=(64,))  # overconfident modes
    clf = BridgeEnsembleClassifier(
        net, curve_max_epochs=30, bridge_max_epochs=30, validation_fraction=0.2, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoBenefitWarning)
        clf.fit(X.astype(np.float32), y)
    scores = clf.validation_scores_
    assert clf.n_bridges_ == 1 and scores["ensemble"]["nll"] < scores["single"]["nll"] - 0.05
    assert {"accuracy", "nll", "ece"} <= set(scores["single"])
    assert 1 <= clf.bridge_fidelity_[0]["best_epoch"] <= 30


class UserNet(nn.Module):
    """A user's own module: a residual body, so its children are not a sequence of stages."""

    def __init__(self, n_features=64, n_classes=10, hidden=64):
        super().__init__()
        self.embed = nn.Linear(n_features, hidden)
        self.body = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x):
        h = self.embed(x)
        return self.head(self.body(h) + h)


def test_bridges_on_a_users_plain_module_through_skorch(shuffled_digits):
    from skorch import NeuralNetClassifier

    X, y = shuffled_digits
    X = X.astype(np.float32)
    net = NeuralNetClassifier(
        UserNet,
        max_epochs=10,
        lr=0.05,
        optimizer=torch.optim.SGD,
        optimizer__momentum=0.9,
        criterion=nn.CrossEntropyLoss,
        train_split=None,
        batch_size=64,
    )
    with pytest.raises(TypeError, match="feature_layer"):
        BridgeEnsembleClassifier(net, random_state=0).fit(X[:200], y[:200])
    clf = BridgeEnsembleClassifier(
        net, feature_layer="body", n_bridges=None, curve_max_epochs=10, bridge_max_epochs=10, random_state=0
    ).fit(X[:1000], y[:1000])
    assert clf.split_.layer == "body"
    assert clf.flops_["bridges"][0] < 0.5 * clf.flops_["mode"]
    with torch.no_grad():
        mode0 = clf.modes_[0](torch.as_tensor(X[1000:])).softmax(-1).double().numpy()
    np.testing.assert_allclose(clf.predict_proba(X[1000:], n_bridges=0), mode0, rtol=1e-5, atol=1e-6)
    assert clf.member_proba(X[1000:]).shape == (2, len(X) - 1000, 10)
    assert clf.score(X[1000:], y[1000:]) > 0.85
    assert clf.bridge_fidelity_[0]["kl_to_curve"] < clf.bridge_fidelity_[0]["curve_kl_to_mode0"]


class SoftmaxUserNet(UserNet):
    """The same module written as skorch's docs do: it ends in a softmax (skorch's default NLLLoss)."""

    def forward(self, x):
        return super().forward(x).softmax(dim=-1)


@pytest.mark.filterwarnings("ignore::skpcoreset.exceptions.NoBenefitWarning")
def test_bridges_on_a_users_softmax_module_with_nllloss(shuffled_digits):
    # the module runs wrapped (log-probabilities as logits); feature_layer still names its own
    # layer (it failed with "LogProbabilities has no attribute `body`")
    from skorch import NeuralNetClassifier

    X, y = shuffled_digits
    X = X.astype(np.float32)
    net = NeuralNetClassifier(
        SoftmaxUserNet, max_epochs=10, lr=0.05, optimizer=torch.optim.SGD, optimizer__momentum=0.9, train_split=None
    )
    clf = BridgeEnsembleClassifier(
        net, feature_layer="body", n_bridges=None, curve_max_epochs=5, bridge_max_epochs=5, random_state=0
    ).fit(X[:800], y[:800])
    proba = clf.predict_proba(X[800:])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert clf.score(X[800:], y[800:]) > 0.8


@pytest.mark.filterwarnings("ignore::skpcoreset.exceptions.NoBenefitWarning")
def test_a_module_whose_children_chain_is_cut_between_them(digits):
    class Chain(nn.Module):
        def __init__(self, input_shape, n_classes):
            super().__init__()
            self.features = nn.Sequential(nn.Linear(input_shape[0], 32), nn.ReLU())
            self.hidden = nn.Sequential(nn.Linear(32, 32), nn.ReLU())
            self.classifier = nn.Linear(32, n_classes)

        def forward(self, x):
            return self.classifier(self.hidden(self.features(x)))

    X, y = digits
    net = make_net(Chain, max_epochs=2)
    clf = BridgeEnsembleClassifier(net, curve_max_epochs=1, bridge_max_epochs=1, random_state=0).fit(X[:300], y[:300])
    assert clf.split_.stage == 1  # the last two children are the tail
    clf = BridgeEnsembleClassifier(
        net, feature_layer="hidden", curve_max_epochs=1, bridge_max_epochs=1, random_state=0
    ).fit(X[:300], y[:300])
    assert clf.split_.stage == 2 and clf.predict_proba(X[:5]).shape == (5, 10)
    split = FeatureSplit(layer="features")
    module = clf.modes_[0]
    with torch.no_grad():
        x = torch.as_tensor(X[:4], dtype=torch.float32)
        logits, features = split.logits_and_features(module, x)
        torch.testing.assert_close(features, module.features(x))
        torch.testing.assert_close(split.features(module, x), features)
        torch.testing.assert_close(logits, module(x))


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
