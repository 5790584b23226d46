"""Scale-out through existing engines: joblib threads, joblib's Dask backend."""

import os

import numpy as np
import pytest
import torch
from joblib import parallel_config
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skpcoreset import DeepEnsembleClassifier, make_net
from skpcoreset.nets import ConvNet


def _grid():
    pipe = make_pipeline(
        StandardScaler(),
        DeepEnsembleClassifier(make_net(max_epochs=3, module__hidden_sizes=(8,)), n_members=2, random_state=0),
    )
    return GridSearchCV(pipe, {"deepensembleclassifier__net__lr": [1e-4, 1e-2]}, cv=2, n_jobs=2)


def test_grid_search_on_a_dask_cluster_matches_local(digits):
    distributed = pytest.importorskip("distributed")
    X, y = digits
    X, y = X[:400], y[:400]
    local = _grid().fit(X, y)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        with distributed.Client(cluster):
            with parallel_config(backend="dask"):
                remote = _grid().fit(X, y)
    assert remote.best_params_ == local.best_params_
    np.testing.assert_allclose(remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"])


def test_threaded_members_equal_one_after_another(digits):
    X, y = digits
    net = make_net(ConvNet, max_epochs=1, module__width=4, module__depth=2)
    kwargs = dict(n_members=2, input_shape=(1, 8, 8), random_state=0)
    serial = DeepEnsembleClassifier(net, **kwargs).fit(X[:300], y[:300])
    threaded = DeepEnsembleClassifier(net, n_jobs=2, **kwargs).fit(X[:300], y[:300])
    assert serial.ensemble_strategy_ == threaded.ensemble_strategy_ == "sequential"
    np.testing.assert_allclose(
        threaded.predict_proba(X[300:400]), serial.predict_proba(X[300:400]), rtol=1e-5, atol=1e-6
    )


def test_accelerated_net_constructs_and_trains_on_cpu(digits):
    accelerate = pytest.importorskip("accelerate")
    from skpcoreset import make_accelerated_net
    from skpcoreset.nets import MLP

    X, y = digits
    net = make_accelerated_net(
        MLP,
        accelerator=accelerate.Accelerator(cpu=True),
        module__input_shape=(64,),
        module__n_classes=10,
        max_epochs=5,
        lr=1e-2,
        optimizer=torch.optim.Adam,
        train_split=None,
        verbose=0,
    )
    net.fit(X, y)
    assert type(net).__mro__[1].__name__ == "AccelerateMixin"
    assert net.score(X, y) > 0.5


def test_bridge_modes_can_train_in_threads(digits):
    from skpcoreset.ensemble import BridgeEnsembleClassifier
    from tests.params.bridge import TINY_PARAMS

    X, y = digits
    params = {**TINY_PARAMS["BridgeEnsembleClassifier"], "ensemble_strategy": "sequential", "random_state": 0}
    serial = BridgeEnsembleClassifier(**params).fit(X[:300], y[:300])
    threaded = BridgeEnsembleClassifier(**params, n_jobs=2).fit(X[:300], y[:300])
    np.testing.assert_allclose(
        threaded.predict_proba(X[300:400]), serial.predict_proba(X[300:400]), rtol=1e-5, atol=1e-6
    )


# -- members on worker processes ---------------------------------------------------------------
@pytest.fixture(scope="module")
def process_cluster():
    """Two single-threaded Dask worker processes: members travel there pickled and come back."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=120)
        yield client


def _on_dask(fit):
    with parallel_config(backend="dask"):
        return fit()


def _conv_net(epochs=2):
    return make_net(ConvNet, max_epochs=epochs, lr=1e-2, batch_size=32, module__width=4, module__depth=2)


def test_members_on_dask_worker_processes_equal_the_local_fit(digits, process_cluster):
    X, y = digits
    params = dict(n_members=3, ensemble_strategy="sequential", input_shape=(1, 8, 8), random_state=0)
    local = DeepEnsembleClassifier(_conv_net(), **params).fit(X[:300], y[:300])
    remote = _on_dask(lambda: DeepEnsembleClassifier(_conv_net(), n_jobs=2, **params).fit(X[:300], y[:300]))
    workers = process_cluster.run(os.getpid)
    assert workers and os.getpid() not in workers.values()  # the members trained in other processes
    for a, b in zip(local.member_modules(), remote.member_modules(), strict=True):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)

    def losses(model):  # the histories without their wall-clock durations
        return [[row["train_loss"] for row in history] for history in model.history_["members"]]

    assert losses(remote) == losses(local)
    # the members' own skorch histories come back from the workers too
    assert [net.history[-1]["train_loss"] for net in remote.members_] == [h[-1] for h in losses(local)]
    np.testing.assert_array_equal(remote.predict_proba(X[300:400]), local.predict_proba(X[300:400]))


def test_gex_fan_members_on_dask_worker_processes_equal_the_local_fit(digits, process_cluster):
    from skpcoreset.posthoc.influence import GeometricEnsembleInfluence

    X, y = digits
    params = dict(continuation="fan", n_members=3, member_epochs=1, jitter=0.2, input_shape=(1, 8, 8), random_state=0)
    local = GeometricEnsembleInfluence(_conv_net(), **params).fit(X[:300], y[:300])
    remote = _on_dask(lambda: GeometricEnsembleInfluence(_conv_net(), n_jobs=2, **params).fit(X[:300], y[:300]))
    assert local.training_strategy_ == remote.training_strategy_ == "sequential"
    np.testing.assert_array_equal(remote.member_losses_, local.member_losses_)
    np.testing.assert_array_equal(remote.self_influence_, local.self_influence_)


def test_pseudocoreset_experts_on_dask_worker_processes_equal_the_local_run(digits, process_cluster):
    from skpcoreset._base import torch_seed
    from skpcoreset._skorch import train_spec_from_net
    from skpcoreset.pseudocoreset._trajectories import train_expert_trajectories

    X, y = digits
    X_t, y_t = torch.as_tensor(X[:300]).view(-1, 1, 8, 8), torch.as_tensor(y[:300])

    def experts():
        with torch_seed(0):
            return [ConvNet((1, 8, 8), 10, width=4, depth=2) for _ in range(2)]

    spec = train_spec_from_net(_conv_net(epochs=3))
    local, strategy, _, interrupted = train_expert_trajectories(experts(), X_t, y_t, spec, seeds=[3, 4])
    remote, *_ = _on_dask(lambda: train_expert_trajectories(experts(), X_t, y_t, spec, seeds=[3, 4], n_jobs=2))
    assert strategy == "sequential" and not interrupted and local.shape[:2] == (2, 4)
    torch.testing.assert_close(remote, local, rtol=0, atol=0)
