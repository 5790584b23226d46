"""Pseudocoreset applications: replay memories for continual learning, coresets of frozen features."""

import numpy as np
import pytest
import torch

from skpcoreset import make_net
from skpcoreset._base import make_generator
from skpcoreset._skorch import build_member_nets
from skpcoreset._train import Trainer, TrainSpec
from skpcoreset.pseudocoreset import PosteriorSampler, PseudocoresetSynthesizer, continual_replay, frozen_features

# fit_resample only needs the coreset: one posterior sample of one step keeps fits short.
SMALL = dict(n_experts=1, expert_epochs=8, n_iterations=60, posterior=PosteriorSampler(n_samples=1, steps=1))


@pytest.fixture(scope="module")
def split(digits):
    X, y = digits
    order = np.random.RandomState(0).permutation(len(X))
    train, test = order[:1200], order[1200:]
    return X[train], y[train], X[test], y[test]


def _tasks(X, y):
    return [(X[np.isin(y, [2 * t, 2 * t + 1])], y[np.isin(y, [2 * t, 2 * t + 1])]) for t in range(5)]


def test_continual_learning_replay_of_pseudocoresets(split):
    X_train, y_train, X_test, y_test = split
    tasks, tests = _tasks(X_train, y_train), _tasks(X_test, y_test)
    net = make_net(max_epochs=10, lr=1e-3, batch_size=32, module__hidden_sizes=(64,))

    def memory(divergence):
        return lambda X, y, t: PseudocoresetSynthesizer(
            divergence=divergence, n_per_class=5, random_state=t, **SMALL
        ).fit_resample(X, y)

    final = {}
    for name, make_memory in {
        "none": lambda X, y, t: (X[:0], y[:0]),
        "random": memory("random"),
        "forward_kl": memory("forward_kl"),
    }.items():
        accuracy = continual_replay(tasks, tests, make_memory, net=net, random_state=0)
        assert accuracy.shape == (5, 5)
        assert np.isnan(accuracy[np.triu_indices(5, 1)]).all()
        assert not np.isnan(accuracy[np.tril_indices(5)]).any()
        final[name] = accuracy[-1].mean()
    # 10 replayed rows per task (out of ~240) undo most of the forgetting of earlier tasks.
    assert final["forward_kl"] > final["none"] + 0.05, final
    assert final["random"] > final["none"] + 0.05, final
    assert final["forward_kl"] > 0.9, final


def test_class_incremental_scenario_predicts_among_all_seen_classes(split):
    """Without a memory, class-incremental accuracy on old tasks collapses (old classes are
    predicted as the newest ones) while task-incremental accuracy does not."""
    X_train, y_train, X_test, y_test = split
    tasks, tests = _tasks(X_train, y_train)[:3], _tasks(X_test, y_test)[:3]
    net = make_net(max_epochs=5, lr=1e-3, batch_size=32, module__hidden_sizes=(32,))
    no_memory = lambda X, y, t: (X[:0], y[:0])  # noqa: E731
    task = continual_replay(tasks, tests, no_memory, net=net, random_state=0, scenario="task")
    cls = continual_replay(tasks, tests, no_memory, net=net, random_state=0, scenario="class")
    np.testing.assert_allclose(task[0, 0], cls[0, 0])  # one task seen: the same two classes
    assert cls[-1, :-1].mean() < 0.5 < task[-1, :-1].mean()
    with pytest.raises(ValueError, match="scenario must be"):
        continual_replay(tasks, tests, no_memory, net=net, scenario="domain")


def test_pseudocoreset_of_frozen_features_beats_random_features(split):
    X_train, y_train, X_test, y_test = split
    source = y_train < 5
    module = build_member_nets(
        make_net(module__hidden_sizes=(64,)),
        input_shape=(64,),
        n_classes=5,
        seeds=[0],
        device=torch.device("cpu"),
    )[0].module_
    Trainer(module, TrainSpec(max_epochs=30, batch_size=64, lr=1e-3), generator=make_generator(0)).fit(
        torch.from_numpy(X_train[source]), torch.from_numpy(y_train[source])
    )
    F_train, F_test = frozen_features(module, X_train[~source]), frozen_features(module, X_test[y_test >= 5])
    assert F_train.shape == (int((~source).sum()), 64) and F_train.dtype == np.float32
    torch.testing.assert_close(
        torch.from_numpy(F_test[:3]), module.features(torch.from_numpy(X_test[y_test >= 5][:3])).detach()
    )
    params = dict(n_per_class=1, n_experts=2, expert_epochs=10, n_iterations=100, posterior=PosteriorSampler(steps=200))
    scores = {
        divergence: np.mean(
            [
                PseudocoresetSynthesizer(divergence=divergence, random_state=s, **params)
                .fit(F_train, y_train[~source])
                .score(F_test, y_test[y_test >= 5])
                for s in (0, 1)
            ]
        )
        for divergence in ("random", "forward_kl")
    }
    assert scores["forward_kl"] > scores["random"] + 0.05, scores


def test_cumulative_memory_is_rebuilt_over_every_class_seen(split):
    """make_memory sees the task plus the previous memory; its result replaces the memory."""
    X_train, y_train, X_test, y_test = split
    tasks, tests = _tasks(X_train, y_train)[:3], _tasks(X_test, y_test)[:3]
    net = make_net(max_epochs=2, lr=1e-3, batch_size=32, module__hidden_sizes=(16,))
    seen_classes, memory_sizes = [], []

    def make_memory(X, y, t):
        seen_classes.append(sorted(np.unique(y).tolist()))
        rows = np.concatenate([np.flatnonzero(y == c)[:2] for c in np.unique(y)])
        memory_sizes.append(len(rows))
        return X[rows], y[rows]

    both = continual_replay(
        tasks, tests, make_memory, net=net, random_state=0, memory="cumulative", scenario=("task", "class")
    )
    assert seen_classes == [[0, 1], [0, 1, 2, 3], [0, 1, 2, 3, 4, 5]]
    assert memory_sizes == [4, 8, 12]  # the same size as per-task memories of 2 rows per class
    assert set(both) == {"task", "class"}
    single = continual_replay(tasks, tests, make_memory, net=net, random_state=0, memory="cumulative", scenario="class")
    np.testing.assert_array_equal(single, both["class"])
    with pytest.raises(ValueError, match="memory must be"):
        continual_replay(tasks, tests, make_memory, net=net, memory="reservoir")


def test_conditioned_memory_adds_the_new_classes_and_keeps_the_old_rows(split):
    X_train, y_train, X_test, y_test = split
    tasks, tests = _tasks(X_train, y_train)[:3], _tasks(X_test, y_test)[:3]
    net = make_net(max_epochs=2, lr=1e-3, batch_size=32, module__hidden_sizes=(16,))
    calls = []

    def make_memory(X, y, t):  # 2 rows per class, old classes' rows perturbed (to be discarded)
        calls.append((X.copy(), y.copy()))
        rows = np.concatenate([np.flatnonzero(y == c)[:2] for c in np.unique(y)])
        old = ~np.isin(y[rows], tasks[t][1])
        return X[rows] + old[:, None] * 100.0, y[rows]

    continual_replay(tasks, tests, make_memory, net=net, random_state=0, memory="conditioned")
    assert [sorted(np.unique(y).tolist()) for _, y in calls] == [[0, 1], [0, 1, 2, 3], [0, 1, 2, 3, 4, 5]]
    # task 2 saw the memory of tasks 0 and 1 unchanged: real rows, never the +100 perturbation
    X_seen, y_seen = calls[2]
    assert X_seen[np.isin(y_seen, [0, 1, 2, 3])].max() <= X_train.max()


@pytest.mark.parametrize("memory", ["per_task", "cumulative", "conditioned"])
def test_variational_replay_beats_random_replay_in_both_scenarios(memory, split):
    """Split digits, 1 row per class: benchmarks/continual.py measures the same over 3 seeds."""
    X_train, y_train, X_test, y_test = split
    tasks, tests = _tasks(X_train, y_train), _tasks(X_test, y_test)
    net = make_net(max_epochs=10, lr=1e-3, batch_size=32, module__hidden_sizes=(64,))
    finals = {}
    for divergence in ("random", "variational"):

        def make_memory(X, y, t, divergence=divergence):
            return PseudocoresetSynthesizer(
                divergence,
                n_per_class=1,
                n_iterations=100,
                random_state=t,
                posterior=PosteriorSampler(n_samples=1, steps=1),
            ).fit_resample(X, y)

        accuracy = continual_replay(
            tasks, tests, make_memory, net=net, random_state=0, memory=memory, scenario=("task", "class")
        )
        finals[divergence] = {s: float(a[-1].mean()) for s, a in accuracy.items()}
    for scenario in ("task", "class"):
        assert finals["variational"][scenario] > finals["random"][scenario], finals


def test_a_memory_of_class_probabilities_trains_on_soft_targets(split, monkeypatch):
    X_train, y_train, X_test, y_test = split
    tasks, tests = _tasks(X_train, y_train)[:2], _tasks(X_test, y_test)[:2]
    net = make_net(max_epochs=1, lr=1e-3, batch_size=32, module__hidden_sizes=(16,))
    trained_on, received = [], []
    fit = Trainer.fit

    def recording_fit(self, X, y, **kwargs):
        trained_on.append(y.clone())
        return fit(self, X, y, **kwargs)

    monkeypatch.setattr(Trainer, "fit", recording_fit)

    def make_memory(X, y, t):  # 1 row per class, 0.8 on its class and 0.2 on the task's other class
        received.append(y.copy())
        classes = np.unique(y[: len(tasks[t][1])])
        rows = np.array([np.flatnonzero(y == c)[0] for c in classes])
        proba = np.zeros((len(rows), 4))  # the two tasks' four classes
        proba[np.arange(len(rows)), classes] = 0.8
        proba[np.arange(len(rows)), classes[::-1]] = 0.2
        return X[rows], proba

    continual_replay(tasks, tests, make_memory, net=net, random_state=0, memory="conditioned")
    assert trained_on[0].dtype == torch.long  # no soft memory yet: class indices as before
    second = trained_on[1]
    assert second.ndim == 2 and second.shape[1] == 4
    replayed = second[len(tasks[1][1]) :]
    np.testing.assert_allclose(np.sort(replayed.numpy(), 1)[:, -2:], np.tile([0.2, 0.8], (len(replayed), 1)), rtol=1e-6)
    np.testing.assert_array_equal(second[: len(tasks[1][1])].argmax(1).numpy(), tasks[1][1])  # task rows one-hot
    assert received[1].ndim == 1 and set(np.unique(received[1])) == {0, 1, 2, 3}  # make_memory gets indices
    with pytest.raises(ValueError, match="probabilities of shape"):
        continual_replay(tasks, tests, lambda X, y, t: (X[:2], np.ones((2, 3))), net=net, random_state=0)
