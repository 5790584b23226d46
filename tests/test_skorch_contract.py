"""The skorch contract: a user's net and its settings are honoured, or refused by name."""

import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback, Checkpoint, EarlyStopping, GradientNormClipping
from skorch.dataset import ValidSplit
from torch import nn

from skpcoreset import DeepEnsembleClassifier, make_net


class SoftmaxNet(nn.Module):
    """A module as skorch's docs write them: it ends in a softmax and trains with NLLLoss."""

    def __init__(self, n_features=64, n_classes=10, width=32):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(n_features, width), nn.ReLU(), nn.Linear(width, n_classes))

    def forward(self, X):
        return self.layers(X).softmax(dim=-1)


class LogitNet(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))

    def forward(self, X):
        return self.layers(X)


class Counting(Callback):
    def initialize(self):
        self.calls = {"on_train_begin": 0, "on_epoch_end": 0, "on_batch_end": 0, "on_train_end": 0}
        self.train_sizes = []
        return self

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.calls["on_train_begin"] += 1
        self.train_sizes.append(len(X))

    def on_epoch_end(self, net, **kwargs):
        self.calls["on_epoch_end"] += 1

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        self.calls["on_batch_end"] += 1

    def on_train_end(self, net, **kwargs):
        self.calls["on_train_end"] += 1


@pytest.fixture
def data(digits):
    X, y = digits
    return X[:600], y[:600]


def test_template_early_stopping_stops_members_early(data):
    X, y = data
    net = make_net(
        LogitNet,
        max_epochs=200,
        lr=0.5,
        optimizer=torch.optim.SGD,
        train_split=ValidSplit(5),
        callbacks=[EarlyStopping(patience=1)],
    )
    clf = DeepEnsembleClassifier(net, n_members=2, random_state=0).fit(X, y)
    for history in clf.history_["members"]:
        assert len(history) < 200  # stopped by its own EarlyStopping
        assert "valid_loss" in history[-1] and "valid_acc" in history[-1]
    assert clf.ensemble_strategy_ == "sequential" and clf.interrupted_ is None


def test_custom_callback_is_called_and_valid_split_is_used(data):
    X, y = data
    net = make_net(LogitNet, max_epochs=3, batch_size=100, train_split=ValidSplit(5), callbacks=[("count", Counting())])
    clf = DeepEnsembleClassifier(net, n_members=2, random_state=0).fit(X, y)
    for member in clf.members_:
        counter = dict(member.callbacks_)["count"]
        assert counter.calls == {"on_train_begin": 1, "on_epoch_end": 3, "on_batch_end": 3 * 5, "on_train_end": 1}
        assert counter.train_sizes == [480]  # ValidSplit(5) held out a fifth
        assert member.history[-1, "epoch"] == 3 and "valid_loss" in member.history[-1]


def test_gradient_clipping_and_checkpoint_callbacks_run(data, tmp_path):
    X, y = data
    net = make_net(
        LogitNet,
        max_epochs=2,
        lr=0.1,
        optimizer=torch.optim.SGD,
        train_split=ValidSplit(5),
        callbacks=[GradientNormClipping(gradient_clip_value=1e-8), Checkpoint(dirname=str(tmp_path), load_best=True)],
    )
    clipped = DeepEnsembleClassifier(net, n_members=1, random_state=0).fit(X, y)
    free = DeepEnsembleClassifier(net.set_params(callbacks=[]), n_members=1, random_state=0).fit(X, y)
    assert (tmp_path / "params.pt").exists()
    # clipping to ~0 leaves the weights almost where they started; unclipped training moves them
    start = DeepEnsembleClassifier(net.set_params(max_epochs=0), n_members=1, random_state=0).fit(X, y)
    w0 = start.members_[0].module_.layers[0].weight
    assert (clipped.members_[0].module_.layers[0].weight - w0).abs().max() < 1e-5
    assert (free.members_[0].module_.layers[0].weight - w0).abs().max() > 1e-3


def test_softmax_module_with_skorch_default_nll_loss_trains(data):
    X, y = data
    net = NeuralNetClassifier(
        SoftmaxNet, max_epochs=20, lr=0.01, optimizer=torch.optim.Adam, train_split=None, verbose=0
    )
    clf = DeepEnsembleClassifier(net, n_members=2, random_state=0).fit(X, y)
    assert clf.score(X, y) > 0.9
    probabilities = clf.members_[0].module_(torch.as_tensor(X[:5]))
    np.testing.assert_allclose(clf.member_proba(X[:5])[0], probabilities.detach().numpy(), rtol=1e-4, atol=1e-6)


def test_bare_module_class_tunes_module_parameters_in_a_grid(data):
    X, y = data
    grid = GridSearchCV(
        DeepEnsembleClassifier(LogitNet, n_members=1, random_state=0),
        {"net__module__width": [4, 32], "net__max_epochs": [5]},
        cv=2,
    ).fit(X, y)
    assert grid.best_params_["net__module__width"] in (4, 32)
    assert grid.best_estimator_.members_[0].module_.layers[0].out_features == grid.best_params_["net__module__width"]


def test_default_template_fits_on_its_own(data):
    X, y = data
    net = make_net(max_epochs=5, lr=1e-2, verbose=0).fit(X, y)
    assert net.score(X, y) > 0.85


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"iterator_train__collate_fn": lambda batch: batch}, "iterator_train__collate_fn"),
        ({"warm_start": True}, "warm_start"),
        ({"criterion": nn.MSELoss}, "MSELoss"),
        ({"device": "cuda"}, "device='cuda'"),
        ({"optimizer__param_groups": [("layers.0.*", {"lr": 1.0})]}, "param_groups"),
    ],
)
def test_settings_that_cannot_be_honoured_are_refused_by_name(data, settings, named):
    X, y = data
    with pytest.raises(ValueError, match=named):
        DeepEnsembleClassifier(make_net(LogitNet, max_epochs=1, **settings), n_members=1).fit(X, y)


def test_dataloader_tuning_arguments_are_accepted(data):
    X, y = data
    net = make_net(LogitNet, max_epochs=1, iterator_train__num_workers=2, iterator_train__shuffle=False)
    DeepEnsembleClassifier(net, n_members=1, random_state=0).fit(X, y)


def test_member_preset_schedule_holds_in_every_loop_built_from_its_spec():
    # GEX's theta* and the Laplace MAP net train in loops that get the spec but not the net:
    # the preset's warm-up + cosine used to live only in the net's callbacks, so they ran at a
    # constant lr 0.05 (theta* fitted 11% of CIFAR-10's labels; 84% with the schedule).
    from skpcoreset._presets import default_net
    from skpcoreset._skorch import train_spec_from_net
    from skpcoreset._train import Trainer, make_generator, native_schedule, user_callbacks

    template = default_net("member")
    spec = train_spec_from_net(template, n_samples=256)
    assert spec.schedule == "warmup_cosine" and spec.warmup == pytest.approx(0.05)
    net = template.set_params(module=LogitNet).initialize()
    assert not [name for name, cb in user_callbacks(net) if native_schedule(cb) is not None]  # runs once

    module = nn.Linear(64, 10)
    X, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
    spec = train_spec_from_net(template.set_params(max_epochs=3), n_samples=256)
    trainer = Trainer(module, spec, generator=make_generator(0, torch.device("cpu"))).fit(X, y)
    assert trainer.optimizer.param_groups[0]["lr"] < 0.01 * spec.lr  # annealed to ~0 by the end
