"""Bayesian pseudocoresets: BMA accuracy / NLL / ECE, synthesis time and peak memory per divergence,
and the speed of one forward-KL / Wasserstein step against a straightforward PyTorch version.

    python -m benchmarks.pseudocoreset                       # digits (CPU), all divergences
    python -m benchmarks.pseudocoreset --datasets digits mnist fashion_mnist --n-train 2000
    python -m benchmarks.pseudocoreset --device cuda --datasets cifar10 --steps-only

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU each configuration runs in
a forked child and reports its resident-set high-water mark above its starting size.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import multiprocessing as mp
import resource
import weakref

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from benchmarks._common import timed, write_results
from skpcoreset import make_net
from skpcoreset._base import seed_from_random_state
from skpcoreset.datasets import find_data_file, load_npz_images
from skpcoreset.metrics import evaluate_proba
from skpcoreset.nets import MLP, ConvNet
from skpcoreset.pseudocoreset import PseudocoresetSynthesizer
from skpcoreset.pseudocoreset._divergences import DIVERGENCES, SynthesisProblem
from skpcoreset.pseudocoreset._functional import FlatModel, inner_sgd
from skpcoreset.pseudocoreset._samplers import sample_posterior
from skpcoreset.pseudocoreset._variational import (
    LastLayerPosterior,
    fresh_parameters,
    last_layer_features,
    negative_elbo,
)

DIVERGENCE_ORDER = ["random", "reverse_kl", "wasserstein", "forward_kl", "function_space", "variational"]

# The dataset-distillation protocol: networks trained from scratch on the coreset alone (MAP,
# full batch, SGD momentum 0.9 with cosine decay, weight decay 5e-4), each scored on its own and
# the scores averaged over the seeds; the transfer network is another architecture than the one
# the coreset was synthesised with.
DISTILL_SEEDS = 3
DISTILL_STEPS = 300
DISTILL_LR = 0.05
TRANSFER_HIDDEN = (256, 256)


# -- data ----------------------------------------------------------------------------------------
def load(name: str, n_train: int, n_test: int, width: int = 128):
    if name == "digits":
        X, y = load_digits(return_X_y=True)
        X_tr, X_te, y_tr, y_te = train_test_split(
            (X / 16).astype(np.float32), y, test_size=0.3, random_state=0, stratify=y
        )
        return X_tr, y_tr, X_te, y_te, {}
    path = find_data_file(f"{name}.npz")
    if path is None:
        return None
    data = load_npz_images(path, n_train=n_train, n_test=n_test, random_state=0)
    if name == "cifar10":
        net = make_net(ConvNet, optimizer=torch.optim.SGD, lr=0.01, batch_size=256, module__width=width)
    else:  # the MNISTs on the CPU: an MLP on flat pixels keeps the benchmark in minutes
        data.X_train = data.X_train.reshape(len(data.X_train), -1)
        data.X_test = data.X_test.reshape(len(data.X_test), -1)
        net = make_net(optimizer=torch.optim.SGD, lr=0.05, batch_size=128)
    return data.X_train, data.y_train, data.X_test, data.y_test, {"net": net}


# -- peak memory ---------------------------------------------------------------------------------
def _return_freed_memory_to_the_os() -> None:
    """Fix glibc's mmap threshold at 64 KiB: large tensors are then mapped and unmapped one by
    one, so the RSS high-water mark follows live tensor memory instead of heap growth."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except OSError:
        pass


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def _in_child(fn, args, queue):
    _return_freed_memory_to_the_os()
    # A forked child inherits its parent's RSS high-water mark; "5" resets it (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = _rss_mib()
    out = fn(*args)
    out["peak_memory_mib"] = _peak_rss_mib() - start
    queue.put(out)


def measure(fn, *args, device: str) -> dict:
    """Run ``fn(*args) -> dict`` and add its peak memory (MiB above the starting level)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn(*args)
        out["peak_memory_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        return out
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_in_child, args=(fn, args, queue))
    child.start()
    out = queue.get()
    child.join()
    return out


# -- accuracy table ------------------------------------------------------------------------------
def fit_and_score(data, divergence, n_per_class, seed, device, params, protocols=True) -> dict:
    X_tr, y_tr, X_te, y_te, extra = data
    torch.set_num_threads(1)
    est = PseudocoresetSynthesizer(
        divergence=divergence,
        n_per_class=n_per_class,
        device=device,
        random_state=seed,
        **extra,
        **params,
    )
    _, seconds = timed(est.fit, X_tr, y_tr)
    scores = evaluate_proba(y_te, est.predict_proba(X_te), classes=est.classes_)
    phases = {f"{phase}_seconds": value for phase, value in est.fit_seconds_.items()}
    out = {"fit_seconds": seconds, **phases, **{k: float(v) for k, v in scores.items()}}
    if protocols:
        out.update(_prefixed("distill", distill_scores(est, est.module_, X_te, y_te, seed)))
        transfer = _transfer_module(est)
        if transfer is not None:
            out.update(_prefixed("transfer", distill_scores(est, transfer, X_te, y_te, seed)))
    return out


def _prefixed(prefix, scores):
    return {f"{prefix}_{k}": v for k, v in scores.items()}


def _transfer_module(est):
    """Another architecture than the synthesiser's: a two-layer MLP of 256 units (flat inputs)."""
    if len(est.input_shape_) != 1:
        return None
    return MLP(est.input_shape_, len(est.classes_), hidden_sizes=TRANSFER_HIDDEN)


def distill_scores(est, module, X_te, y_te, seed) -> dict:
    """Dataset-distillation protocol: ``DISTILL_SEEDS`` networks of ``module``'s architecture
    trained from scratch on the coreset (its soft labels), each scored alone, scores averaged."""
    model = FlatModel(module.double())
    coreset = torch.as_tensor(est.coreset_X_, dtype=torch.float64)
    targets = torch.as_tensor(est.coreset_label_proba_, dtype=torch.float64)
    X_test = torch.as_tensor(np.asarray(X_te).reshape(len(X_te), *est.input_shape_), dtype=torch.float64)
    seeds = seed_from_random_state(1000 + seed, DISTILL_SEEDS)
    starts = torch.stack([fresh_parameters(model.module, model, s) for s in seeds])
    thetas = sample_posterior(
        "ensemble",
        model,
        starts,
        coreset,
        targets,
        n_samples=DISTILL_SEEDS,
        steps=DISTILL_STEPS,
        lr=DISTILL_LR,
        temperature=0.0,
        n_represented=len(coreset),
        weight_decay=5e-4,
        generator=torch.Generator().manual_seed(seed),
    )
    with torch.no_grad():
        probas = model.batched(thetas, X_test).softmax(-1).numpy()
    per_net = [evaluate_proba(y_te, p, classes=est.classes_) for p in probas]
    return {k: float(np.mean([s[k] for s in per_net])) for k in ("accuracy", "nll")}


# command-line option -> PseudocoresetSynthesizer parameter, passed only when given
_OVERRIDES = {"inner_lr": "inner_lr", "divergence_samples": "n_divergence_samples", "n_measurement": "n_measurement"}


def _synthesizer_overrides(args) -> dict:
    return {param: getattr(args, option) for option, param in _OVERRIDES.items() if getattr(args, option) is not None}


def accuracy_table(args) -> list[dict]:
    rows = []
    for name in args.datasets:
        data = load(name, args.n_train, args.n_test, args.width)
        if data is None:
            print(f"{name}: no data file, skipped")
            continue
        for n_per_class in args.n_per_class:
            for divergence in args.divergences:
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    params = {"n_iterations": args.iterations, **_synthesizer_overrides(args)}
                    job = (data, divergence, n_per_class, seed, args.device, params, not args.no_protocols)
                    row = measure(fit_and_score, *job, device=args.device)
                    row.update(dataset=name, n_per_class=n_per_class, divergence=divergence, seed=seed)
                    print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
                    rows.append(row)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted(
        {(r["dataset"], r["n_per_class"], r["divergence"]) for r in rows},
        key=lambda k: (k[0], k[1], DIVERGENCE_ORDER.index(k[2])),
    )
    for dataset, npc, div in keys:
        group = [r for r in rows if (r["dataset"], r["n_per_class"], r["divergence"]) == (dataset, npc, div)]
        summary = {"dataset": dataset, "n_per_class": npc, "divergence": div, "n_seeds": len(group)}
        for metric in _SUMMARY_METRICS:
            values = [r[metric] for r in group if metric in r]
            if not values:
                continue
            summary[metric] = float(np.mean(values))
            summary[f"{metric}_std"] = float(np.std(values))
        out.append(summary)
    # Improvement over a random real subset of the same size under the same protocol.
    for summary in out:
        random = next(
            (
                r
                for r in out
                if (r["dataset"], r["n_per_class"], r["divergence"])
                == (summary["dataset"], summary["n_per_class"], "random")
            ),
            None,
        )
        if random is None:
            continue
        for protocol in ("", "distill_", "transfer_"):
            for metric in ("accuracy", "nll"):
                key = f"{protocol}{metric}"
                if key in summary and key in random:
                    summary[f"{key}_over_random"] = summary[key] - random[key]
    return out


_SUMMARY_METRICS = (
    "accuracy",
    "nll",
    "ece",
    "fit_seconds",
    "synthesis_seconds",
    "experts_seconds",
    "peak_memory_mib",
    "distill_accuracy",
    "distill_nll",
    "transfer_accuracy",
    "transfer_nll",
)


def _cell(row, key):
    if key not in row:
        return "-"
    delta = row.get(f"{key}_over_random")
    return f"{row[key]:.3f}" + ("" if delta is None or row["divergence"] == "random" else f" ({delta:+.3f})")


def markdown_table(summary: list[dict]) -> str:
    """All protocols in one table (means over seeds; deltas against the random subset)."""
    header = (
        "| dataset | per class | divergence | BMA acc | BMA NLL | distill acc (vs random) | "
        "transfer acc (vs random) | synthesis s | experts s | peak MiB |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in summary:
        lines.append(
            f"| {r['dataset']} | {r['n_per_class']} | {r['divergence']} | {r['accuracy']:.3f} | {r['nll']:.3f} | "
            f"{_cell(r, 'distill_accuracy')} | {_cell(r, 'transfer_accuracy')} | {r.get('synthesis_seconds', 0):.1f} | "
            f"{r.get('experts_seconds', 0):.1f} | {r.get('peak_memory_mib', float('nan')):.0f} |"
        )
    return "\n".join(lines)


# -- step speed vs K -----------------------------------------------------------------------------
def _problem(model, trajectories, X_real, y_real, inner_steps, n_samples, seed=0):
    return SynthesisProblem(
        model=model,
        trajectories=trajectories,
        X_real=X_real,
        y_real=y_real,
        n_classes=10,
        inner_steps=inner_steps,
        inner_lr=0.01,
        target_epochs=2,
        max_start_epoch=2,
        n_samples=n_samples,
        noise_scale=0.01,
        n_measurement=256,
        generator=torch.Generator(device=X_real.device).manual_seed(seed),
    )


def naive_forward_kl_step(module, trajectories, coreset, labels, optimizer, inner_steps, n_samples, gen):
    """The straightforward PyTorch step: an nn.Module copy trained by torch.optim.SGD, then a
    Python loop over posterior samples, each loading its parameters into the module."""
    start = int(torch.randint(3, (1,), generator=gen, device=gen.device))
    student = copy.deepcopy(module)
    torch.nn.utils.vector_to_parameters(trajectories[0, start].clone(), student.parameters())
    inner = torch.optim.SGD(student.parameters(), lr=0.01)
    for _ in range(inner_steps):
        inner.zero_grad()
        torch.nn.functional.cross_entropy(student(coreset.detach()), labels).backward()
        inner.step()
    student_theta = torch.nn.utils.parameters_to_vector(student.parameters()).detach()
    loss = 0.0
    for centre, sign in ((trajectories[0, start + 2], 1.0), (student_theta, -1.0)):
        for _ in range(n_samples):
            theta = centre + 0.01 * torch.randn(centre.shape, generator=gen, device=centre.device)
            torch.nn.utils.vector_to_parameters(theta, student.parameters())
            loss = loss + sign * torch.nn.functional.cross_entropy(student(coreset), labels) / n_samples
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def step_speed(args) -> list[dict]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    shape, width = (3, 32, 32), args.step_width
    module = ConvNet(shape, 10, width=width, depth=3).to(device)
    model = FlatModel(module)
    trajectories = 0.01 * torch.randn(1, 5, model.n_parameters, device=device)
    trajectories[:, 0] = model.flatten(module)
    trajectories = trajectories.cumsum(1)
    X_real = torch.rand(512, *shape, device=device)
    y_real = torch.arange(512, device=device) % 10
    labels = torch.arange(10, device=device).repeat_interleave(10)
    targets = torch.nn.functional.one_hot(labels, 10).float()
    rows = []
    for K in args.inner_steps:
        for method in ("forward_kl", "wasserstein", "variational", "naive_forward_kl"):
            inputs = (module, model, trajectories, X_real, y_real, labels, targets, K, method)
            if device.type == "cuda":
                row = measure(_time_steps, *inputs, args.timed_steps, device=args.device)
            else:  # the memory probe's allocator setting slows CPU steps: time them apart
                row = _time_steps(*inputs, args.timed_steps)
                row["peak_memory_mib"] = measure(_time_steps, *inputs, 1, device=args.device)["peak_memory_mib"]
            row.update(
                method=method,
                inner_steps=K,
                convnet_width=width,
                samples_per_side=4,
                coreset="10 classes x 10 of 3x32x32",
            )
            print(row, flush=True)
            rows.append(row)
    return rows


def variational_step(model, theta, coreset, targets, X_real, y_real, K, optimizer):
    """One step of the variational synthesis: closed-form last-layer posterior, ELBO on 256 real
    points, back-propagation to the coreset, then K detached SGD steps of the pool member."""
    phi = last_layer_features(model, theta, torch.cat([coreset, X_real]))
    q = LastLayerPosterior(phi[: len(coreset)], 3 * targets, 1.0 * len(X_real) / len(coreset), 1.0)
    loss = negative_elbo(q, phi[len(coreset) :], y_real, len(X_real))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    inner_sgd(model, theta, coreset.detach(), targets, steps=K, lr=0.01, differentiable=False)


def _time_steps(module, model, trajectories, X_real, y_real, labels, targets, K, method, n_steps):
    torch.set_num_threads(1)
    coreset = torch.rand(100, 3, 32, 32, device=X_real.device, requires_grad=True)
    optimizer = torch.optim.SGD([coreset], lr=1000, momentum=0.5)
    gen = torch.Generator(device=X_real.device).manual_seed(0)
    problem = _problem(model, trajectories, X_real, y_real, K, 4)

    def step():
        if method == "naive_forward_kl":
            return naive_forward_kl_step(module, trajectories, coreset, labels, optimizer, K, 4, gen)
        if method == "variational":
            return variational_step(
                model, trajectories[0, 0], coreset, targets, X_real[:256], y_real[:256], K, optimizer
            )
        loss = DIVERGENCES[method](problem, coreset, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    saved = _SavedTensorBytes()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        step()  # also the warm-up
    # The fastest of n_steps: on a shared CPU the other tenants only ever add time.
    seconds = min(timed(step)[1] for _ in range(n_steps))
    return {"steps_per_second": 1.0 / seconds, "peak_autograd_saved_mib": saved.peak / 2**20}


class _Box:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


class _SavedTensorBytes:
    """Peak bytes of tensors held by live autograd graphs: the part of a step's memory that
    an unrolled inner loop makes grow with K (device-independent and deterministic)."""

    def __init__(self):
        self.live = self.peak = 0

    def pack(self, tensor):
        size = tensor.numel() * tensor.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        box = _Box(tensor)
        weakref.finalize(box, self._release, size)
        return box

    def unpack(self, box):
        return box.tensor

    def _release(self, size):
        self.live -= size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits"])
    parser.add_argument("--n-per-class", nargs="+", type=int, default=[1, 10, 50])
    parser.add_argument(
        "--divergences",
        nargs="+",
        choices=DIVERGENCE_ORDER,
        default=DIVERGENCE_ORDER,
        help="divergences of the accuracy table, run in the table's order (default: all)",
    )
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run: first-seed .. first-seed + seeds - 1")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--inner-lr", type=float, default=None, help="the synthesizer's inner_lr (default: its own)")
    parser.add_argument(
        "--divergence-samples",
        type=int,
        default=None,
        help="the synthesizer's n_divergence_samples (default: its own)",
    )
    parser.add_argument(
        "--n-measurement",
        type=int,
        default=None,
        help="the synthesizer's n_measurement (default: its own)",
    )
    parser.add_argument("--inner-steps", nargs="+", type=int, default=[20, 50])
    parser.add_argument("--step-width", type=int, default=128)
    parser.add_argument("--width", type=int, default=128, help="ConvNet width of the CIFAR-10 table")
    parser.add_argument("--timed-steps", type=int, default=5)
    parser.add_argument("--steps-only", action="store_true")
    parser.add_argument(
        "--no-protocols",
        action="store_true",
        help="BMA only (skip the dataset-distillation and cross-architecture protocols)",
    )
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--name", default="pseudocoreset")
    args = parser.parse_args()
    args.divergences = [d for d in DIVERGENCE_ORDER if d in args.divergences]
    torch.set_num_threads(1)
    results = {}
    if not args.steps_only:
        rows = accuracy_table(args)
        results["runs"] = rows
        results["summary"] = summarise(rows)
        print(markdown_table(results["summary"]), flush=True)
    if not args.table_only:
        results["step_speed"] = step_speed(args)
    write_results(
        args.name,
        results,
        device=args.device,
        notes="BMA over the coreset posterior (SGHMC, 8 samples; 'variational': their features with the "
        "closed-form last-layer Gaussian predictive); distill_*: dataset-distillation protocol, "
        f"{DISTILL_SEEDS} networks trained from scratch on the coreset ({DISTILL_STEPS} full-batch steps), "
        f"scored alone and averaged; transfer_*: the same with an MLP{TRANSFER_HIDDEN} (flat inputs); "
        "*_over_random: minus the random subset's value under the same protocol; peak memory in MiB above the "
        "starting level (CUDA: allocator; CPU: RSS high-water mark of a forked child whose glibc "
        "mmap threshold is fixed at 64 KiB, which also slows that child's fit_seconds a little). "
        "step_speed (absent with --table-only): one synthesis step (ConvNet-3 of the given width, 100 coreset images "
        "3x32x32, 4 samples per side) vs K; naive_forward_kl is the straightforward PyTorch "
        "step (module copy + torch.optim.SGD inner loop, Python loop over samples).",
    )


if __name__ == "__main__":
    main()
