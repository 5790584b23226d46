"""One command that measures the package on a GPU, in at most 7 minutes on one H100/H200.

    python -m benchmarks.gpu_suite                  # on the GPU machine (see the README)
    python -m benchmarks.gpu_suite --dry-run        # every part at toy sizes on the CPU, into a temp dir
    python -m benchmarks.gpu_suite --parts throughput ensembles

Each part runs in its own process under a hard time cap (it is killed there and the suite goes
on), checks its own clock between measurements so that it ends inside the cap with what it has,
and writes ``benchmarks/results/gpu_<part>.json`` (device, versions, command: ``_common``). At the
end a table compares the figures with the H100 references of issue 20 and the targets, and
``gpu_suite.json`` keeps that table. The estimates and caps below are for one H100/H200; the
caps add up to the 420 s budget, which ``--budget`` can lower.

Parts, in the order they run:

- ``cuda_tests``: ``pytest -m cuda tests/test_cuda.py`` (every public estimator on CUDA vs the
  CPU, CUDA-fitted models unpickled without CUDA, ``device='auto'``);
- ``throughput``: ConvNet-3 (width 128) on 50,176 CIFAR-shaped random images and a ResNet-18-like
  ``CIFARResNet`` (depth 20, width 4: about ResNet-18's FLOPs per image) on 20,480 -- a raw torch
  loop, ``DeepEnsembleClassifier`` as a user fits it, the package's loop alone, default skorch
  and skorch on GPU tensors, in fp32, bf16 autocast + channels_last (``mixed_precision='bf16'``)
  and ``torch.compile`` (the skorch template's ``compile=True``), interleaved over rounds;
- ``ensembles``: M = 4 and 8 members trained with ``vmap`` vs one after another (MLP, ConvNet-3),
  and what ``ensemble_strategy='auto'`` picks;
- ``pseudocoreset_step``: one forward-KL / Wasserstein synthesis step vs the straightforward
  PyTorch step at K = 20 and 50 (``benchmarks.pseudocoreset --steps-only``), steps/s and peak
  CUDA memory;
- ``family_*``: a short run of each method family beside its baseline: an MNIST pseudocoreset at
  10 per class end to end vs a random subset; GEX vs TracIn-CP and the loss on 10k CIFAR-10 images
  with 10% flipped labels; bridges vs deep ensembles and diverse distillation (ODS, ConfODS,
  Gaussian vs plain KD) on CIFAR-10, with members trained to fit their training split.

The data are the subsets ``python -m benchmarks.prepare_device`` writes to ``.gpu_data/`` (set
``SKPCORESET_DATA=.gpu_data``); without them the family parts report "no data" (the dry run
falls back to random images of the same shape).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import RESULTS, timed, write_results  # noqa: E402

BUDGET_S = 420.0
# Parts of the dry run that stand for the whole of tests/test_cuda.py: one estimator of each kind.
DRY_CUDA_TESTS = "DeepEnsembleClassifier or GeometricEnsembleInfluence or SGCClassifier or auto or every_estimator"


# -- the parts' shared frame -----------------------------------------------------------------
@dataclass
class Context:
    """What a part gets: its name, the device, sizes (``dry``), where to write, its clock."""

    name: str
    dry: bool
    device: str
    out: Path
    deadline: float  # time.monotonic() by which the part writes its last results

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self, results: dict, notes: str = "") -> None:
        """Write (or rewrite) the part's JSON: called after every measurement, so a kill keeps what was done."""
        results["suite_command"] = os.environ.get("SKPCORESET_SUITE_COMMAND", "")
        self.last = (results, notes)
        write_results(f"gpu_{self.name}", results, device=self.device, notes=notes, directory=self.out, quiet=True)

    def fail(self, error: str) -> None:
        """Keep what the part had saved and add the error, with a summary line saying it failed."""
        results, notes = getattr(self, "last", ({}, ""))
        results = {**results, "error": error}
        results["summary"] = [
            *results.get("summary", []),
            row(f"{self.name} raised", None, target=error.strip().splitlines()[-1][:80], met=False),
        ]
        self.save(results, notes)


def row(metric: str, value, *, unit: str = "", reference=None, target: str | None = None, met=None) -> dict:
    """One line of the summary table."""
    ratio = value / reference if isinstance(value, (int, float)) and reference else None
    return {
        "metric": metric,
        "value": value,
        "unit": unit,
        "h100_reference": reference,
        "vs_reference": ratio,
        "target": target,
        "met": met,
    }


def _median(values):
    return statistics.median(values) if values else None


# -- part: CUDA correctness -------------------------------------------------------------------
def part_cuda_tests(ctx: Context) -> dict:
    import xml.etree.ElementTree as ET

    import pytest

    junit = Path(tempfile.mkdtemp()) / "cuda_tests.xml"
    args = ["tests/test_cuda.py", "-m", "cuda", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    if ctx.dry:  # the CPU stands in for CUDA, on one estimator of each kind
        os.environ["SKPCORESET_TEST_ACCELERATOR"] = "cpu"
        args += ["-k", DRY_CUDA_TESTS]
    elif importlib.util.find_spec("xdist") is not None:
        # The CPU reference fits run on one thread each: four workers take a quarter of the time.
        args += ["-n", "4", "--dist", "loadgroup"]
    exit_code = int(pytest.main(args))
    tests = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or child.text or "")[:600]
        tests.append(
            {"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)), "message": message}
        )
    counts = {f"n_{k}": sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    n_bad = counts["n_failed"] + counts["n_error"]
    summary = [
        row(
            "CUDA tests passed",
            counts["n_passed"],
            unit="tests",
            target=f"all {len(tests) - counts['n_skipped']} run pass ({counts['n_skipped']} skipped)",
            met=n_bad == 0 and counts["n_passed"] > 0,
        )
    ]
    results = {
        "pytest_args": args,
        "exit_code": exit_code,
        **counts,
        "tests_failed": n_bad > 0 or exit_code != 0,
        "tests": tests,
        "summary": summary,
    }
    ctx.save(results, notes="tests/test_cuda.py; tolerances in its docstring. Dry run: the CPU as accelerator.")
    return results


# -- part: training throughput ----------------------------------------------------------------
def raw_loop(module, X, y, epochs, batch_size, lr, *, bf16=False, channels_last=False, compiled=False):
    """The reference: a hand-written loop with the data on the device, same options as the package."""
    import torch
    import torch.nn.functional as F

    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    model = torch.compile(module) if compiled else module
    optimizer = torch.optim.SGD(module.parameters(), lr=lr, momentum=0.9)
    module.train()
    for _ in range(epochs):
        order = torch.randperm(len(X), device=X.device)
        for start in range(0, len(X), batch_size):
            idx = order[start : start + batch_size]
            xb = X[idx].contiguous(memory_format=torch.channels_last) if channels_last else X[idx]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(X.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(xb), y[idx])
            loss.backward()
            optimizer.step()


def package_fit(problem: dict, X, y, device: str, *, bf16: bool, compiled: bool) -> None:
    """The package's training path as a user calls it: ``DeepEnsembleClassifier.fit`` on numpy data,
    one member, ``mixed_precision`` and the skorch template's ``compile`` (validation and the copy to
    the device included in the time)."""
    import torch

    from skpcoreset import DeepEnsembleClassifier, make_net

    net = make_net(
        problem["module"],
        max_epochs=problem["epochs"],
        batch_size=problem["batch_size"],
        lr=problem["lr"],
        optimizer=torch.optim.SGD,
        optimizer__momentum=0.9,
        compile=compiled,
        **{f"module__{k}": v for k, v in problem["kwargs"].items()},
    )
    clf = DeepEnsembleClassifier(
        net, n_members=1, mixed_precision="bf16" if bf16 else "no", device=device, random_state=0
    )
    clf.fit(X, y)


def trainer_fit(problem: dict, X_t, y_t, *, bf16: bool, compiled: bool) -> None:
    """The loop alone: :class:`skpcoreset._train.Trainer` on the device tensors, as the estimators run it."""
    import torch

    from skpcoreset._base import make_generator
    from skpcoreset._train import Trainer, TrainSpec

    spec = TrainSpec(
        max_epochs=problem["epochs"],
        batch_size=problem["batch_size"],
        lr=problem["lr"],
        optimizer=torch.optim.SGD,
        optimizer_kwargs={"momentum": 0.9},
        compile=compiled,
    )
    Trainer(
        _fresh_module(problem, X_t.device),
        spec,
        generator=make_generator(0, X_t.device),
        mixed_precision="bf16" if bf16 else "no",
    ).fit(X_t, y_t)


def _fresh_module(problem: dict, device):
    import torch

    torch.manual_seed(0)
    return problem["module"](problem["shape"], 10, **problem["kwargs"]).to(device)


def throughput_problems(dry: bool) -> list[dict]:
    """ConvNet-3 (eager), the ResNet, then ConvNet-3 compiled: compilation, the slowest to warm up, goes last."""
    from skpcoreset.nets import CIFARResNet, ConvNet

    eager = (
        "raw",
        "ours",
        "trainer",
        "raw_bf16_cl",
        "ours_bf16_cl",
        "trainer_bf16_cl",
        "skorch_default",
        "skorch_gpu_tensors",
    )
    compiled = ("raw", "raw_compile", "ours_compile")
    if dry:
        convnet = {
            "module": ConvNet,
            "kwargs": {"width": 8},
            "shape": (3, 16, 16),
            "n": 512,
            "batch_size": 64,
            "epochs": 1,
            "lr": 0.01,
            "rounds": 1,
            "reference": None,
        }
        resnet = {
            "module": CIFARResNet,
            "kwargs": {"depth": 8, "width": 1},
            "shape": (3, 16, 16),
            "n": 256,
            "batch_size": 64,
            "epochs": 1,
            "lr": 0.01,
            "rounds": 1,
            "reference": None,
        }
    else:
        # 50,176 = 196 batches of 256: no ragged last batch, so torch.compile sees one shape.
        convnet = {
            "module": ConvNet,
            "kwargs": {"width": 128},
            "shape": (3, 32, 32),
            "n": 50_176,
            "batch_size": 256,
            "epochs": 1,
            "lr": 0.01,
            "rounds": 3,
            "reference": {"raw": 68_500, "skorch_default": 0.48, "skorch_gpu_tensors": 0.54},
        }
        resnet = {
            "module": CIFARResNet,
            "kwargs": {"depth": 20, "width": 4},
            "shape": (3, 32, 32),
            "n": 20_480,
            "batch_size": 256,
            "epochs": 1,
            "lr": 0.01,
            "rounds": 2,
            "reference": {"raw": 18_200, "raw_bf16": 21_500, "skorch_default": 0.70},
        }
    return [
        {**convnet, "name": "ConvNet-3", "variants": eager},
        {**resnet, "name": "ResNet-18-like", "variants": eager},
        # Inductor's first compilation of ConvNet-3 (forward and backward) takes tens of seconds.
        {**convnet, "name": "ConvNet-3 compiled", "variants": compiled, "reference": None, "needs_s": 0 if dry else 60},
    ]


def _throughput_variants(problem: dict, X, y, X_t, y_t, device: str) -> dict:
    from benchmarks.train_throughput import run_skorch

    p = problem
    args = (p["epochs"], p["batch_size"], p["lr"])

    # Every variant is called as fn(X, y, X_t, y_t) (numpy and device copies of the same data).
    def raw(**flags):
        def fn(X=X, y=y, X_t=X_t, y_t=y_t):
            raw_loop(_fresh_module(p, X_t.device), X_t, y_t, *args, **flags)

        return fn

    def ours(**flags):
        def fn(X=X, y=y, X_t=None, y_t=None):
            package_fit(p, X, y, device, **flags)

        return fn

    def loop(**flags):
        def fn(X=None, y=None, X_t=X_t, y_t=y_t):
            trainer_fit(p, X_t, y_t, **flags)

        return fn

    def skorch(fast):
        def fn(X=X, y=y, X_t=None, y_t=None):
            run_skorch(p["module"], p["shape"], p["kwargs"], X, y, *args, device, fast=fast)

        return fn

    variants = {
        "raw": raw(),
        "ours": ours(bf16=False, compiled=False),
        "raw_bf16_cl": raw(bf16=True, channels_last=True),
        "ours_bf16_cl": ours(bf16=True, compiled=False),
        "skorch_default": skorch(False),
        "skorch_gpu_tensors": skorch(True),
        "raw_compile": raw(compiled=True),
        "ours_compile": ours(bf16=False, compiled=True),
        "trainer": loop(bf16=False, compiled=False),
        "trainer_bf16_cl": loop(bf16=True, compiled=False),
    }
    return {name: variants[name] for name in p["variants"]}


def part_throughput(ctx: Context) -> dict:
    import torch

    results = {"models": {}}
    summary, data = [], {}
    for problem in throughput_problems(ctx.dry):
        if ctx.left() < problem.get("needs_s", 0):
            results["stopped_early"] = f"before {problem['name']}: time cap"
            break
        key = (problem["n"], problem["shape"])
        if key not in data:
            rng = np.random.RandomState(0)
            X = rng.rand(problem["n"], *problem["shape"]).astype(np.float32)
            y = rng.randint(0, 10, problem["n"]).astype(np.int64)
            data[key] = (X, y, torch.from_numpy(X).to(ctx.device), torch.from_numpy(y).to(ctx.device))
        X, y, X_t, y_t = data[key]
        variants = _throughput_variants(problem, X, y, X_t, y_t, ctx.device)
        record = {
            "data": f"{problem['n']} x {problem['shape']}",
            "model": f"{problem['module'].__name__}{problem['kwargs']}",
            "epochs": problem["epochs"],
            "batch_size": problem["batch_size"],
            "warmup_seconds": {},
            "images_per_second": {name: [] for name in variants},
            "errors": {},
        }
        results["models"][problem["name"]] = record
        n_warm = min(problem["n"], 10 * problem["batch_size"])
        for name, fn in list(variants.items()):  # warm-up on 10 batches: kernels, allocator, compilation
            try:
                record["warmup_seconds"][name] = timed(fn, X[:n_warm], y[:n_warm], X_t[:n_warm], y_t[:n_warm])[1]
            except Exception as exc:  # noqa: BLE001 - one failing option must not hide the others
                record["errors"][name] = f"{type(exc).__name__}: {exc}"[:600]
                variants.pop(name)
            ctx.save(results)
        n_images = problem["n"] * problem["epochs"]
        for r in range(problem["rounds"]):
            round_cost = (
                sum(n_images / max(rates[-1], 1.0) for rates in record["images_per_second"].values() if rates)
                if r
                else 0.0
            )
            if r and ctx.left() < 1.2 * round_cost:
                record["stopped_early"] = f"after {r} round(s): time cap"
                break
            for name, fn in variants.items():
                record["images_per_second"][name].append(n_images / timed(fn)[1])
            print(
                f"{problem['name']} round {r}: "
                + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in record["images_per_second"].items() if v),
                flush=True,
            )
            ctx.save(results)
        record["median_ratio"] = _throughput_ratios(record["images_per_second"])
        summary += _throughput_summary(problem, record)
        results["summary"] = summary
        ctx.save(results, notes=_THROUGHPUT_NOTES)
        if ctx.left() < 10:
            results["stopped_early"] = f"after {problem['name']}: time cap"
            break
    ctx.save(results, notes=_THROUGHPUT_NOTES)
    return results


_THROUGHPUT_NOTES = (
    "images/s per variant per round (rounds interleaved); ratios are medians over rounds of per-round ratios, "
    "ours_* against raw_* with the same options, skorch against raw fp32. 'ours' is DeepEnsembleClassifier(net, "
    "n_members=1, mixed_precision=...) fitted on the numpy arrays (validation and the copy to the device "
    "included), with make_net(compile=...) for ours_compile; trainer* is the package's loop alone (Trainer, "
    "mixed_precision=...) on the device tensors, as raw loops get them. "
    "bf16 = bf16 autocast + channels_last. Warm-up (compilation included) on 10 batches, not timed in rounds."
)


def _throughput_ratios(rates: dict) -> dict:
    pairs = {
        "ours": "raw",
        "ours_bf16_cl": "raw_bf16_cl",
        "ours_compile": "raw_compile",
        "trainer": "raw",
        "trainer_bf16_cl": "raw_bf16_cl",
        "skorch_default": "raw",
        "skorch_gpu_tensors": "raw",
        "raw_bf16_cl": "raw",
        "raw_compile": "raw",
    }
    ratios = {}
    for name, base in pairs.items():
        a, b = rates.get(name) or [], rates.get(base) or []
        if a and b:
            ratios[f"{name}/{base}"] = _median([x / z for x, z in zip(a, b, strict=False)])
    return ratios


def _throughput_summary(problem: dict, record: dict) -> list[dict]:
    ref = problem["reference"] or {}
    rates, ratios, name = record["images_per_second"], record["median_ratio"], problem["name"]
    rows = [row(f"{name} raw fp32", _median(rates.get("raw")), unit="img/s", reference=ref.get("raw"))]
    if "raw_compile" in rates:
        rows.append(row(f"{name}: raw_compile / raw", ratios.get("raw_compile/raw"), unit="x"))
    if "raw_bf16" in ref:
        rows.append(row(f"{name} raw bf16", _median(rates.get("raw_bf16_cl")), unit="img/s", reference=ref["raw_bf16"]))
    for ours, base in (
        ("ours", "raw"),
        ("trainer", "raw"),
        ("ours_bf16_cl", "raw_bf16_cl"),
        ("trainer_bf16_cl", "raw_bf16_cl"),
        ("ours_compile", "raw_compile"),
    ):
        value = ratios.get(f"{ours}/{base}")
        if ours in rates:
            rows.append(
                row(
                    f"{name} {ours} / {base}",
                    value,
                    unit="x",
                    target=">= 0.9",
                    met=None if value is None else value >= 0.9,
                )
            )
    for skorch in ("skorch_default", "skorch_gpu_tensors"):
        if skorch in rates:
            rows.append(row(f"{name} {skorch} / raw", ratios.get(f"{skorch}/raw"), unit="x", reference=ref.get(skorch)))
    return rows


# -- part: ensembles, vmap vs sequential ------------------------------------------------------
def ensemble_problems(dry: bool) -> list[dict]:
    from skpcoreset.nets import MLP, ConvNet

    if dry:
        return [
            {
                "name": "MLP",
                "module": MLP,
                "shape": (16,),
                "kwargs": {"hidden_sizes": (16,)},
                "n": 256,
                "epochs": 1,
                "batch_size": 64,
                "rounds": 1,
                "reference": {},
            },
            {
                "name": "ConvNet-3",
                "module": ConvNet,
                "shape": (3, 8, 8),
                "kwargs": {"width": 4},
                "n": 128,
                "epochs": 1,
                "batch_size": 64,
                "rounds": 1,
                "reference": {},
            },
        ]
    return [
        {
            "name": "MLP",
            "module": MLP,
            "shape": (64,),
            "kwargs": {"hidden_sizes": (256, 256)},
            "n": 20_480,
            "epochs": 2,
            "batch_size": 256,
            "rounds": 2,
            "reference": {4: 1.6, 8: 3.9},
        },
        {
            "name": "ConvNet-3",
            "module": ConvNet,
            "shape": (3, 32, 32),
            "kwargs": {"width": 128},
            "n": 8192,
            "epochs": 1,
            "batch_size": 256,
            "rounds": 2,
            "reference": {8: 0.81},
        },
    ]


def part_ensembles(ctx: Context) -> dict:
    import torch

    from skpcoreset._base import torch_seed
    from skpcoreset._train import TrainSpec, choose_ensemble_strategy, train_members

    results, summary = {"configs": []}, []
    for problem in ensemble_problems(ctx.dry):
        rng = np.random.RandomState(0)
        X = torch.from_numpy(rng.rand(problem["n"], *problem["shape"]).astype(np.float32)).to(ctx.device)
        y = torch.from_numpy(rng.randint(0, 10, problem["n"])).to(ctx.device)
        spec = TrainSpec(
            max_epochs=problem["epochs"],
            batch_size=problem["batch_size"],
            lr=0.01,
            optimizer=torch.optim.SGD,
            optimizer_kwargs={"momentum": 0.9},
        )

        def members(n_members, problem=problem):
            with torch_seed(0):
                return [
                    problem["module"](problem["shape"], 10, **problem["kwargs"]).to(ctx.device)
                    for _ in range(n_members)
                ]

        def train(strategy, n_members, tensors, spec=spec):
            return train_members(members(n_members), tensors, spec, seeds=list(range(n_members)), strategy=strategy)

        for strategy in ("sequential", "vmap"):  # warm-up: the shapes of both ensemble sizes, on 2 batches
            for n_members in (4, 8):
                train(strategy, n_members, (X[: 2 * problem["batch_size"]], y[: 2 * problem["batch_size"]]))
        for n_members in (4, 8):
            rates = {"sequential": [], "vmap": []}
            for _ in range(problem["rounds"]):
                for strategy in rates:
                    seconds = timed(train, strategy, n_members, (X, y))[1]
                    rates[strategy].append(n_members * problem["n"] * problem["epochs"] / seconds)
            speedup = _median([v / s for v, s in zip(rates["vmap"], rates["sequential"], strict=True)])
            auto = choose_ensemble_strategy(members(n_members), "auto")
            faster = "vmap" if speedup > 1 else "sequential"
            config = {
                "model": problem["name"],
                "n_members": n_members,
                "member_images_per_second": rates,
                "vmap_over_sequential": speedup,
                "auto_picks": auto,
                "faster": faster,
                "auto_picks_the_slower": auto != faster and abs(speedup - 1) > 0.05,
            }
            results["configs"].append(config)
            print(config, flush=True)
            reference = problem["reference"].get(n_members)
            target = ">= 3.5" if problem["name"] == "MLP" and n_members == 8 else None
            summary.append(
                row(
                    f"{problem['name']} M={n_members} vmap / sequential",
                    speedup,
                    unit="x",
                    reference=reference,
                    target=target,
                    met=None if target is None else speedup >= 3.5,
                )
            )
            auto_vs_faster = (speedup if auto == "vmap" else 1.0) / max(speedup, 1.0)
            summary.append(
                row(
                    f"{problem['name']} M={n_members} 'auto' ({auto}) / the faster strategy",
                    auto_vs_faster,
                    unit="x",
                    target=">= 0.95 ('auto' never picks the slower)",
                    met=auto_vs_faster >= 0.95,
                )
            )
            results["summary"] = summary
            ctx.save(results, notes=_ENSEMBLE_NOTES)
            if ctx.left() < 3:
                return results
    return results


_ENSEMBLE_NOTES = (
    "train_members(strategy='sequential' | 'vmap') on the same members (same initial weights), data on the "
    "device, SGD momentum 0.9; member-images/s per round; vmap_over_sequential is the median per-round ratio. "
    "auto_picks_the_slower flags an 'auto' choice more than 5% slower than the other strategy."
)


# -- part: one pseudocoreset synthesis step ---------------------------------------------------
def part_pseudocoreset_step(ctx: Context) -> dict:
    from benchmarks.pseudocoreset import step_speed

    args = argparse.Namespace(
        device=ctx.device,
        step_width=4 if ctx.dry else 128,
        inner_steps=[2, 3] if ctx.dry else [20, 50],
        timed_steps=1 if ctx.dry else 5,
    )
    rows = step_speed(args)
    by = {(r["method"], r["inner_steps"]): r for r in rows}
    k_small, k_large = args.inner_steps
    gib = 2**30 / 2**20

    def get(method, K, key):
        return by.get((method, K), {}).get(key)

    fkl, naive = get("forward_kl", k_small, "steps_per_second"), get("naive_forward_kl", k_small, "steps_per_second")
    fkl_large = get("forward_kl", k_large, "steps_per_second")
    naive_large = get("naive_forward_kl", k_large, "steps_per_second")
    fkl_mem = [get("forward_kl", K, "peak_memory_mib") for K in args.inner_steps]
    w_mem = [get("wasserstein", K, "peak_memory_mib") for K in args.inner_steps]
    summary = [
        row(f"fKL step K={k_small}", fkl, unit="steps/s", reference=13.2),
        row(f"fKL / straightforward step K={k_small}", fkl / naive, unit="x", target=">= 2", met=fkl / naive >= 2),
        row(
            f"fKL / straightforward step K={k_large}",
            fkl_large / naive_large,
            unit="x",
            target=">= 2",
            met=fkl_large / naive_large >= 2,
        ),
        row(f"fKL peak memory K={k_small}", fkl_mem[0] / gib, unit="GiB", reference=1.28),
        row(
            f"fKL peak memory K={k_large} / K={k_small}",
            fkl_mem[1] / fkl_mem[0],
            unit="x",
            target="<= 1.1 (flat in K)",
            met=fkl_mem[1] / fkl_mem[0] <= 1.1,
        ),
        row(f"W step K={k_small}", get("wasserstein", k_small, "steps_per_second"), unit="steps/s", reference=3.8),
        row(f"W peak memory K={k_small}", w_mem[0] / gib, unit="GiB", reference=5.7),
        row(f"W peak memory K={k_large}", w_mem[1] / gib, unit="GiB", reference=14.0),
    ]
    results = {"step_speed": rows, "summary": summary}
    ctx.save(
        results,
        notes="benchmarks.pseudocoreset step_speed: ConvNet-3 of step_width, 100 coreset images "
        "3x32x32, 4 samples per side; peak memory on CUDA = max_memory_allocated above the starting level.",
    )
    return results


# -- data of the family parts -------------------------------------------------------------------
def load_images(name: str, n_train: int, n_test: int, dry: bool, *, shape=(3, 32, 32)):
    """(X_train, y_train, X_test, y_test) of a shared image file; random images in a dry run without it."""
    from skpcoreset.datasets import find_data_file, load_npz_images

    path = find_data_file(f"{name}.npz")
    if path is not None:
        data = load_npz_images(path, n_train=n_train, n_test=n_test, random_state=0)
        return data.X_train, data.y_train, data.X_test, data.y_test, str(path)
    if not dry:
        return None
    rng = np.random.RandomState(0)
    return (
        rng.rand(n_train, *shape).astype(np.float32),
        rng.randint(0, 10, n_train),
        rng.rand(n_test, *shape).astype(np.float32),
        rng.randint(0, 10, n_test),
        "random images (dry run)",
    )


def _no_data(ctx: Context, name: str) -> dict:
    results = {
        "skipped": f"{name}.npz not found: run `python -m benchmarks.prepare_device` and set SKPCORESET_DATA=.gpu_data",
        "summary": [row(f"{ctx.name}: data", None, target=f"{name}.npz present", met=False)],
    }
    ctx.save(results)
    return results


# -- part: pseudocoreset end to end -------------------------------------------------------------
def part_family_pseudocoreset(ctx: Context) -> dict:
    import torch

    from skpcoreset import make_net
    from skpcoreset.metrics import evaluate_proba
    from skpcoreset.nets import ConvNet
    from skpcoreset.pseudocoreset import PosteriorSampler, PseudocoresetSynthesizer

    data = load_images("mnist", 200 if ctx.dry else 5000, 100 if ctx.dry else 1000, ctx.dry, shape=(1, 28, 28))
    if data is None:
        return _no_data(ctx, "mnist")
    X, y, X_test, y_test, source = data
    net = make_net(ConvNet, optimizer=torch.optim.SGD, lr=0.01, batch_size=256, module__width=4 if ctx.dry else 128)
    params = (
        dict(
            n_per_class=2,
            n_experts=1,
            expert_epochs=2,
            n_iterations=3,
            inner_steps=2,
            posterior=PosteriorSampler(n_samples=2, steps=10),
        )
        if ctx.dry
        else dict(n_per_class=10)
    )
    results = {"data": source, "n_train": len(y), "n_test": len(y_test), "params": params, "runs": {}}
    for divergence in ("random", "forward_kl"):  # the baseline first: it is the cheaper one
        est = PseudocoresetSynthesizer(divergence=divergence, net=net, device=ctx.device, random_state=0, **params)
        _, seconds = timed(est.fit, X, y)
        scores = evaluate_proba(y_test, est.predict_proba(X_test), classes=est.classes_)
        results["runs"][divergence] = {
            "fit_seconds": seconds,
            "phase_seconds": est.fit_seconds_,
            **{k: float(v) for k, v in scores.items()},
        }
        print(divergence, results["runs"][divergence], flush=True)
        ctx.save(results)
    runs = results["runs"]
    fkl, rnd = runs.get("forward_kl", {}).get("accuracy"), runs.get("random", {}).get("accuracy")
    results["summary"] = [
        row("MNIST 10/class random BMA accuracy", rnd),
        row(
            "MNIST 10/class fKL BMA accuracy",
            fkl,
            target="> random",
            met=None if fkl is None or rnd is None else fkl > rnd,
        ),
    ]
    ctx.save(
        results,
        notes="PseudocoresetSynthesizer defaults (4 experts x 15 epochs, 200 iterations, SGHMC 8 "
        "samples) with ConvNet-3 width 128 experts, SGD lr 0.01, on the .gpu_data MNIST subset; "
        "papers (MAP, all 60k images): DC 97.4, DSA 97.8 at 10/class.",
    )
    return results


# -- part: GEX vs TracIn and the loss -----------------------------------------------------------
def part_family_gex(ctx: Context) -> dict:
    from sklearn.frozen import FrozenEstimator
    from sklearn.metrics import average_precision_score, roc_auc_score

    from skpcoreset import make_net
    from skpcoreset.datasets import add_label_noise
    from skpcoreset.nets import ConvNet
    from skpcoreset.posthoc.influence import GeometricEnsembleInfluence

    data = load_images("cifar10", 300 if ctx.dry else 10_000, 10, ctx.dry)
    if data is None:
        return _no_data(ctx, "cifar10")
    X, y, *_, source = data
    y_noisy, flipped = add_label_noise(y, 0.1, random_state=0)
    net = make_net(
        ConvNet, max_epochs=2 if ctx.dry else 30, lr=1e-3, batch_size=128, module__width=4 if ctx.dry else 64
    )
    members = dict(n_members=2, member_epochs=1) if ctx.dry else {}
    results = {"data": source, "n_train": len(y), "noise": 0.1, "methods": {}}

    def quality(scores, seconds):
        return {
            "roc_auc": roc_auc_score(flipped, scores),
            "ap": average_precision_score(flipped, scores),
            "seconds": seconds,
        }

    # One theta* (trained with TracIn's checkpoints) serves the three methods.
    tracin, seconds = timed(
        GeometricEnsembleInfluence(net, method="tracin", device=ctx.device, random_state=0).fit, X, y_noisy
    )
    results["theta_star_train_accuracy_on_noisy_labels"] = float((tracin.predicted_labels_ == y_noisy).mean())
    results["methods"]["tracin"] = quality(tracin.self_influence_, seconds)
    results["methods"]["loss"] = quality(tracin.base_losses_, 0.0)
    ctx.save(results)
    gex = GeometricEnsembleInfluence(FrozenEstimator(tracin.net_), device=ctx.device, random_state=0, **members)
    gex, seconds = timed(gex.fit, X, y_noisy)
    results["methods"]["gex"] = {
        **quality(gex.self_influence_, seconds),
        "jitter": gex.jitter_,
        "median_loss_shift": gex.median_loss_shift_,
    }
    auc = {name: m["roc_auc"] for name, m in results["methods"].items()}
    results["summary"] = [
        row(
            "GEX ROC-AUC (10% flips)",
            auc["gex"],
            target=">= TracIn and loss",
            met=auc["gex"] >= max(auc["tracin"], auc["loss"]),
        ),
        row("TracIn-CP ROC-AUC", auc["tracin"]),
        row("loss ROC-AUC", auc["loss"]),
        row(
            "theta* train accuracy (noisy labels)",
            results["theta_star_train_accuracy_on_noisy_labels"],
            target="~1 (memorises)",
        ),
    ]
    ctx.save(
        results,
        notes="theta*: ConvNet-3 width 64, Adam lr 1e-3, 30 epochs, 5 TracIn checkpoints; "
        "GEX defaults (M=8 chain members, 4 epochs, jitter='auto') on the frozen theta*; the loss is theta*'s; "
        "seconds: TracIn = training theta* with checkpoints + scoring, GEX = members + scoring.",
    )
    return results


# -- part: bridges vs deep ensembles ------------------------------------------------------------
def part_family_bridge(ctx: Context) -> dict:
    from benchmarks.bridge import mode_proba, score_rows
    from skpcoreset import make_net
    from skpcoreset.ensemble import BridgeEnsembleClassifier
    from skpcoreset.nets import ConvNet

    data = load_images("cifar10", 300 if ctx.dry else 10_000, 150 if ctx.dry else 2000, ctx.dry)
    if data is None:
        return _no_data(ctx, "cifar10")
    X, y, X_test, y_test, source = data
    epochs = 1 if ctx.dry else 15
    net = make_net(
        ConvNet,
        max_epochs=epochs,
        batch_size=128,
        lr=1e-3,
        module__width=4 if ctx.dry else 32,
        module__norm="batchnorm",
    )
    clf = BridgeEnsembleClassifier(net, n_modes=3, tail_stages=2, device=ctx.device, random_state=0)
    _, seconds = timed(clf.fit, X, y)
    X_t = clf._to_tensor(clf._validate_X(X, reset=False))
    train_accuracy = [float((p.argmax(1) == np.searchsorted(clf.classes_, y)).mean()) for p in mode_proba(clf, X_t)]
    n_valid = len(y_test) // 3
    rows = score_rows(clf, X_test[:n_valid], y_test[:n_valid], X_test[n_valid:], y_test[n_valid:])
    by = {r["model"]: r for r in rows}
    single_bridges = [r for r in rows if r["model"].startswith("Single +") and "bridge" in r["model"]]
    best = max(single_bridges, key=lambda r: r["dee_cnll"], default=None)
    results = {
        "data": source,
        "n_train": len(y),
        "fit_seconds": seconds,
        "mode_train_accuracy": train_accuracy,
        "bridge_fidelity": clf.bridge_fidelity_,
        "rows": rows,
        "summary": [
            row("modes' train accuracy (min)", min(train_accuracy), target="~1 (fit the training set)"),
            row("DE-1 cNLL", by["DE-1"]["cnll"]),
            row("DE-3 cNLL", by["DE-3"]["cnll"]),
            row(
                f"{best['model']} DEE (cNLL)" if best else "bridge DEE",
                best and best["dee_cnll"],
                target="> 1 at < 2x FLOPs",
                met=None if best is None else bool(best["dee_cnll"] > 1 and best["flops_ratio"] < 2),
            ),
        ],
    }
    ctx.save(
        results,
        notes="BridgeEnsembleClassifier(n_modes=3, tail_stages=2): ConvNet-3 width 32 (batch norm), "
        "Adam lr 1e-3, 15 epochs for modes, curves and bridges; DE-k from the same fit's modes; cNLL after "
        "one temperature per ensemble fitted on the first third of the test split (benchmarks.bridge).",
    )
    return results


# -- part: diverse distillation ---------------------------------------------------------------
def part_family_distill(ctx: Context) -> dict:
    from benchmarks.distill import _distil, _scores, member_net, summarise
    from skpcoreset import DeepEnsembleClassifier
    from skpcoreset.distill._distiller import mean_pairwise_disagreement

    data = load_images("cifar10", 300 if ctx.dry else 4000, 150 if ctx.dry else 2000, ctx.dry)
    if data is None:
        return _no_data(ctx, "cifar10")
    X, y, X_test, y_test, source = data
    args = argparse.Namespace(
        arch="conv",
        width=4 if ctx.dry else 32,
        depth=3,
        lr=1e-3,
        epochs=1 if ctx.dry else 15,
        student_epochs=None,
        temperature=1.0,
        augment=None,
        device=ctx.device,
    )
    net = member_net(args, args.epochs)
    teacher, seconds = timed(DeepEnsembleClassifier(net, n_members=4, device=ctx.device, random_state=0).fit, X, y)
    members = teacher.member_proba(X_test)
    member_train_accuracy = [float((p.argmax(1) == y).mean()) for p in teacher.member_proba(X)]
    rows = [
        {
            "seed": 0,
            "model": "teacher DE-4",
            "seconds": seconds,
            **_scores(y_test, members.mean(0)),
            "disagreement": mean_pairwise_disagreement(members),
        },
        {
            "seed": 0,
            "model": "teacher member (mean of 4)",
            **{k: float(np.mean([_scores(y_test, p)[k] for p in members])) for k in ("accuracy", "nll", "ece")},
        },
    ]
    results = {"data": source, "n_train": len(y), "member_train_accuracy": member_train_accuracy, "rows": rows}
    ctx.save(results)
    for perturbation in (None, "gaussian", "ods", "confods"):
        if rows[-1].get("seconds") and ctx.left() < 1.5 * rows[-1]["seconds"]:
            results["stopped_early"] = f"before {perturbation}: time cap"
            break
        rows.append(_distil(teacher, net, "single", perturbation, 1 / 255, 0, args, (X, y), (X_test, y_test)))
        ctx.save(results)
    summary = summarise(rows)
    gap = {p: (summary.get(f"single {p}") or {}).get("nll_gap_closed") for p in ("ods", "confods", "gaussian")}
    results["summary_table"] = summary
    results["summary"] = [
        row("teacher members' train accuracy (min)", min(member_train_accuracy), target="~1 (fit the training set)"),
        row(
            "ODS: share of the KD-to-teacher NLL gap closed",
            gap["ods"],
            target=">= 0.5 (paper)",
            met=None if gap["ods"] is None else gap["ods"] >= 0.5,
        ),
        row(
            "ConfODS: gap closed",
            gap["confods"],
            target=">= 0.5 (paper)",
            met=None if gap["confods"] is None else gap["confods"] >= 0.5,
        ),
        row(
            "Gaussian: gap closed",
            gap["gaussian"],
            target="< 0.2 (paper)",
            met=None if gap["gaussian"] is None else gap["gaussian"] < 0.2,
        ),
    ]
    ctx.save(
        results,
        notes="DE-4 teacher of ConvNet-3 width 32 (instance norm), Adam lr 1e-3, 15 epochs, batch "
        "64, no augmentation, on 4,000 CIFAR-10 images; single students with the same recipe distilled on the "
        "training split (alpha 0.9, T 1, step 1/255; benchmarks.distill).",
    )
    return results


# -- the suite ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    run: Callable[[Context], dict]
    estimate_s: float  # expected on one H100/H200, process start and CUDA initialisation included
    cap_s: float  # hard limit; the caps of all parts add up to BUDGET_S
    dry_cap_s: float = 90.0


PARTS = {
    "cuda_tests": Part(part_cuda_tests, 40, 60),
    "throughput": Part(part_throughput, 110, 120),
    "ensembles": Part(part_ensembles, 20, 35),
    "pseudocoreset_step": Part(part_pseudocoreset_step, 20, 30),
    "family_pseudocoreset": Part(part_family_pseudocoreset, 40, 50),
    "family_gex": Part(part_family_gex, 30, 40),
    "family_bridge": Part(part_family_bridge, 30, 40),
    "family_distill": Part(part_family_distill, 30, 45),
}
assert sum(p.cap_s for p in PARTS.values()) <= BUDGET_S


def run_parts(names: list[str], args) -> int:
    """In a child process: run parts one after another inside ``args.cap`` seconds.

    Each part ends by its own cap (``dry_cap_s`` in a dry run) or what is left of ``args.cap``,
    minus a margin for writing. The real suite runs one part per child; the dry run runs them
    all in one child (torch, scikit-learn and skorch are imported once: half the CPU time of
    toy-sized parts).
    """
    import traceback

    import torch

    if args.dry_run:
        torch.set_num_threads(1)
        # No inductor code generation on the CPU in a dry run: dynamo traces, the eager backend runs.
        torch.compile = _eager_compile(torch.compile)
    device = "cpu" if args.dry_run else "cuda"
    end = time.monotonic() + args.cap
    failed = False
    for name in names:
        cap = min(PARTS[name].dry_cap_s if args.dry_run else args.cap, end - time.monotonic())
        ctx = Context(
            name=name,
            dry=args.dry_run,
            device=device,
            out=Path(args.out),
            deadline=time.monotonic() + cap - max(3.0, 0.05 * cap),
        )
        wall, cpu = time.monotonic(), time.process_time()
        try:
            results = PARTS[name].run(ctx)
        except Exception:  # noqa: BLE001 - a broken part is reported, the next one runs
            ctx.fail(traceback.format_exc())
            print(traceback.format_exc(), flush=True)
            failed = True
            continue
        results["part_seconds"] = {"wall": time.monotonic() - wall, "cpu": time.process_time() - cpu}
        ctx.save(results, ctx.last[1])
        failed |= bool(results.get("tests_failed"))  # failing CUDA tests fail the part
    return int(failed)


def _eager_compile(compile_fn):
    def compile_eagerly(model=None, **kwargs):
        kwargs["backend"] = "eager"
        return compile_fn(model, **kwargs)

    return compile_eagerly


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_child(names: list[str], cap: float, args) -> tuple[str, float, float]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.gpu_suite",
        "--run-parts",
        ",".join(names),
        "--cap",
        f"{cap:.1f}",
        "--out",
        str(args.out),
    ] + (["--dry-run"] if args.dry_run else [])
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "SKPCORESET_SUITE_COMMAND": " ".join(["python", "-m", "benchmarks.gpu_suite", *sys.argv[1:]]),
    }
    start, cpu = time.monotonic(), _children_cpu_seconds()
    # Its own process group: a part killed at its cap takes its helpers (compile workers) along.
    child = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    try:
        code = child.wait(timeout=cap)
        status = "ok" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        status = f"killed at its {cap:.0f} s cap"
    return status, time.monotonic() - start, _children_cpu_seconds() - cpu


def run_suite(args) -> int:
    names = args.parts or list(PARTS)
    started = time.monotonic()
    if args.dry_run:
        record = _run_dry(names, args)
    else:
        record = {}
        for name in names:
            part = PARTS[name]
            cap = min(part.cap_s, args.budget - (time.monotonic() - started) - 2.0)
            if cap < 10:
                record[name] = {"status": "skipped: the suite's budget is spent", "seconds": 0.0}
                continue
            print(f"\n=== {name} (estimate {part.estimate_s:.0f} s, cap {cap:.0f} s) ===", flush=True)
            status, seconds, cpu_seconds = _run_child([name], cap, args)
            record[name] = {
                "status": _status_of(name, Path(args.out), status),
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "estimate_s": part.estimate_s,
                "cap_s": cap,
            }
    total = time.monotonic() - started
    table = summary_table(names, record, Path(args.out))
    print(format_table(table, record, total))
    write_results(
        "gpu_suite",
        {"parts": record, "total_seconds": total, "summary": table},
        device="cpu" if args.dry_run else "cuda",
        directory=Path(args.out),
        quiet=True,
        notes="h100_reference: the H100 figures of issue 20 / DESIGN.md section 0; vs_reference = value / "
        "reference (on an H200, hardware and software together).",
    )
    failed = [n for n, r in record.items() if r["status"] != "ok"]
    return 1 if failed and args.dry_run else 0


def _run_dry(names: list[str], args) -> dict:
    """All parts in one child process; per-part times come from the parts' own JSON."""
    print(f"\n=== dry run: {', '.join(names)} (cap {args.budget:.0f} s) ===", flush=True)
    status, seconds, cpu_seconds = _run_child(names, args.budget, args)
    record = {}
    for name in names:
        path = Path(args.out) / f"gpu_{name}.json"
        results = json.loads(path.read_text())["results"] if path.exists() else {}
        spent = results.get("part_seconds", {})
        record[name] = {
            "status": _status_of(name, Path(args.out), "ok" if spent else status),
            "seconds": spent.get("wall", 0.0),
            "cpu_seconds": spent.get("cpu", 0.0),
            "estimate_s": PARTS[name].estimate_s,
            "cap_s": PARTS[name].dry_cap_s,
        }
    record["(dry-run process)"] = {"status": status, "seconds": seconds, "cpu_seconds": cpu_seconds}
    return record


def _status_of(name: str, out: Path, process_status: str) -> str:
    """The process's status, or the error the part recorded, or 'not run' when it wrote nothing."""
    path = out / f"gpu_{name}.json"
    if not path.exists():
        return "not run" if process_status == "ok" else process_status
    results = json.loads(path.read_text())["results"]
    if "error" in results:
        return "failed: " + results["error"].strip().splitlines()[-1][:100]
    if results.get("tests_failed"):
        return "failed: tests failed"
    return process_status


def summary_table(names, record, out: Path) -> list[dict]:
    rows = []
    for name in names:
        path = out / f"gpu_{name}.json"
        results = json.loads(path.read_text())["results"] if path.exists() else {}
        for entry in results.get("summary", []):
            rows.append({"part": name, **entry})
        if not results.get("summary"):
            rows.append({"part": name, **row("(no summary)", None, target=record[name]["status"], met=False)})
    return rows


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def format_table(table: list[dict], record: dict, total: float) -> str:
    header = ("part", "metric", "value", "unit", "H100 ref", "ratio", "target", "met")
    lines = [
        [
            r["part"],
            r["metric"],
            _fmt(r["value"]),
            r["unit"],
            _fmt(r["h100_reference"]),
            _fmt(r["vs_reference"]),
            r["target"] or "",
            _fmt(r["met"]),
        ]
        for r in table
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]
    out = ["", "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out += ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)) for line in lines]
    out.append("")
    out += [
        f"{name}: {r['status']} in {r['seconds']:.0f} s"
        + (
            f" ({r['cpu_seconds']:.0f} s CPU; estimate {r['estimate_s']:.0f}, cap {r['cap_s']:.0f})"
            if "cap_s" in r
            else ""
        )
        for name, r in record.items()
    ]
    out.append(f"total {total:.0f} s")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every part at toy sizes on the CPU, into a temp dir")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=None)
    parser.add_argument(
        "--budget", type=float, default=None, help=f"seconds for the whole suite (default {BUDGET_S:.0f}; dry run 170)"
    )
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results; dry run: a temp dir)")
    parser.add_argument("--run-parts", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cap", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_parts:
        return run_parts(args.run_parts.split(","), args)
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="gpu_suite_dryrun_") if args.dry_run else str(RESULTS)
    if args.dry_run and Path(args.out).resolve() == RESULTS.resolve():
        parser.error("a dry run never writes into benchmarks/results")
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device here: run on the GPU machine, or use --dry-run")
    args.budget = args.budget or (170.0 if args.dry_run else BUDGET_S)
    print(f"results -> {args.out}", flush=True)
    return run_suite(args)


if __name__ == "__main__":
    sys.exit(main())
