"""Bridge networks vs deep ensembles, all measured in one run: accuracy, NLL, ECE, FLOPs, DEE.

One :class:`~skpcoreset.ensemble.BridgeEnsembleClassifier` with ``n_modes`` modes is fitted per
data set. Its modes give the deep ensembles DE-1 .. DE-n (same data, same training budget), its
curves the Bezier-midpoint ensembles (mode 0 + k true midpoints, a full forward pass each) and
its Type I bridges the "Single + k bridges" ensembles (mode 0 + k bridges, ``1 + k c`` passes).
The deep-ensemble equivalent (DEE) of every row interpolates the DE NLLs of this run, on the raw
NLL and, as in the paper, on the calibrated NLL (cNLL: one temperature per ensemble, applied to
every member's log-probabilities, fitted on a validation split disjoint from the test split).
FLOPs are counted from the layers that run (``flops_``), relative to one base network.

Bridge-training throughput is compared with a hand-written loop doing exactly the same work per
batch (mixup, frozen trunk and target forward passes, bridge step), interleaved over rounds.

Data sets: ``digits`` (sklearn, flat 64 features, MLP) and ``fashion`` / ``mnist`` / ``cifar10``
(``shared/data/*.npz`` subsets; ConvNet-3 with batch norm, tail = last conv block + head).

Usage: ``python benchmarks/bridge.py [--datasets digits fashion] [--device cpu] [--n-train 4000]
[--epochs 8] [--quick]``; on a GPU, e.g. ``--device cuda --datasets fashion cifar10 --n-train 20000
--epochs 30``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import timed, write_results  # noqa: E402
from skpcoreset import make_net  # noqa: E402
from skpcoreset._base import make_generator  # noqa: E402
from skpcoreset._train import predict_batched  # noqa: E402
from skpcoreset.datasets import find_data_file, load_npz_images  # noqa: E402
from skpcoreset.ensemble import BridgeEnsembleClassifier, deep_ensemble_equivalent  # noqa: E402
from skpcoreset.ensemble._bridge import BridgeTrainer  # noqa: E402
from skpcoreset.metrics import evaluate_proba, negative_log_likelihood  # noqa: E402
from skpcoreset.nets import ConvNet  # noqa: E402

IMAGE_FILES = {"fashion": "fashion_mnist.npz", "mnist": "mnist.npz", "cifar10": "cifar10.npz"}


def load(name: str, quick: bool, sizes: tuple[int, int], image_epochs: int, optimizer: str, bridge_epochs=None):
    """(X_train, y_train, X_test, y_test, estimator) for one data set."""
    if name == "digits":
        X, y = load_digits(return_X_y=True)
        order = np.random.RandomState(0).permutation(len(y))
        X, y = (X[order] / 16.0).astype(np.float32), y[order]
        epochs = 3 if quick else 30
        net = make_net(max_epochs=epochs, lr=1e-3, batch_size=64, module__hidden_sizes=(128, 128))
        return (
            X[:1200],
            y[:1200],
            X[1200:],
            y[1200:],
            BridgeEnsembleClassifier(net, n_modes=5, n_bridges=None, curve_max_epochs=epochs, bridge_max_epochs=epochs),
        )
    path = find_data_file(IMAGE_FILES[name])
    if path is None:
        raise FileNotFoundError(f"{IMAGE_FILES[name]} is not in shared/data (nothing is downloaded).")
    n_train, n_test = (500, 300) if quick else sizes
    data = load_npz_images(path, n_train=n_train, n_test=n_test, random_state=0)
    epochs = 1 if quick else image_epochs
    # 'sgd' is the paper's optimiser (momentum 0.9, weight decay 5e-4), at a constant rate here
    training = {
        "adam": {"lr": 1e-3},
        "sgd": {"lr": 0.05, "optimizer": torch.optim.SGD, "optimizer__momentum": 0.9, "optimizer__weight_decay": 5e-4},
    }
    net = make_net(
        ConvNet, max_epochs=epochs, batch_size=128, module__width=32, module__norm="batchnorm", **training[optimizer]
    )
    clf = BridgeEnsembleClassifier(
        net,
        n_modes=5,
        n_bridges=None,
        tail_stages=2,
        curve_max_epochs=epochs,
        bridge_max_epochs=epochs if quick else bridge_epochs,
    )
    return data.X_train, data.y_train, data.X_test, data.y_test, clf


def mode_proba(clf, X: torch.Tensor) -> np.ndarray:
    """Softmax of every mode, shape (n_modes, N, C)."""
    stacked = predict_batched(lambda xb: torch.stack([m(xb).softmax(-1) for m in clf.modes_], 1), X)
    return stacked.transpose(0, 1).double().cpu().numpy()


def tempered(members: np.ndarray, temperature: float) -> np.ndarray:
    """Mean over members of softmax(log p_m / T), shape (N, C)."""
    logits = np.log(np.clip(members, 1e-12, None)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    proba = np.exp(logits)
    return (proba / proba.sum(-1, keepdims=True)).mean(0)


def fit_temperature(members: np.ndarray, y) -> float:
    def nll(log_t):
        return negative_log_likelihood(y, tempered(members, np.exp(log_t)))

    return float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


def ensembles(clf, X) -> dict[str, tuple[float, np.ndarray]]:
    """Every compared ensemble: name -> (FLOPs ratio, member probabilities (M, N, C))."""
    X_t = clf._to_tensor(clf._validate_X(X, reset=False))
    modes, midpoints = mode_proba(clf, X_t), clf.midpoint_proba(X)
    out = {f"DE-{k}": (float(k), modes[:k]) for k in range(1, len(modes) + 1)}
    for k in range(1, len(clf.bridges_) + 1):
        out[f"Single + {k} bridge(s)"] = (clf.cost(n_bridges=k), clf.member_proba(X, n_bridges=k))
    for k in range(1, len(midpoints) + 1):
        out[f"Single + {k} Bezier midpoint(s)"] = (float(1 + k), np.concatenate([modes[:1], midpoints[:k]]))
    return out


def score_rows(clf, X_valid, y_valid, X_test, y_test) -> list[dict]:
    valid, test = ensembles(clf, X_valid), ensembles(clf, X_test)
    rows = []
    for name, (flops_ratio, members) in test.items():
        temperature = fit_temperature(valid[name][1], y_valid)
        rows.append(
            {
                "model": name,
                "flops_ratio": flops_ratio,
                **evaluate_proba(y_test, members.mean(0)),
                "temperature": temperature,
                "cnll": negative_log_likelihood(y_test, tempered(members, temperature)),
            }
        )
    de_nlls = {int(row["model"][3:]): row["nll"] for row in rows if row["model"].startswith("DE-")}
    de_cnlls = {int(row["model"][3:]): row["cnll"] for row in rows if row["model"].startswith("DE-")}
    for row in rows:
        row["dee"] = deep_ensemble_equivalent(row["nll"], de_nlls)
        row["dee_cnll"] = deep_ensemble_equivalent(row["cnll"], de_cnlls)
    return rows


def raw_bridge_loop(bridge, sources, split, target, X, spec, seed, mixup_alpha):
    """The reference: the same per-batch work as BridgeTrainer, written by hand."""
    optimizer = spec.optimizer(bridge.parameters(), lr=spec.lr, **spec.optimizer_kwargs)
    generator, rng = make_generator(seed, X.device), np.random.RandomState(seed)
    for _ in range(spec.max_epochs):
        bridge.train()
        order = torch.randperm(len(X), generator=generator, device=X.device)
        for start in range(0, len(X) - 1, spec.batch_size):
            xb = X[order[start : start + spec.batch_size]]
            weight = torch.as_tensor(rng.beta(mixup_alpha, mixup_alpha, size=len(xb)), dtype=xb.dtype)
            weight = weight.to(X.device).view(-1, *[1] * (xb.dim() - 1))
            partner = torch.randperm(len(xb), generator=generator, device=X.device)
            xb = weight * xb + (1 - weight) * xb[partner]
            with torch.no_grad():
                features = [split.features(source, xb) for source in sources]
                target_log_proba = F.log_softmax(target(xb), -1)
            log_q = F.log_softmax(bridge(features), -1)
            loss = F.kl_div(log_q, target_log_proba, log_target=True, reduction="batchmean")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def bridge_throughput(clf, X_train, rounds: int) -> dict:
    """Samples/s of BridgeTrainer and of the raw loop (one bridge epoch each, interleaved)."""
    X = clf._to_tensor(clf._validate_X(X_train, reset=False))
    spec = clf._side_spec(1, clf._mode_flops, 1e-5)
    sources, split, target = clf._sources(1), clf.split_, clf.midpoints_[0]
    rates = {"raw": [], "ours": []}
    for r in range(rounds):
        bridge = clf._new_bridge(1, X[:2], seed=r)
        _, seconds = timed(raw_bridge_loop, bridge, sources, split, target, X, spec, r, clf.mixup_alpha)
        rates["raw"].append(len(X) / seconds)
        bridge = clf._new_bridge(1, X[:2], seed=r)
        trainer = BridgeTrainer(
            bridge,
            spec,
            sources=sources,
            split=split,
            target=target,
            repulsion=0.0,
            mixup_alpha=clf.mixup_alpha,
            seed=r,
            generator=make_generator(r, X.device),
        )
        _, seconds = timed(trainer.fit, X)
        rates["ours"].append(len(X) / seconds)
    ratios = [ours / raw for ours, raw in zip(rates["ours"], rates["raw"], strict=True)]
    return {"samples_per_s": rates, "ratio_per_round": ratios, "median_ratio": float(np.median(ratios))}


def run(name: str, args) -> dict:
    X_train, y_train, X_test, y_test, clf = load(
        name, args.quick, (args.n_train, args.n_test), args.epochs, args.optimizer, args.bridge_epochs
    )
    clf.set_params(device=args.device, random_state=0)
    start = time.perf_counter()
    clf.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - start
    # the first third of the test split fits the temperatures, the rest is scored
    n_valid = len(y_test) // 3
    rows = score_rows(clf, X_test[:n_valid], y_test[:n_valid], X_test[n_valid:], y_test[n_valid:])
    for row in rows:
        print(
            f"{name:8s} {row['model']:30s} acc {row['accuracy']:.4f} nll {row['nll']:.4f} "
            f"cnll {row['cnll']:.4f} ece {row['ece']:.4f} flops x{row['flops_ratio']:.2f} "
            f"DEE {row['dee']:.2f} DEE(cNLL) {row['dee_cnll']:.2f}",
            flush=True,
        )
    return {
        "n_train": len(y_train),
        "n_validation": n_valid,
        "n_test": len(y_test) - n_valid,
        "estimator": repr(clf),
        "fit_seconds": fit_seconds,
        "ensemble_strategy": clf.ensemble_strategy_,
        "split": repr(clf.split_),
        "flops": clf.flops_,
        "bridge_fidelity": clf.bridge_fidelity_,
        "rows": rows,
        "bridge_training_throughput": bridge_throughput(clf, X_train, args.rounds),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "fashion"], choices=["digits", *IMAGE_FILES])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-train", type=int, default=4000, help="training images per image data set")
    parser.add_argument("--n-test", type=int, default=2000, help="test images per image data set")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of modes, curves and bridges on images")
    parser.add_argument("--bridge-epochs", type=int, default=None, help="bridge epochs on images (default: --epochs)")
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam", help="of the image networks")
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {name: run(name, args) for name in args.datasets}
    if args.quick:
        return  # smoke test: figures of this size are not worth keeping
    write_results(
        f"bridge_{torch.device(args.device).type}{args.tag}",
        results,
        device=args.device,
        notes="One fit per data set; DE-k are the first k modes of that fit, so DEE compares like with like. "
        "flops_ratio = counted Linear/Conv2d FLOPs of the ensemble / one base network. cnll: NLL after one "
        "temperature per ensemble fitted on the first third of the test split (scored on the other two thirds).",
    )


if __name__ == "__main__":
    main()
