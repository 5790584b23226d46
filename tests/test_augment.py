"""Differentiable augmentation (DSA) used by pseudocoreset synthesis."""

import numpy as np
import pytest
import torch

from skpcoreset.augment import DSA_OPERATIONS, DifferentiableAugmentation, resolve_augmentation


def _images(n=6, shape=(3, 16, 16), seed=0):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed), requires_grad=True)


@pytest.mark.parametrize("operation", DSA_OPERATIONS)
def test_each_operation_keeps_shape_changes_images_and_passes_gradients(operation):
    X = _images()
    out = DifferentiableAugmentation((operation,))(X, torch.Generator().manual_seed(1))
    assert out.shape == X.shape and out.dtype == X.dtype
    changed = (out - X).abs().flatten(1).amax(1) > 1e-4
    # flip mirrors about half of the images; every other family changes every image
    assert changed.sum() >= (1 if operation == "flip" else len(X))
    (grad,) = torch.autograd.grad(out.square().sum(), X)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_same_generator_state_gives_the_same_augmentation():
    X = _images()
    augment = DifferentiableAugmentation()
    first = augment(X, torch.Generator().manual_seed(3))
    again = augment(X, torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, again)


def test_crop_translates_content_and_flip_mirrors():
    X = torch.zeros(1, 1, 16, 16)
    X[..., 6:10, 6:10] = 1.0
    shifted = DifferentiableAugmentation(("crop",))(X, torch.Generator().manual_seed(0))
    assert float(shifted.sum()) == pytest.approx(float(X.sum()), rel=0.05)  # content moved, not lost
    centre_of_mass = lambda img: (img[0, 0].sum(0) * torch.arange(16.0)).sum() / img.sum()  # noqa: E731
    assert abs(float(centre_of_mass(shifted) - centre_of_mass(X))) > 0.1
    asymmetric = torch.arange(16.0).expand(4, 1, 16, 16)
    flipped = DifferentiableAugmentation(("flip",))(asymmetric, torch.Generator().manual_seed(0))
    for original, out in zip(asymmetric, flipped, strict=True):
        assert torch.equal(out, original) or torch.equal(out, original.flip(-1))


def test_resolve_augmentation_choices():
    assert resolve_augmentation(None, (5,)) is None
    assert resolve_augmentation("auto", (5,)) is None  # flat rows: none
    assert resolve_augmentation("auto", (1, 8, 8)) is None  # too small for DSA
    assert isinstance(resolve_augmentation("auto", (3, 32, 32)), DifferentiableAugmentation)
    assert isinstance(resolve_augmentation("dsa", (1, 8, 8)), DifferentiableAugmentation)
    shift = resolve_augmentation("shift_flip", (3, 32, 32), fill=-1.0)
    assert (shift.max_shift, shift.fill, shift.flip) == (4, -1.0, True)
    custom = lambda X, generator: X * 2  # noqa: E731
    assert resolve_augmentation(custom, (5,)) is custom
    with pytest.raises(ValueError, match="needs image inputs"):
        resolve_augmentation("dsa", (64,))
    with pytest.raises(ValueError, match="augment must be"):
        resolve_augmentation("mixup", (3, 32, 32))
    with pytest.raises(ValueError, match="subset of"):
        DifferentiableAugmentation(("blur",))
    with pytest.raises(ValueError, match="needs images"):
        DifferentiableAugmentation()(torch.rand(3, 5), torch.Generator())


def test_synthesizer_augments_the_coreset_during_synthesis_only():
    from sklearn.datasets import load_digits

    from skpcoreset import make_net
    from skpcoreset.pseudocoreset import PosteriorSampler, PseudocoresetSynthesizer

    X, y = load_digits(return_X_y=True)
    X, y = (X[:300] / 16).astype(np.float32), y[:300]
    seen = []

    def recording_augment(images, generator):
        seen.append(tuple(images.shape))
        return DifferentiableAugmentation(("crop", "cutout"))(images, generator)

    params = dict(
        n_per_class=1,
        net=make_net(lr=0.1, batch_size=64, module__width=8),
        n_experts=1,
        expert_epochs=3,
        n_iterations=3,
        inner_steps=2,
        n_divergence_samples=2,
        posterior=PosteriorSampler(n_samples=2, steps=20),
        input_shape=(1, 8, 8),
        random_state=0,
    )
    pc = PseudocoresetSynthesizer(augment=recording_augment, **params).fit(X, y)
    # per iteration: one per inner step, one for the divergence
    assert len(seen) == 3 * (2 + 1) and set(seen) == {(10, 1, 8, 8)}
    assert pc.coreset_X_.shape == (10, 1, 8, 8)
    plain = PseudocoresetSynthesizer(augment=None, **params).fit(X, y)
    assert not np.allclose(pc.coreset_X_, plain.coreset_X_)
    dsa = PseudocoresetSynthesizer(augment="dsa", **params).fit(X, y)
    assert np.isfinite(dsa.coreset_X_).all()
    with pytest.raises(ValueError, match="needs image inputs"):
        PseudocoresetSynthesizer(augment="dsa", **{**params, "input_shape": None, "net": None}).fit(X, y)


def _recording(log):
    def augment(X, generator):
        log.append(tuple(X.shape))
        return X + 0.01 * torch.randn(X.shape, generator=generator, device=generator.device)

    return augment


def test_trainer_augments_every_training_batch_but_not_validation():
    from skpcoreset._base import make_generator
    from skpcoreset._train import Trainer, TrainSpec

    X, y = torch.rand(40, 5), torch.arange(40) % 2
    log = []
    trainer = Trainer(
        torch.nn.Linear(5, 2),
        TrainSpec(max_epochs=2, batch_size=16),
        generator=make_generator(0),
        augment=_recording(log),
    ).fit(X, y, validation=(X, y))
    assert log == [(16, 5), (16, 5), (8, 5)] * 2  # training batches only, every epoch
    assert len(trainer.history) == 2


def test_vmap_ensemble_trainer_augments_each_members_batch():
    from skpcoreset._train import TrainSpec, train_members

    X, y = torch.rand(32, 5), torch.arange(32) % 2
    modules = [torch.nn.Sequential(torch.nn.Linear(5, 2)) for _ in range(3)]
    log = []
    strategy, *_ = train_members(
        modules,
        (X, y),
        TrainSpec(max_epochs=1, batch_size=16),
        seeds=[0, 1, 2],
        strategy="vmap",
        augment=_recording(log),
    )
    assert strategy == "vmap" and log == [(3 * 16, 5)] * 2


def test_deep_ensemble_trains_on_shifted_images():
    from sklearn.datasets import load_digits

    from skpcoreset import DeepEnsembleClassifier, make_net
    from skpcoreset.nets import ConvNet

    X, y = load_digits(return_X_y=True)
    X = (X[:400] / 16).astype(np.float32)
    params = dict(
        net=make_net(ConvNet, max_epochs=4, lr=1e-2, batch_size=64, module__width=8, module__depth=2),
        n_members=2,
        input_shape=(1, 8, 8),
        random_state=0,
    )
    plain = DeepEnsembleClassifier(**params).fit(X, y[:400])
    shifted = DeepEnsembleClassifier(augment="shift", **params).fit(X, y[:400])
    assert shifted.score(X, y[:400]) > 0.6
    assert not np.allclose(plain.predict_proba(X), shifted.predict_proba(X))
    with pytest.raises(ValueError, match="needs image inputs"):
        DeepEnsembleClassifier(augment="shift", **{**params, "input_shape": None, "net": None}).fit(X, y[:400])
