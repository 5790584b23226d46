"""Influence of removing an edge on the validation loss of a 2-hop SGC (Chen et al., ICLR 2023).

``I(e) = -grad L_val(theta)^T H^-1 [grad L_tr(theta; G \\ e) - grad L_tr(theta; G)]`` with ``H`` the
Hessian of the L2-regularised training loss. ``I(e)`` is the first-order change of the
validation loss when ``e`` is deleted and the model retrained; negative edges hurt.

The heavy part is vectorised over edges. With ``s = H^-1 grad L_val`` fixed, a node's term
``s^T grad l_i`` depends on its propagated features only through ``x_i W`` and ``x_i S``, so the
features are first projected to ``Q = X [W | S]`` (``2 C`` columns) and only the change of
``A_hat^2 Q`` is propagated. Deleting ``(u, v)`` changes ``A_hat`` in the rows and columns of
``u`` and ``v``; the change of ``A_hat^2 Q`` is built as sparse (edge, node, value) triplets
that are spread one hop at a time along the CSR neighbour lists, for a whole batch of edges at
once, and kept only at training nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ..._linalg import conjugate_gradient
from ...graph._operations import propagate

__all__ = [
    "SoftmaxRegression",
    "candidate_edges",
    "edge_influence",
    "loss_gradient",
    "softmax_regression_hessian",
    "softmax_regression_hvp",
    "inverse_hvp",
    "TrainingGraph",
    "EdgeTriplets",
]


@dataclass
class SoftmaxRegression:
    """A fitted softmax regression ``logits = Z coef + intercept`` with its L2 penalty."""

    coef: torch.Tensor  # (n_features, n_classes)
    intercept: torch.Tensor  # (n_classes,)
    weight_decay: float

    def parameters(self) -> torch.Tensor:
        """``theta`` as one ``(n_features + 1, n_classes)`` matrix (the intercept is the last row)."""
        return torch.cat([self.coef, self.intercept[None]], dim=0)

    def proba(self, Z: torch.Tensor) -> torch.Tensor:
        return (Z @ self.coef + self.intercept).softmax(dim=1)


# -- curvature --------------------------------------------------------------------------------
def _with_ones(Z: torch.Tensor) -> torch.Tensor:
    return torch.cat([Z, torch.ones(len(Z), 1, dtype=Z.dtype, device=Z.device)], dim=1)


def loss_gradient(Z: torch.Tensor, y: torch.Tensor, model: SoftmaxRegression) -> torch.Tensor:
    """Gradient of the mean cross-entropy (no penalty) w.r.t. ``theta``, ``(n_features + 1, C)``."""
    residual = model.proba(Z) - torch.nn.functional.one_hot(y, model.coef.shape[1]).to(Z.dtype)
    return _with_ones(Z).T @ residual / len(Z)


def softmax_regression_hvp(Z: torch.Tensor, proba: torch.Tensor, V: torch.Tensor, weight_decay: float) -> torch.Tensor:
    """``H V`` for the Hessian of mean CE + ``weight_decay / 2 ||theta||^2``; ``V`` is ``(F + 1, C)``.

    Per sample the CE Hessian is ``x x^T (kron) (diag p - p p^T)``, so
    ``H V = X^T [p * (X V) - p <p, X V>] / n + weight_decay V``.
    """
    X = _with_ones(Z)
    XV = X @ V
    inner = proba * XV - proba * (proba * XV).sum(dim=1, keepdim=True)
    return X.T @ inner / len(Z) + weight_decay * V


def softmax_regression_hessian(Z: torch.Tensor, proba: torch.Tensor, weight_decay: float) -> torch.Tensor:
    """Dense Hessian over ``vec(theta)`` (row-major ``(F + 1, C)``), shape ``((F+1) C, (F+1) C)``."""
    X = _with_ones(Z)
    n, d = X.shape
    n_classes = proba.shape[1]
    output_hessian = torch.diag_embed(proba) - proba[:, :, None] * proba[:, None, :]  # (n, C, C)
    H = torch.einsum("if,ig,icd->fcgd", X, X, output_hessian).reshape(d * n_classes, d * n_classes) / n
    return H + weight_decay * torch.eye(d * n_classes, dtype=Z.dtype, device=Z.device)


def inverse_hvp(
    Z: torch.Tensor,
    model: SoftmaxRegression,
    vector: torch.Tensor,
    *,
    solver: str = "auto",
    max_exact: int = 4000,
    cg_tol: float = 1e-10,
    cg_max_iter: int = 1000,
) -> torch.Tensor:
    """``H^-1 vector`` at the training features ``Z``; exact solve when ``(F + 1) C <= max_exact``."""
    proba = model.proba(Z)
    if solver == "exact" or (solver == "auto" and vector.numel() <= max_exact):
        H = softmax_regression_hessian(Z, proba, model.weight_decay)
        return torch.linalg.solve(H, vector.reshape(-1)).reshape(vector.shape)
    return conjugate_gradient(
        lambda V: softmax_regression_hvp(Z, proba, V, model.weight_decay),
        vector,
        tol=cg_tol,
        max_iter=cg_max_iter,
        advice="The edge influences are approximate; raise cg_max_iter or use solver='exact'.",
    )


# -- graph structure --------------------------------------------------------------------------
def candidate_edges(adjacency: sp.csr_matrix, train_index: np.ndarray) -> np.ndarray:
    """Undirected edges ``(u, v)``, ``u < v``, with a training node within 2 hops of ``u`` or ``v``.

    Only these edges change a training node's 2-hop features. Returns ``(2, n_edges)`` int64.
    """
    closed = adjacency + sp.eye(adjacency.shape[0], format="csr")
    is_train = np.zeros(adjacency.shape[0])
    is_train[train_index] = 1.0
    reached = closed @ (closed @ is_train) > 0
    upper = sp.triu(adjacency, k=1).tocoo()
    keep = reached[upper.row] | reached[upper.col]
    edges = np.stack([upper.row[keep], upper.col[keep]]).astype(np.int64)
    return edges[:, np.lexsort(edges[::-1])]


@dataclass
class TrainingGraph:
    """CSR neighbour lists (self loops included) and normalisation of one graph, on a device."""

    indptr: torch.Tensor
    indices: torch.Tensor
    train_indptr: torch.Tensor  # neighbour lists restricted to training nodes
    train_indices: torch.Tensor
    degree: torch.Tensor  # with the self loop
    is_train: torch.Tensor

    @classmethod
    def build(cls, adjacency: sp.csr_matrix, train_index: np.ndarray, device, dtype) -> TrainingGraph:
        n = adjacency.shape[0]
        closed = (adjacency + sp.eye(n, format="csr")).tocsr()
        closed.sort_indices()
        is_train = np.zeros(n, dtype=bool)
        is_train[train_index] = True
        to_train = (closed @ sp.diags(is_train.astype(np.float64))).tocsr()
        to_train.eliminate_zeros()
        to_train.sort_indices()

        def tensor(a, dt=torch.int64):
            return torch.as_tensor(np.asarray(a), dtype=dt, device=device)

        return cls(
            indptr=tensor(closed.indptr),
            indices=tensor(closed.indices),
            train_indptr=tensor(to_train.indptr),
            train_indices=tensor(to_train.indices),
            degree=tensor(np.diff(closed.indptr), dtype),
            is_train=tensor(is_train, torch.bool),
        )


@dataclass
class EdgeTriplets:
    """A batch of sparse per-edge vectors: value ``values[k]`` at ``(edge[k], node[k])``."""

    edge: torch.Tensor
    node: torch.Tensor
    values: torch.Tensor

    def __add__(self, other: EdgeTriplets) -> EdgeTriplets:
        return EdgeTriplets(
            torch.cat([self.edge, other.edge]),
            torch.cat([self.node, other.node]),
            torch.cat([self.values, other.values]),
        )

    def scaled(self, factor: torch.Tensor) -> EdgeTriplets:
        return EdgeTriplets(self.edge, self.node, self.values * factor[:, None])

    def where(self, keep: torch.Tensor) -> EdgeTriplets:
        return EdgeTriplets(self.edge[keep], self.node[keep], self.values[keep])

    def spread(self, indptr: torch.Tensor, indices: torch.Tensor) -> EdgeTriplets:
        """Multiply by the (symmetric, binary) matrix whose neighbour lists are given."""
        counts = indptr[self.node + 1] - indptr[self.node]
        total = int(counts.sum())
        starts = torch.cumsum(counts, 0) - counts
        offsets = torch.arange(total, device=counts.device) - starts.repeat_interleave(counts, output_size=total)
        positions = indptr[self.node].repeat_interleave(counts, output_size=total) + offsets
        return EdgeTriplets(
            self.edge.repeat_interleave(counts, output_size=total),
            indices[positions],
            self.values.repeat_interleave(counts, dim=0, output_size=total),
        )

    def coalesce(self, n_nodes: int) -> EdgeTriplets:
        keys, inverse = torch.unique(self.edge * n_nodes + self.node, return_inverse=True)
        values = torch.zeros(len(keys), self.values.shape[1], dtype=self.values.dtype, device=self.values.device)
        values.index_add_(0, inverse, self.values)
        return EdgeTriplets(keys // n_nodes, keys % n_nodes, values)

    def at(self, nodes: torch.Tensor, n_edges: int) -> torch.Tensor:
        """Dense ``(n_edges, dim)`` values at node ``nodes[e]`` of each edge (coalesced input)."""
        out = torch.zeros(n_edges, self.values.shape[1], dtype=self.values.dtype, device=self.values.device)
        hit = self.node == nodes[self.edge]
        return out.index_put_((self.edge[hit],), self.values[hit], accumulate=True)


def _propagation_change(
    graph: TrainingGraph, Q: torch.Tensor, base: dict, u: torch.Tensor, v: torch.Tensor
) -> EdgeTriplets:
    """Change of ``A_hat^2 Q`` at training nodes when each edge ``(u[e], v[e])`` is deleted.

    With ``R = D^-1/2``, ``M = A + I`` and ``E`` the deleted pair,
    ``A_hat'^2 Q = R' (M - E) R'^2 (M - E) R' Q``; every factor differs from the original only
    at ``u`` and ``v``, so each intermediate is tracked as a sparse change.
    """
    n_nodes = len(Q)
    batch = torch.arange(len(u), device=Q.device)
    r = graph.degree.rsqrt()
    ru_new, rv_new = (graph.degree[u] - 1).rsqrt(), (graph.degree[v] - 1).rsqrt()

    def new_scale(t: EdgeTriplets, power: int) -> torch.Tensor:
        scale = r[t.node].clone()
        scale = torch.where(t.node == u[t.edge], ru_new[t.edge], scale)
        scale = torch.where(t.node == v[t.edge], rv_new[t.edge], scale)
        return scale**power

    # a = R'Q: changes at u and v
    delta_a = EdgeTriplets(batch, u, (ru_new - r[u])[:, None] * Q[u]) + EdgeTriplets(
        batch, v, (rv_new - r[v])[:, None] * Q[v]
    )
    # b = (M - E) a
    delta_b = delta_a.spread(graph.indptr, graph.indices)
    delta_b = (
        delta_b + EdgeTriplets(batch, u, -rv_new[:, None] * Q[v]) + EdgeTriplets(batch, v, -ru_new[:, None] * Q[u])
    )
    delta_b = delta_b.coalesce(n_nodes)
    # c = R'^2 b
    delta_c = delta_b.scaled(new_scale(delta_b, 2))
    delta_c = delta_c + EdgeTriplets(batch, u, (ru_new**2 - r[u] ** 2)[:, None] * base["B"][u])
    delta_c = (delta_c + EdgeTriplets(batch, v, (rv_new**2 - r[v] ** 2)[:, None] * base["B"][v])).coalesce(n_nodes)
    c_u = base["C"][u] + delta_c.at(u, len(u))
    c_v = base["C"][v] + delta_c.at(v, len(u))
    # d = (M - E) c, kept at training nodes only
    delta_d = delta_c.spread(graph.train_indptr, graph.train_indices)
    delta_d = (
        delta_d
        + EdgeTriplets(batch, u, -c_v).where(graph.is_train[u])
        + EdgeTriplets(batch, v, -c_u).where(graph.is_train[v])
    )
    # A_hat'^2 Q = R' d
    delta_z = delta_d.scaled(new_scale(delta_d, 1))
    delta_z = delta_z + EdgeTriplets(batch, u, (ru_new - r[u])[:, None] * base["D"][u]).where(graph.is_train[u])
    delta_z = delta_z + EdgeTriplets(batch, v, (rv_new - r[v])[:, None] * base["D"][v]).where(graph.is_train[v])
    return delta_z.coalesce(n_nodes)


def _base_propagation(graph: TrainingGraph, Q: torch.Tensor) -> dict:
    """The intermediates ``B = M R Q``, ``C = R^2 B``, ``D = M C`` and ``Z = R D = A_hat^2 Q``."""
    r = graph.degree.rsqrt()[:, None]
    n = len(Q)
    values = torch.ones(len(graph.indices), dtype=Q.dtype, device=Q.device)
    rows = torch.repeat_interleave(torch.arange(n, device=Q.device), graph.indptr.diff())
    M = torch.sparse_coo_tensor(
        torch.stack([rows, graph.indices]), values, size=(n, n), is_coalesced=True, check_invariants=False
    )
    B = M @ (r * Q)
    C = r**2 * B
    D = M @ C
    return {"B": B, "C": C, "D": D, "Z": r * D}


def edge_influence(
    X: torch.Tensor,
    adjacency: sp.csr_matrix,
    edges: np.ndarray,
    *,
    train_index: np.ndarray,
    y_train: torch.Tensor,
    Z_val: torch.Tensor,
    y_val: torch.Tensor,
    model: SoftmaxRegression,
    solver: str = "auto",
    max_exact: int = 4000,
    batch_size: int = 2048,
    progress: Callable = lambda it, **_: it,
) -> tuple[np.ndarray, sp.csr_matrix]:
    """Influence of deleting each undirected edge on the validation loss of a 2-hop SGC.

    Parameters
    ----------
    X : tensor of shape (n_nodes, n_features)
        Raw node features (the dtype of the computation; float64 is recommended).
    adjacency : scipy CSR of shape (n_nodes, n_nodes)
        The current graph (binary, symmetric, no self loops).
    edges : int array of shape (2, n_edges)
        Edges of ``adjacency`` to score; both directions are deleted together.
    train_index : int array
        Training nodes.
    y_train, y_val : long tensors
        Labels of the training and validation nodes.
    Z_val : tensor of shape (n_val, n_features)
        Propagated features of the validation nodes (they do not change with the edge).
    model : SoftmaxRegression
        The model fitted on ``adjacency``'s training features.
    solver : {'auto', 'exact', 'cg'}
        How ``H^-1 grad L_val`` is solved.
    max_exact : int
        'auto' solves exactly when ``(n_features + 1) * n_classes <= max_exact``.
    batch_size : int
        Edges processed together.

    Returns
    -------
    influence : ndarray of shape (n_edges,)
    affected : scipy CSR bool matrix of shape (n_edges, n_nodes)
        Training nodes whose features change when the edge is deleted.
    """
    Z_train = propagate(X, adjacency, 2, rows=train_index)
    direction = inverse_hvp(Z_train, model, loss_gradient(Z_val, y_val, model), solver=solver, max_exact=max_exact)
    n_classes = model.coef.shape[1]
    Q = X @ torch.cat([model.coef, direction[:-1]], dim=1)
    offset = torch.cat([model.intercept, direction[-1]])
    graph = TrainingGraph.build(adjacency, train_index, X.device, X.dtype)
    base = _base_propagation(graph, Q)
    labels = torch.full((len(X),), -1, dtype=torch.long, device=X.device)
    labels[torch.as_tensor(train_index, device=X.device)] = y_train

    def term(z: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """``s^T grad l_i`` from the projected features ``z`` of training nodes ``nodes``."""
        z = z + offset
        residual = z[:, :n_classes].softmax(dim=1)
        residual[torch.arange(len(nodes), device=z.device), labels[nodes]] -= 1.0
        return (residual * z[:, n_classes:]).sum(dim=1)

    edges_t = torch.as_tensor(edges, dtype=torch.long, device=X.device)
    influence = torch.zeros(edges.shape[1], dtype=X.dtype, device=X.device)
    rows, cols = [], []
    for start in progress(range(0, edges.shape[1], batch_size), desc="edge influence"):
        u, v = edges_t[0, start : start + batch_size], edges_t[1, start : start + batch_size]
        change = _propagation_change(graph, Q, base, u, v)
        base_z = base["Z"][change.node]
        delta = term(base_z + change.values, change.node) - term(base_z, change.node)
        influence[start : start + len(u)].index_add_(0, change.edge, delta)
        rows.append(change.edge + start)
        cols.append(change.node)
    influence = -influence / len(train_index)
    affected = _affected_matrix(rows, cols, edges.shape[1], len(X))
    return influence.cpu().numpy(), affected


def _affected_matrix(rows: list, cols: list, n_edges: int, n_nodes: int) -> sp.csr_matrix:
    row = torch.cat(rows).cpu().numpy() if rows else np.zeros(0, dtype=np.int64)
    col = torch.cat(cols).cpu().numpy() if cols else np.zeros(0, dtype=np.int64)
    matrix = sp.csr_matrix((np.ones(len(row), dtype=bool), (row, col)), shape=(n_edges, n_nodes))
    matrix.sort_indices()
    return matrix
