"""Continual learning on split digits: pseudocoreset replay vs random replay of the same size.

    python -m benchmarks.continual                 # task- and class-incremental, 1 and 5 per class

Digits (70/30 split, stratified) in five two-class tasks are learned in order by one MLP
(64 hidden, Adam 1e-3, 10 epochs per task). After each task a memory of ``n`` rows per class
is kept: a forward-KL pseudocoreset of that task, or a random subset. Reported: the mean test
accuracy over all five tasks after the last one, per seed.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from benchmarks._common import timed, write_results
from skpcoreset import make_net
from skpcoreset.pseudocoreset import PosteriorSampler, PseudocoresetSynthesizer, continual_replay

MEMORIES = ("none", "random", "forward_kl")


def split_tasks(X, y):
    return [(X[np.isin(y, [2 * t, 2 * t + 1])], y[np.isin(y, [2 * t, 2 * t + 1])]) for t in range(5)]


def memory_builder(kind: str, n_per_class: int, seed: int):
    if kind == "none":
        return lambda X, y, t: (X[:0], y[:0])
    synthesis = dict(
        n_per_class=n_per_class, n_experts=2, expert_epochs=10, n_iterations=100,
        posterior=PosteriorSampler(n_samples=1, steps=1),  # fit_resample needs only the coreset
    )
    return lambda X, y, t: PseudocoresetSynthesizer(
        divergence=kind, random_state=10 * seed + t, **synthesis
    ).fit_resample(X, y)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=["task", "class"])
    parser.add_argument("--n-per-class", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(
        (X / 16).astype(np.float32), y, test_size=0.3, random_state=0, stratify=y
    )
    tasks, test_tasks = split_tasks(X_tr, y_tr), split_tasks(X_te, y_te)
    net = make_net(max_epochs=10, lr=1e-3, batch_size=32, module__hidden_sizes=(64,))
    rows, summary = [], []
    for scenario in args.scenarios:
        for n_per_class in args.n_per_class:
            for kind in MEMORIES:
                finals = []
                for seed in range(args.seeds):
                    accuracy, seconds = timed(
                        continual_replay, tasks, test_tasks, memory_builder(kind, n_per_class, seed),
                        net=net, scenario=scenario, random_state=seed,
                    )
                    finals.append(float(np.nanmean(accuracy[-1])))
                    rows.append(dict(scenario=scenario, n_per_class=n_per_class, memory=kind, seed=seed,
                                     final_mean_accuracy=finals[-1], seconds=seconds,
                                     accuracy_matrix=accuracy.tolist()))
                summary.append(dict(scenario=scenario, n_per_class=n_per_class, memory=kind,
                                    mean=float(np.mean(finals)), std=float(np.std(finals))))
                print(summary[-1], flush=True)
    write_results(
        "continual_digits", {"summary": summary, "runs": rows},
        notes="Split digits, 5 two-class tasks, one MLP head over 10 classes; memory n rows per class "
        "per task, replayed (tiled to the task's size) with every later task. 'task': each test task "
        "predicted among its own classes; 'class': among all classes seen so far.",
    )


if __name__ == "__main__":
    main()
