"""
Continual learning with pseudocoreset replay
============================================

Digits split into five tasks (0/1, 2/3, ..., 8/9) are learned one after another by a single
network. After each task a memory of 5 rows per class is kept and replayed with later tasks:
a forward-KL pseudocoreset of the task, or a random subset of the same size. Without a memory
the network forgets earlier tasks. Accuracy on each task is measured among that task's classes
(task-incremental setting). In the class-incremental setting (``scenario='class'``) per-task
pseudocoresets replay worse than random rows -- they keep only what separates a task's own
classes; see ``benchmarks/continual.py`` and its results.
"""

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from skpcoreset import make_net  # noqa: E402
from skpcoreset.pseudocoreset import PosteriorSampler, PseudocoresetSynthesizer, continual_replay  # noqa: E402

torch.set_num_threads(1)
X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    (X / 16).astype(np.float32), y, test_size=0.3, random_state=0, stratify=y
)


def split_tasks(X, y):
    return [(X[np.isin(y, [2 * t, 2 * t + 1])], y[np.isin(y, [2 * t, 2 * t + 1])]) for t in range(5)]


tasks, test_tasks = split_tasks(X_train, y_train), split_tasks(X_test, y_test)
net = make_net(max_epochs=10, lr=1e-3, batch_size=32, module__hidden_sizes=(64,))
# fit_resample needs only the coreset: a one-step posterior keeps each synthesis short.
synthesis = dict(
    n_per_class=5, n_experts=2, expert_epochs=10, n_iterations=100, posterior=PosteriorSampler(n_samples=1, steps=1)
)

memories = {
    "no memory": lambda X, y, t: (X[:0], y[:0]),
    "random replay": lambda X, y, t: PseudocoresetSynthesizer(
        divergence="random", random_state=t, **synthesis).fit_resample(X, y),
    "pseudocoreset replay": lambda X, y, t: PseudocoresetSynthesizer(
        divergence="forward_kl", random_state=t, **synthesis).fit_resample(X, y),
}
fig, ax = plt.subplots(figsize=(5, 3.5))
for name, make_memory in memories.items():
    accuracy = continual_replay(tasks, test_tasks, make_memory, net=net, random_state=0)
    average = np.nanmean(accuracy, axis=1)
    print(f"{name:>21}: mean accuracy over seen tasks after each task {np.round(average, 3)}")
    ax.plot(range(1, 6), average, marker="o", label=name)
ax.set_xlabel("tasks learned")
ax.set_ylabel("mean accuracy on seen tasks")
ax.legend()
out = Path(os.environ.get("SKPCORESET_EXAMPLE_OUT", tempfile.gettempdir()))
out.mkdir(parents=True, exist_ok=True)
fig.savefig(out / "continual_learning.png", dpi=100, bbox_inches="tight")
print(f"saved {out / 'continual_learning.png'}")
