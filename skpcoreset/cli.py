"""Command line: ``python -m skpcoreset demo | synthesize | influence``.

Exit codes: 0 success, 2 bad usage (argparse), 3 missing or invalid data.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

EXIT_OK, EXIT_USAGE, EXIT_DATA = 0, 2, 3


def _table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(_fmt(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _demo_rows(X_train, y_train, X_test, y_test, device):
    """Full-data references, then random vs forward-KL and variational pseudocoresets at 1 and 10 per class."""
    from sklearn.linear_model import LogisticRegression

    from . import DeepEnsembleClassifier, make_net
    from .metrics import evaluate_proba
    from .nets import MLP
    from .pseudocoreset import PseudocoresetSynthesizer

    rows, models = [], {}

    def record(name, model, train_rows, seconds, X_eval=X_test):
        metrics = evaluate_proba(y_test, model.predict_proba(X_eval), model.classes_)
        rows.append({"model": name, "train rows": train_rows, **metrics, "fit_s": seconds})
        models[name] = model

    flat_train, flat_test = X_train.reshape(len(X_train), -1), X_test.reshape(len(X_test), -1)
    start = time.perf_counter()
    baseline = LogisticRegression(max_iter=1000).fit(flat_train, y_train)
    record("logistic regression", baseline, len(y_train), time.perf_counter() - start, flat_test)
    start = time.perf_counter()
    ensemble = DeepEnsembleClassifier(
        make_net(max_epochs=40, lr=1e-2, module__hidden_sizes=(64,)), n_members=5, device=device, random_state=0
    ).fit(flat_train, y_train)
    record("deep ensemble M=5", ensemble, len(y_train), time.perf_counter() - start, flat_test)
    for n_per_class in (1, 10):
        for divergence in ("random", "forward_kl", "variational"):
            start = time.perf_counter()
            synthesizer = PseudocoresetSynthesizer(
                divergence=divergence,
                n_per_class=n_per_class,
                net=make_net(MLP),  # an MLP on the 8x8 images: seconds on a laptop CPU
                device=device,
                random_state=0,
            ).fit(X_train, y_train)
            name = f"{divergence} pseudocoreset {n_per_class}/class"
            record(name, synthesizer, len(synthesizer.coreset_y_), time.perf_counter() - start)
    return rows, models


def _demo_figures(models, X_test, y_test, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plotting import CoresetDisplay, ReliabilityDisplay

    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    CoresetDisplay.from_estimator(models["random pseudocoreset 10/class"], ax=axes[0])
    axes[0].set_title("random real images, 10/class")
    CoresetDisplay.from_estimator(models["forward_kl pseudocoreset 10/class"], ax=axes[1])
    axes[1].set_title("forward-KL pseudocoreset, 10/class")
    paths.append(out / "coreset.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, name in zip(axes, ["random pseudocoreset 1/class", "forward_kl pseudocoreset 1/class"], strict=False):
        ReliabilityDisplay.from_estimator(models[name], X_test, y_test, name=name, ax=ax)
    flat_test = X_test.reshape(len(X_test), -1)
    ReliabilityDisplay.from_estimator(
        models["deep ensemble M=5"], flat_test, y_test, name="deep ensemble (all data)", ax=axes[2]
    )
    paths.append(out / "reliability.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)
    plt.close("all")
    return paths


def cmd_demo(args) -> int:
    from sklearn.model_selection import train_test_split

    from .datasets import load_digits_images

    X, y = load_digits_images(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"skpcoreset demo on scikit-learn's digits: {len(X_train)} train / {len(X_test)} test 8x8 images")
    print("Bayesian pseudocoresets: a posterior sampled on 10 or 100 synthetic images, predictions by model averaging")
    rows, models = _demo_rows(X_train, y_train, X_test, y_test, args.device)
    print(_table(rows, ["model", "train rows", "accuracy", "nll", "ece", "brier", "fit_s"]))
    for path in _demo_figures(models, X_test, y_test, out):
        print(f"wrote {path}")
    return EXIT_OK


def _load_training_data(args):
    from .datasets import load_npz_images

    path = Path(args.data)
    if not path.is_file():
        raise FileNotFoundError(f"--data {path}: no such file (skpcoreset never downloads data)")
    data = load_npz_images(path, n_train=args.n_train, n_test=args.n_test, random_state=args.seed, layout=args.layout)
    if args.verbose:
        channels, height, width = data.X_train.shape[1:]
        print(f"read {len(data.y_train)} training images of {channels}x{height}x{width} (channels x height x width)")
    return data


def cmd_synthesize(args) -> int:
    from .metrics import evaluate_proba
    from .pseudocoreset import PseudocoresetSynthesizer

    data = _load_training_data(args)
    synthesizer = PseudocoresetSynthesizer(
        divergence=args.divergence,
        n_per_class=args.n_per_class,
        n_iterations=args.iterations,
        device=args.device,
        random_state=args.seed,
        verbose=args.verbose,
    )
    start = time.perf_counter()
    coreset_X, coreset_y = synthesizer.fit_resample(data.X_train, data.y_train)
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, X=np.asarray(coreset_X, dtype=np.float32), y=np.asarray(coreset_y))
    print(
        f"{len(coreset_y)} synthetic samples ({args.n_per_class} per class, {args.divergence}) "
        f"in {seconds:.1f} s -> {out}"
    )
    if len(data.y_test):
        metrics = evaluate_proba(data.y_test, synthesizer.predict_proba(data.X_test), synthesizer.classes_)
        print("Bayesian model average on the test split: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return EXIT_OK


def cmd_influence(args) -> int:
    import csv

    from .posthoc.influence import GeometricEnsembleInfluence

    data = _load_training_data(args)
    model = GeometricEnsembleInfluence(
        method=args.method, n_members=args.n_members, device=args.device, random_state=args.seed, verbose=args.verbose
    ).fit(data.X_train, data.y_train)
    flagged = model.predict(data.X_train, data.y_train) == -1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "label", "self_influence", "flagged"])
        for row in zip(range(len(flagged)), data.y_train, model.self_influence_, flagged.astype(int), strict=True):
            writer.writerow(row)
    print(f"self-influence of {len(flagged)} samples ({args.method}); {int(flagged.sum())} flagged -> {out}")
    return EXIT_OK


def _add_data_arguments(parser):
    parser.add_argument("--data", required=True, help="an .npz with X_train, y_train, X_test, y_test (uint8 images)")
    parser.add_argument("--out", required=True, help="output file")
    parser.add_argument("--n-train", type=int, default=None, help="use a random subset of this many training images")
    parser.add_argument("--n-test", type=int, default=None, help="use a random subset of this many test images")
    parser.add_argument(
        "--layout",
        default="auto",
        choices=["auto", "NHWC", "NCHW", "NHW"],
        help="layout of the image arrays; auto reads it from their shape and stops when it is ambiguous",
    )
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda', 'cuda:N' or 'auto'")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--verbose", type=int, default=1, help="0 silences the progress bars")


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.ArgumentDefaultsHelpFormatter  # --help shows every default
    parser = argparse.ArgumentParser(prog="python -m skpcoreset", description=__doc__, formatter_class=formatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="run the flagship demo on bundled digits and print a report", formatter_class=formatter
    )
    demo.add_argument("--out", default="demo_output", help="folder for the demo's figures")
    demo.add_argument("--device", default="cpu", help="'cpu', 'cuda', 'cuda:N' or 'auto'")
    demo.set_defaults(func=cmd_demo)

    synthesize = sub.add_parser(
        "synthesize", help="learn a Bayesian pseudocoreset of an image .npz", formatter_class=formatter
    )
    _add_data_arguments(synthesize)
    synthesize.add_argument(
        "--n-per-class", "--ipc", dest="n_per_class", type=int, default=10, help="synthetic images per class"
    )
    synthesize.add_argument(
        "--divergence",
        default="forward_kl",
        choices=["forward_kl", "wasserstein", "reverse_kl", "function_space", "variational", "random"],
        help="how the coreset posterior is matched to the data's ('random': a random real subset)",
    )
    synthesize.add_argument("--iterations", type=int, default=200, help="synthesis iterations")
    synthesize.set_defaults(func=cmd_synthesize)

    influence = sub.add_parser(
        "influence", help="self-influence scores (mislabel detection) of an image .npz", formatter_class=formatter
    )
    _add_data_arguments(influence)
    influence.add_argument(
        "--method", default="gex", choices=["gex", "loss", "grad_norm", "tracin"], help="the influence score"
    )
    influence.add_argument(
        "--n-members", "--members", dest="n_members", type=int, default=8, help="geometric-ensemble members"
    )
    influence.set_defaults(func=cmd_influence)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DATA
