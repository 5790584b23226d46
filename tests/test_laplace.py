"""ConnectivityLaplaceClassifier and connectivity_sharpness against naive float64 references.

The invariance tests follow Kim et al. (ICLR 2023): rescaling layer l by a and layer l+1 by
1/a (ReLU), or a layer followed by a normalisation, leaves the network function unchanged;
connectivity sharpness and the connectivity-Laplace predictive must not move, while the NTK
trace and the ordinary (weight) Laplace predictive do.
"""

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier
from torch import nn

from skpcoreset import make_net
from skpcoreset._base import make_generator
from skpcoreset._linalg import conjugate_gradient
from skpcoreset._train import Trainer, TrainSpec
from skpcoreset.nets import MLP, CIFARResNet, ConvNet, StagedNet
from skpcoreset.posthoc.laplace import ConnectivityLaplaceClassifier, connectivity_sharpness, rescale_layers
from skpcoreset.posthoc.laplace._curvature import GGN, lanczos
from skpcoreset.posthoc.laplace._laplace import monte_carlo_proba, probit_proba
from skpcoreset.posthoc.laplace._linearized import LastLayerModel, LinearizedModel
from skpcoreset.posthoc.laplace._sharpness import exact_tangent_kernel_trace

SCALES = (0.25, 1.0, 4.0)


# -- fixtures -----------------------------------------------------------------------------------
def _train(module, X, y, *, epochs=30, weight_decay=0.0):
    spec = TrainSpec(max_epochs=epochs, batch_size=64, lr=1e-2, optimizer_kwargs={"weight_decay": weight_decay})
    Trainer(module, spec, generator=make_generator(0)).fit(torch.as_tensor(X), torch.as_tensor(y))
    return module.eval()


@pytest.fixture(scope="module")
def digits_data():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    rng = np.random.RandomState(0)
    order = rng.permutation(len(X))
    train, test = order[:600], order[600:900]
    return X[train], y[train], X[test], y[test]


@pytest.fixture(scope="module")
def relu_mlp(digits_data):
    """A trained ReLU MLP 64-32-10 on digits, in float64."""
    X, y, _, _ = digits_data
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = MLP((64,), 10, hidden_sizes=(32,))
    return _train(module, X, y).double()


class NormalisedMLP(StagedNet):
    """Linear -> LayerNorm (eps=0, so scaling the linear layer is exactly function-preserving)."""

    def __init__(self, n_in=64, hidden=8, n_classes=10):
        super().__init__()
        self.stages = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(n_in, hidden), nn.LayerNorm(hidden, eps=0.0), nn.ReLU()),
                nn.Sequential(nn.Linear(hidden, n_classes)),
            ]
        )


@pytest.fixture(scope="module")
def normalised_mlp(digits_data):
    """Trained with weight decay: the scale of the first layer is set by the decay, not the data."""
    X, y, _, _ = digits_data
    with torch.random.fork_rng():
        torch.manual_seed(1)
        module = NormalisedMLP()
    return _train(module, X, y, weight_decay=1e-3).double()


def _rescaled_normalised(module, a):
    """The linear layer before the LayerNorm times a: the same function."""
    module = copy.deepcopy(module)
    with torch.no_grad():
        module.stages[0][0].weight.mul_(a)
        module.stages[0][0].bias.mul_(a)
    return module


def _relative(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _ntk_trace(module, X):
    scales = {n: torch.ones_like(p) for n, p in module.named_parameters()}
    return exact_tangent_kernel_trace(module, torch.as_tensor(X, dtype=torch.float64), scales)


def _ctk_trace(module, X):
    scales = {n: p.detach() for n, p in module.named_parameters()}
    return exact_tangent_kernel_trace(module, torch.as_tensor(X, dtype=torch.float64), scales)


# -- naive float64 references ------------------------------------------------------------------
def _naive_jacobians(module, X, subset):
    """Per-sample Jacobians (N, C, P) in the weight coordinates, one autograd call per sample."""
    X = torch.as_tensor(X, dtype=torch.float64)
    params = list(module.stages[-1][-1].parameters()) if subset == "last_layer" else list(module.parameters())
    rows = []
    for x in X:
        out = module(x[None])[0]
        rows.append(
            torch.stack(
                [
                    torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[c], params, retain_graph=True)])
                    for c in range(len(out))
                ]
            )
        )
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    return torch.stack(rows).numpy(), theta.numpy()


def _naive_posterior_predictive(module, X_train, X_test, *, subset, parameterization, prior_precision):
    J_train, theta = _naive_jacobians(module, X_train, subset)
    J_test, _ = _naive_jacobians(module, X_test, subset)
    scale = theta if parameterization == "connectivity" else np.ones_like(theta)
    J_train, J_test = J_train * scale, J_test * scale
    with torch.no_grad():
        p_train = module(torch.as_tensor(X_train, dtype=torch.float64)).softmax(-1).numpy()
        f_test = module(torch.as_tensor(X_test, dtype=torch.float64)).numpy()
    H = prior_precision * np.eye(len(theta))
    for J, p in zip(J_train, p_train, strict=True):
        H += J.T @ (np.diag(p) - np.outer(p, p)) @ J
    covariance = np.einsum("ncp,pq,nkq->nck", J_test, np.linalg.inv(H), J_test)
    kappa = 1.0 / np.sqrt(1.0 + math.pi / 8.0 * np.diagonal(covariance, axis1=1, axis2=2))
    logits = f_test * kappa
    proba = np.exp(logits - logits.max(1, keepdims=True))
    return proba / proba.sum(1, keepdims=True), covariance, H


@pytest.fixture(scope="module")
def tiny_mlp(digits_data):
    X, y, _, _ = digits_data
    with torch.random.fork_rng():
        torch.manual_seed(2)
        module = MLP((64,), 10, hidden_sizes=(6,))
    return _train(module, X, y, epochs=10).double()


@pytest.mark.parametrize("parameterization", ["weight", "connectivity"])
@pytest.mark.parametrize("subset", ["last_layer", "all"])
def test_full_laplace_matches_naive_float64_reference(tiny_mlp, digits_data, parameterization, subset):
    X, y, X_test, _ = digits_data
    balanced = np.concatenate([np.flatnonzero(y == c)[:4] for c in range(10)])
    X, y, X_test = X[balanced], y[balanced], X_test[:15]
    clf = ConnectivityLaplaceClassifier(
        tiny_mlp, parameterization=parameterization, subset_of_weights=subset, prior_precision=0.7, n_sharpness_probes=1
    ).fit(X, y)
    proba, covariance, H = _naive_posterior_predictive(
        tiny_mlp, X, X_test, subset=subset, parameterization=parameterization, prior_precision=0.7
    )
    np.testing.assert_allclose(clf.posterior_precision_, H, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(clf.predictive_covariance(X_test), covariance, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(clf.predict_proba(X_test), proba, rtol=1e-8, atol=1e-10)


def test_diag_and_lowrank_agree_with_the_full_ggn(tiny_mlp, digits_data):
    X, y, X_test, _ = digits_data
    common = dict(subset_of_weights="all", prior_precision=2.0, validation_fraction=0.0, n_sharpness_probes=1)
    X, y = X[:100], y[:100]
    full = ConnectivityLaplaceClassifier(tiny_mlp, **common).fit(X, y)
    ggn = full.posterior_precision_ - 2.0 * np.eye(len(full.posterior_precision_))
    diag = ConnectivityLaplaceClassifier(tiny_mlp, hessian_structure="diag", **common).fit(X, y)
    np.testing.assert_allclose(diag.posterior_precision_, np.diag(full.posterior_precision_), rtol=1e-9)
    # Lanczos with as many steps as parameters is an exact eigendecomposition (last layer: P = 70).
    last = dict(common, subset_of_weights="last_layer")
    full_last = ConnectivityLaplaceClassifier(tiny_mlp, **last).fit(X, y)
    exact = ConnectivityLaplaceClassifier(
        tiny_mlp, hessian_structure="lowrank", rank=full_last.n_posterior_params_, **last
    )
    exact.fit(X, y)
    np.testing.assert_allclose(exact.predict_proba(X_test), full_last.predict_proba(X_test), rtol=1e-6, atol=1e-8)
    # With rank 10 the top of the spectrum is found.
    low = ConnectivityLaplaceClassifier(tiny_mlp, hessian_structure="lowrank", rank=10, **common).fit(X, y)
    top = np.sort(np.linalg.eigvalsh(ggn))[::-1][:3]
    np.testing.assert_allclose(np.sort(low.posterior_precision_)[::-1][:3] - 2.0, top, rtol=1e-5)


def test_lanczos_recovers_top_eigenpairs_of_a_matrix():
    rng = np.random.RandomState(0)
    basis, _ = np.linalg.qr(rng.randn(60, 60))
    spectrum = np.concatenate([[50.0, 20.0, 10.0, 5.0], rng.uniform(0, 0.1, 56)])
    matrix = torch.as_tensor(basis @ np.diag(spectrum) @ basis.T)
    values, vectors = lanczos(
        lambda v: v @ matrix, 60, 30, generator=make_generator(0), dtype=torch.float64, device=torch.device("cpu")
    )
    order = values.argsort(descending=True)[:4]
    np.testing.assert_allclose(values[order].numpy(), spectrum[:4], rtol=1e-8)
    overlap = np.abs(np.sum(vectors[:, order].numpy() * basis[:, :4], axis=0))
    np.testing.assert_allclose(overlap, 1.0, rtol=1e-6)


def test_conjugate_gradient_solves_batched_systems():
    rng = np.random.RandomState(1)
    A = rng.randn(20, 20)
    A = torch.as_tensor(A @ A.T + np.eye(20))
    rhs = torch.as_tensor(rng.randn(3, 20))
    solution = conjugate_gradient(lambda v: v @ A, rhs, max_iter=100, tol=1e-12, batched=True)
    np.testing.assert_allclose(solution.numpy(), np.linalg.solve(A.numpy(), rhs.numpy().T).T, rtol=1e-8, atol=1e-10)


def test_conjugate_gradient_warns_when_it_stops_early():
    from sklearn.exceptions import ConvergenceWarning

    A = torch.diag(torch.logspace(0, 6, 50, dtype=torch.float64))
    with pytest.warns(ConvergenceWarning, match="stopped after 3 iterations"):
        conjugate_gradient(lambda v: v @ A, torch.ones(2, 50, dtype=torch.float64), max_iter=3, batched=True)


def test_rto_conjugate_gradient_warning_names_the_consequence(tiny_mlp, digits_data):
    from sklearn.exceptions import ConvergenceWarning

    from skpcoreset.posthoc.laplace._curvature import RTOCurvature
    from skpcoreset.posthoc.laplace._linearized import linearize

    X = torch.as_tensor(digits_data[0][:50], dtype=torch.float64)
    model = linearize(tiny_mlp, "all", "connectivity")
    curvature = RTOCurvature(n_samples=2, max_iter=1).fit(GGN(model, model.inputs(X, 25), 25), make_generator(0))
    with pytest.warns(ConvergenceWarning, match="under-dispersed"):
        curvature.samples(1e-6)


def test_rto_samples_have_the_laplace_covariance(tiny_mlp, digits_data):
    X, y, X_test, _ = digits_data
    common = dict(subset_of_weights="all", prior_precision=5.0, n_sharpness_probes=1)
    full = ConnectivityLaplaceClassifier(tiny_mlp, **common).fit(X[:100], y[:100])
    rto = ConnectivityLaplaceClassifier(tiny_mlp, hessian_structure="rto", n_samples=1000, random_state=0, **common)
    rto.fit(X[:100], y[:100])
    reference = np.diagonal(full.predictive_covariance(X_test[:30]), axis1=1, axis2=2)
    sampled = np.diagonal(rto.predictive_covariance(X_test[:30]), axis1=1, axis2=2)
    # 1000 Gaussian draws: each variance estimate is within ~4.5% (1 sd); allow 10% on averages.
    np.testing.assert_allclose(sampled.mean(0), reference.mean(0), rtol=0.1)
    assert np.median(np.abs(sampled / reference - 1)) < 0.1


def test_ggn_matvec_matches_dense_ggn(tiny_mlp, digits_data):
    X = torch.as_tensor(digits_data[0][:50], dtype=torch.float64)
    model = LinearizedModel(tiny_mlp, "all", "connectivity")
    ggn = GGN(model, model.inputs(X), batch_size=16)
    vectors = torch.randn(3, model.n_params, dtype=torch.float64)
    np.testing.assert_allclose(ggn.matvec(vectors).numpy(), (vectors @ ggn.matrix()).numpy(), rtol=1e-9, atol=1e-10)


def test_memory_chunking_does_not_change_results(tiny_mlp, digits_data, monkeypatch):
    from skpcoreset.posthoc.laplace import _linearized

    X = torch.as_tensor(digits_data[0][:30], dtype=torch.float64)
    model = LinearizedModel(tiny_mlp, "all", "connectivity")
    vectors = torch.randn(5, model.n_params, dtype=torch.float64)
    whole = (model.ggn_matrix(X), model.sandwich_diagonal(X, model.theta.abs()), model.jvp(X, vectors))
    monkeypatch.setattr(_linearized, "_JACOBIAN_BUDGET", 7 * 10 * model.n_params)  # chunks of 7 samples
    monkeypatch.setattr(_linearized, "_TANGENT_BUDGET", 60)  # chunks of 2 tangents
    chunked = (model.ggn_matrix(X), model.sandwich_diagonal(X, model.theta.abs()), model.jvp(X, vectors))
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parameterization", ["weight", "connectivity"])
def test_kronecker_last_layer_products_match_generic_jacobians(relu_mlp, digits_data, parameterization):
    X = torch.as_tensor(digits_data[0][:40], dtype=torch.float64)
    structured = LastLayerModel(relu_mlp, parameterization)
    generic = LinearizedModel(relu_mlp, "last_layer", parameterization)
    inputs = generic.inputs(X)
    rng = np.random.RandomState(0)
    n = generic.n_params
    matrix = torch.as_tensor(rng.randn(n, n))
    diagonal, basis = torch.as_tensor(rng.rand(n)), torch.as_tensor(rng.randn(n, 4))
    for method, args in [
        ("ggn_matrix", ()),
        ("ggn_diagonal", ()),
        ("sandwich", (matrix,)),
        ("sandwich_diagonal", (diagonal,)),
        ("project", (basis,)),
    ]:
        expected = getattr(generic, method)(inputs, *args)
        np.testing.assert_allclose(getattr(structured, method)(inputs, *args), expected, rtol=1e-9, atol=1e-9)


# -- links -------------------------------------------------------------------------------------
def test_probit_and_monte_carlo_links():
    logits = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64)
    covariance = torch.diag(torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64))[None]
    np.testing.assert_allclose(probit_proba(logits, covariance * 0).numpy(), logits.softmax(-1).numpy())
    rng = np.random.RandomState(0)
    draws = rng.multivariate_normal(logits[0].numpy(), covariance[0].numpy(), size=200_000)
    naive = (np.exp(draws) / np.exp(draws).sum(1, keepdims=True)).mean(0)
    mc = monte_carlo_proba(logits, covariance, 200_000, make_generator(0))
    np.testing.assert_allclose(mc[0].numpy(), naive, atol=3e-3)
    # the probit approximation is close to, not equal to, the integral
    np.testing.assert_allclose(probit_proba(logits, covariance)[0].numpy(), naive, atol=0.05)


# -- connectivity sharpness --------------------------------------------------------------------
def test_exact_trace_matches_per_sample_autograd(tiny_mlp, digits_data):
    X = digits_data[0][:30]
    J, theta = _naive_jacobians(tiny_mlp, X, "all")
    np.testing.assert_allclose(_ctk_trace(tiny_mlp, X), np.sum((J * theta) ** 2) / len(X), rtol=1e-10)
    np.testing.assert_allclose(_ntk_trace(tiny_mlp, X), np.sum(J**2) / len(X), rtol=1e-10)


def test_hutchinson_sharpness_is_unbiased(relu_mlp, digits_data):
    X = digits_data[0][:200]
    exact = _ctk_trace(relu_mlp, X)
    estimate = connectivity_sharpness(relu_mlp, X, n_probes=50, batch_size=64, random_state=0)
    assert abs(estimate / exact - 1) < 0.05


def test_sharpness_on_a_convnet_and_a_skorch_net(digits_data):
    X = digits_data[0][:40].reshape(-1, 1, 8, 8)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = ConvNet((1, 8, 8), 10, width=4, depth=2).double()
    scales = {n: p.detach() for n, p in module.named_parameters()}
    exact = exact_tangent_kernel_trace(module, torch.as_tensor(X, dtype=torch.float64), scales)
    estimate = connectivity_sharpness(module, X, n_probes=200, batch_size=16, random_state=0)
    assert abs(estimate / exact - 1) < 0.1
    net = NeuralNetClassifier(MLP, module__input_shape=(64,), module__n_classes=10).initialize()
    assert connectivity_sharpness(net, digits_data[0][:20], random_state=0) > 0


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (dict(X=np.zeros((0, 64))), ValueError, "at least one sample"),
        (dict(X=np.full((3, 64), np.nan)), ValueError, "NaN"),
        (dict(n_probes=0), ValueError, "n_probes"),
        (dict(net="not a net"), TypeError, "torch.nn.Module"),
    ],
)
def test_sharpness_rejects_bad_input(tiny_mlp, bad, error, match):
    kwargs = dict(net=tiny_mlp, X=np.zeros((3, 64)), n_probes=2)
    kwargs.update(bad)
    with pytest.raises(error, match=match):
        connectivity_sharpness(kwargs.pop("net"), kwargs.pop("X"), **kwargs)


# -- invariance (the acceptance test of the issue) ---------------------------------------------
def _laplace(module, X, y, **kwargs):
    params = dict(prior_precision=1.0, validation_fraction=0.0, n_sharpness_probes=4, random_state=0)
    params.update(kwargs)
    return ConnectivityLaplaceClassifier(module, **params).fit(X, y)


def test_relu_rescaling_leaves_connectivity_laplace_and_sharpness_unchanged(relu_mlp, digits_data):
    X, y, X_test, _ = digits_data
    reference = {}
    moved = {"ntk": [], "weight": []}
    for a in SCALES:
        module = rescale_layers(relu_mlp, "stages.0.1", "stages.1.0", a)
        with torch.no_grad():
            np.testing.assert_allclose(
                module(torch.as_tensor(X_test).double()),
                relu_mlp(torch.as_tensor(X_test).double()),
                rtol=1e-10,
                atol=1e-12,
            )
        cl = _laplace(module, X, y)
        values = {
            "cs_exact": _ctk_trace(module, X),
            "cs_hutchinson": connectivity_sharpness(module, X, n_probes=3, random_state=0),
            "cs_attribute": cl.connectivity_sharpness_,
            "cl_proba": cl.predict_proba(X_test),
            "cl_mc_proba": _laplace(module, X, y, link_approx="mc", n_samples=50).predict_proba(X_test),
            "cl_diag_proba": _laplace(module, X, y, hessian_structure="diag").predict_proba(X_test),
            "cl_lowrank_proba": _laplace(module, X, y, hessian_structure="lowrank").predict_proba(X_test),
            "cl_rto_proba": _laplace(module, X, y, hessian_structure="rto", n_samples=8).predict_proba(X_test),
            "cl_cv_prior": _laplace(module, X, y, prior_precision="cv", validation_fraction=0.2).prior_precision_,
        }
        for key, value in values.items():
            reference.setdefault(key, value)
            assert _relative(value, reference[key]) < 1e-5, (key, a)
        moved["ntk"].append(_ntk_trace(module, X))
        moved["weight"].append(_laplace(module, X, y, parameterization="weight").predict_proba(X_test))
    # the ordinary quantities move by far more than the tolerance
    assert max(moved["ntk"]) / min(moved["ntk"]) > 1.5
    assert _relative(moved["weight"][0], moved["weight"][1]) > 1e-2
    assert _relative(moved["weight"][2], moved["weight"][1]) > 1e-2


def test_normalisation_rescaling_leaves_connectivity_laplace_unchanged(normalised_mlp, digits_data):
    X, y, X_test, _ = digits_data
    X, y, X_test = X[:200], y[:200], X_test[:100]
    common = dict(subset_of_weights="all", prior_precision=1.0)
    reference = {}
    ntk, weight = [], []
    for a in SCALES:
        module = _rescaled_normalised(normalised_mlp, a)
        values = {
            "cs_exact": _ctk_trace(module, X),
            "cl_proba": _laplace(module, X, y, **common).predict_proba(X_test),
        }
        for key, value in values.items():
            reference.setdefault(key, value)
            assert _relative(value, reference[key]) < 1e-5, (key, a)
        ntk.append(_ntk_trace(module, X))
        weight.append(_laplace(module, X, y, parameterization="weight", **common).predict_proba(X_test))
    assert max(ntk) / min(ntk) > 1.5
    assert _relative(weight[0], weight[1]) > 1e-2 and _relative(weight[2], weight[1]) > 1e-2


# -- prior precision ---------------------------------------------------------------------------
def test_marglik_maximises_the_laplace_evidence(relu_mlp, digits_data):
    X, y, _, _ = digits_data
    tuned = _laplace(relu_mlp, X, y, parameterization="weight", prior_precision="marglik")
    delta = tuned.prior_precision_
    for factor in (0.7, 1.4):
        other = _laplace(relu_mlp, X, y, parameterization="weight", prior_precision=delta * factor)
        assert other.log_marginal_likelihood_ < tuned.log_marginal_likelihood_


def test_cv_picks_the_grid_value_with_the_best_held_out_nll(relu_mlp, digits_data):
    from skpcoreset._base import seed_from_random_state
    from skpcoreset._holdout import holdout_split
    from skpcoreset.metrics import negative_log_likelihood

    X, y, _, _ = digits_data
    tuned = _laplace(relu_mlp, X, y, prior_precision="cv", validation_fraction=0.2)
    exponent = math.log10(tuned.prior_precision_)
    assert -2 <= exponent <= 6 and abs(exponent * 2 - round(exponent * 2)) < 1e-9
    # the same class-stratified 80/20 split: curvature on 80%, NLL on 20%
    fit, valid = holdout_split(y, 0.2, seed_from_random_state(0))
    np.testing.assert_allclose(
        tuned.validation_scores_["map"]["nll"], negative_log_likelihood(y[valid], tuned.map_proba(X[valid])), rtol=1e-6
    )

    def held_out_nll(delta):
        clf = _laplace(relu_mlp, X[fit], y[fit], prior_precision=delta, validation_fraction=0.0)
        return negative_log_likelihood(y[valid], clf.predict_proba(X[valid]))

    best = held_out_nll(tuned.prior_precision_)
    np.testing.assert_allclose(tuned.validation_scores_["laplace"]["nll"], best, rtol=1e-6)
    for other in {max(exponent - 0.5, -2), min(exponent + 0.5, 6), -2, 6} - {exponent}:
        assert best <= held_out_nll(10.0**other) + 1e-12


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(prior_precision="marglik"), "degenerate"),
        (dict(parameterization="weight", prior_precision="marglik", hessian_structure="rto"), "log det"),
        (dict(prior_precision=-1.0), "prior_precision"),
        (dict(hessian_structure="kron"), "hessian_structure"),
    ],
)
def test_invalid_configurations_raise(tiny_mlp, digits_data, params, match):
    X, y, _, _ = digits_data
    with pytest.raises(ValueError, match=match):
        ConnectivityLaplaceClassifier(tiny_mlp, **params).fit(X[:100], y[:100])


# -- networks coming in ------------------------------------------------------------------------
def test_fitted_skorch_net_is_used_as_trained_and_not_modified(digits_data):
    X, y, X_test, _ = digits_data
    net = NeuralNetClassifier(
        MLP,
        module__input_shape=(64,),
        module__n_classes=10,
        criterion=nn.CrossEntropyLoss,
        max_epochs=5,
        lr=0.05,
        train_split=None,
        verbose=0,
    ).fit(X, y)
    before = {k: v.clone() for k, v in net.module_.state_dict().items()}
    clf = ConnectivityLaplaceClassifier(net, random_state=0).fit(X, y)
    np.testing.assert_allclose(clf.map_proba(X_test), net.predict_proba(X_test), rtol=1e-5, atol=1e-6)
    assert clf.net_ is None
    for key, value in net.module_.state_dict().items():
        assert torch.equal(value, before[key])
    assert connectivity_sharpness(clf, X, random_state=0) > 0


def test_sharpness_attribute_matches_the_function_and_can_be_skipped(relu_mlp, digits_data):
    X, y, _, _ = digits_data
    clf = _laplace(relu_mlp, X, y, n_sharpness_probes=3, random_state=5)
    from skpcoreset._base import seed_from_random_state

    expected = connectivity_sharpness(relu_mlp, X, n_probes=3, random_state=seed_from_random_state(5))
    np.testing.assert_allclose(clf.connectivity_sharpness_, expected, rtol=1e-10)
    assert _laplace(relu_mlp, X, y, n_sharpness_probes=0).connectivity_sharpness_ is None


def test_full_structure_refuses_too_many_parameters(tiny_mlp, digits_data, monkeypatch):
    from skpcoreset.posthoc.laplace import _curvature

    monkeypatch.setattr(_curvature, "MAX_FULL_PARAMS", 100)
    X, y, _, _ = digits_data
    with pytest.raises(ValueError, match="use 'diag', 'lowrank' or 'rto'"):
        ConnectivityLaplaceClassifier(tiny_mlp, subset_of_weights="all").fit(X[:100], y[:100])


def test_grid_search_over_the_posterior(relu_mlp, digits_data):
    from sklearn.model_selection import GridSearchCV

    X, y, _, _ = digits_data
    search = GridSearchCV(
        ConnectivityLaplaceClassifier(relu_mlp, n_sharpness_probes=0),
        {"parameterization": ["weight", "connectivity"], "prior_precision": [0.1, 10.0]},
        scoring="neg_log_loss",
        cv=2,
    ).fit(X, y)
    assert set(search.best_params_) == {"parameterization", "prior_precision"}
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


def test_wrong_number_of_logits_is_a_clear_error(tiny_mlp, digits_data):
    X, y, _, _ = digits_data
    with pytest.raises(ValueError, match="10 logits but y has 3 classes"):
        ConnectivityLaplaceClassifier(tiny_mlp).fit(X[:60], y[:60] % 3)


def test_convnet_on_images_all_structures(digits_data):
    X, y, X_test, y_test = digits_data
    net = make_net(max_epochs=5, lr=1e-2, module=ConvNet, module__width=8, module__depth=2)
    base = ConnectivityLaplaceClassifier(net, input_shape=(1, 8, 8), random_state=0, n_sharpness_probes=1).fit(X, y)
    module = base.module_
    for params in [
        dict(subset_of_weights="all", hessian_structure="diag"),
        dict(subset_of_weights="all", hessian_structure="lowrank", rank=5),
        dict(subset_of_weights="all", hessian_structure="rto", n_samples=8),
    ]:
        clf = ConnectivityLaplaceClassifier(
            module, input_shape=(1, 8, 8), random_state=0, n_sharpness_probes=1, **params
        )
        proba = clf.fit(X[:100], y[:100]).predict_proba(X_test)
        np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
        assert clf.score(X_test, y_test) > 0.5
    assert base.score(X_test, y_test) > 0.7


def test_resnet_with_batchnorm_on_images():
    rng = np.random.RandomState(0)
    X = rng.rand(60, 3, 8, 8).astype(np.float32)
    y = np.arange(60) % 3
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = CIFARResNet((3, 8, 8), 3, depth=8, width=1).eval()
    for params in [dict(), dict(subset_of_weights="all", hessian_structure="diag")]:
        clf = ConnectivityLaplaceClassifier(module, n_sharpness_probes=1, batch_size=16, **params).fit(X, y)
        proba = clf.predict_proba(X[:10])
        np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
        assert np.all(np.isfinite(clf.posterior_precision_)) and clf.connectivity_sharpness_ > 0


def test_verbose_shows_progress_of_curvature_loops(tiny_mlp, digits_data, capsys):
    X, y, _, _ = digits_data
    ConnectivityLaplaceClassifier(tiny_mlp, hessian_structure="lowrank", rank=2, verbose=1).fit(X[:100], y[:100])
    assert "Lanczos" in capsys.readouterr().err


def test_rto_model_round_trips_through_pickle(tiny_mlp, digits_data):
    X, y, X_test, _ = digits_data
    clf = ConnectivityLaplaceClassifier(tiny_mlp, subset_of_weights="all", hessian_structure="rto", n_samples=4)
    clf.fit(X[:100], y[:100])
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X_test), clf.predict_proba(X_test))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_matches_cpu(tiny_mlp, digits_data):
    X, y, X_test, _ = digits_data
    cpu = ConnectivityLaplaceClassifier(tiny_mlp, n_sharpness_probes=1).fit(X, y)
    gpu = ConnectivityLaplaceClassifier(tiny_mlp, n_sharpness_probes=1, device="cuda").fit(X, y)
    np.testing.assert_allclose(gpu.predict_proba(X_test), cpu.predict_proba(X_test), rtol=1e-6, atol=1e-8)


# -- the peer library --------------------------------------------------------------------------
def test_weight_laplace_matches_laplace_torch(relu_mlp, digits_data):
    laplace = pytest.importorskip("laplace")
    X, y, X_test, _ = digits_data
    ours = _laplace(relu_mlp, X, y, parameterization="weight", prior_precision=0.5).predict_proba(X_test)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.as_tensor(X).double(), torch.as_tensor(y)), batch_size=128
    )
    la = laplace.Laplace(
        copy.deepcopy(relu_mlp),
        "classification",
        subset_of_weights="last_layer",
        hessian_structure="full",
        prior_precision=0.5,
    )
    la.fit(loader)
    theirs = la(torch.as_tensor(X_test).double(), pred_type="glm", link_approx="probit").detach().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-8)


def test_rescale_layers_preserves_the_relu_function_and_leaves_the_input_alone(relu_mlp, digits_data):
    X = torch.as_tensor(digits_data[0][:50], dtype=torch.float64)
    before = [p.clone() for p in relu_mlp.parameters()]
    rescaled = rescale_layers(relu_mlp, "stages.0.1", "stages.1.0", 4.0)
    torch.testing.assert_close(rescaled(X), relu_mlp(X))
    assert torch.equal(rescaled.stages[0][1].weight, 4.0 * relu_mlp.stages[0][1].weight)
    assert all(torch.equal(a, b) for a, b in zip(before, relu_mlp.parameters(), strict=True))
    with pytest.raises(ValueError, match="positive"):
        rescale_layers(relu_mlp, "stages.0.1", "stages.1.0", -1.0)


# -- issue 18.7 / 19: silent re-training, silent harm, one copy of the posterior ----------------
def test_cloning_a_fitted_net_into_a_template_warns_and_frozen_estimator_does_not(digits_data):
    import warnings

    from sklearn.base import clone
    from sklearn.frozen import FrozenEstimator

    from skpcoreset.posthoc import GeometricEnsembleInfluence

    X, y, _, _ = digits_data
    net = make_net(max_epochs=1, module__hidden_sizes=(8,)).fit(X[:50], y[:50])
    for cls in (ConnectivityLaplaceClassifier, GeometricEnsembleInfluence):
        with pytest.warns(UserWarning, match="FrozenEstimator"):
            clone(cls(net))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert getattr(clone(cls(FrozenEstimator(net))).net, "estimator", None) is net
            clone(cls(net.module_))
            clone(cls(make_net(max_epochs=1)))


def test_a_posterior_that_hurts_the_map_is_flagged_on_held_out_data(digits_data):
    """A Laplace posterior can make a good net worse (issue 18: digits MLP NLL 0.111 -> 0.717)."""
    from skpcoreset.exceptions import NoBenefitWarning

    X, y, _, _ = digits_data
    net = make_net(max_epochs=30, lr=1e-2, module__hidden_sizes=(32,))
    with pytest.warns(NoBenefitWarning, match="did not beat the map"):
        hurt = ConnectivityLaplaceClassifier(net, prior_precision=1e-2, n_sharpness_probes=0, random_state=0).fit(X, y)
    scores = hurt.validation_scores_
    assert scores["laplace"]["nll"] > scores["map"]["nll"]
    tuned = ConnectivityLaplaceClassifier(net, n_sharpness_probes=0, random_state=0)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuned.fit(X, y)
    benefit = tuned.validation_scores_["laplace"]["nll"] < tuned.validation_scores_["map"]["nll"]
    assert benefit != any(issubclass(w.category, NoBenefitWarning) for w in caught)
    assert tuned.validation_scores_["laplace"]["nll"] < scores["laplace"]["nll"]  # 'cv' avoids the harmful prior
    assert tuned.validation_scores_["laplace"]["nll"] <= tuned.validation_scores_["map"]["nll"] + 0.01
    no_check = ConnectivityLaplaceClassifier(net, prior_precision=1.0, validation_fraction=0.0, n_sharpness_probes=0)
    assert no_check.fit(X, y).validation_scores_ is None
    with pytest.raises(ValueError, match="validation_fraction"):
        ConnectivityLaplaceClassifier(net, validation_fraction=0.0).fit(X, y)


def test_posterior_precision_is_stored_once(tiny_mlp, digits_data):
    """Issue 19: posterior_precision_ was a second copy of the curvature (pickle 26.7 MB for 20.0 MB)."""
    X, y, _, _ = digits_data
    clf = ConnectivityLaplaceClassifier(
        tiny_mlp, subset_of_weights="all", prior_precision=2.0, validation_fraction=0.0, n_sharpness_probes=0
    ).fit(X[:100], y[:100])
    P = clf.n_posterior_params_
    assert "posterior_precision_" not in vars(clf)
    np.testing.assert_allclose(clf.posterior_precision_, clf.curvature_.matrix.numpy() + 2.0 * np.eye(P))
    one_copy = P * P * 8
    size = len(pickle.dumps(clf))
    assert size < 0.75 * one_copy, (size, one_copy)  # the curvature's upper triangle, nothing more
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(restored.posterior_precision_, clf.posterior_precision_)


def test_one_standard_error_rule_needs_gains_beyond_their_noise():
    from skpcoreset._holdout import beats_by_one_standard_error

    rng = np.random.RandomState(0)
    assert beats_by_one_standard_error(0.1 + 0.01 * rng.randn(50))
    assert not beats_by_one_standard_error(0.01 + rng.randn(24))  # wine-sized split: noise
    assert not beats_by_one_standard_error(-0.1 + 0.01 * rng.randn(50))
    assert not beats_by_one_standard_error([0.5])
