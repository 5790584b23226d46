"""What RGE needs from a node classifier: fit on a graph, score the validation nodes, edge influence.

One adapter per backbone, chosen by the estimator's class (:func:`make_backbone`), so the RGE
rounds in :mod:`._rge` run the same code for every model. Validation nodes are always scored
on the original graph (the authors' protocol); training follows the graph being rectified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.base import clone

from ..._base import make_generator, seed_from_random_state
from ...graph import GCNClassifier, SGCClassifier
from ...graph._operations import normalized_operator, propagate
from ...graph._softmax_regression import fit_softmax_regression
from ._edge_influence import SoftmaxRegression, edge_influence
from ._gcn_influence import gcn_edge_influence

__all__ = ["GraphTask", "InfluenceOptions", "make_backbone"]


@dataclass
class GraphTask:
    """The fixed data of one RGE fit."""

    X: np.ndarray  # (n_nodes, n_features), validated
    features: torch.Tensor  # X as float64 on the device
    y_encoded: np.ndarray  # (n_nodes,) class indices, -1 for unlabeled nodes
    train: np.ndarray  # training node ids
    val: np.ndarray  # validation node ids
    n_classes: int
    original: sp.csr_matrix  # the input graph (validation nodes are scored on it)

    def labels(self, nodes: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(self.y_encoded[nodes], device=self.features.device)


@dataclass
class InfluenceOptions:
    """How the influence pass is computed (RGE's parameters)."""

    solver: str  # 'auto', 'exact' or 'cg' (SGC); the GCN always uses conjugate gradients
    damping: float | None  # added to the Hessian diagonal; None: 0 for SGC, 1e-2 for GCN
    batch_size: int
    progress: Callable


def _validation_scores(logits: torch.Tensor, y_val: torch.Tensor) -> dict:
    return {
        "val_accuracy": float((logits.argmax(dim=1) == y_val).double().mean()),
        "val_loss": float(F.cross_entropy(logits, y_val)),
    }


class SGCBackbone:
    """A 2-hop :class:`SGCClassifier`: closed-form influence, exact or CG inverse Hessian."""

    def __init__(self, estimator: SGCClassifier, task: GraphTask, options: InfluenceOptions):
        if estimator.n_hops != 2:
            raise ValueError(f"RGE's SGC influence is for 2-hop propagation; got n_hops={estimator.n_hops}.")
        self.params = estimator.get_params()
        self.task, self.options = task, options
        # the authors re-initialise Adam from one key in every round
        self.seed = seed_from_random_state(self.params["random_state"])
        self.damping = 0.0 if options.damping is None else options.damping
        self.Z_val = propagate(task.features, task.original, 2, rows=task.val)
        self.y_train, self.y_val = task.labels(task.train), task.labels(task.val)

    def fit(self, adjacency: sp.csr_matrix) -> dict:
        Z_train = propagate(self.task.features, adjacency, 2, rows=self.task.train)
        adam = self.params["solver"] == "adam"
        coef, intercept, *_ = fit_softmax_regression(
            Z_train,
            self.y_train,
            self.task.n_classes,
            weight_decay=self.params["weight_decay"],
            solver=self.params["solver"],
            max_iter=self.params["max_iter"],
            lr=self.params["lr"],
            generator=make_generator(self.seed, self.task.features.device) if adam else None,
        )
        # the damping only enters the Hessian, which is where SoftmaxRegression uses weight_decay
        self.model = SoftmaxRegression(coef, intercept, self.params["weight_decay"] + self.damping)
        with torch.no_grad():
            return _validation_scores(self.Z_val @ coef + intercept, self.y_val)

    def edge_influence(self, adjacency: sp.csr_matrix, edges: np.ndarray) -> np.ndarray:
        influence, _ = edge_influence(
            self.task.features,
            adjacency,
            edges,
            train_index=self.task.train,
            y_train=self.y_train,
            Z_val=self.Z_val,
            y_val=self.y_val,
            model=self.model,
            solver=self.options.solver,
            batch_size=self.options.batch_size,
            progress=self.options.progress,
        )
        return influence


class GCNBackbone:
    """A 2-layer :class:`GCNClassifier`: CG inverse Hessian, batched exact per-edge gradient change."""

    def __init__(self, estimator: GCNClassifier, task: GraphTask, options: InfluenceOptions):
        # one seed for every round: each retraining restarts from the same initialisation
        seed = seed_from_random_state(estimator.random_state)
        self.estimator = clone(estimator).set_params(random_state=seed)
        self.task, self.options = task, options
        self.damping = 1e-2 if options.damping is None else options.damping
        self.y_fit = np.full(len(task.X), -1, dtype=np.int64)
        self.y_fit[task.train] = task.y_encoded[task.train]
        self.y_train, self.y_val = task.labels(task.train), task.labels(task.val)
        self.val_nodes = torch.as_tensor(task.val, device=task.features.device)
        self.val_operator = None

    def fit(self, adjacency: sp.csr_matrix) -> dict:
        self.estimator.fit(self.task.X, self.y_fit, adjacency=adjacency)
        if len(self.estimator.classes_) != self.task.n_classes:
            raise ValueError("With the GCN backbone every class needs at least one training node.")
        module = self.estimator.module_
        if self.val_operator is None:
            self.val_operator = normalized_operator(self.task.original, module.X.device, module.X.dtype)
        with torch.no_grad():
            return _validation_scores(module(self.val_nodes, self.val_operator), self.y_val)

    def edge_influence(self, adjacency: sp.csr_matrix, edges: np.ndarray) -> np.ndarray:
        return gcn_edge_influence(
            self.estimator.module_,
            adjacency,
            edges,
            train_index=self.task.train,
            y_train=self.y_train,
            val_index=self.task.val,
            y_val=self.y_val,
            weight_decay=self.estimator.weight_decay,
            val_adjacency=self.task.original,
            damping=self.damping,
            batch_size=self.options.batch_size,
            progress=self.options.progress,
        )


_BACKBONES = {SGCClassifier: SGCBackbone, GCNClassifier: GCNBackbone}


def make_backbone(
    estimator, task: GraphTask, options: InfluenceOptions, *, device, random_state
) -> SGCBackbone | GCNBackbone:
    """The adapter for a clone of ``estimator`` (an SGCClassifier or GCNClassifier) on ``device``.

    ``random_state`` replaces the estimator's when that is None.
    """
    for estimator_class, backbone in _BACKBONES.items():
        if isinstance(estimator, estimator_class):
            estimator = clone(estimator).set_params(device=device)
            if estimator.random_state is None:
                estimator.set_params(random_state=random_state)
            return backbone(estimator, task, options)
    supported = ", ".join(cls.__name__ for cls in _BACKBONES)
    raise TypeError(f"estimator must be one of {supported} (or None); got {type(estimator).__name__}.")
