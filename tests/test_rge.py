"""SGC, edge influence and RGE: maths against float64 references, retraining, the group rule."""

import copy
import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import sklearn
import torch
import torch.nn.functional as F
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from torch.func import functional_call

from skpcoreset._linalg import conjugate_gradient
from skpcoreset.graph import GCNClassifier, SGCClassifier
from skpcoreset.graph._operations import as_adjacency, normalized_operator, propagate, remove_edges
from skpcoreset.graph._softmax_regression import fit_softmax_regression
from skpcoreset.posthoc.graph import RepulsiveEdgeEliminator
from skpcoreset.posthoc.graph._edge_influence import (
    SoftmaxRegression,
    candidate_edges,
    edge_influence,
    inverse_hvp,
    loss_gradient,
    softmax_regression_hessian,
    softmax_regression_hvp,
)
from skpcoreset.posthoc.graph._gcn_influence import gcn_edge_influence, influence_direction
from skpcoreset.posthoc.graph._rge import (
    default_patience,
    neighbourhood_sets,
    select_repulsive_group,
)

WEIGHT_DECAY = 1e-2


def make_sbm(n=150, n_classes=3, n_features=8, p_in=0.08, p_out=0.03, seed=0):
    """A stochastic block model with class-shifted Gaussian features."""
    rng = np.random.RandomState(seed)
    y = rng.randint(n_classes, size=n)
    X = rng.normal(size=(n, n_features)) + 0.7 * np.eye(n_classes, n_features)[y]
    upper = np.triu(rng.rand(n, n) < np.where(y[:, None] == y[None, :], p_in, p_out), 1)
    return X, y, as_adjacency(sp.csr_matrix((upper | upper.T).astype(float)), n)


@pytest.fixture(scope="module")
def sbm():
    X, y, A = make_sbm()
    train, val = np.arange(0, 45), np.arange(45, 90)
    return X, y, A, train, val


def dense_normalized(A):
    M = A.toarray().astype(np.float64) + np.eye(A.shape[0])
    r = 1.0 / np.sqrt(M.sum(axis=1))
    return r[:, None] * M * r[None, :]


def fit_model(X, y, A, train, weight_decay=WEIGHT_DECAY):
    Z = propagate(X, A, 2, rows=train)
    coef, intercept, *_ = fit_softmax_regression(
        Z, y[train], int(y.max()) + 1, weight_decay=weight_decay, solver="lbfgs", max_iter=1000, lr=1.0, generator=None
    )
    return SoftmaxRegression(coef, intercept, weight_decay)


def sgc_edge_influence(X, y, A, train, val):
    """``(candidate edges, their influence, affected sets)`` of an SGC fitted on ``train``."""
    X_t, y_t = torch.as_tensor(X), torch.as_tensor(y)
    model = fit_model(X_t, y_t, A, train)
    edges = candidate_edges(A, train)
    influence, affected = edge_influence(
        X_t,
        A,
        edges,
        train_index=train,
        y_train=y_t[train],
        Z_val=propagate(X_t, A, 2, rows=val),
        y_val=y_t[val],
        model=model,
    )
    return edges, influence, affected


def objective(theta, Z, y, weight_decay):
    logits = torch.cat([Z, torch.ones(len(Z), 1, dtype=Z.dtype)], dim=1) @ theta
    return F.cross_entropy(logits, y) + 0.5 * weight_decay * theta.square().sum()


# -- graph helpers and SGC ---------------------------------------------------------------------
def test_as_adjacency_accepts_sparse_and_edge_index_and_symmetrises():
    edge_index = np.array([[0, 1, 2, 2], [1, 2, 2, 0]])  # directed, with a self loop
    from_index = as_adjacency(edge_index, 4)
    from_sparse = as_adjacency(sp.coo_matrix((np.full(4, 3.0), tuple(edge_index)), shape=(4, 4)), 4)
    expected = np.array([[0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(from_index.toarray(), expected)
    np.testing.assert_array_equal(from_sparse.toarray(), expected)
    np.testing.assert_array_equal(as_adjacency(torch.as_tensor(edge_index), 4).toarray(), expected)


@pytest.mark.parametrize(
    "adjacency, message",
    [
        (sp.eye(3, format="csr"), "shape"),
        (np.array([[0, 1], [1, 9]]), "outside"),
        (np.array([0, 1, 2]), "edge_index"),
        (np.array([[0.5, 1.0], [1.0, 0.0]]), "integer"),
        (sp.csr_matrix(np.array([[0, np.nan], [np.nan, 0], [0, 0], [0, 0]])[:, [0, 1, 0, 1]]), "NaN"),
    ],
)
def test_bad_adjacency_has_clear_error(adjacency, message):
    with pytest.raises(ValueError, match=message):
        as_adjacency(adjacency, 4)


def test_propagate_matches_dense_reference(sbm):
    X, _, A, train, _ = sbm
    S = dense_normalized(A)
    expected = S @ S @ X
    got_all = propagate(torch.as_tensor(X), A, 2)
    got_rows = propagate(torch.as_tensor(X), A, 2, rows=train)
    np.testing.assert_allclose(got_all.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(got_rows.numpy(), expected[train], atol=1e-12)


@pytest.mark.parametrize("n_features", [5, 200])  # the second fits in the row space of Z
def test_softmax_regression_reaches_the_optimum(n_features):
    rng = np.random.RandomState(0)
    y = torch.as_tensor(rng.randint(3, size=40))
    Z = torch.as_tensor(rng.normal(size=(40, n_features))) + F.one_hot(y, n_features).double()
    coef, intercept, *_ = fit_softmax_regression(
        Z, y, 3, weight_decay=1e-2, solver="lbfgs", max_iter=500, lr=1.0, generator=None
    )
    theta = torch.cat([coef, intercept[None]]).requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(theta, Z, y, 1e-2), theta)
    assert grad.abs().max() < 1e-6


def test_sgc_classifier_on_a_graph(sbm):
    X, y, A, train, _ = sbm
    y_partial = np.full(len(y), -1)
    y_partial[train] = y[train]
    clf = SGCClassifier(weight_decay=WEIGHT_DECAY).fit(X, y_partial, adjacency=A)
    plain = SGCClassifier(weight_decay=WEIGHT_DECAY).fit(X, y_partial)
    test = np.arange(90, len(y))
    graph_accuracy = (clf.predict(X, adjacency=A)[test] == y[test]).mean()
    plain_accuracy = (plain.predict(X)[test] == y[test]).mean()
    assert graph_accuracy > plain_accuracy + 0.05  # homophilous edges help
    # an edge_index gives the same model as the sparse matrix; the logits follow the formula
    upper = sp.triu(A).tocoo()
    edge_index = np.stack([upper.row, upper.col])
    clf_index = SGCClassifier(weight_decay=WEIGHT_DECAY).fit(X, y_partial, adjacency=edge_index)
    np.testing.assert_allclose(clf_index.coef_, clf.coef_, atol=1e-6)
    S = dense_normalized(A)
    logits = (S @ S @ X) @ clf.coef_ + clf.intercept_
    np.testing.assert_allclose(clf.predict_proba(X, adjacency=A), torch.as_tensor(logits).softmax(1).numpy(), atol=1e-5)


def test_sgc_score_uses_the_graph_and_skips_unlabeled_nodes(sbm):
    X, y, A, train, _ = sbm
    y_partial = np.where(np.isin(np.arange(len(y)), train), y, -1)
    clf = SGCClassifier(weight_decay=WEIGHT_DECAY).fit(X, y_partial, adjacency=A)
    test = np.arange(90, len(y))
    y_test_only = np.full(len(y), -1)
    y_test_only[test] = y[test]
    expected = (clf.predict(X, adjacency=A)[test] == y[test]).mean()
    assert clf.score(X, y_test_only, adjacency=A) == pytest.approx(expected)
    with pytest.warns(UserWarning, match="no adjacency"):
        clf.predict(X)


def test_sgc_adam_solver_matches_lbfgs(sbm):
    X, y, A, train, _ = sbm
    y_partial = np.where(np.isin(np.arange(len(y)), train), y, -1)
    lbfgs = SGCClassifier(weight_decay=WEIGHT_DECAY).fit(X, y_partial, adjacency=A)
    adam = SGCClassifier(weight_decay=WEIGHT_DECAY, solver="adam", lr=0.05, max_iter=300, random_state=0)
    adam.fit(X, y_partial, adjacency=A)
    agreement = (adam.predict(X, adjacency=A) == lbfgs.predict(X, adjacency=A)).mean()
    assert agreement > 0.95


def test_sgc_rejects_all_unlabeled():
    with pytest.raises(ValueError, match="no labeled node"):
        SGCClassifier().fit(np.ones((4, 2)), np.full(4, -1))


def test_adjacency_is_routed_through_a_pipeline(sbm):
    X, y, A, train, _ = sbm
    y_partial = np.where(np.isin(np.arange(len(y)), train), y, -1)
    with sklearn.config_context(enable_metadata_routing=True):
        sgc = (
            SGCClassifier(weight_decay=WEIGHT_DECAY).set_fit_request(adjacency=True).set_predict_request(adjacency=True)
        )
        pipe = Pipeline([("identity", FunctionTransformer()), ("sgc", sgc)])
        pipe.fit(X, y_partial, adjacency=A)
        routed = pipe.predict(X, adjacency=A)
    direct = clone(sgc).fit(X, y_partial, adjacency=A).predict(X, adjacency=A)
    np.testing.assert_array_equal(routed, direct)


# -- curvature -------------------------------------------------------------------------------
def test_hessian_hvp_and_solvers_match_autograd():
    rng = np.random.RandomState(1)
    Z = torch.as_tensor(rng.normal(size=(30, 4)))
    y = torch.as_tensor(rng.randint(3, size=30))
    model = SoftmaxRegression(torch.as_tensor(rng.normal(size=(4, 3))), torch.as_tensor(rng.normal(size=3)), 0.1)
    theta = model.parameters()
    reference = torch.autograd.functional.hessian(lambda t: objective(t, Z, y, 0.1), theta).reshape(15, 15)
    proba = model.proba(Z)
    np.testing.assert_allclose(softmax_regression_hessian(Z, proba, 0.1), reference, atol=1e-12)
    V = torch.as_tensor(rng.normal(size=(5, 3)))
    np.testing.assert_allclose(
        softmax_regression_hvp(Z, proba, V, 0.1).reshape(-1), reference @ V.reshape(-1), atol=1e-12
    )
    (grad,) = torch.autograd.grad(F.cross_entropy(_logits(Z, theta.requires_grad_(True)), y), theta)
    np.testing.assert_allclose(loss_gradient(Z, y, model), grad, atol=1e-12)
    expected = torch.linalg.solve(reference, V.reshape(-1)).reshape(5, 3)
    for solver in ("exact", "cg"):
        np.testing.assert_allclose(inverse_hvp(Z, model, V, solver=solver), expected, atol=1e-9)
    spd = reference.detach()
    np.testing.assert_allclose(conjugate_gradient(lambda v: spd @ v, V.reshape(-1)), expected.reshape(-1), atol=1e-9)


def test_edge_influence_cg_warns_when_it_stops_early_like_the_laplace_one():
    """Issue 17: one conjugate gradient for RGE and the Laplace RTO samples; RGE's stopped silently."""
    from sklearn.exceptions import ConvergenceWarning

    from skpcoreset.posthoc.laplace import _curvature

    assert _curvature.conjugate_gradient is conjugate_gradient
    rng = np.random.RandomState(0)
    Z = torch.as_tensor(rng.randn(40, 30))
    model = SoftmaxRegression(torch.zeros(30, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 1e-6)
    with pytest.warns(ConvergenceWarning, match="edge influences are approximate"):
        inverse_hvp(Z, model, torch.as_tensor(rng.randn(31, 3)), solver="cg", cg_max_iter=2)


def _logits(Z, theta):
    return torch.cat([Z, torch.ones(len(Z), 1, dtype=Z.dtype)], dim=1) @ theta


# -- edge influence --------------------------------------------------------------------------
def test_candidate_edges_are_those_within_two_hops_of_training_nodes(sbm):
    _, _, A, _, _ = sbm
    train = np.array([0, 1])
    edges = candidate_edges(A, train)
    hops = (sp.eye(A.shape[0]) + A) @ (sp.eye(A.shape[0]) + A)
    near = np.asarray(hops[train].sum(axis=0)).ravel() > 0
    upper = sp.triu(A, 1).tocoo()
    expected = {(u, v) for u, v in zip(upper.row, upper.col, strict=True) if near[u] or near[v]}
    assert {tuple(e) for e in edges.T} == expected
    assert np.all(edges[0] < edges[1])


def test_edge_influence_matches_naive_float64_reference(sbm):
    X, y, A, train, val = sbm
    X_t, y_t = torch.as_tensor(X), torch.as_tensor(y)
    model = fit_model(X_t, y_t, A, train)
    Z_val = propagate(X_t, A, 2, rows=val)
    edges = candidate_edges(A, train)
    influence, affected = edge_influence(
        X_t, A, edges, train_index=train, y_train=y_t[train], Z_val=Z_val, y_val=y_t[val], model=model, batch_size=37
    )
    direction = torch.linalg.solve(
        softmax_regression_hessian(
            propagate(X_t, A, 2, rows=train), model.proba(propagate(X_t, A, 2, rows=train)), WEIGHT_DECAY
        ),
        loss_gradient(Z_val, y_t[val], model).reshape(-1),
    )
    S = dense_normalized(A)
    two_hops = (sp.eye(A.shape[0]) + A) @ (sp.eye(A.shape[0]) + A)
    base_features = torch.as_tensor(S @ S @ X)[train]
    base_grad = loss_gradient(base_features, y_t[train], model)
    for k in np.random.RandomState(0).choice(edges.shape[1], 25, replace=False):
        S_removed = dense_normalized(remove_edges(A, edges[:, [k]]))
        features = torch.as_tensor(S_removed @ S_removed @ X)[train]
        change = loss_gradient(features, y_t[train], model) - base_grad
        assert influence[k] == pytest.approx(-float(direction @ change.reshape(-1)), abs=1e-12)
        moved = train[(features - base_features).abs().sum(dim=1).numpy() > 1e-14]
        assert set(moved) <= set(affected[k].indices)
        within_two_hops = set(np.flatnonzero(np.asarray(two_hops[edges[:, k]].sum(axis=0)).ravel() > 0))
        assert set(affected[k].indices) == within_two_hops & set(train)


def test_influence_predicts_the_change_after_retraining(sbm):
    X, y, A, train, val = sbm
    X_t, y_t = torch.as_tensor(X), torch.as_tensor(y)
    Z_val = propagate(X_t, A, 2, rows=val)

    def validation_loss(adjacency):
        model = fit_model(X_t, y_t, adjacency, train)
        return float(F.cross_entropy(Z_val @ model.coef + model.intercept, y_t[val])), model

    base_loss, model = validation_loss(A)
    edges = candidate_edges(A, train)
    influence, _ = edge_influence(
        X_t, A, edges, train_index=train, y_train=y_t[train], Z_val=Z_val, y_val=y_t[val], model=model
    )
    sample = np.random.RandomState(0).choice(edges.shape[1], 30, replace=False)
    actual = [validation_loss(remove_edges(A, edges[:, [k]]))[0] - base_loss for k in sample]
    assert np.corrcoef(influence[sample], actual)[0, 1] > 0.9


# -- RGE -------------------------------------------------------------------------------------
def test_default_patience():
    assert default_patience(3.9) == 5  # Cora: round(log2(2.9)) + 3
    assert default_patience(2.74) == 4  # CiteSeer
    assert default_patience(17.0) == 7
    assert default_patience(1.0) == 1


def test_neighbourhood_sets_are_training_nodes_next_to_either_endpoint(sbm):
    _, _, A, train, _ = sbm
    edges = candidate_edges(A, train)
    sets = neighbourhood_sets(A, edges, train)
    dense = A.toarray() > 0
    for k in np.random.RandomState(0).choice(edges.shape[1], 25, replace=False):
        u, v = edges[:, k]
        near = {u, v} | set(np.flatnonzero(dense[u] | dense[v]))
        assert set(sets[k].indices) == near & set(train)


def _overlapping_pairs(selected, by_patience, affected, window):
    sets = [set(affected[k].indices) for k in selected]
    return [
        (i, j)
        for j in range(len(sets))
        if not by_patience[j]
        for i in range(max(0, j - window), j)
        if sets[i] & sets[j]
    ]


def test_group_selection_never_overlaps_unless_by_patience():
    rng = np.random.RandomState(0)
    affected = sp.csr_matrix(rng.rand(300, 40) < 0.05)
    influence = rng.normal(size=300)
    selected, by_patience = select_repulsive_group(influence, affected, window=6, patience=3)
    assert np.all(influence[selected] < 0)
    assert _overlapping_pairs(selected, by_patience, affected, 6) == []
    assert 0 < by_patience.sum() < len(selected)
    # every overlapping pick comes right after more than `patience` rejections (the authors' rule)
    rank = np.argsort(np.argsort(influence))  # 0 = most negative
    gaps = np.diff(np.concatenate([[-1], rank[selected]])) - 1  # rejections before each pick
    assert np.all(gaps[by_patience] == 4) and np.all(gaps <= 4)


def test_group_selection_without_overlap_is_ege():
    affected = sp.identity(10, format="csr", dtype=bool)
    influence = np.linspace(-1, 1, 10)
    selected, by_patience = select_repulsive_group(influence, affected, window=5, patience=0)
    np.testing.assert_array_equal(selected, np.flatnonzero(influence < 0))
    assert not by_patience.any()


@pytest.fixture(scope="module")
def noisy_graph():
    X, y, A = make_sbm(n=200, p_in=0.08, p_out=0.03, seed=3)
    y_partial = np.full(len(y), -1)
    y_partial[:100] = y[:100]
    val_mask = np.zeros(len(y), dtype=bool)
    val_mask[50:100] = True
    return X, y, y_partial, val_mask, A


@pytest.fixture(scope="module")
def fitted_rge(noisy_graph):
    X, _, y_partial, val_mask, A = noisy_graph
    return RepulsiveEdgeEliminator(SGCClassifier(weight_decay=WEIGHT_DECAY), max_rounds=4).fit(
        X, y_partial, adjacency=A, val_mask=val_mask
    )


def test_negative_edges_are_mostly_heterophilous_and_removal_helps_validation(noisy_graph, fitted_rge):
    X, y, _, _, A = noisy_graph
    rge = fitted_rge
    removed = rge.removed_edges_
    assert removed.shape[1] > 0 and rge.best_round_ > 0
    candidates = rge.candidate_edges_
    heterophilous = y[candidates[0]] != y[candidates[1]]
    negative = rge.edge_influence_ < 0
    assert heterophilous[negative].mean() > heterophilous[~negative].mean() + 0.1  # 0.51 vs 0.34
    scores = [h["val_accuracy"] for h in rge.history_]
    assert scores[rge.best_round_] == max(scores) and scores[rge.best_round_] > scores[0]
    first = rge.history_[0]
    assert first["n_selected"] < first["n_negative"]  # a group, not every negative edge
    assert rge.edge_influence_.shape == (candidates.shape[1],)


def test_rge_round_groups_have_no_overlap_unless_by_patience(noisy_graph):
    X, _, y_partial, val_mask, A = noisy_graph
    train = np.flatnonzero((y_partial != -1) & ~val_mask)
    val = np.flatnonzero(val_mask)
    edges, influence, affected = sgc_edge_influence(X, np.maximum(y_partial, 0), A, train, val)
    window = A.shape[0] // 2
    patience = default_patience(np.diff(A.indptr)[train].mean() + 1)
    for sets in (affected, neighbourhood_sets(A, edges, train)):  # overlap_hops=2 and 1
        selected, by_patience = select_repulsive_group(influence, sets, window=window, patience=patience)
        assert len(selected) > 1
        assert _overlapping_pairs(selected, by_patience, sets, window) == []
    # the 1-hop sets lie inside the exact (2-hop) affected sets
    assert (affected.astype(int) - neighbourhood_sets(A, edges, train).astype(int)).min() >= 0


def test_ege_removes_every_negative_edge_in_one_round(noisy_graph, fitted_rge):
    X, _, y_partial, val_mask, A = noisy_graph
    ege = RepulsiveEdgeEliminator(SGCClassifier(weight_decay=WEIGHT_DECAY), strategy="ege").fit(
        X, y_partial, adjacency=A, val_mask=val_mask
    )
    np.testing.assert_allclose(ege.edge_influence_, fitted_rge.edge_influence_)
    assert len(ege.history_) == 2 and ege.best_round_ == 1  # kept whatever validation says
    negative = ege.candidate_edges_[:, ege.edge_influence_ < 0]
    np.testing.assert_array_equal(ege.removed_edges_, negative)


def test_removal_sequence_holds_every_round(noisy_graph, fitted_rge):
    rge = fitted_rge
    sequence = rge.removal_sequence_
    assert sequence.shape[1] == rge.history_[-1]["n_removed"]
    kept = rge.history_[rge.best_round_]["n_removed"]
    np.testing.assert_array_equal(rge.removed_edges_, sequence[:, :kept])


def test_exact_affected_sets_give_smaller_groups(noisy_graph, fitted_rge):
    X, _, y_partial, val_mask, A = noisy_graph
    exact = clone(fitted_rge).set_params(overlap_hops=2, max_rounds=1).fit(X, y_partial, adjacency=A, val_mask=val_mask)
    np.testing.assert_allclose(exact.edge_influence_, fitted_rge.edge_influence_)
    assert 0 < exact.history_[0]["n_selected"] <= fitted_rge.history_[0]["n_selected"]


def test_adam_solver_is_seeded_and_removes_edges(noisy_graph):
    X, _, y_partial, val_mask, A = noisy_graph
    sgc = SGCClassifier(weight_decay=WEIGHT_DECAY, solver="adam", lr=0.2)
    rge = RepulsiveEdgeEliminator(sgc, max_rounds=2, random_state=0)
    first = rge.fit(X, y_partial, adjacency=A, val_mask=val_mask).removal_sequence_
    again = clone(rge).fit(X, y_partial, adjacency=A, val_mask=val_mask).removal_sequence_
    assert first.shape[1] > 0
    np.testing.assert_array_equal(first, again)


def test_conjugate_gradient_and_exact_solves_remove_the_same_edges(noisy_graph, fitted_rge):
    X, _, y_partial, val_mask, A = noisy_graph
    cg = clone(fitted_rge).set_params(influence_solver="cg").fit(X, y_partial, adjacency=A, val_mask=val_mask)
    np.testing.assert_allclose(cg.edge_influence_, fitted_rge.edge_influence_, rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(cg.removed_edges_, fitted_rge.removed_edges_)


def test_estimator_is_the_backbone_refitted_on_the_kept_graph(noisy_graph, fitted_rge):
    X, y, y_partial, val_mask, A = noisy_graph
    model = fitted_rge.estimator_
    assert isinstance(model, SGCClassifier) and model is not fitted_rge.estimator
    y_train = np.where(val_mask, -1, y_partial)
    manual = SGCClassifier(weight_decay=WEIGHT_DECAY).fit(X, y_train, adjacency=fitted_rge.transform(A))
    np.testing.assert_allclose(model.predict_proba(X, adjacency=A), manual.predict_proba(X, adjacency=A), atol=1e-6)
    test = np.arange(len(y)) >= 100
    assert np.mean(model.predict(X, adjacency=A)[test] == y[test]) > 0.5


def test_transform_keeps_the_input_format(noisy_graph, fitted_rge):
    X, _, y_partial, val_mask, A = noisy_graph
    rge = fitted_rge
    removed = {tuple(e) for e in rge.removed_edges_.T}
    rectified = rge.transform(A)
    assert sp.issparse(rectified) and rectified.nnz == A.nnz - 2 * len(removed)
    kept = {(u, v) for u, v in zip(*sp.triu(rectified, 1).nonzero(), strict=True)}
    assert not kept & removed
    assert kept | removed == {(u, v) for u, v in zip(*sp.triu(A, 1).nonzero(), strict=True)}
    coo = A.tocoo()
    edge_index = np.stack([coo.row, coo.col])
    out = rge.transform(edge_index)
    assert isinstance(out, np.ndarray) and out.shape[1] == edge_index.shape[1] - 2 * len(removed)
    out_t = rge.transform(torch.as_tensor(edge_index))
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_array_equal(out_t.numpy(), out)
    np.testing.assert_array_equal(as_adjacency(out, A.shape[0]).toarray(), rectified.toarray())
    refit = clone(rge).fit_transform(X, y_partial, adjacency=A, val_mask=val_mask)
    assert (refit != rectified).nnz == 0  # deterministic


def test_rge_contract(noisy_graph, fitted_rge, capsys):
    X, _, y_partial, val_mask, A = noisy_graph
    before = (X.copy(), y_partial.copy(), A.copy(), val_mask.copy())
    rge = RepulsiveEdgeEliminator(SGCClassifier(weight_decay=WEIGHT_DECAY), max_rounds=1, verbose=0)
    rge.fit(X, y_partial, adjacency=A, val_mask=val_mask)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    np.testing.assert_array_equal(X, before[0])
    np.testing.assert_array_equal(y_partial, before[1])
    assert (A != before[2]).nnz == 0
    restored = pickle.loads(pickle.dumps(fitted_rge))
    np.testing.assert_array_equal(restored.transform(A).toarray(), fitted_rge.transform(A).toarray())


def test_rge_skops_round_trip(noisy_graph, fitted_rge):
    sio = pytest.importorskip("skops.io")
    A = noisy_graph[4]
    blob = sio.dumps(fitted_rge)
    restored = sio.loads(blob, trusted=sio.get_untrusted_types(data=blob))
    np.testing.assert_array_equal(restored.transform(A).toarray(), fitted_rge.transform(A).toarray())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"adjacency": None}, "requires adjacency"),
        ({"val_mask": None}, "requires val_mask"),
        ({"val_mask": np.ones(3, dtype=bool)}, "val_mask must be"),
        ({"unlabel_val": True}, "needs a label"),
    ],
)
def test_rge_bad_input_has_clear_error(noisy_graph, kwargs, message):
    X, _, y_partial, val_mask, A = noisy_graph
    y_partial = y_partial.copy()
    if kwargs.pop("unlabel_val", False):
        y_partial[np.flatnonzero(val_mask)[0]] = -1
    call = {"adjacency": A, "val_mask": val_mask, **kwargs}
    with pytest.raises(ValueError, match=message):
        RepulsiveEdgeEliminator().fit(X, y_partial, **call)


def test_transform_rejects_a_graph_of_another_size(fitted_rge):
    with pytest.raises(ValueError, match="shape"):
        fitted_rge.transform(sp.eye(5, format="csr"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rge_on_cuda_matches_cpu(noisy_graph, fitted_rge):
    X, _, y_partial, val_mask, A = noisy_graph
    gpu = clone(fitted_rge).set_params(device="cuda").fit(X, y_partial, adjacency=A, val_mask=val_mask)
    np.testing.assert_allclose(gpu.edge_influence_, fitted_rge.edge_influence_, atol=1e-8)


def test_a_graph_without_candidate_edges_is_returned_unchanged(noisy_graph):
    X, _, y_partial, val_mask, _ = noisy_graph
    empty = sp.csr_matrix((len(X), len(X)))
    rge = RepulsiveEdgeEliminator(SGCClassifier(weight_decay=WEIGHT_DECAY)).fit(
        X, y_partial, adjacency=empty, val_mask=val_mask
    )
    assert rge.removed_edges_.shape == (2, 0) and rge.edge_influence_.shape == (0,)
    assert rge.transform(empty).nnz == 0 and len(rge.history_) == 1


# -- GCN backbone ------------------------------------------------------------------------------
def _lbfgs_refine(module, nodes, labels, weight_decay, operator):
    """Polish a GCN to a stationary point of the training objective (warm start)."""
    params = list(module.parameters())
    optimizer = torch.optim.LBFGS(
        params, lr=1.0, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        penalty = sum(p.square().sum() for p in params)
        loss = F.cross_entropy(module(nodes, operator), labels) + 0.5 * weight_decay * penalty
        loss.backward()
        return loss

    optimizer.step(closure)


def test_gcn_classifier_on_a_graph(sbm):
    X, y, A, train, _ = sbm
    y_partial = np.full(len(y), -1)
    y_partial[train] = y[train]
    clf = GCNClassifier(n_hidden=8, max_iter=200, lr=0.05, random_state=0).fit(X, y_partial, adjacency=A)
    with_graph = (clf.predict(X, adjacency=A) == y).mean()
    assert with_graph > 0.5 and clf.predict_proba(X, adjacency=A).shape == (len(y), 3)  # SGC: 0.59
    again = GCNClassifier(n_hidden=8, max_iter=200, lr=0.05, random_state=0).fit(X, y_partial, adjacency=A)
    np.testing.assert_allclose(again.predict_proba(X, adjacency=A), clf.predict_proba(X, adjacency=A))
    # score, as SGC's: accuracy on the labeled nodes of the given graph
    test = np.arange(90, len(y))
    y_test_only = np.full(len(y), -1)
    y_test_only[test] = y[test]
    expected = (clf.predict(X, adjacency=A)[test] == y[test]).mean()
    assert clf.score(X, y_test_only, adjacency=A) == pytest.approx(expected)


def test_gcn_influence_predicts_the_change_after_retraining(sbm):
    X, y, A, train, val = sbm
    weight_decay = 0.2  # strong enough for L-BFGS to reach a stationary point (gradient ~1e-8)
    y_partial = np.full(len(y), -1)
    y_partial[train] = y[train]
    clf = GCNClassifier(n_hidden=4, dropout=0.0, weight_decay=weight_decay, max_iter=300, lr=0.05, random_state=0)
    module = clf.fit(X, y_partial, adjacency=A).module_
    nodes, labels = torch.as_tensor(train), torch.as_tensor(y[train])
    _lbfgs_refine(module, nodes, labels, weight_decay, module.operator)
    edges = candidate_edges(A, train)
    sample = np.random.RandomState(0).choice(edges.shape[1], 25, replace=False)
    influence = gcn_edge_influence(
        module,
        A,
        edges[:, sample],
        train_index=train,
        y_train=labels,
        val_index=val,
        y_val=torch.as_tensor(y[val]),
        weight_decay=weight_decay,
    )
    state = {k: v.clone() for k, v in module.state_dict().items()}

    def val_loss(operator):
        with torch.no_grad():
            return float(F.cross_entropy(module(torch.as_tensor(val), operator), torch.as_tensor(y[val])))

    base = val_loss(module.operator)
    actual = []
    for k in sample:
        module.load_state_dict(state)
        operator = normalized_operator(remove_edges(A, edges[:, [k]]), "cpu", torch.float64)
        _lbfgs_refine(module, nodes, labels, weight_decay, operator)
        actual.append(val_loss(module.operator) - base)  # retrained on G \ e, scored on G
    module.load_state_dict(state)
    assert np.corrcoef(influence, actual)[0, 1] > 0.9


def _naive_gcn_influence(module, A, edges, train, y_train, direction):
    """``-direction^T [grad L_tr(G \\ e) - grad L_tr(G)]`` by rebuilding the graph for every edge."""
    names = [name for name, _ in module.named_parameters()]
    flat = torch.cat([direction[name].reshape(-1) for name in names])

    def directional(operator):
        theta = tuple(p.detach().requires_grad_(True) for p in module.parameters())
        state = {**dict(zip(names, theta, strict=True)), **dict(module.named_buffers())}
        loss = F.cross_entropy(functional_call(module, state, (torch.as_tensor(train), operator)), y_train)
        return float(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, theta)]) @ flat)

    base = directional(module.operator)
    without = [normalized_operator(remove_edges(A, edges[:, [k]]), "cpu", torch.float64) for k in range(edges.shape[1])]
    return -(np.array([directional(operator) for operator in without]) - base)


def test_batched_gcn_influence_equals_rebuilding_the_graph_per_edge(sbm):
    X, y, A, train, val = sbm
    y_partial = np.where(np.isin(np.arange(len(y)), train), y, -1)
    clf = GCNClassifier(n_hidden=4, weight_decay=5e-3, max_iter=100, lr=0.05, random_state=0)
    module = clf.fit(X, y_partial, adjacency=A).module_
    edges = candidate_edges(A, train)
    kwargs = dict(
        train_index=train,
        y_train=torch.as_tensor(y[train]),
        val_index=val,
        y_val=torch.as_tensor(y[val]),
        weight_decay=5e-3,
        damping=1e-2,
    )
    influence = gcn_edge_influence(module, A, edges, batch_size=37, **kwargs)
    direction = influence_direction(module, **kwargs)
    reference = _naive_gcn_influence(module, A, edges, train, torch.as_tensor(y[train]), direction)
    np.testing.assert_allclose(influence, reference, atol=1e-14 + 1e-9 * np.abs(reference).max())
    assert not module.training


@pytest.fixture(scope="module")
def gcn_rge(noisy_graph):
    X, _, y_partial, val_mask, A = noisy_graph
    gcn = GCNClassifier(n_hidden=8, weight_decay=5e-3, max_iter=100, lr=0.05)
    return RepulsiveEdgeEliminator(gcn, max_rounds=3, random_state=0).fit(X, y_partial, adjacency=A, val_mask=val_mask)


def test_rge_with_a_gcn_backbone(noisy_graph, gcn_rge):
    X, y, y_partial, val_mask, A = noisy_graph
    rge = gcn_rge
    candidates = rge.candidate_edges_
    assert rge.edge_influence_.shape == (candidates.shape[1],) and rge.removed_edges_.shape[1] > 0
    heterophilous = y[candidates[0]] != y[candidates[1]]
    negative = rge.edge_influence_ < 0
    assert heterophilous[negative].mean() > heterophilous[~negative].mean()
    first = rge.history_[0]
    assert 0 < first["n_selected"] < first["n_negative"]
    scores = [h["val_accuracy"] for h in rge.history_]
    assert scores[rge.best_round_] == max(scores)
    # the backbone restarts from one seeded initialisation: refitting repeats every round
    again = clone(rge).fit(X, y_partial, adjacency=A, val_mask=val_mask)
    np.testing.assert_array_equal(again.removal_sequence_, rge.removal_sequence_)
    assert rge.get_params()["estimator"].random_state is None  # the user's estimator is untouched


def test_gcn_ege_removes_every_negative_edge(noisy_graph, gcn_rge):
    X, _, y_partial, val_mask, A = noisy_graph
    ege = clone(gcn_rge).set_params(strategy="ege").fit(X, y_partial, adjacency=A, val_mask=val_mask)
    np.testing.assert_allclose(ege.edge_influence_, gcn_rge.edge_influence_)
    np.testing.assert_array_equal(ege.removed_edges_, ege.candidate_edges_[:, ege.edge_influence_ < 0])


def test_default_estimator_is_the_default_sgc(noisy_graph):
    X, _, y_partial, val_mask, A = noisy_graph
    default = RepulsiveEdgeEliminator(max_rounds=1).fit(X, y_partial, adjacency=A, val_mask=val_mask)
    explicit = RepulsiveEdgeEliminator(SGCClassifier(), max_rounds=1).fit(X, y_partial, adjacency=A, val_mask=val_mask)
    np.testing.assert_array_equal(default.edge_influence_, explicit.edge_influence_)


@pytest.mark.parametrize(
    "estimator, error, message",
    [
        (SGCClassifier(n_hops=3), ValueError, "n_hops"),
        (FunctionTransformer(), ValueError, "'estimator' parameter"),
        (LogisticRegression(), TypeError, "must be one of"),
    ],
)
def test_rge_rejects_an_unsupported_backbone(noisy_graph, estimator, error, message):
    X, _, y_partial, val_mask, A = noisy_graph
    with pytest.raises(error, match=message):
        RepulsiveEdgeEliminator(estimator).fit(X, y_partial, adjacency=A, val_mask=val_mask)


def test_two_hop_neighbourhood_sets_are_the_exact_affected_sets(sbm):
    X, y, A, train, val = sbm
    edges, _, affected = sgc_edge_influence(X, y, A, train, val)
    assert (neighbourhood_sets(A, edges, train, n_hops=2) != affected).nnz == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gcn_influence_on_cuda_matches_cpu(sbm):
    X, y, A, train, val = sbm
    y_partial = np.where(np.isin(np.arange(len(y)), train), y, -1)
    module = GCNClassifier(n_hidden=4, max_iter=50, random_state=0).fit(X, y_partial, adjacency=A).module_
    edges = candidate_edges(A, train)
    influence = {}
    for device in ("cpu", "cuda"):
        influence[device] = gcn_edge_influence(
            copy.deepcopy(module).to(device),
            A,
            edges,
            train_index=train,
            y_train=torch.as_tensor(y[train], device=device),
            val_index=val,
            y_val=torch.as_tensor(y[val], device=device),
            weight_decay=5e-4,
            damping=1e-2,
        )
    np.testing.assert_allclose(influence["cuda"], influence["cpu"], atol=1e-10)
