"""Connectivity Laplace vs the ordinary Laplace approximation vs laplace-torch, same model and data.

Digits (CPU, always): an MLP 64-128-10 trained once; on the same weights and the same split,
MAP, our last-layer full Laplace in weight coordinates ('weight', the ordinary LA), our
connectivity Laplace ('connectivity', CL) and laplace-torch's
``Laplace(model, 'classification', subset_of_weights='last_layer', hessian_structure='full')``
with the same prior precision: NLL, ECE, accuracy, fit and predict time (median of
``--repeats`` runs), and the largest difference between our 'weight' predictive and
laplace-torch's (the correctness check). Then the rescaling experiment of DESIGN.md 2.1: layer 1
times a and layer 2 times 1/a (a in 0.25, 1, 4) -- the same function -- and every method again,
with connectivity sharpness and tr(NTK)/N. Also the scalable structures (diag, Lanczos, RTO,
all weights) and tuned prior precisions.

Images (``--images``): a ConvNet trained on an MNIST subset, last-layer LA/CL and laplace-torch,
with MNIST-test vs Fashion-MNIST-test out-of-distribution AUROC (predictive entropy). On CPU it
runs at a reduced size; the GPU-size run is left for a machine with CUDA (``--device cuda``).

Usage: ``python -m benchmarks.connectivity_laplace [--images] [--device cpu] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import copy
import statistics

import numpy as np
import torch

from benchmarks._common import timed, write_results
from skpcoreset._base import make_generator
from skpcoreset._train import Trainer, TrainSpec
from skpcoreset.datasets import find_data_file, load_npz_images
from skpcoreset.metrics import accuracy, expected_calibration_error, negative_log_likelihood
from skpcoreset.nets import MLP, ConvNet
from skpcoreset.posthoc.laplace import ConnectivityLaplaceClassifier, connectivity_sharpness, rescale_layers
from skpcoreset.posthoc.laplace._sharpness import exact_tangent_kernel_trace, tangent_kernel_trace

SCALES = (0.25, 1.0, 4.0)


# -- problems -----------------------------------------------------------------------------------
def digits_problem(device):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    torch.manual_seed(0)
    module = MLP((64,), 10, hidden_sizes=(128,)).to(device)
    train(module, X_train, y_train, epochs=30, device=device)
    return module, X_train, y_train, X_test, y_test


def train(module, X, y, *, epochs, device, lr=1e-3, batch_size=64):
    spec = TrainSpec(max_epochs=epochs, batch_size=batch_size, lr=lr)
    tensors = (torch.as_tensor(X, device=device), torch.as_tensor(y, device=device))
    Trainer(module, spec, generator=make_generator(0, device)).fit(*tensors)
    return module.eval()


# -- methods ------------------------------------------------------------------------------------
def scores(y, proba):
    return {
        "nll": negative_log_likelihood(y, proba),
        "ece": expected_calibration_error(y, proba),
        "accuracy": accuracy(y, proba),
    }


def median_timed(fn, repeats):
    runs = [timed(fn) for _ in range(repeats)]
    return runs[-1][0], statistics.median(seconds for _, seconds in runs)


def interleaved(fns: dict, repeats: int):
    """Run every function once per round, round after round, so machine load hits all alike.

    Returns the last results and the per-round seconds of each function.
    """
    results, seconds = {}, {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            results[name], elapsed = timed(fn)
            seconds[name].append(elapsed)
    return results, seconds


def ours(module, *, device, **params):
    # the whole (X, y) for the curvature, as laplace-torch uses it (no held-out benefit check)
    params = {"prior_precision": 1.0, "validation_fraction": 0.0, "random_state": 0, "device": device, **params}
    return ConnectivityLaplaceClassifier(module, **params)


def run_ours(module, X, y, X_test, *, repeats, device, **params):
    clf, fit_s = median_timed(lambda: ours(module, device=device, **params).fit(X, y), repeats)
    proba, predict_s = median_timed(lambda: clf.predict_proba(X_test), repeats)
    return clf, proba, fit_s, predict_s


def laplace_torch_fit(module, X, y, *, prior_precision, device):
    from laplace import Laplace

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.as_tensor(X, device=device), torch.as_tensor(y, device=device)),
        batch_size=256,
    )
    la = Laplace(
        copy.deepcopy(module),
        "classification",
        subset_of_weights="last_layer",
        hessian_structure="full",
        prior_precision=prior_precision,
    )
    la.fit(loader, progress_bar=False)
    return la


def laplace_torch_proba(la, X, device):
    return la(torch.as_tensor(X, device=device), pred_type="glm", link_approx="probit").detach().cpu().double().numpy()


def run_laplace_torch(module, X, y, X_test, *, prior_precision, repeats, device):
    la, fit_s = median_timed(
        lambda: laplace_torch_fit(module, X, y, prior_precision=prior_precision, device=device), repeats
    )
    proba, predict_s = median_timed(lambda: laplace_torch_proba(la, X_test, device), repeats)
    return la, proba, fit_s, predict_s


def laplace_torch_available() -> bool:
    try:
        import laplace  # noqa: F401
    except ImportError:
        return False
    return True


def map_proba(module, X, device):
    with torch.no_grad():
        return module(torch.as_tensor(X, device=device)).softmax(-1).double().cpu().numpy()


def compare_methods(module, X, y, X_test, y_test, *, prior_precision, repeats, device):
    """MAP, our weight LA, our CL and laplace-torch on the same weights and data.

    Timings are interleaved round by round; our fits skip the sharpness diagnostic here so all
    three do the same work (``fit_s_with_sharpness`` is the default fit with 10 probes).
    """
    common = dict(device=device, prior_precision=prior_precision, validation_fraction=0.0, n_sharpness_probes=0)
    fits = {
        "ours_weight_la": lambda: ours(module, parameterization="weight", **common).fit(X, y),
        "ours_connectivity_la": lambda: ours(module, parameterization="connectivity", **common).fit(X, y),
    }
    if laplace_torch_available():
        fits["laplace_torch"] = lambda: laplace_torch_fit(module, X, y, prior_precision=prior_precision, device=device)
    fitted, fit_seconds = interleaved(fits, repeats)
    predicts = {name: (lambda clf=clf: clf.predict_proba(X_test)) for name, clf in fitted.items()}
    if "laplace_torch" in fitted:
        predicts["laplace_torch"] = lambda: laplace_torch_proba(fitted["laplace_torch"], X_test, device)
    probas, predict_seconds = interleaved(predicts, repeats)

    rows = {"map": scores(y_test, map_proba(module, X_test, device))}
    for name, proba in probas.items():
        rows[name] = {
            **scores(y_test, proba),
            "fit_s": statistics.median(fit_seconds[name]),
            "predict_s": statistics.median(predict_seconds[name]),
        }
    _, with_sharpness = median_timed(lambda: ours(module, device=device, parameterization="weight").fit(X, y), 1)
    rows["ours_weight_la"]["fit_s_with_sharpness"] = with_sharpness
    if "laplace_torch" in probas:
        rows["agreement_max_abs_proba_diff_weight_vs_laplace_torch"] = float(
            np.abs(probas["ours_weight_la"] - probas["laplace_torch"]).max()
        )
        for stage, seconds in [("fit", fit_seconds), ("predict", predict_seconds)]:
            ratios = [a / b for a, b in zip(seconds["laplace_torch"], seconds["ours_weight_la"], strict=True)]
            rows[f"speedup_{stage}_ours_weight_vs_laplace_torch_median_of_rounds"] = statistics.median(ratios)
    return rows


def rescaling_experiment(module, X, y, X_test, y_test, *, prior_precision, device):
    """Every method, CS and tr(NTK)/N on function-preserving rescalings of the same network."""
    out = {}
    X_t = torch.as_tensor(X, device=device)
    for a in SCALES:
        net = rescale_layers(module, "stages.0.1", "stages.1.0", a)
        ones = {n: torch.ones_like(p) for n, p in net.named_parameters()}
        row = {
            "connectivity_sharpness": connectivity_sharpness(net, X, n_probes=20, random_state=0),
            "connectivity_sharpness_exact": exact_tangent_kernel_trace(
                net, X_t, {n: p.detach() for n, p in net.named_parameters()}
            ),
            "ntk_trace_per_sample": tangent_kernel_trace(
                net, X_t, ones, n_probes=20, batch_size=256, generator=make_generator(0, device)
            ),
            "map_nll": negative_log_likelihood(y_test, map_proba(net, X_test, device)),
        }
        for name, parameterization in [("weight_la", "weight"), ("connectivity_la", "connectivity")]:
            clf = ConnectivityLaplaceClassifier(
                net,
                parameterization=parameterization,
                prior_precision=prior_precision,
                validation_fraction=0.0,
                random_state=0,
                device=device,
            ).fit(X, y)
            row[f"{name}_nll"] = negative_log_likelihood(y_test, clf.predict_proba(X_test))
        if laplace_torch_available():
            _, proba, _, _ = run_laplace_torch(
                net, X, y, X_test, prior_precision=prior_precision, repeats=1, device=device
            )
            row["laplace_torch_nll"] = negative_log_likelihood(y_test, proba)
        out[f"a={a}"] = row
    return out


def scalable_variants(module, X, y, X_test, y_test, *, device):
    """The other curvature structures and tuned priors on the same network."""
    variants = {
        "cl_last_layer_diag": dict(hessian_structure="diag"),
        "cl_last_layer_lowrank10": dict(hessian_structure="lowrank", rank=10),
        "cl_last_layer_rto32": dict(hessian_structure="rto", n_samples=32),
        "cl_last_layer_full_mc": dict(link_approx="mc"),
        "cl_all_diag": dict(subset_of_weights="all", hessian_structure="diag"),
        "cl_all_lowrank10": dict(subset_of_weights="all", hessian_structure="lowrank", rank=10),
        "cl_all_rto32": dict(subset_of_weights="all", hessian_structure="rto", n_samples=32),
        "weight_last_layer_full_marglik": dict(parameterization="weight", prior_precision="marglik"),
        "cl_last_layer_full_cv": dict(prior_precision="cv"),
        "weight_last_layer_full_cv": dict(parameterization="weight", prior_precision="cv"),
    }
    rows = {}
    for name, params in variants.items():
        clf, proba, fit_s, predict_s = run_ours(
            module, X, y, X_test, repeats=1, device=device, n_sharpness_probes=0, **params
        )
        rows[name] = {
            **scores(y_test, proba),
            "prior_precision": clf.prior_precision_,
            "fit_s": fit_s,
            "predict_s": predict_s,
        }
    return rows


# -- images with an out-of-distribution split ---------------------------------------------------
def ood_auroc(proba_in, proba_out):
    from sklearn.metrics import roc_auc_score

    def entropy(p):
        return -(p * np.log(np.clip(p, 1e-12, None))).sum(1)

    scores_ = np.concatenate([entropy(proba_in), entropy(proba_out)])
    labels = np.concatenate([np.zeros(len(proba_in)), np.ones(len(proba_out))])
    return float(roc_auc_score(labels, scores_))


def image_experiment(*, n_train, n_test, width, epochs, repeats, device, prior_precision):
    mnist, fashion = find_data_file("mnist.npz"), find_data_file("fashion_mnist.npz")
    if mnist is None or fashion is None:
        return {"skipped": "mnist.npz / fashion_mnist.npz not found in shared/data"}
    data = load_npz_images(mnist, n_train=n_train, n_test=n_test, random_state=0)
    ood = load_npz_images(fashion, n_train=1, n_test=n_test, random_state=0).X_test
    torch.manual_seed(0)
    module = ConvNet((1, 28, 28), 10, width=width, depth=3).to(device)
    _, train_s = timed(train, module, data.X_train, data.y_train, epochs=epochs, device=device, lr=1e-3)
    rows = {"train_s": train_s, "n_train": n_train, "n_test": n_test, "convnet_width": width}
    last_layer = compare_methods(
        module,
        data.X_train,
        data.y_train,
        data.X_test,
        data.y_test,
        prior_precision=prior_precision,
        repeats=repeats,
        device=device,
    )
    rows.update(last_layer)
    map_in = map_proba(module, data.X_test, device)
    rows["map"]["ood_auroc"] = ood_auroc(map_in, map_proba(module, ood, device))
    for name in ("ours_weight_la", "ours_connectivity_la"):
        clf = ours(
            module,
            device=device,
            prior_precision=prior_precision,
            n_sharpness_probes=0,
            parameterization=name.split("_")[1],
        ).fit(data.X_train, data.y_train)
        rows[name]["ood_auroc"] = ood_auroc(clf.predict_proba(data.X_test), clf.predict_proba(ood))
    if "laplace_torch" in rows:
        la = laplace_torch_fit(module, data.X_train, data.y_train, prior_precision=prior_precision, device=device)
        rows["laplace_torch"]["ood_auroc"] = ood_auroc(
            laplace_torch_proba(la, data.X_test, device), laplace_torch_proba(la, ood, device)
        )
    params = dict(subset_of_weights="all", hessian_structure="lowrank", batch_size=64, n_sharpness_probes=0)
    clf, proba, fit_s, predict_s = run_ours(
        module,
        data.X_train,
        data.y_train,
        data.X_test,
        repeats=1,
        device=device,
        prior_precision=prior_precision,
        **params,
    )
    rows["ours_connectivity_la_all_lowrank10"] = {
        **scores(data.y_test, proba),
        "ood_auroc": ood_auroc(proba, clf.predict_proba(ood)),
        "fit_s": fit_s,
        "predict_s": predict_s,
    }
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prior-precision", type=float, default=1.0)
    parser.add_argument("--images", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    module, X, y, X_test, y_test = digits_problem(device)
    results = {
        "digits": {
            "setup": "MLP 64-128-10 (ReLU), Adam 1e-3, 30 epochs, batch 64; stratified 70/30 split "
            f"({len(X)} train / {len(X_test)} test); last layer, full GGN, probit, prior precision "
            f"{args.prior_precision}",
            "methods": compare_methods(
                module, X, y, X_test, y_test, prior_precision=args.prior_precision, repeats=args.repeats, device=device
            ),
            "rescaling": rescaling_experiment(
                module, X, y, X_test, y_test, prior_precision=args.prior_precision, device=device
            ),
            "scalable_variants": scalable_variants(module, X, y, X_test, y_test, device=device),
        }
    }
    if args.images:
        size = (
            dict(n_train=50_000, n_test=10_000, width=128, epochs=10)
            if device.type == "cuda"
            else dict(n_train=2000, n_test=1000, width=16, epochs=5)
        )
        results["mnist_vs_fashion_ood"] = image_experiment(
            repeats=1 if device.type == "cpu" else args.repeats,
            device=device,
            prior_precision=args.prior_precision,
            **size,
        )
    suffix = "cpu" if device.type == "cpu" else "cuda"
    notes = (
        "One run of benchmarks/connectivity_laplace.py; ratios and differences are from this run. laplace-torch "
        f"{_laplace_torch_version()} installed with --no-deps. Method comparison: fits and predictions "
        "interleaved round by round, medians of rounds; our fits there skip connectivity_sharpness_ "
        "(n_sharpness_probes=0) so both libraries do the same work; fit_s_with_sharpness is the default fit."
    )
    write_results(f"laplace_{suffix}", results, device=device, notes=notes)


def _laplace_torch_version() -> str:
    try:
        from importlib.metadata import version

        return version("laplace-torch")
    except Exception:  # noqa: BLE001 -- the version is informative only
        return "not installed"


if __name__ == "__main__":
    main()
