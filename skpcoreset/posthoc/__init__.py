"""Post-hoc analysis of trained networks.

- :class:`ConnectivityLaplaceClassifier`, :func:`connectivity_sharpness`: a Laplace posterior
  and a flatness measure that are invariant to function-preserving rescalings.
- :class:`GeometricEnsembleInfluence`: self- and train-test influence from a geometric ensemble
  (mislabel detection, pruning, relabeling).
- :class:`RepulsiveEdgeEliminator`: influence-based removal of noisy edges of a graph, for the
  node classifiers of :mod:`skpcoreset.graph`.
"""

from .graph import RepulsiveEdgeEliminator
from .influence import GeometricEnsembleInfluence
from .laplace import ConnectivityLaplaceClassifier, connectivity_sharpness, rescale_layers

__all__ = [
    "ConnectivityLaplaceClassifier",
    "connectivity_sharpness",
    "rescale_layers",
    "GeometricEnsembleInfluence",
    "RepulsiveEdgeEliminator",
]
