"""What transductive node classifiers share."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import _fit_context

from .._base import to_numpy
from ._operations import labeled_mask

__all__ = ["NodeClassifierMixin"]


class NodeClassifierMixin:
    """What transductive node classifiers share: ``fit`` validating labels with ``-1`` for
    unlabeled nodes, and ``score`` on the labeled nodes of a given graph. The estimator writes
    ``_fit_nodes``."""

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, adjacency=None):
        """Fit on the labeled nodes of a graph.

        Parameters
        ----------
        X : array-like of shape (n_nodes, n_features)
            Features of every node.
        y : array-like of shape (n_nodes,)
            Labels; ``-1`` marks unlabeled nodes (they still take part in the propagation).
        adjacency : scipy sparse (n_nodes, n_nodes), int array of shape (2, E) or None
            The graph; None means no edges.

        Returns
        -------
        self
        """
        X, labeled, y_encoded = self._validate_node_labels(X, y)
        generator = self._init_torch()
        return self._fit_nodes(X, labeled, self._to_tensor(y_encoded, dtype=torch.long), adjacency, generator)

    def _fit_nodes(self, X: np.ndarray, labeled: np.ndarray, y: torch.Tensor, adjacency, generator: torch.Generator):
        """The algorithm, on validated ``X``, the labeled-node mask and those nodes' encoded labels ``y``."""
        raise NotImplementedError

    def _validate_node_labels(self, X, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(X, labeled mask, encoded labels of the labeled nodes)``; sets ``classes_``."""
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
        X, y = self._validate_X(X, reset=True, y=y)
        labeled = labeled_mask(y)
        if not labeled.any():
            raise ValueError("y has no labeled node: every entry is -1 (unlabeled).")
        return X, labeled, self._encode_labels(y[labeled])

    def score(self, X, y, sample_weight=None, adjacency=None) -> float:
        """Accuracy on the labeled nodes (``y != -1``) of the graph ``adjacency``."""
        y = np.asarray(to_numpy(y))
        labeled = labeled_mask(y)
        weights = None if sample_weight is None else np.asarray(sample_weight)[labeled]
        return float(np.average(self.predict(X, adjacency=adjacency)[labeled] == y[labeled], weights=weights))
