"""What transductive node classifiers share."""

from __future__ import annotations

import numpy as np

from .._base import to_numpy
from ._operations import labeled_mask

__all__ = ["NodeClassifierMixin"]


class NodeClassifierMixin:
    """What transductive node classifiers share: label validation with ``-1`` for unlabeled
    nodes, and ``score`` on the labeled nodes of a given graph."""

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
