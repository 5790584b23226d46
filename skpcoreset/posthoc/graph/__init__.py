"""Influence-based removal of noisy edges (RGE) and the edge influence of SGC and GCN."""

from ._rge import RepulsiveEdgeEliminator

__all__ = ["RepulsiveEdgeEliminator"]
