"""DiverseDistiller: perturbations, BatchEnsemble/LatentBE students, targets, teachers."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.frozen import FrozenEstimator
from skorch.callbacks import Callback, LRScheduler
from torch.func import functional_call

from skpcoreset import DeepEnsembleClassifier, make_net
from skpcoreset._holdout import holdout_split
from skpcoreset._train import TrainSpec, WarmupCosineLR
from skpcoreset.augment import default_max_shift, random_horizontal_flip, random_shift, resolve_augmentation
from skpcoreset.distill import DiverseDistiller
from skpcoreset.distill._distiller import DistillationTrainer, mean_pairwise_disagreement
from skpcoreset.distill._perturbations import (
    PerturbationConfig,
    confods_perturbation,
    gaussian_perturbation,
    ods_perturbation,
    scaled_step,
    tdiv_sdiv_perturbation,
)
from skpcoreset.distill._students import (
    distillation_loss,
    distillation_targets,
)
from skpcoreset.distill._teachers import resolve_teacher
from skpcoreset.exceptions import NoBenefitWarning
from skpcoreset.nets import MLP, ConvNet
from skpcoreset.nets._batchensemble import BatchEnsembleConv2d, BatchEnsembleLinear, BatchEnsembleNet
from skpcoreset.nets._batchnorm import recompute_batchnorm


def _net(epochs=20, hidden=(32,), **kwargs):
    return make_net(max_epochs=epochs, lr=1e-2, batch_size=32, module__hidden_sizes=hidden, **kwargs)


@pytest.fixture(scope="module")
def teacher(digits_small):
    X, y = digits_small
    return DeepEnsembleClassifier(_net(), n_members=4, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def adapter(teacher):
    return resolve_teacher(teacher, teacher.classes_, device=torch.device("cpu"), probe=torch.zeros(1, 64))


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _mutual_information(member_proba):
    """Jensen-Shannon spread of member probabilities (M, N, C): 0 when all members agree."""
    mean = member_proba.mean(0)
    entropy = lambda p: -(p * p.clamp_min(1e-12).log()).sum(-1)  # noqa: E731
    return float((entropy(mean) - entropy(member_proba).mean(0)).mean())


# -- perturbation steps ----------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_scaled_step_matches_naive_float64(norm):
    direction = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    step = scaled_step(direction, 0.1, norm)
    for d, s in zip(direction.numpy(), step.numpy(), strict=True):
        d = d.ravel()
        expected = np.sign(d) * 0.1 if norm == "linf" else d / np.linalg.norm(d) * 0.1 * math.sqrt(16)
        np.testing.assert_allclose(s.ravel(), expected, rtol=1e-12)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_ods_step_has_requested_norm(adapter, digits_small, norm):
    X = torch.as_tensor(digits_small[0][:64])
    config = PerturbationConfig(step_size=0.01, norm=norm)  # unclipped
    moved = ods_perturbation(X, teacher=adapter, student=None, config=config, generator=_generator())
    delta = (moved - X).flatten(1)
    if norm == "l2":
        torch.testing.assert_close(delta.norm(dim=1), torch.full((64,), 0.01 * 8.0), rtol=1e-4, atol=1e-6)
    else:
        torch.testing.assert_close(delta.abs().amax(dim=1), torch.full((64,), 0.01), rtol=1e-4, atol=1e-6)


def test_perturbations_are_clipped_to_the_data_range(adapter, digits_small):
    X = torch.as_tensor(digits_small[0][:64])
    config = PerturbationConfig(step_size=0.5, lower=0.0, upper=1.0, n_steps=3)
    for perturb in (gaussian_perturbation, ods_perturbation):
        moved = perturb(X, teacher=adapter, student=None, config=config, generator=_generator())
        assert moved.min() >= 0.0 and moved.max() <= 1.0
        assert (moved - X).abs().max() > 0.1


def test_ods_increases_teacher_disagreement_more_than_gaussian(adapter, digits_small):
    X = torch.as_tensor(digits_small[0])
    config = PerturbationConfig(step_size=0.1, lower=0.0, upper=1.0)
    spread = {"clean": _mutual_information(adapter.member_proba(X))}
    for name, perturb in {"ods": ods_perturbation, "gaussian": gaussian_perturbation}.items():
        moved = perturb(X, teacher=adapter, student=None, config=config, generator=_generator())
        spread[name] = _mutual_information(adapter.member_proba(moved))
    assert spread["ods"] > 1.5 * spread["clean"], spread
    assert spread["ods"] > 1.2 * spread["gaussian"], spread


def test_confods_scales_each_step_by_the_diversified_members_confidence(adapter, digits_small):
    X = torch.as_tensor(digits_small[0][:64])
    config = PerturbationConfig(step_size=0.01)
    moved = confods_perturbation(X, teacher=adapter, student=None, config=config, generator=_generator())
    member = int(torch.randint(adapter.n_members, (1,), generator=_generator()))  # ODS's first draw
    confidence = adapter.member_proba(X)[member].amax(-1)
    torch.testing.assert_close((moved - X).flatten(1).norm(dim=1), 0.08 * confidence, rtol=1e-4, atol=1e-6)
    # same direction as ODS with the same random draws
    ods = ods_perturbation(X, teacher=adapter, student=None, config=config, generator=_generator())
    torch.testing.assert_close((moved - X), (ods - X) * confidence[:, None], rtol=1e-4, atol=1e-6)


def test_tdiv_sdiv_ascends_teacher_minus_student_disagreement(adapter, digits_small):
    X = torch.as_tensor(digits_small[0][:64])
    with torch.random.fork_rng():
        torch.manual_seed(1)
        student = BatchEnsembleNet(MLP((64,), 10, (16,)), 4)
    config = PerturbationConfig(step_size=0.002)
    generator = _generator(3)
    replay = torch.Generator().set_state(generator.get_state())
    first = int(torch.randint(4, (1,), generator=replay))
    second = (first + 1 + int(torch.randint(3, (1,), generator=replay))) % 4

    def objective(x):
        t, s = adapter.member_logits(x), student(x)
        ce = lambda p, q: -(q.softmax(-1) * p.log_softmax(-1)).sum()  # noqa: E731
        return float((ce(t[first], t[second]) - ce(s[first], s[second])).detach())

    moved = tdiv_sdiv_perturbation(X, teacher=adapter, student=student, config=config, generator=generator)
    assert objective(moved) > objective(X)


# -- BatchEnsemble layers ---------------------------------------------------------------------
def _randomise_factors(net, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.factor_parameters():
            p.copy_(1 + 0.3 * torch.randn(p.shape, generator=generator))
        for layer in net.modules():
            if isinstance(layer, (BatchEnsembleLinear, BatchEnsembleConv2d)) and layer.bias is not None:
                layer.bias.add_(0.1 * torch.randn(layer.bias.shape, generator=generator))


def _naive_member_params(layer, m):
    """Member m's weight W * (s_m r_m^T) and bias b_m, in float64."""
    W = layer.weight.detach().double()
    outer = torch.outer(layer.out_factors[m].detach().double(), layer.in_factors[m].detach().double())
    return W * outer.view(*outer.shape, *([1] * (W.dim() - 2))), layer.bias[m].detach().double()


def _plain_params(be_net, base, pick):
    """``base``'s parameter dict (float64) with every BatchEnsemble layer's weights given by ``pick``."""
    params = {name: p.detach().double() for name, p in base.named_parameters()}
    for name, layer in be_net.body.named_modules():
        if isinstance(layer, (BatchEnsembleLinear, BatchEnsembleConv2d)):
            params[f"{name}.weight"], params[f"{name}.bias"] = pick(layer)
    return params


@pytest.mark.parametrize(
    "base, shape",
    [(MLP((64,), 10, (16, 8)), (64,)), (ConvNet((1, 8, 8), 10, width=6, depth=2), (1, 8, 8))],
    ids=["mlp", "convnet"],
)
def test_batchensemble_members_match_naive_rank_one_weights(base, shape):
    net = BatchEnsembleNet(base, 3)
    _randomise_factors(net)
    X = torch.randn(7, *shape)
    logits = net(X).double()
    plain = base.double()
    for m in range(3):
        params = _plain_params(net, base, lambda layer, m=m: _naive_member_params(layer, m))
        expected = functional_call(plain, params, (X.double(),))
        torch.testing.assert_close(logits[m], expected, rtol=1e-4, atol=1e-5)
    base.float()


@pytest.mark.parametrize(
    "base, shape",
    [(MLP((64,), 10, (16, 8)), (64,)), (ConvNet((1, 8, 8), 10, width=6, depth=2), (1, 8, 8))],
    ids=["mlp", "convnet"],
)
def test_latentbe_merged_net_equals_averaged_member_weights(base, shape):
    net = BatchEnsembleNet(base, 4, init="latent")
    _randomise_factors(net, seed=1)
    merged = net.merge()
    assert type(merged) is type(base)

    def averaged(layer):
        members = [_naive_member_params(layer, m) for m in range(4)]
        return sum(w for w, _ in members) / 4, sum(b for _, b in members) / 4

    X = torch.randn(9, *shape)
    expected = functional_call(base.double(), _plain_params(net, base, averaged), (X.double(),))
    base.float()
    torch.testing.assert_close(merged(X).double(), expected, rtol=1e-4, atol=1e-5)


def test_factor_initialisation():
    base = MLP((64,), 10, (512,))
    be = BatchEnsembleNet(base, 8)
    factors = torch.cat([p.flatten() for p in be.factor_parameters()]).detach()
    assert abs(float(factors.mean()) - 1.0) < 0.03 and abs(float(factors.std()) - 0.5) < 0.03
    latent = BatchEnsembleNet(base, 8, init="latent")
    assert all(torch.equal(p, torch.ones_like(p)) for p in latent.factor_parameters())
    X = torch.randn(3, 64)
    for member in latent(X):  # identical members start as the base network
        torch.testing.assert_close(member, base(X))


def test_factors_get_no_weight_decay():
    student = BatchEnsembleNet(MLP((64,), 10, (16,)), 2)
    spec = TrainSpec(optimizer=torch.optim.AdamW, optimizer_kwargs={"weight_decay": 0.1})
    trainer = DistillationTrainer(
        student,
        spec,
        teacher=None,
        perturbation=None,
        config=PerturbationConfig(0.0),
        alpha=0.9,
        temperature=1.0,
        latent_penalty=0.0,
        generator=_generator(),
    )
    groups = trainer.configure_optimizer().param_groups
    factor_ids = {id(p) for p in student.factor_parameters()}
    for group in groups:
        has_factors = any(id(p) in factor_ids for p in group["params"])
        assert group["weight_decay"] == (0.0 if has_factors else 0.1)
        assert not has_factors or all(id(p) in factor_ids for p in group["params"])


# -- targets and loss --------------------------------------------------------------------------
def test_member_wise_and_mean_targets():
    teacher_proba = torch.rand(4, 6, 3).softmax(-1)
    torch.testing.assert_close(distillation_targets(teacher_proba, 4), teacher_proba)
    mean = teacher_proba.mean(0)
    for n_student in (1, 2):
        targets = distillation_targets(teacher_proba, n_student)
        assert targets.shape == (n_student, 6, 3)
        for target in targets:
            torch.testing.assert_close(target, mean)


@pytest.mark.parametrize("n_student", [1, 3])
def test_distillation_loss_matches_naive_float64(n_student):
    generator = _generator(5)
    clean = torch.randn(n_student, 8, 5, generator=generator, dtype=torch.float64)
    perturbed = torch.randn(n_student, 8, 5, generator=generator, dtype=torch.float64)
    teacher = torch.randn(3, 8, 5, generator=generator, dtype=torch.float64).div(2).softmax(-1)
    y = torch.randint(5, (8,), generator=generator)
    alpha, T = 0.7, 2.0
    loss = distillation_loss(clean, perturbed, y, teacher, alpha=alpha, temperature=T)
    expected = 0.0
    for s in range(n_student):
        target = teacher[s] if n_student == 3 else teacher.mean(0)
        q = torch.softmax(perturbed[s] / T, -1)
        ce = -torch.log_softmax(clean[s], -1)[torch.arange(8), y].mean()
        kl = (target * (target.log() - q.log())).sum(-1).mean()
        expected += ((1 - alpha) * ce + alpha * T**2 * kl) / n_student
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)


def test_batchensemble_student_inherits_teacher_member_structure(teacher, digits_small):
    X, y = digits_small
    distiller = DiverseDistiller(
        FrozenEstimator(teacher),
        student="batchensemble",
        perturbation=None,
        net=_net(60),
        alpha=1.0,
        validation_fraction=0.0,
        random_state=0,
    ).fit(X, y)
    student = torch.as_tensor(distiller.student_member_proba(X))
    members = torch.as_tensor(teacher.member_proba(X))
    kl = lambda p, q: float((p * (p.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum(-1).mean())  # noqa: E731
    for i in range(4):  # student member i is closest to teacher member i
        distances = [kl(members[j], student[i]) for j in range(4)]
        assert int(np.argmin(distances)) == i, distances
    assert distiller.diversity_["student"] > 0.3 * distiller.diversity_["teacher"] > 0


# -- the estimator ------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::skpcoreset.exceptions.NoBenefitWarning")
def test_latentbe_predicts_with_the_merged_network(digits_small):
    X, y = digits_small
    distiller = DiverseDistiller(
        net=_net(10, (16,)),
        n_teachers=2,
        student="latentbe",
        perturbation="confods",
        step_size=0.05,
        check_benefit="warn",  # the perturbed student predicts, whatever the check found
        random_state=0,
    ).fit(X, y)
    merged_proba = distiller.merged_(torch.as_tensor(X)).softmax(-1).detach().numpy()
    np.testing.assert_allclose(distiller.predict_proba(X), merged_proba, rtol=1e-5, atol=1e-6)
    assert set(distiller.distill_gap_) == {"accuracy", "nll", "ece", "split"}
    assert distiller.distill_gap_["split"] == "validation"
    assert 0 <= distiller.diversity_["student"] <= 1 and 0 <= distiller.diversity_["teacher"] <= 1
    assert distiller.score(X, y) > 0.8


def test_non_differentiable_teacher_names_the_fix(digits_small):
    X, y = digits_small
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(X, y)
    for perturbation in ("ods", "confods", "tdiv_sdiv"):
        with pytest.raises(ValueError, match="perturbation='gaussian'"):
            DiverseDistiller(forest, student="single", perturbation=perturbation).fit(X, y)
    distiller = DiverseDistiller(
        forest, student="single", perturbation="gaussian", net=_net(10), step_size=0.02, random_state=0
    ).fit(X, y)
    assert distiller.teacher_ is forest and distiller.score(X, y) > 0.8


def test_unfitted_teacher_is_fitted_on_a_copy(digits_small):
    X, y = digits_small
    template = DeepEnsembleClassifier(_net(10, (16,)), n_members=2)
    distiller = DiverseDistiller(template, student="single", net=_net(10, (16,)), random_state=0).fit(X, y)
    assert not hasattr(template, "members_")
    assert len(distiller.teacher_.members_) == 2


def test_list_of_skorch_nets_as_teacher(digits_small, teacher):
    X, y = digits_small
    fitted_nets = list(teacher.members_)
    distiller = DiverseDistiller(fitted_nets, student="batchensemble", net=_net(5, (16,)), random_state=0)
    distiller.fit(X, y)
    assert distiller.student_.n_members == 4
    unfitted = [_net(10, (16,)), _net(10, (16,))]
    trained = DiverseDistiller(unfitted, student="single", net=_net(5, (16,)), random_state=0).fit(X, y)
    assert all(getattr(net, "initialized_", False) for net in trained.teacher_)
    assert not any(hasattr(net, "module_") for net in unfitted)
    first, second = (net.module_(torch.as_tensor(X)).argmax(-1).numpy() for net in trained.teacher_)
    assert (first == y).mean() > 0.8 and (second == y).mean() > 0.8
    assert not np.array_equal(first, second)  # independently initialised members


def test_student_classes_unknown_to_teacher_raise(digits_small):
    X, y = digits_small
    known = y < 9
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(X[known], y[known])
    with pytest.raises(ValueError, match=r"does not know the classes \[9\]"):
        DiverseDistiller(forest, student="single", perturbation=None).fit(X, y)


def test_tdiv_sdiv_needs_a_batchensemble_student(digits_small):
    with pytest.raises(ValueError, match="student='batchensemble'"):
        DiverseDistiller(student="single", perturbation="tdiv_sdiv").fit(*digits_small)


def test_mean_pairwise_disagreement():
    proba = np.eye(3)[np.array([[0, 1, 2, 0], [0, 1, 1, 1], [0, 0, 2, 0]])]
    # pairs (0,1): 2/4, (0,2): 1/4, (1,2): 3/4
    assert mean_pairwise_disagreement(proba) == pytest.approx(0.5)
    assert mean_pairwise_disagreement(proba[:1]) == 0.0


def test_merged_batchnorm_statistics_are_recomputed():
    base = ConvNet((1, 8, 8), 10, width=4, depth=2, norm="batchnorm")
    student = BatchEnsembleNet(base, 3, init="latent")
    _randomise_factors(student)
    X = torch.rand(50, 1, 8, 8)
    merged = recompute_batchnorm(student.merge(), X, batch_size=25)  # equal batches
    first_conv, first_norm = merged.stages[0][0], merged.stages[0][1]
    activations = first_conv(X).double()
    torch.testing.assert_close(first_norm.running_mean.double(), activations.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert not merged.training


def test_validation_split_keeps_every_class_in_training():
    y = np.repeat(np.arange(4), [1, 3, 10, 25])
    train, valid = holdout_split(y, 0.2, np.random.RandomState(0))
    assert sorted(np.concatenate([train, valid]).tolist()) == list(range(len(y)))
    np.testing.assert_array_equal(np.bincount(y[valid], minlength=4), [0, 0, 2, 5])
    assert set(y[train].tolist()) == {0, 1, 2, 3}


def test_student_given_as_module_class_or_skorch_net(teacher, digits_small):
    X, y = digits_small
    frozen = FrozenEstimator(teacher)
    by_class = DiverseDistiller(frozen, student=MLP, perturbation="gaussian", step_size=0.02, random_state=0)
    assert isinstance(by_class.fit(X, y).student_, MLP)
    by_net = DiverseDistiller(frozen, student=_net(15, (8,)), perturbation=None, random_state=0).fit(X, y)
    assert isinstance(by_net.student_, MLP) and by_net.student_.stages[0][1].out_features == 8
    assert by_net.score(X, y) > 0.8


# -- augmentation of the transfer batches ---------------------------------------------------------
def _naive_shift(image: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """Pixel (i, j) of the result is pixel (i + dy, j + dx) of the image, or ``fill`` outside it."""
    channels, height, width = image.shape
    out = torch.full_like(image, fill)
    for i in range(height):
        for j in range(width):
            if 0 <= i + dy < height and 0 <= j + dx < width:
                out[:, i, j] = image[:, i + dy, j + dx]
    return out


def test_random_shift_matches_naive_translation():
    X = torch.rand(12, 2, 6, 5)
    shifted = random_shift(X, _generator(3), max_shift=2, fill=-1.0)
    assert shifted.shape == X.shape
    seen = set()
    for image, result in zip(X, shifted, strict=True):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(result, _naive_shift(image, dy, dx, -1.0))
        ]
        assert matches, "every output is the input translated by at most max_shift pixels"
        seen.add(matches[0])
    assert len(seen) > 1  # offsets are drawn per image
    assert torch.equal(random_shift(X, _generator(), max_shift=0, fill=0.0), X)


def test_random_horizontal_flip_mirrors_about_half_the_images():
    X = torch.rand(64, 1, 4, 4)
    flipped = random_horizontal_flip(X, _generator())
    mirrored = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(flipped, X, strict=True)])
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(flipped, X, strict=True)])
    assert bool((mirrored | kept).all()) and 16 < int(mirrored.sum()) < 48


def test_named_augmentations_need_images():
    assert default_max_shift(32) == 4 and default_max_shift(28) == 3 and default_max_shift(8) == 1
    assert resolve_augmentation(None, (64,), fill=0.0) is None
    custom = lambda X, generator: X  # noqa: E731
    assert resolve_augmentation(custom, (64,), fill=0.0) is custom
    with pytest.raises(ValueError, match="input_shape"):
        resolve_augmentation("shift", (64,), fill=0.0)
    shift = resolve_augmentation("shift_flip", (1, 8, 8), fill=0.0)
    assert shift(torch.rand(5, 1, 8, 8), _generator()).shape == (5, 1, 8, 8)


def test_distiller_augments_every_transfer_batch_before_the_perturbation(teacher, digits_small):
    X, y = digits_small
    calls = []

    def augment(batch, generator):
        calls.append(batch.shape)
        return (batch + 0.01 * torch.randn(batch.shape, generator=generator)).clamp(0, 1)

    for perturbation in (None, "ods"):
        calls.clear()
        distiller = DiverseDistiller(
            FrozenEstimator(teacher),
            student="single",
            perturbation=perturbation,
            net=_net(2),
            augment=augment,
            step_size=0.02,
            validation_fraction=0.0,
            random_state=0,
        ).fit(X, y)
        assert len(calls) == 2 * math.ceil(len(X) / 32)  # once per batch, whatever the perturbation
        assert all(shape[1:] == (64,) for shape in calls)
        assert distiller.score(X, y) > 0.5


def test_shift_augmentation_on_image_rows(digits_small):
    X, y = digits_small
    with pytest.raises(ValueError, match=r"input_shape=\(C, H, W\)"):
        DiverseDistiller(net=_net(1), n_teachers=2, augment="shift").fit(X, y)
    distiller = DiverseDistiller(
        net=make_net(ConvNet, max_epochs=3, lr=1e-2, batch_size=64, module__width=8, module__depth=2),
        n_teachers=2,
        student="latentbe",
        perturbation="ods",
        augment="shift",
        input_shape=(1, 8, 8),
        step_size=0.02,
        random_state=0,
    ).fit(X, y)
    assert distiller.predict_proba(X).shape == (len(X), 10)


# -- regime, eval-mode perturbation passes, per-feature steps, benefit check -----------------------
class _LrRecorder(Callback):
    """Records the learning rate after every epoch (in a class list: templates are cloned)."""

    seen: list = []

    def on_epoch_end(self, net, **kwargs):
        _LrRecorder.seen.append(net.optimizer_.param_groups[0]["lr"])


def test_student_runs_its_templates_callbacks(digits_small):
    _LrRecorder.seen = []
    schedule = LRScheduler(WarmupCosineLR, step_every="batch", event_name=None)
    net = _net(epochs=6, callbacks=[("schedule", schedule), ("lr", _LrRecorder())])
    teacher_nets = [_net(epochs=2), _net(epochs=2)]
    DiverseDistiller(teacher_nets, student="single", net=net, perturbation=None, random_state=0).fit(*digits_small)
    student_lrs = _LrRecorder.seen[-6:]
    assert len(_LrRecorder.seen) == 6  # the teacher nets have no recorder; the student ran it each epoch
    assert student_lrs[0] > 0.5e-2 and student_lrs[-1] < 1e-4  # warm-up + cosine annealed to ~0


def test_default_teacher_is_trained_with_the_students_augmentation(digits_small):
    calls = []

    def augment(X, generator):
        calls.append(len(X))
        return X

    distiller = DiverseDistiller(
        net=_net(epochs=2), n_teachers=2, student="single", perturbation=None, augment=augment, random_state=0
    ).fit(*digits_small)
    assert distiller.teacher_.augment is augment
    # two teacher members and the student, 2 epochs each, every training row augmented
    assert sum(calls) >= 3 * 2 * (distiller._n_train - 1)


def test_perturbation_passes_leave_batchnorm_statistics_untouched(adapter, digits_small):
    X = torch.as_tensor(digits_small[0][:64]).view(-1, 1, 8, 8)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        student = BatchEnsembleNet(ConvNet((1, 8, 8), 10, width=4, depth=2, norm="batchnorm"), 4)
    student.train()
    with torch.no_grad():
        student(X.repeat(4, 1, 1, 1))  # running statistics away from their initial values
    buffers = lambda: {k: v.clone() for k, v in student.state_dict().items() if "running" in k or "batches" in k}  # noqa: E731
    before = buffers()
    config = PerturbationConfig(step_size=0.05, lower=0.0, upper=1.0, temperature=4.0)
    trainer = DistillationTrainer(
        student,
        TrainSpec(),
        teacher=adapter,
        perturbation="tdiv_sdiv",
        config=config,
        alpha=1.0,
        temperature=4.0,
        latent_penalty=0.0,
        generator=_generator(3),
    )
    moved = trainer.perturbed(X)
    for key, value in buffers().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert student.training  # restored for the training passes
    student.eval()  # the direction is the one of the running statistics (eval mode)
    expected = tdiv_sdiv_perturbation(X, teacher=adapter, student=student, config=config, generator=_generator(3))
    torch.testing.assert_close(moved, expected)
    student.train()
    in_train_mode = tdiv_sdiv_perturbation(X, teacher=adapter, student=student, config=config, generator=_generator(3))
    assert not torch.allclose(in_train_mode, expected)


class _RescaledTeacher:
    """``adapter`` seen through inputs measured in other units: x_scaled = x * scale."""

    def __init__(self, adapter, scale):
        self.adapter, self.scale = adapter, scale
        self.n_members, self.n_classes = adapter.n_members, adapter.n_classes

    def member_logit(self, X, member):
        return self.adapter.member_logit(X / self.scale, member)


@pytest.mark.parametrize("perturbation", [ods_perturbation, confods_perturbation, gaussian_perturbation])
def test_per_feature_steps_do_not_depend_on_the_units_of_each_feature(adapter, digits_small, perturbation):
    X = torch.as_tensor(digits_small[0][:32], dtype=torch.float64)
    units = torch.logspace(-3, 3, 64, dtype=torch.float64)[torch.randperm(64, generator=_generator(1))]
    plain = PerturbationConfig(step_size=0.1, scale=torch.ones(64, dtype=torch.float64))
    scaled = PerturbationConfig(step_size=0.1, scale=units)
    adapter64 = _RescaledTeacher(_Float64(adapter), torch.ones(64, dtype=torch.float64))
    moved = perturbation(X, teacher=adapter64, student=None, config=plain, generator=_generator(2))
    moved_in_units = perturbation(
        X * units,
        teacher=_RescaledTeacher(_Float64(adapter), units),
        student=None,
        config=scaled,
        generator=_generator(2),
    )
    torch.testing.assert_close(moved_in_units, moved * units)
    if perturbation is not confods_perturbation:  # unclipped steps of 0.1 * sqrt(64) standardised units
        delta = ((moved - X) / plain.scale).norm(dim=1)
        torch.testing.assert_close(delta, torch.full((32,), 0.1 * 8.0, dtype=torch.float64))


class _Float64:
    def __init__(self, adapter):
        self.adapter, self.n_members, self.n_classes = adapter, adapter.n_members, adapter.n_classes

    def member_logit(self, X, member):
        return self.adapter.member_logit(X.float(), member).double()


def test_tabular_steps_are_in_per_feature_standard_deviations(digits_small):
    X, y = digits_small
    X = ((X - X.mean(0)) * np.logspace(-2, 2, 64)).astype(np.float32)  # features in units 10^4 apart
    distiller = DiverseDistiller(
        net=_net(epochs=2), n_teachers=2, student="single", validation_fraction=0.0, random_state=0
    ).fit(X, y)
    np.testing.assert_allclose(distiller.input_scale_.numpy(), X.std(0), rtol=1e-4, atol=1e-9)
    assert (distiller.alpha_, distiller.temperature_, distiller._step_size()) == (0.9, 1.0, 0.1)
    assert distiller.validation_scores_ == {}  # nothing held out, nothing to check
    conv = make_net(ConvNet, max_epochs=1, batch_size=32, module__width=4, module__depth=2)
    images = DiverseDistiller(
        net=conv, n_teachers=2, student="single", input_shape=(1, 8, 8), check_benefit=False, random_state=0
    ).fit(*digits_small)
    assert images.input_scale_ is None and images._step_size() == pytest.approx(1 / 255)


def test_tdiv_sdiv_defaults_are_the_official_alpha_and_temperature(digits_small):
    distiller = DiverseDistiller(
        net=_net(epochs=1), n_teachers=2, perturbation="tdiv_sdiv", check_benefit=False, random_state=0
    ).fit(*digits_small)
    assert (distiller.alpha_, distiller.temperature_) == (1.0, 4.0)


def test_no_benefit_warning_when_the_perturbation_does_not_beat_kd(digits_small):
    # alpha=1 and huge Gaussian steps: the student only ever matches the teacher far from the data
    distiller = DiverseDistiller(
        net=_net(epochs=10),
        n_teachers=2,
        student="single",
        perturbation="gaussian",
        alpha=1.0,
        step_size=30.0,
        validation_fraction=0.3,
        random_state=0,
    )
    with pytest.warns(NoBenefitWarning, match="did not beat the KD student"):
        distiller.fit(*digits_small)
    scores = distiller.validation_scores_
    assert set(scores) == {"teacher", "student", "kd_student"}
    assert scores["student"]["nll"] > scores["kd_student"]["nll"] + 0.1
    assert set(scores["teacher"]) == {"accuracy", "nll", "ece"}
    assert 0 < distiller.benefit_margin_ < 0.5  # one paired standard error of the per-sample NLL difference
    # 'select' (the default): the KD student predicts, the same network a perturbation=None fit trains
    assert distiller.selected_ == "kd_student"
    X, y = digits_small
    kd = DiverseDistiller(
        teacher=FrozenEstimator(distiller.teacher_),
        net=_net(epochs=10),
        student="single",
        perturbation=None,
        alpha=1.0,
        validation_fraction=0.3,
        random_state=0,
    ).fit(X, y)
    np.testing.assert_allclose(distiller.predict_proba(X), kd.predict_proba(X), rtol=1e-5, atol=1e-6)
    assert distiller.distill_gap_["nll"] == pytest.approx(kd.distill_gap_["nll"], abs=1e-6)
    warned = clone(distiller).set_params(check_benefit="warn")
    with pytest.warns(NoBenefitWarning):
        warned.fit(X, y)
    assert warned.selected_ == "student" and warned.kd_student_ is not None


def test_check_benefit_false_skips_the_kd_baseline(digits_small):
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoBenefitWarning)
        distiller = DiverseDistiller(
            net=_net(epochs=2),
            n_teachers=2,
            student="single",
            perturbation="gaussian",
            alpha=1.0,
            step_size=30.0,
            check_benefit=False,
            random_state=0,
        ).fit(*digits_small)
    assert set(distiller.validation_scores_) == {"teacher", "student"}
