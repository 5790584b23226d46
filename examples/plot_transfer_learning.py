"""
Transfer learning: a pseudocoreset of frozen features
=====================================================

A network pre-trained on digits 0-4 is frozen and used as a feature extractor for digits 5-9.
A pseudocoreset of one feature vector per new class is learned in that feature space; the
posterior on it is compared with the posterior on one random real feature vector per class.
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

from skpcoreset import DeepEnsembleClassifier, make_net  # noqa: E402
from skpcoreset.pseudocoreset import PseudocoresetSynthesizer, frozen_features  # noqa: E402

torch.set_num_threads(1)
X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    (X / 16).astype(np.float32), y, test_size=0.3, random_state=0, stratify=y
)
source_train, target_train, target_test = y_train < 5, y_train >= 5, y_test >= 5

extractor = DeepEnsembleClassifier(make_net(max_epochs=30, module__hidden_sizes=(64,)), n_members=1, random_state=0)
extractor.fit(X_train[source_train], y_train[source_train])
module = extractor.member_modules()[0]
F_train = frozen_features(module, X_train[target_train])
F_test = frozen_features(module, X_test[target_test])

sizes, scores = [1, 5], {"random": [], "forward_kl": []}
for n_per_class in sizes:
    for divergence in scores:
        accuracy = np.mean(
            [
                PseudocoresetSynthesizer(
                    divergence=divergence, n_per_class=n_per_class, n_iterations=120, random_state=seed
                )
                .fit(F_train, y_train[target_train])
                .score(F_test, y_test[target_test])
                for seed in (0, 1)
            ]
        )
        scores[divergence].append(accuracy)
        print(f"{n_per_class} per class, {divergence:>10}: BMA accuracy {accuracy:.3f}")

fig, ax = plt.subplots(figsize=(5, 3.5))
for divergence, values in scores.items():
    ax.plot(sizes, values, marker="o", label=divergence)
ax.set_xlabel("feature vectors per class")
ax.set_ylabel("BMA accuracy on digits 5-9")
ax.legend()
out = Path(os.environ.get("SKPCORESET_EXAMPLE_OUT", tempfile.gettempdir()))
out.mkdir(parents=True, exist_ok=True)
fig.savefig(out / "transfer_learning.png", dpi=100, bbox_inches="tight")
print(f"saved {out / 'transfer_learning.png'}")
