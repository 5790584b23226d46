import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skpcoreset._base import make_generator
from skpcoreset._train import (
    Trainer,
    TrainSpec,
    VmapEnsembleTrainer,
    choose_ensemble_strategy,
    predict_batched,
    train_members,
)
from skpcoreset.nets import MLP, ConvNet


@pytest.fixture
def data(digits):
    X, y = digits
    return torch.from_numpy(X), torch.from_numpy(y)


def _mlp(seed):
    torch.manual_seed(seed)
    return MLP((64,), 10, hidden_sizes=(16,))


def test_trainer_learns_digits(data):
    X, y = data
    module = _mlp(0)
    trainer = Trainer(module, TrainSpec(max_epochs=15, lr=1e-2), generator=make_generator(0)).fit(X, y)
    accuracy = (predict_batched(module, X).argmax(1) == y).float().mean()
    assert accuracy > 0.9
    assert len(trainer.history) == 15
    assert trainer.history[-1]["train_loss"] < trainer.history[0]["train_loss"]


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_schedules_decay_the_learning_rate(data, schedule):
    X, y = data
    trainer = Trainer(_mlp(0), TrainSpec(max_epochs=4, lr=0.1, schedule=schedule), generator=make_generator(0))
    trainer.fit(X, y)
    assert trainer.optimizer.param_groups[0]["lr"] < 0.1 * 0.2


def test_early_stopping_restores_best_weights(data):
    from skorch.callbacks import EarlyStopping

    X, y = data
    stopper = EarlyStopping(patience=2, load_best=True, sink=lambda *_: None).initialize()
    trainer = Trainer(
        _mlp(0),
        TrainSpec(max_epochs=50, lr=0.5, optimizer=torch.optim.SGD),
        generator=make_generator(0),
        callbacks=[("early_stopping", stopper)],
    )
    trainer.fit(X[:1000], y[:1000], validation=(X[1000:], y[1000:]))
    assert trainer.stopped_by_callback and len(trainer.history) < 50
    best = min(record["valid_loss"] for record in trainer.history)
    final = trainer.validation_loss((X[1000:], y[1000:]))
    assert final == pytest.approx(best, rel=1e-5)


def test_interrupt_keeps_weights(data):
    X, y = data

    class Interrupting(Trainer):
        def epoch(self, tensors):
            if len(self.history) == 2:
                raise KeyboardInterrupt
            return super().epoch(tensors)

    module = _mlp(0)
    before = copy.deepcopy(module.state_dict())
    with pytest.warns(UserWarning, match="interrupted"):
        trainer = Interrupting(module, TrainSpec(max_epochs=10), generator=make_generator(0)).fit(X, y)
    assert trainer.interrupted and len(trainer.history) == 2
    assert not torch.equal(before["stages.0.1.weight"], module.state_dict()["stages.0.1.weight"])


def test_vmap_trainer_matches_sequential_training_exactly(data):
    """With the same per-member batch order, vmap and sequential updates coincide."""
    X, y = data
    X, y = X[:256], y[:256]
    spec = TrainSpec(max_epochs=3, batch_size=64, lr=1e-2)
    vmap_members = [_mlp(1), _mlp(2)]
    seq_members = copy.deepcopy(vmap_members)
    vmap_trainer = VmapEnsembleTrainer(vmap_members, spec, generator=make_generator(0))

    orders = []
    original = vmap_trainer.batch_indices

    def recording(n):
        for idx in original(n):
            orders.append(idx)
            yield idx

    vmap_trainer.batch_indices = recording
    vmap_trainer.fit(X, y)

    for m, module in enumerate(seq_members):
        opt = torch.optim.Adam(module.parameters(), lr=1e-2)
        module.train()
        for idx in orders:
            opt.zero_grad()
            F.cross_entropy(module(X[idx[m]]), y[idx[m]]).backward()
            opt.step()
        for p_vmap, p_seq in zip(vmap_members[m].parameters(), module.parameters(), strict=True):
            torch.testing.assert_close(p_vmap, p_seq, rtol=1e-4, atol=1e-5)


def test_strategy_choice():
    mlps = [_mlp(0), _mlp(1)]
    convs = [ConvNet((1, 8, 8), 10, width=4, depth=2) for _ in range(2)]
    assert choose_ensemble_strategy(mlps) == "vmap"
    assert choose_ensemble_strategy(convs) == "sequential"
    assert choose_ensemble_strategy(mlps[:1]) == "sequential"
    assert choose_ensemble_strategy(convs, "vmap") == "vmap"
    with pytest.raises(ValueError, match="ensemble_strategy"):
        choose_ensemble_strategy(mlps, "parallel")


def test_train_members_members_differ_and_learn(data):
    X, y = data
    members = [_mlp(0), _mlp(1), _mlp(2)]
    strategy, histories, interrupted, _ = train_members(
        members, (X, y), TrainSpec(max_epochs=5, lr=1e-2), seeds=[0, 1, 2]
    )
    assert strategy == "vmap" and not interrupted and len(histories) == 3
    outputs = [predict_batched(m, X) for m in members]
    assert not torch.allclose(outputs[0], outputs[1])
    assert all((o.argmax(1) == y).float().mean() > 0.85 for o in outputs)


def test_predict_batched_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        predict_batched(lambda x: x, torch.zeros(0, 3))


def test_train_spec_validation():
    with pytest.raises(ValueError, match="schedule"):
        TrainSpec(schedule="linear")
    assert np.isclose(TrainSpec().lr, 1e-3)
