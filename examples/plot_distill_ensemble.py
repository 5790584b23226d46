"""
Distilling an ensemble without losing its diversity
===================================================

A :class:`~skpcoreset.distill.DiverseDistiller` trains a student on
``(1 - alpha) CE(x) + alpha KL(teacher(x') || student(x'))`` where ``x'`` is each training batch
moved a small step along the gradient of a random teacher member's randomly weighted output
(ODS), scaled by the teacher's confidence (ConfODS). Those inputs are where the teacher members
disagree, so the student learns the ensemble's uncertainty, not only its labels.

Here a deep ensemble of four MLPs (DE-4) is trained on 900 digits and distilled on a transfer set
of 150 of them -- with little transfer data, what the perturbation adds matters most. The left
panel compares test NLL of the teacher, plain KD, KD with Gaussian noise of the same size, KD
with ConfODS, and a LatentBE student (four BatchEnsemble members merged into one network after
training, so it predicts at the cost of one). The right panel shows clean digits, their ODS
perturbations and how much the teacher members disagree on each (Jensen-Shannon spread).
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
from sklearn.frozen import FrozenEstimator  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from skpcoreset import DeepEnsembleClassifier, make_net  # noqa: E402
from skpcoreset.distill import DiverseDistiller  # noqa: E402
from skpcoreset.distill._perturbations import PerturbationConfig, ods_perturbation  # noqa: E402
from skpcoreset.distill._teachers import resolve_teacher  # noqa: E402
from skpcoreset.metrics import negative_log_likelihood  # noqa: E402

torch.set_num_threads(1)

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
X_train, X_test, y_train, y_test = train_test_split(X, y, train_size=900, stratify=y, random_state=0)
X_transfer, _, y_transfer, _ = train_test_split(X_train, y_train, train_size=150, stratify=y_train, random_state=0)

# %%
# The teacher, then one student per recipe, all distilled from the same frozen teacher.
member_net = make_net(max_epochs=40, lr=1e-3, batch_size=64, module__hidden_sizes=(128,))
student_net = make_net(max_epochs=150, lr=1e-3, batch_size=64, module__hidden_sizes=(128,))
teacher = DeepEnsembleClassifier(member_net, n_members=4, random_state=0).fit(X_train, y_train)
recipes = {
    "KD": {"student": "single", "perturbation": None},
    "KD + Gaussian": {"student": "single", "perturbation": "gaussian"},
    "KD + ConfODS": {"student": "single", "perturbation": "confods"},
    "LatentBE + ConfODS": {"student": "latentbe", "perturbation": "confods"},
}
nll = {"teacher DE-4": negative_log_likelihood(y_test, teacher.predict_proba(X_test))}
for name, params in recipes.items():
    student = DiverseDistiller(
        FrozenEstimator(teacher), net=student_net, step_size=0.1, check_benefit=False, random_state=0, **params
    ).fit(X_transfer, y_transfer)
    nll[name] = negative_log_likelihood(y_test, student.predict_proba(X_test))
    print(f"{name:20s} test NLL {nll[name]:.4f}")

# %%
# What ODS does to inputs (the one step of 0.1 per-pixel standard deviations the students were
# trained with): the teacher
# members disagree more on the perturbed digits, on average over the test set. (Much larger or
# repeated steps with the same random weights push inputs to where all members agree again.)
adapter = resolve_teacher(teacher, teacher.classes_, device=torch.device("cpu"), probe=torch.zeros(1, 64))
clean = torch.as_tensor(X_test)
# flat rows: steps in per-feature standard deviations, each pixel clipped to its own range
scale = torch.as_tensor(X_transfer.std(axis=0))
lower, upper = torch.as_tensor(X_transfer.min(axis=0)), torch.as_tensor(X_transfer.max(axis=0))
config = PerturbationConfig(step_size=0.1, lower=lower, upper=upper, scale=scale)
generator = torch.Generator().manual_seed(0)
moved = ods_perturbation(clean, teacher=adapter, student=None, config=config, generator=generator)


def spread(x):
    """Jensen-Shannon spread of the member probabilities: 0 when all members agree."""
    proba = adapter.member_proba(x)
    entropy = lambda p: -(p * p.clamp_min(1e-12).log()).sum(-1)  # noqa: E731
    return (entropy(proba.mean(0)) - entropy(proba).mean(0)).numpy()


# %%
fig = plt.figure(figsize=(11, 4))
ax_nll = fig.add_subplot(1, 2, 1)
ax_nll.barh(list(nll), list(nll.values()), color=["black"] + ["tab:blue"] * len(recipes))
ax_nll.invert_yaxis()
ax_nll.set(xlabel="test NLL (lower is better)", title="Distilling DE-4 on 150 digits")
grid = fig.add_gridspec(2, 12, left=0.55, right=0.98)
spread_clean, spread_moved = spread(clean), spread(moved)
print(f"mean teacher spread: clean {spread_clean.mean():.4f}, ODS {spread_moved.mean():.4f}")
shown = zip(clean[:6], moved[:6], spread_clean[:6], spread_moved[:6], strict=True)
for i, (before, after, s_before, s_after) in enumerate(shown):
    for row, (image, value, label) in enumerate([(before, s_before, "clean"), (after, s_after, "ODS")]):
        ax = fig.add_subplot(grid[row, 2 * i : 2 * i + 2])
        ax.imshow(image.reshape(8, 8).numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{value:.3f}", fontsize=8)
        if i == 0:
            ax.set_ylabel(label)
fig.suptitle(
    f"teacher-member spread, mean over the test set: clean {spread_clean.mean():.4f}, ODS {spread_moved.mean():.4f}",
    x=0.76,
    fontsize=9,
)
fig.subplots_adjust(left=0.17)

out_dir = Path(os.environ.get("SKPCORESET_EXAMPLE_OUT") or tempfile.mkdtemp())
out_dir.mkdir(parents=True, exist_ok=True)
fig.savefig(out_dir / "distill_ensemble.png", dpi=100)
print(f"saved {out_dir / 'distill_ensemble.png'}")
