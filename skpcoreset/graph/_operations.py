"""Graph operations shared by the node classifiers and the edge-influence code.

Adjacency validation (a sparse matrix or an ``edge_index``), the symmetric normalisation
``A_hat = D^-1/2 (A + I) D^-1/2`` and its powers: SGC, GCN and the influence of an edge all
propagate through these, so they see exactly the same graph.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from .._base import to_numpy

__all__ = [
    "UNLABELED",
    "as_adjacency",
    "identity_adjacency",
    "graph_or_edgeless",
    "normalized_adjacency",
    "normalized_operator",
    "remove_edges",
    "sparse_tensor",
    "propagate",
    "labeled_mask",
]

UNLABELED = -1


def as_adjacency(adjacency, n_nodes: int) -> sp.csr_matrix:
    """Validate a graph and return it as a binary, symmetric CSR matrix without self loops.

    Parameters
    ----------
    adjacency : scipy sparse matrix of shape (n_nodes, n_nodes), or int array-like of shape (2, E)
        Either an adjacency matrix (non-zero entries are edges) or an ``edge_index`` whose
        columns are ``(source, target)`` pairs. Directed input is made undirected and self
        loops are dropped (the normalisation adds them back).
    n_nodes : int
        Number of nodes, i.e. rows of the feature matrix.

    Returns
    -------
    scipy.sparse.csr_matrix of shape (n_nodes, n_nodes), float32
    """
    if sp.issparse(adjacency):
        if adjacency.shape != (n_nodes, n_nodes):
            raise ValueError(
                f"adjacency has shape {adjacency.shape} but X has {n_nodes} rows (nodes); "
                f"expected ({n_nodes}, {n_nodes})."
            )
        coo = sp.coo_matrix(adjacency)
        if not np.all(np.isfinite(coo.data)):
            raise ValueError("adjacency contains NaN or infinity.")
        keep = coo.data != 0
        rows, cols = coo.row[keep], coo.col[keep]
    else:
        rows, cols = _edge_index_arrays(adjacency, n_nodes)
    off_diagonal = rows != cols
    rows, cols = rows[off_diagonal], cols[off_diagonal]
    both = (np.concatenate([rows, cols]), np.concatenate([cols, rows]))
    matrix = sp.csr_matrix((np.ones(2 * len(rows), dtype=np.float32), both), shape=(n_nodes, n_nodes))
    matrix.data[:] = 1.0  # duplicates were summed
    matrix.sort_indices()
    return matrix


def _edge_index_arrays(edge_index, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    array = np.asarray(to_numpy(edge_index))
    if array.ndim != 2 or array.shape[0] != 2:
        raise ValueError(
            "adjacency must be a scipy sparse matrix of shape (n_nodes, n_nodes) or an "
            f"edge_index array of shape (2, n_edges); got an array of shape {array.shape}."
        )
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError("edge_index must hold integer node ids.")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= n_nodes):
        raise ValueError(f"edge_index refers to node ids outside [0, {n_nodes}); X has {n_nodes} rows (nodes).")
    return array[0], array[1]


def identity_adjacency(n_nodes: int) -> sp.csr_matrix:
    """The edgeless graph: propagation is the identity and SGC is softmax regression."""
    return sp.csr_matrix((n_nodes, n_nodes), dtype=np.float32)


def graph_or_edgeless(adjacency, n_nodes: int) -> sp.csr_matrix:
    """``adjacency`` validated as CSR, or the edgeless graph when it is None."""
    return identity_adjacency(n_nodes) if adjacency is None else as_adjacency(adjacency, n_nodes)


def normalized_adjacency(adjacency: sp.csr_matrix) -> sp.csr_matrix:
    """``D^-1/2 (A + I) D^-1/2`` in float64 (``D`` counts the self loop)."""
    with_loops = (adjacency.astype(np.float64) + sp.eye(adjacency.shape[0], format="csr")).tocsr()
    scale = 1.0 / np.sqrt(np.asarray(with_loops.sum(axis=1)).ravel())
    normalized = (sp.diags(scale) @ with_loops @ sp.diags(scale)).tocsr()
    normalized.sort_indices()
    return normalized


def remove_edges(adjacency: sp.csr_matrix, edges: np.ndarray) -> sp.csr_matrix:
    """``adjacency`` without the undirected ``edges`` (2, k)."""
    if edges.shape[1] == 0:
        return adjacency
    both = (np.concatenate([edges[0], edges[1]]), np.concatenate([edges[1], edges[0]]))
    removal = sp.csr_matrix((np.ones(2 * edges.shape[1], dtype=bool), both), shape=adjacency.shape)
    kept = sp.csr_matrix(adjacency - adjacency.multiply(removal))
    kept.eliminate_zeros()
    kept.sort_indices()
    return kept


def sparse_tensor(matrix: sp.spmatrix, device, dtype) -> torch.Tensor:
    coo = matrix.tocoo()
    indices = torch.as_tensor(np.stack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(indices, torch.as_tensor(coo.data), size=coo.shape, check_invariants=False).to(
        device=device, dtype=dtype
    )


def propagate(X: torch.Tensor, adjacency: sp.csr_matrix, n_hops: int, rows: np.ndarray | None = None) -> torch.Tensor:
    """Rows ``rows`` (default: all) of ``A_hat^n_hops X`` for dense ``X`` of shape ``(n_nodes, n_features)``.

    Only the nodes within reach of ``rows`` are propagated, so a few training nodes of a
    large graph cost a few neighbourhoods, not the whole feature matrix.
    """
    rows = np.arange(len(X)) if rows is None else np.asarray(rows)
    if n_hops == 0 or adjacency.nnz == 0:
        return X[torch.as_tensor(rows, device=X.device)]
    operator = normalized_adjacency(adjacency)
    # walk back from ``rows`` to the nodes each hop needs, then propagate forward
    needed = [rows]
    for _ in range(n_hops):
        needed.append(np.unique(operator[needed[-1]].indices))
    out = X[torch.as_tensor(needed[-1], device=X.device)]
    for hop in range(n_hops, 0, -1):
        step = operator[needed[hop - 1]][:, needed[hop]]
        out = sparse_tensor(step, X.device, X.dtype) @ out
    return out


def normalized_operator(adjacency: sp.csr_matrix, device, dtype) -> torch.Tensor:
    """``A_hat`` of ``adjacency`` as a coalesced sparse tensor on ``device``."""
    return sparse_tensor(normalized_adjacency(adjacency), device, dtype).coalesce()


def labeled_mask(y: np.ndarray) -> np.ndarray:
    """Nodes whose label is not the unlabeled marker ``-1``."""
    if y.dtype.kind in "iuf":
        return y != UNLABELED
    return np.ones(len(y), dtype=bool)
