import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier
from skorch.dataset import ValidSplit

from skpcoreset import DeviceBatchIterator, fast_iterator_params, make_net
from skpcoreset._skorch import build_member_nets, train_spec_from_net
from skpcoreset.nets import MLP


def _net(**kwargs):
    return NeuralNetClassifier(
        MLP,
        module__input_shape=(64,),
        module__n_classes=10,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=1e-2,
        max_epochs=5,
        verbose=0,
        **kwargs,
    )


def test_fast_iterator_trains_a_plain_skorch_net_with_validation_split(digits):
    X, y = digits
    torch.manual_seed(0)
    net = _net(train_split=ValidSplit(5), **fast_iterator_params("cpu")).fit(X, y)
    assert net.history[-1, "valid_acc"] > 0.85
    assert net.score(X, y) > 0.9


def test_iterator_serves_every_sample_once_per_epoch():
    from skorch.dataset import Dataset

    X = np.arange(10, dtype=np.float32)[:, None]
    y = np.arange(10)
    it = DeviceBatchIterator(Dataset(X, y), batch_size=4, shuffle=True)
    seen = torch.cat([yb for _, yb in it])
    assert sorted(seen.tolist()) == list(range(10)) and len(it) == 3
    assert [len(xb) for xb, _ in DeviceBatchIterator(Dataset(X, y), batch_size=4, drop_last=True)] == [4, 4]


def test_template_settings_reach_the_trainer():
    net = make_net(max_epochs=7, batch_size=32, lr=0.05, optimizer=torch.optim.SGD, optimizer__momentum=0.9)
    spec = train_spec_from_net(net)
    assert (spec.max_epochs, spec.batch_size, spec.lr, spec.optimizer) == (7, 32, 0.05, torch.optim.SGD)
    assert spec.optimizer_kwargs == {"momentum": 0.9}


def test_members_are_seeded_independently_and_reproducibly():
    members = build_member_nets(None, input_shape=(64,), n_classes=10, seeds=[1, 2, 1], device=torch.device("cpu"))
    w = [m.module_.stages[0][1].weight for m in members]
    assert torch.equal(w[0], w[2]) and not torch.equal(w[0], w[1])
    assert members[0].module_.stages[-1][0].out_features == 10


def test_a_templates_lr_scheduler_runs_with_its_own_arguments(digits):
    """Any skorch LRScheduler policy runs as the callback it is (no mapping onto fixed schedules)."""
    from skorch.callbacks import LRScheduler

    from skpcoreset import DeepEnsembleClassifier

    X, y = digits
    assert train_spec_from_net(make_net()).schedule == "constant"
    cosine = make_net(max_epochs=5, lr=0.1, callbacks=[LRScheduler(policy="CosineAnnealingLR", T_max=10)])
    clf = DeepEnsembleClassifier(cosine, n_members=1, random_state=0).fit(X[:300], y[:300])
    lr = clf.members_[0].optimizer_.param_groups[0]["lr"]
    assert lr == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 5 / 10)))  # torch's CosineAnnealingLR after 5 steps
    assert [row["event_lr"] for row in clf.history_["members"][0]][0] == pytest.approx(0.1)
    plateau = make_net(max_epochs=3, callbacks=[LRScheduler(policy="ReduceLROnPlateau", patience=0, factor=0.5)])
    clf = DeepEnsembleClassifier(plateau, n_members=1, random_state=0).fit(X[:300], y[:300])
    assert len(clf.history_["members"][0]) == 3


def test_fitted_module_tells_fitted_nets_from_templates(digits):
    from sklearn.base import clone
    from sklearn.frozen import FrozenEstimator

    from skpcoreset import DeepEnsembleClassifier
    from skpcoreset._skorch import fitted_module

    X, y = digits
    module = MLP((64,), 10)
    assert fitted_module(module) is module
    assert fitted_module(make_net()) is None and fitted_module(None) is None
    net = _net().fit(X[:100], y[:100])
    assert fitted_module(net) is net.module_
    assert fitted_module(clone(net)) is None  # clone forgets the weights ...
    assert fitted_module(clone(FrozenEstimator(net))) is net.module_  # ... unless frozen
    ensemble = DeepEnsembleClassifier(make_net(max_epochs=1), n_members=2, random_state=0).fit(X[:100], y[:100])
    assert fitted_module(ensemble) is ensemble.members_[0].module_
