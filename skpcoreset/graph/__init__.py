"""Node classification on graphs: SGC and GCN, and the graph operations they share.

Transductive classifiers: ``X`` holds the features of every node, ``y`` their labels with
``-1`` for unlabeled nodes, ``adjacency`` the graph (a scipy sparse matrix or an ``edge_index``
of shape ``(2, E)``). :class:`~skpcoreset.RepulsiveEdgeEliminator`
(:mod:`skpcoreset.posthoc`) removes noisy edges with their influence.
"""

from ._gcn import GCNClassifier
from ._operations import as_adjacency, normalized_adjacency, propagate, remove_edges
from ._sgc import SGCClassifier

__all__ = ["SGCClassifier", "GCNClassifier", "as_adjacency", "normalized_adjacency", "propagate", "remove_edges"]
