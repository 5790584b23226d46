"""
Removing harmful edges with influence functions (RGE)
======================================================

A 2-hop SGC propagates features along the graph, so an edge between nodes of different classes
can hurt it. :class:`~skpcoreset.posthoc.graph.RepulsiveEdgeEliminator` scores every edge near a
training node by its influence: the first-order change of the validation loss if the edge were
deleted and the model retrained.

Left: on a small stochastic block model, the predicted influence of 30 edges against the change
measured by actually deleting each edge and refitting. Right: on Cora (when the shared Planetoid
file is available, a larger block model otherwise), the validation accuracy over RGE's rounds,
next to deleting every negative edge at once (EGE).
"""

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import scipy.sparse as sp
import torch
from sklearn.metrics import log_loss

from skpcoreset.datasets import find_data_file, load_planetoid
from skpcoreset.graph import SGCClassifier
from skpcoreset.posthoc import RepulsiveEdgeEliminator

torch.set_num_threads(1)


def block_model(n, p_in, p_out, seed):
    rng = np.random.RandomState(seed)
    y = rng.randint(3, size=n)
    X = rng.normal(size=(n, 8)) + 0.7 * np.eye(3, 8)[y]
    upper = np.triu(rng.rand(n, n) < np.where(y[:, None] == y[None, :], p_in, p_out), 1)
    val_mask = np.zeros(n, dtype=bool)
    val_mask[n // 4 : n // 2] = True
    y_fit = np.where(np.arange(n) < n // 2, y, -1)
    return X, y, y_fit, val_mask, sp.csr_matrix((upper | upper.T).astype(np.float32))


# %%
# Predicted vs actual change of the validation loss
X, y, y_fit, val_mask, A = block_model(150, 0.08, 0.03, seed=0)
rge = RepulsiveEdgeEliminator(SGCClassifier(weight_decay=1e-2), max_rounds=1).fit(
    X, y_fit, adjacency=A, val_mask=val_mask
)
y_train = np.where(val_mask, -1, y_fit)


def validation_loss(adjacency):
    proba = SGCClassifier(weight_decay=1e-2).fit(X, y_train, adjacency=adjacency).predict_proba(X, adjacency=A)
    return log_loss(y[val_mask], proba[val_mask], labels=[0, 1, 2])


base = validation_loss(A)
sample = np.random.RandomState(0).choice(rge.candidate_edges_.shape[1], 30, replace=False)
actual = []
for k in sample:
    u, v = rge.candidate_edges_[:, k]
    without = A.tolil()
    without[u, v] = without[v, u] = 0
    actual.append(validation_loss(without.tocsr()) - base)
predicted = rge.edge_influence_[sample]
print(f"correlation of predicted and actual change: {np.corrcoef(predicted, actual)[0, 1]:.3f}")

# %%
# RGE rounds against EGE
path = find_data_file("graphs/cora.npz")
if path is not None:
    graph = load_planetoid(path)
    X2 = graph.features / np.maximum(graph.features.sum(axis=1, keepdims=True), 1)
    y2 = np.where(graph.train_mask | graph.val_mask, graph.labels, -1)
    A2, val2, weight_decay, title = graph.adjacency, graph.val_mask, 1e-5, "Cora"
else:
    X2, _, y2, val2, A2 = block_model(400, 0.05, 0.02, seed=1)
    weight_decay, title = 1e-2, "block model (Cora not found)"
curves = {}
for strategy in ("rge", "ege"):
    model = RepulsiveEdgeEliminator(SGCClassifier(weight_decay=weight_decay), strategy=strategy, max_rounds=8)
    model.fit(X2, y2, adjacency=A2, val_mask=val2)
    curves[strategy] = model.history_
    print(f"{strategy}: kept round {model.best_round_}, removed {model.removed_edges_.shape[1]} edges")

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
left.scatter(predicted, actual, s=14)
lim = max(np.abs(predicted).max(), np.abs(actual).max()) * 1.1
left.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8)
left.set(xlabel="predicted influence I(e)", ylabel="actual change after retraining", title="Edge influence")
for strategy, history in curves.items():
    right.plot(
        [h["n_removed"] for h in history], [h["val_accuracy"] for h in history], marker="o", label=strategy.upper()
    )
right.set(xlabel="edges removed", ylabel="validation accuracy", title=title)
right.legend()
fig.tight_layout()
out = Path(os.environ.get("SKPCORESET_EXAMPLE_OUT", tempfile.gettempdir())) / "plot_rge.png"
fig.savefig(out, dpi=100)
print(f"saved {out}")
