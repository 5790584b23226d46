"""The public panel: every family, with its defaults, against its baseline, on data it was not tuned on.

Each row fits one family's estimator exactly as a new user would -- ``net=None`` and default
parameters; the panel sets only data-size choices (``n_per_class``) and ``random_state`` -- and
its baseline in the same run, on the same split, and scores both on held-out data with
:mod:`skpcoreset.metrics`. Rows and what they compare (issue 16's acceptance targets in brackets):

- ``bridge``: ``BridgeEnsembleClassifier()``: mode 0 alone vs Single + bridges; per-bridge FLOPs
  over one base forward pass (``flops_``), ``cost_ratio_``; ``DeepEnsembleClassifier(n_members=2)``
  (DE-1, DE-2) and DE-2 from the ensemble's own two modes; DEE from the DE run
  [ensemble NLL <= mode 0; every bridge < 0.5 of a base pass].
- ``distill``: ``DiverseDistiller(perturbation='ods')`` and the KD baseline
  ``DiverseDistiller(teacher=<the ODS run's fitted teacher>, perturbation=None)``, the teacher and
  one teacher member; ``gap_closed`` = (KD - ODS) / (KD - teacher) in NLL [ODS NLL <= KD; gap
  closed >= 0.3 where KD - teacher > 0.05 nats]. The ODS estimator checks its own benefit on its
  held-out split and lets its KD student predict where the perturbed one is no better
  (``selected_``, column "KD selected"); "perturbed student NLL" is the perturbed student itself.
- ``influence``: ``GeometricEnsembleInfluence()`` on the training set with 10% uniformly flipped
  labels (the data set's own flips when it has them): ROC-AUC / AP of detecting the flips for
  GEX, ``method='loss'`` and ``'grad_norm'`` at the same theta* (``net=gex.module_``), and
  ``'tracin'`` (its own theta*, same seed) [GEX AUC >= best baseline - 0.01; >= 0.97 on a set
  that carries its own label noise].
- ``pseudocoreset``: ``PseudocoresetSynthesizer(divergence='forward_kl')`` vs ``'random'`` at 1
  and 10 rows per class: BMA accuracy, NLL [fKL accuracy > random at both sizes].
- ``laplace``: ``ConnectivityLaplaceClassifier()`` vs the MAP net it fitted (``module_``): NLL,
  ECE (Laplace NLL <= MAP; not an issue-16 target).
- ``rge``: ``RepulsiveEdgeEliminator()`` vs its backbone (a clone of ``estimator_``) trained on
  the graph without removal; test nodes scored on the original graph [RGE >= no removal].
- ``bridge_cost`` (once): per-bridge cost and ``cost_ratio_`` of Type I and II bridges for every
  bundled architecture (MLP, ConvNet, CIFARResNet), from a 1-epoch fit on 32 random inputs.
- ``fit_time`` (once): each estimator's default fit on the full digits set [< 60 s].

Classification sets are fed as flat rows (images too), so their default network is the MLP: the
default ConvNet costs about a minute per member for 1,000 8x8 images on a 2-core CPU, which no
30-minute panel of ~40 fits per data set can afford. Row wall times and per-estimator fit times
are recorded; warnings raised during a row (class and message) and any ``validation_scores_``
an estimator exposes are recorded and printed. A row that raises is recorded with its error and
the panel goes on; the exit status is 1 when any row failed to run.

Run: ``python -m benchmarks.panel [--families bridge distill ...] [--datasets digits signals ...]
[--seeds 1] [--quick] [--name panel]``. Writes ``benchmarks/results/<name>.json`` and prints
markdown tables (per family, then a pass/fail summary).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.base import clone
from sklearn.metrics import average_precision_score, roc_auc_score

if __package__ in (None, ""):  # ``python benchmarks/panel.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _panel_data as data_sets  # noqa: E402
from benchmarks._common import write_results  # noqa: E402
from skpcoreset import DeepEnsembleClassifier, make_net  # noqa: E402
from skpcoreset.datasets import add_label_noise, load_digits_images  # noqa: E402
from skpcoreset.distill import DiverseDistiller  # noqa: E402
from skpcoreset.ensemble import BridgeEnsembleClassifier, deep_ensemble_equivalent  # noqa: E402
from skpcoreset.metrics import accuracy, expected_calibration_error, negative_log_likelihood  # noqa: E402
from skpcoreset.nets import MLP, CIFARResNet, ConvNet  # noqa: E402
from skpcoreset.posthoc import (  # noqa: E402
    ConnectivityLaplaceClassifier,
    GeometricEnsembleInfluence,
    RepulsiveEdgeEliminator,
)
from skpcoreset.pseudocoreset import PseudocoresetSynthesizer  # noqa: E402

GAP_THRESHOLD = 0.05  # nats: below it the KD-to-teacher gap is too small to demand a share of
MIN_GAP_CLOSED = 0.3
MAX_BRIDGE_COST = 0.5
GEX_AUC_MARGIN = 0.01
GEX_MIN_AUC = 0.97
MAX_FIT_SECONDS = 60.0
CORESET_SIZES = {False: (1, 10), True: (1,)}  # rows per class (full panel, --quick)


# -- helpers ----------------------------------------------------------------------------------------
def scores(y, proba) -> dict[str, float]:
    return {
        "accuracy": accuracy(y, proba),
        "nll": negative_log_likelihood(y, proba),
        "ece": expected_calibration_error(y, proba),
    }


def prefixed(prefix: str, values: dict) -> dict:
    return {f"{prefix}_{key}": value for key, value in values.items()}


@torch.no_grad()
def module_proba(module: torch.nn.Module, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Softmax of a fitted network's logits (the estimators' ``modes_`` / ``module_``)."""
    device = next(module.parameters()).device
    module.eval()
    parts = [
        module(torch.as_tensor(X[i : i + batch_size], dtype=torch.float32, device=device)).softmax(-1)
        for i in range(0, len(X), batch_size)
    ]
    return torch.cat(parts).double().cpu().numpy()


class Recorder:
    """Times fits and keeps what estimators report about themselves (``validation_scores_``)."""

    def __init__(self):
        self.fit_seconds: dict[str, float] = {}
        self.fit_cpu_seconds: dict[str, float] = {}
        self.validation_scores: dict[str, object] = {}

    def fit(self, key: str, estimator, *args, **kwargs):
        start, cpu_start = time.perf_counter(), time.process_time()
        estimator.fit(*args, **kwargs)
        self.fit_seconds[key] = time.perf_counter() - start
        self.fit_cpu_seconds[key] = time.process_time() - cpu_start
        reported = getattr(estimator, "validation_scores_", None)
        if reported is not None:
            self.validation_scores[key] = reported
        return estimator


# -- families: each returns the metrics of one (data set, seed) ------------------------------------------
def run_bridge(data, seed: int, rec: Recorder) -> dict:
    X, y, X_test, y_test = data.X_train, data.y_train, data.X_test, data.y_test
    bridge = rec.fit("bridge_ensemble", BridgeEnsembleClassifier(random_state=seed), X, y)
    deep = rec.fit("deep_ensemble_2", DeepEnsembleClassifier(n_members=2, random_state=seed), X, y)
    single = scores(y_test, bridge.predict_proba(X_test, n_bridges=0))
    ensemble = scores(y_test, bridge.predict_proba(X_test))
    modes = [module_proba(mode, X_test) for mode in bridge.modes_[:2]]
    members = deep.member_proba(X_test)
    de1, de2 = scores(y_test, members[0]), scores(y_test, members.mean(axis=0))
    bridge_costs = [flops / bridge.flops_["mode"] for flops in bridge.flops_["bridges"]]
    return {
        **prefixed("single", single),
        **prefixed("ensemble", ensemble),
        "de1_nll": de1["nll"],
        **prefixed("de2", de2),
        "modes_de2_nll": scores(y_test, np.mean(modes, axis=0))["nll"],
        "dee": deep_ensemble_equivalent(ensemble["nll"], {1: de1["nll"], 2: de2["nll"]}),
        "n_bridges": bridge.n_bridges_,
        "n_bridges_trained": len(bridge.bridges_),
        "bridge_costs": bridge_costs,
        "max_bridge_cost": max(bridge_costs, default=0.0),
        "cost_ratio": bridge.cost_ratio_,
        "all_bridges_nll": scores(y_test, bridge.predict_proba(X_test, n_bridges=len(bridge.bridges_)))["nll"],
        "midpoint_nll": scores(y_test, bridge.midpoint_proba(X_test)[0])["nll"] if bridge.midpoints_ else None,
        "phase_seconds": dict(bridge.fit_seconds_),
    }


def bridge_targets(m: dict, own_noise: bool) -> dict:
    return {
        "ensemble_nll<=single": m["ensemble_nll"] <= m["single_nll"],
        f"bridge_cost<{MAX_BRIDGE_COST}": m["max_bridge_cost"] < MAX_BRIDGE_COST,
    }


def run_distill(data, seed: int, rec: Recorder) -> dict:
    X, y, X_test, y_test = data.X_train, data.y_train, data.X_test, data.y_test
    ods = rec.fit("ods", DiverseDistiller(perturbation="ods", random_state=seed), X, y)
    # the same fitted teacher for the KD baseline: only the perturbation differs
    kd = rec.fit("kd", DiverseDistiller(teacher=ods.teacher_, perturbation=None, random_state=seed), X, y)
    teacher = scores(y_test, ods.teacher_.predict_proba(X_test))
    member = scores(y_test, ods.teacher_.member_proba(X_test)[0])
    kd_scores, ods_scores = scores(y_test, kd.predict_proba(X_test)), scores(y_test, ods.predict_proba(X_test))
    # the perturbed student itself, also when the estimator's benefit check let its KD student predict
    perturbed = scores(y_test, ods._proba_of(ods.student_, ods.merged_, torch.as_tensor(X_test, device=ods.device_)))
    gap = kd_scores["nll"] - teacher["nll"]
    return {
        **prefixed("teacher", teacher),
        "member_nll": member["nll"],
        "member_accuracy": member["accuracy"],
        **prefixed("kd", kd_scores),
        **prefixed("ods", ods_scores),
        "ods_perturbed_nll": perturbed["nll"],
        "ods_perturbed_accuracy": perturbed["accuracy"],
        "ods_selected_kd": float(ods.selected_ == "kd_student"),
        "kd_teacher_gap": gap,
        "gap_closed": (kd_scores["nll"] - ods_scores["nll"]) / gap if gap > 0 else float("nan"),
        "perturbed_gap_closed": (kd_scores["nll"] - perturbed["nll"]) / gap if gap > 0 else float("nan"),
    }


def distill_targets(m: dict, own_noise: bool) -> dict:
    closes = m["gap_closed"] >= MIN_GAP_CLOSED if m["kd_teacher_gap"] > GAP_THRESHOLD else None
    return {"ods_nll<=kd": m["ods_nll"] <= m["kd_nll"], f"gap_closed>={MIN_GAP_CLOSED}": closes}


def noisy_labels(data, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training labels with known flips: the set's own, or 10% uniform flips."""
    if data.flipped is not None:
        return data.y_train, data.flipped
    return add_label_noise(data.y_train, data_sets.LABEL_NOISE, random_state=seed)


def run_influence(data, seed: int, rec: Recorder) -> dict:
    X = data.X_train
    y_noisy, flipped = noisy_labels(data, seed)
    gex = rec.fit("gex", GeometricEnsembleInfluence(random_state=seed), X, y_noisy)
    self_influence = {"gex": gex.self_influence_}
    for method in ("loss", "grad_norm"):
        baseline = GeometricEnsembleInfluence(net=gex.module_, method=method, random_state=seed)
        self_influence[method] = rec.fit(method, baseline, X, y_noisy).self_influence_
    tracin = rec.fit("tracin", GeometricEnsembleInfluence(method="tracin", random_state=seed), X, y_noisy)
    self_influence["tracin"] = tracin.self_influence_
    # the paper's I(z) alone, from the same members (GEX ranks by l(z; theta*) + I(z) by default)
    floor = np.maximum(gex.base_losses_, gex.tau)
    self_influence["gex_paper"] = np.mean((gex.member_losses_ - floor) ** 2, axis=0)
    metrics = {"gex_member_epochs": gex.member_epochs_, "gex_jitter": gex.jitter_}
    for method, values in self_influence.items():
        metrics[f"{method}_roc_auc"] = roc_auc_score(flipped, values)
        metrics[f"{method}_ap"] = average_precision_score(flipped, values)
    metrics["best_baseline_roc_auc"] = max(metrics[f"{m}_roc_auc"] for m in ("loss", "grad_norm", "tracin"))
    metrics["gex_minus_best"] = metrics["gex_roc_auc"] - metrics["best_baseline_roc_auc"]
    # does theta* fit its (noisy) labels? GEX's ranking assumes it memorised them
    theta_predictions = module_proba(gex.module_, X).argmax(axis=1)
    metrics["theta_train_accuracy"] = float(np.mean(gex.classes_[theta_predictions] == y_noisy))
    metrics["theta_flipped_fitted"] = float(np.mean(gex.classes_[theta_predictions][flipped] == y_noisy[flipped]))
    metrics["tracin_same_theta"] = bool(np.allclose(tracin.base_losses_, gex.base_losses_, atol=1e-4))
    metrics["n_flipped"] = int(flipped.sum())
    return metrics


def influence_targets(m: dict, own_noise: bool) -> dict:
    return {
        f"gex_auc>=best-{GEX_AUC_MARGIN}": m["gex_roc_auc"] >= m["best_baseline_roc_auc"] - GEX_AUC_MARGIN,
        f"gex_auc>={GEX_MIN_AUC}": m["gex_roc_auc"] >= GEX_MIN_AUC if own_noise else None,
    }


def run_pseudocoreset(data, seed: int, rec: Recorder) -> dict:
    X, y, X_test, y_test = data.X_train, data.y_train, data.X_test, data.y_test
    smallest_class = int(np.bincount(y).min())
    metrics = {}
    for requested in CORESET_SIZES[data.quick]:
        size = min(requested, smallest_class)  # a class cannot give more real rows than it has
        metrics[f"n_per_class_{requested}"] = size
        for divergence in ("forward_kl", "variational", "random"):
            key = f"{divergence}_{requested}"
            synthesizer = PseudocoresetSynthesizer(divergence=divergence, n_per_class=size, random_state=seed)
            fitted = rec.fit(key, synthesizer, X, y)
            metrics.update(prefixed(key, scores(y_test, fitted.predict_proba(X_test))))
    return metrics


def pseudocoreset_targets(m: dict, own_noise: bool) -> dict:
    sizes = [int(key.rsplit("_", 1)[1]) for key in m if key.startswith("n_per_class_")]
    targets = {f"fkl_acc>random@{k}": m[f"forward_kl_{k}_accuracy"] > m[f"random_{k}_accuracy"] for k in sizes}
    for k in sizes:
        if f"variational_{k}_accuracy" in m:  # panels recorded before the variational divergence lack it
            targets[f"vbpc_acc>random@{k}"] = m[f"variational_{k}_accuracy"] > m[f"random_{k}_accuracy"]
    return targets


def run_laplace(data, seed: int, rec: Recorder) -> dict:
    X, y, X_test, y_test = data.X_train, data.y_train, data.X_test, data.y_test
    laplace = rec.fit("laplace", ConnectivityLaplaceClassifier(random_state=seed), X, y)
    return {
        **prefixed("map", scores(y_test, module_proba(laplace.module_, X_test))),
        **prefixed("laplace", scores(y_test, laplace.predict_proba(X_test))),
        "prior_precision": float(laplace.prior_precision_),
    }


def laplace_targets(m: dict, own_noise: bool) -> dict:
    # at the largest prior precision (chosen where no prior helps) the posterior predictive is
    # the MAP's to ~1e-6 nats: a tie, not a loss
    return {"laplace_nll<=map": m["laplace_nll"] <= m["map_nll"] + 1e-4}


def node_accuracy(model, graph, adjacency, mask) -> float:
    return float(np.mean(model.predict(graph.features, adjacency=adjacency)[mask] == graph.labels[mask]))


def run_rge(graph, seed: int, rec: Recorder) -> dict:
    labels = graph.labels
    y_fit = np.where(graph.train_mask | graph.val_mask, labels, -1)
    y_train = np.where(graph.train_mask, labels, -1)
    rge = rec.fit(
        "rge",
        RepulsiveEdgeEliminator(random_state=seed),
        graph.features,
        y_fit,
        adjacency=graph.adjacency,
        val_mask=graph.val_mask,
    )
    plain = rec.fit("no_removal", clone(rge.estimator_), graph.features, y_train, adjacency=graph.adjacency)
    removed = rge.removed_edges_
    rows, cols = graph.adjacency.nonzero()
    return {
        "none_test_accuracy": node_accuracy(plain, graph, graph.adjacency, graph.test_mask),
        "rge_test_accuracy": node_accuracy(rge.estimator_, graph, graph.adjacency, graph.test_mask),
        "rge_test_accuracy_rectified": node_accuracy(
            rge.estimator_, graph, rge.transform(graph.adjacency), graph.test_mask
        ),
        "none_val_accuracy": node_accuracy(plain, graph, graph.adjacency, graph.val_mask),
        "rge_val_accuracy": node_accuracy(rge.estimator_, graph, graph.adjacency, graph.val_mask),
        "edges": int(graph.adjacency.nnz // 2),
        "edges_removed": int(removed.shape[1]),
        "inter_class_share_all": float(np.mean(labels[rows] != labels[cols])),
        "inter_class_share_removed": float(np.mean(labels[removed[0]] != labels[removed[1]])) if removed.size else 0.0,
        "rounds": len(rge.history_),
        "best_round": int(rge.best_round_),
    }


def rge_targets(m: dict, own_noise: bool) -> dict:
    return {"rge>=none": m["rge_test_accuracy"] >= m["none_test_accuracy"]}


FAMILIES: dict[str, tuple[Callable, Callable]] = {
    "bridge": (run_bridge, bridge_targets),
    "distill": (run_distill, distill_targets),
    "influence": (run_influence, influence_targets),
    "pseudocoreset": (run_pseudocoreset, pseudocoreset_targets),
    "laplace": (run_laplace, laplace_targets),
    "rge": (run_rge, rge_targets),
}
GRAPH_FAMILIES = {"rge"}


# -- checks that run once ---------------------------------------------------------------------------
BRIDGE_ARCHITECTURES = {
    "MLP (64,)": (MLP, (64,)),
    "MLP (784,)": (MLP, (784,)),
    "ConvNet (1, 28, 28)": (ConvNet, (1, 28, 28)),
    "ConvNet (3, 32, 32)": (ConvNet, (3, 32, 32)),
    "CIFARResNet (3, 32, 32)": (CIFARResNet, (3, 32, 32)),
}


def check_bridge_cost(quick: bool, seed: int) -> list[dict]:
    """Per-bridge cost for every bundled architecture and both bridge types (the cost does not depend on training)."""
    rng = np.random.RandomState(seed)
    rows = []
    for name, (module, shape) in BRIDGE_ARCHITECTURES.items():
        X = rng.rand(32, *shape).astype(np.float32)
        y = np.arange(32) % 4
        for bridge_type in ("I", "II"):
            rec = Recorder()
            start = time.perf_counter()
            try:
                bridge = BridgeEnsembleClassifier(
                    make_net(module, max_epochs=1, batch_size=32),
                    bridge_type=bridge_type,
                    curve_max_epochs=1,
                    bridge_max_epochs=1,
                    random_state=seed,
                )
                rec.fit("bridge_ensemble", bridge, X, y)
                costs = [flops / bridge.flops_["mode"] for flops in bridge.flops_["bridges"]]
                metrics = {
                    "bridge_costs": costs,
                    "max_bridge_cost": max(costs, default=0.0),
                    "cost_ratio": bridge.cost_ratio_,
                }
                targets, error = {f"bridge_cost<{MAX_BRIDGE_COST}": metrics["max_bridge_cost"] < MAX_BRIDGE_COST}, None
            except Exception as exc:  # noqa: BLE001 - a broken row is reported, the panel goes on
                metrics, targets, error = {}, {}, _error(exc)
            rows.append(
                {
                    "check": "bridge_cost",
                    "architecture": name,
                    "bridge_type": bridge_type,
                    "metrics": metrics,
                    "targets": targets,
                    "wall_seconds": time.perf_counter() - start,
                    "error": error,
                }
            )
    return rows


def _digits_fit_estimators(seed: int) -> dict[str, Callable]:
    return {
        "DeepEnsembleClassifier()": lambda: DeepEnsembleClassifier(random_state=seed),
        "BridgeEnsembleClassifier()": lambda: BridgeEnsembleClassifier(random_state=seed),
        "DiverseDistiller()": lambda: DiverseDistiller(random_state=seed),
        "GeometricEnsembleInfluence()": lambda: GeometricEnsembleInfluence(random_state=seed),
        "ConnectivityLaplaceClassifier()": lambda: ConnectivityLaplaceClassifier(random_state=seed),
        "PseudocoresetSynthesizer()": lambda: PseudocoresetSynthesizer(random_state=seed),
    }


def check_fit_time(quick: bool, seed: int) -> list[dict]:
    """Each estimator's default fit on the full digits set (flat rows in [0, 1]); ``quick``: 150 rows."""
    X, y = load_digits_images(return_X_y=True)
    X = X.reshape(len(X), -1)
    if quick:
        X, y = X[:150], y[:150]
    rows = []
    for name, make in _digits_fit_estimators(seed).items():
        rec, error = Recorder(), None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rec.fit(name, make(), X, y)
        except Exception as exc:  # noqa: BLE001
            error = _error(exc)
        seconds = rec.fit_seconds.get(name)
        rows.append(
            {
                "check": "fit_time",
                "estimator": name,
                "n_samples": len(y),
                "metrics": {"fit_seconds": seconds, "fit_cpu_seconds": rec.fit_cpu_seconds.get(name)},
                "targets": {f"fit<{MAX_FIT_SECONDS:.0f}s": None if seconds is None else seconds < MAX_FIT_SECONDS},
                "error": error,
            }
        )
    return rows


CHECKS = {"bridge_cost": check_bridge_cost, "fit_time": check_fit_time}


# -- running ----------------------------------------------------------------------------------------
def _error(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip() + "\n" + traceback.format_exc(limit=-3)


def _warnings_seen(caught) -> list[str]:
    seen = []
    for item in caught:
        text = f"{item.category.__name__}: {str(item.message)[:300]}"
        if text not in seen:
            seen.append(text)
    return seen


def run_row(family: str, data, seed: int) -> dict:
    """One family on one data set and seed: metrics, targets, times, warnings (or the error)."""
    run, targets_of = FAMILIES[family]
    rec = Recorder()
    own_noise = data.get("flipped") is not None
    row = {"family": family, "dataset": data.name, "kind": data.kind, "seed": seed, "own_noise": own_noise}
    row.update(_sizes(data))
    start, cpu_start = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            metrics = run(data, seed, rec)
            row["metrics"], row["targets"], row["error"] = metrics, targets_of(metrics, own_noise), None
        except Exception as exc:  # noqa: BLE001 - a broken row is reported, the panel goes on
            row["metrics"], row["targets"], row["error"] = {}, {}, _error(exc)
    row["wall_seconds"] = time.perf_counter() - start
    row["cpu_seconds"] = time.process_time() - cpu_start
    row["load_average"] = os.getloadavg()[0]  # other processes on the machine stretch wall times
    row["fit_seconds"], row["fit_cpu_seconds"] = rec.fit_seconds, rec.fit_cpu_seconds
    row["warnings"] = _warnings_seen(caught)
    if rec.validation_scores:
        row["validation_scores"] = rec.validation_scores
    return row


def _sizes(data) -> dict:
    if "labels" in data:
        return {
            "n_nodes": len(data.labels),
            "n_train": int(data.train_mask.sum()),
            "n_val": int(data.val_mask.sum()),
            "n_test": int(data.test_mask.sum()),
        }
    return {
        "n_train": len(data.y_train),
        "n_test": len(data.y_test),
        "n_features": data.X_train.shape[1],
        "n_classes": len(np.unique(data.y_train)),
    }


def summarise(rows: list[dict]) -> list[dict]:
    """Mean metrics over seeds per (family, data set), with the targets judged on the means."""
    summary = []
    keys = dict.fromkeys((r["family"], r["dataset"]) for r in rows)
    for family, dataset in keys:
        group = [r for r in rows if r["family"] == family and r["dataset"] == dataset and r["error"] is None]
        if not group:
            summary.append({"family": family, "dataset": dataset, "n_seeds": 0, "metrics": {}, "targets": {}})
            continue
        means = {}
        for key, value in group[0]["metrics"].items():
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
                continue
            means[key] = float(np.mean([r["metrics"][key] for r in group]))
        summary.append(
            {
                "family": family,
                "dataset": dataset,
                "n_seeds": len(group),
                "metrics": means,
                "targets": FAMILIES[family][1](means, group[0]["own_noise"]),
                "wall_seconds": float(np.mean([r["wall_seconds"] for r in group])),
            }
        )
    return summary


def _mark(value) -> str:
    return "n/a" if value is None else ("yes" if value else "**NO**")


# -- markdown ----------------------------------------------------------------------------------------
COLUMNS = {
    "bridge": [
        ("mode 0 NLL", "single_nll"),
        ("+bridges NLL", "ensemble_nll"),
        ("all bridges NLL", "all_bridges_nll"),
        ("midpoint NLL", "midpoint_nll"),
        ("DE-2 NLL", "de2_nll"),
        ("DE-2 (own modes) NLL", "modes_de2_nll"),
        ("DEE", "dee"),
        ("bridges", "n_bridges"),
        ("max bridge cost", "max_bridge_cost"),
        ("cost ratio", "cost_ratio"),
        ("mode 0 acc", "single_accuracy"),
        ("+bridges acc", "ensemble_accuracy"),
        ("mode 0 ECE", "single_ece"),
        ("+bridges ECE", "ensemble_ece"),
    ],
    "distill": [
        ("member NLL", "member_nll"),
        ("teacher NLL", "teacher_nll"),
        ("KD NLL", "kd_nll"),
        ("ODS NLL", "ods_nll"),
        ("gap closed", "gap_closed"),
        ("perturbed student NLL", "ods_perturbed_nll"),
        ("KD selected", "ods_selected_kd"),
        ("teacher acc", "teacher_accuracy"),
        ("KD acc", "kd_accuracy"),
        ("ODS acc", "ods_accuracy"),
    ],
    "influence": [
        ("GEX AUC", "gex_roc_auc"),
        ("loss AUC", "loss_roc_auc"),
        ("grad_norm AUC", "grad_norm_roc_auc"),
        ("TracIn AUC", "tracin_roc_auc"),
        ("GEX AP", "gex_ap"),
        ("loss AP", "loss_ap"),
        ("theta* train acc", "theta_train_accuracy"),
        ("flips fitted", "theta_flipped_fitted"),
    ],
    "pseudocoreset": [
        ("fKL@1 acc", "forward_kl_1_accuracy"),
        ("random@1 acc", "random_1_accuracy"),
        ("fKL@10 acc", "forward_kl_10_accuracy"),
        ("random@10 acc", "random_10_accuracy"),
        ("fKL@1 NLL", "forward_kl_1_nll"),
        ("random@1 NLL", "random_1_nll"),
        ("fKL@10 NLL", "forward_kl_10_nll"),
        ("random@10 NLL", "random_10_nll"),
    ],
    "laplace": [
        ("MAP NLL", "map_nll"),
        ("Laplace NLL", "laplace_nll"),
        ("MAP ECE", "map_ece"),
        ("Laplace ECE", "laplace_ece"),
        ("MAP acc", "map_accuracy"),
        ("Laplace acc", "laplace_accuracy"),
    ],
    "rge": [
        ("no removal acc", "none_test_accuracy"),
        ("RGE acc", "rge_test_accuracy"),
        ("RGE acc (rectified graph)", "rge_test_accuracy_rectified"),
        ("edges", "edges"),
        ("removed", "edges_removed"),
        ("inter-class share all", "inter_class_share_all"),
        ("inter-class share removed", "inter_class_share_removed"),
        ("rounds", "rounds"),
    ],
}


COUNTS = {"n_bridges", "edges", "edges_removed", "rounds"}


def _fmt(value, key: str = "") -> str:
    if value is None:
        return "-"
    if key in COUNTS:
        return f"{value:.0f}"
    if isinstance(value, float):
        return "nan" if np.isnan(value) else (f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}")
    return str(value)


def markdown(summary: list[dict], checks: list[dict]) -> str:
    lines = []
    for family, columns in COLUMNS.items():
        group = [s for s in summary if s["family"] == family]
        if not group:
            continue
        target_names = list(dict.fromkeys(name for s in group for name in s["targets"]))
        header = ["data set", *(c[0] for c in columns), *target_names, "s"]
        lines += [f"\n### {family}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for s in group:
            cells = [s["dataset"], *(_fmt(s["metrics"].get(key), key) for _, key in columns)]
            cells += [_mark(s["targets"].get(name)) for name in target_names]
            cells.append(f"{s['wall_seconds']:.0f}" if "wall_seconds" in s else "-")
            lines.append("| " + " | ".join(cells) + " |")
    cost_rows = [c for c in checks if c["check"] == "bridge_cost"]
    if cost_rows:
        lines += [
            "\n### bridge cost per architecture\n",
            "| architecture | type | bridge costs | cost ratio | < 0.5 |",
            "|---|---|---|---|---|",
        ]
        for c in cost_rows:
            m = c["metrics"]
            costs = ", ".join(f"{v:.3f}" for v in m.get("bridge_costs", [])) or ("error" if c["error"] else "-")
            lines.append(
                f"| {c['architecture']} | {c['bridge_type']} | {costs} | {_fmt(m.get('cost_ratio'))} | "
                f"{_mark(next(iter(c['targets'].values()), None))} |"
            )
    time_rows = [c for c in checks if c["check"] == "fit_time"]
    if time_rows:
        lines += [
            f"\n### default fit on digits ({time_rows[0]['n_samples']} rows)\n",
            "| estimator | seconds | CPU seconds | < 60 s |",
            "|---|---|---|---|",
        ]
        for c in time_rows:
            lines.append(
                f"| {c['estimator']} | {_fmt(c['metrics']['fit_seconds'])} | "
                f"{_fmt(c['metrics']['fit_cpu_seconds'])} | "
                f"{_mark(next(iter(c['targets'].values()), None))} |"
            )
    lines += summary_table(summary)
    lines += headline_table(summary)
    return "\n".join(lines)


# per family: the cell text of the headline table, "method vs baseline"
HEADLINES = {
    "bridge": ("bridge: NLL mode 0 -> +bridges", lambda m: f"{m['single_nll']:.3f} -> {m['ensemble_nll']:.3f}"),
    "distill": (
        "distill: NLL KD / ODS (teacher)",
        lambda m: f"{m['kd_nll']:.3f} / {m['ods_nll']:.3f} ({m['teacher_nll']:.3f})",
    ),
    "influence": (
        "GEX: AUC GEX vs best baseline",
        lambda m: f"{m['gex_roc_auc']:.3f} vs {m['best_baseline_roc_auc']:.3f}",
    ),
    "pseudocoreset": (
        "pseudocoreset: acc fKL / random @1, @10",
        lambda m: ", ".join(
            f"{m[f'forward_kl_{k}_accuracy']:.3f} / {m[f'random_{k}_accuracy']:.3f}"
            for k in (1, 10)
            if f"forward_kl_{k}_accuracy" in m
        ),
    ),
    "laplace": ("Laplace: NLL MAP -> Laplace", lambda m: f"{m['map_nll']:.3f} -> {m['laplace_nll']:.3f}"),
    "rge": ("RGE: test acc none -> RGE", lambda m: f"{m['none_test_accuracy']:.3f} -> {m['rge_test_accuracy']:.3f}"),
}


def headline_table(summary: list[dict]) -> list[str]:
    """One line per data set, one cell per family: its figure against its baseline, ✓ when every target is met."""
    families = [f for f in HEADLINES if any(s["family"] == f for s in summary)]
    datasets = list(dict.fromkeys(s["dataset"] for s in summary))
    lines = [
        "\n### headline (method vs baseline; ✓ all targets met, ✗ one missed)\n",
        "| data set | " + " | ".join(HEADLINES[f][0] for f in families) + " |",
        "|" + "---|" * (len(families) + 1),
    ]
    for dataset in datasets:
        cells = [dataset]
        for family in families:
            s = next((s for s in summary if s["family"] == family and s["dataset"] == dataset), None)
            if s is None or not s["n_seeds"]:
                cells.append("" if s is None else "error")
                continue
            judged = [ok for ok in s["targets"].values() if ok is not None]
            cells.append(f"{HEADLINES[family][1](s['metrics'])} {'✓' if all(judged) else '✗'}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary_table(summary: list[dict]) -> list[str]:
    """Data sets x families: targets met / judged (failed target names listed)."""
    families = list(dict.fromkeys(s["family"] for s in summary))
    datasets = list(dict.fromkeys(s["dataset"] for s in summary))
    lines = ["\n### targets met\n", "| data set | " + " | ".join(families) + " |", "|" + "---|" * (len(families) + 1)]
    for dataset in datasets:
        cells = [dataset]
        for family in families:
            s = next((s for s in summary if s["family"] == family and s["dataset"] == dataset), None)
            if s is None:
                cells.append("")
                continue
            if not s["n_seeds"]:
                cells.append("error")
                continue
            judged = {name: ok for name, ok in s["targets"].items() if ok is not None}
            failed = [name for name, ok in judged.items() if not ok]
            cell = f"{len(judged) - len(failed)}/{len(judged)}"
            cells.append(cell + (f" (fails {', '.join(failed)})" if failed else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _row_line(row: dict) -> str:
    if row["error"]:
        return f"{row['family']:13s} {row['dataset']:14s} seed {row['seed']}  ERROR {row['error'].splitlines()[0]}"
    failed = [name for name, ok in row["targets"].items() if ok is False]
    status = "all targets met" if not failed else "fails " + ", ".join(failed)
    return (
        f"{row['family']:13s} {row['dataset']:14s} seed {row['seed']}  {row['wall_seconds']:6.1f}s wall "
        f"{row['cpu_seconds']:6.1f}s CPU  {status}"
    )


def parse_args(argv=None) -> argparse.Namespace:
    def names(choices):
        def parse(text: str) -> list[str]:
            chosen = [t for t in text.split(",") if t]
            unknown = sorted(set(chosen) - set(choices))
            if unknown:
                raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {sorted(choices)}")
            return chosen

        return parse

    all_families = [*FAMILIES, *CHECKS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--families",
        nargs="+",
        type=names(all_families),
        default=[all_families],
        help=f"families and checks to run (default: all of {', '.join(all_families)})",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        type=names(data_sets.DATASETS),
        default=[list(data_sets.DATASETS)],
        help=f"data sets (default: all of {', '.join(data_sets.DATASETS)})",
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (split, subsample and estimators)")
    parser.add_argument("--quick", action="store_true", help="toy data sizes, for tests")
    parser.add_argument("--name", default=None, help="results/<name>.json (default: panel, or panel_quick)")
    args = parser.parse_args(argv)
    args.families = list(dict.fromkeys(f for group in args.families for f in group))
    args.datasets = list(dict.fromkeys(d for group in args.datasets for d in group))
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    args.name = args.name or ("panel_quick" if args.quick else "panel")
    return args


def run_panel(families: list[str], datasets: list[str], seeds: int, quick: bool) -> dict:
    start, cpu_start, load_start = time.perf_counter(), time.process_time(), os.getloadavg()
    rows, checks = [], []
    for check in [f for f in families if f in CHECKS]:
        checks += CHECKS[check](quick, 0)
        print(f"{check} done ({time.perf_counter() - start:.0f}s)", flush=True)
    for seed in range(seeds):
        for name in datasets:
            is_graph = name in data_sets.GRAPHS
            applicable = [f for f in families if f in FAMILIES and (f in GRAPH_FAMILIES) == is_graph]
            if not applicable:
                continue
            data = data_sets.DATASETS[name](seed=seed, quick=quick)
            for family in applicable:
                row = run_row(family, data, seed)
                rows.append(row)
                print(_row_line(row), flush=True)
                for key, reported in row.get("validation_scores", {}).items():
                    print(f"    validation_scores_ of {key}: {reported}", flush=True)
    return {
        "rows": rows,
        "checks": checks,
        "total_seconds": time.perf_counter() - start,
        "total_cpu_seconds": time.process_time() - cpu_start,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    results = run_panel(args.families, args.datasets, args.seeds, args.quick)
    results["summary"] = summarise(results["rows"])
    results["config"] = {
        "families": args.families,
        "datasets": args.datasets,
        "seeds": args.seeds,
        "quick": args.quick,
        "sizes": data_sets.SIZES[args.quick],
    }
    table = markdown(results["summary"], results["checks"])
    print(table)
    print(
        f"\ntotal {results['total_seconds']:.0f}s wall, {results['total_cpu_seconds']:.0f}s CPU "
        f"({torch.get_num_threads()} torch threads; 1-min load average {results['load_average_start'][0]:.1f} "
        f"at the start, {results['load_average_end'][0]:.1f} at the end)"
    )
    write_results(args.name, results, notes=__doc__.split("\n\n")[0] + "\n\n" + table)
    failed = [r for r in results["rows"] + results["checks"] if r.get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
