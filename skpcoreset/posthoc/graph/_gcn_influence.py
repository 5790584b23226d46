"""Edge influence of a 2-layer GCN (the RGE paper's GCN backbone).

The SGC influence in :mod:`._edge_influence` is closed-form because SGC is linear in its
parameters. A GCN is not: the inverse-Hessian-vector product ``s = H^-1 grad L_val`` comes from
conjugate gradients on autograd Hessian-vector products, and the change of ``s^T grad L_tr``
when an edge is deleted is recomputed exactly, for a batch of edges at once, on the few nodes
the deletion reaches (see :func:`gcn_edge_influence`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..._linalg import conjugate_gradient
from ...graph._gcn import GCN
from ...graph._operations import normalized_operator
from ._edge_influence import EdgeTriplets, TrainingGraph

__all__ = ["gcn_edge_influence", "influence_direction"]


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _new_scale(t: EdgeTriplets, r: torch.Tensor, u, v, ru_new, rv_new) -> torch.Tensor:
    """``D'^-1/2`` at each triplet's node, where ``D'`` lacks the triplet's edge."""
    scale = r[t.node].clone()
    scale = torch.where(t.node == u[t.edge], ru_new[t.edge], scale)
    return torch.where(t.node == v[t.edge], rv_new[t.edge], scale)


def _one_hop_change(
    graph: TrainingGraph,
    Y: torch.Tensor,
    B: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    delta_Y: EdgeTriplets | None,
    *,
    train_only: bool,
) -> EdgeTriplets:
    """Change of ``A_hat Y`` when each edge ``(u[e], v[e])`` is deleted and ``Y`` moves by ``delta_Y[e]``.

    With ``R = D^-1/2``, ``M = A + I``, ``B = M R Y`` and ``E`` the deleted pair,
    ``A_hat' Y' - A_hat Y = (R' - R) B + R' [M (R' Y' - R Y) - E R' Y']``: ``R' - R`` is
    non-zero at ``u`` and ``v`` only and ``Y' - Y`` at the nodes of ``delta_Y``, so the change
    lives one hop around them. ``train_only`` keeps it at training nodes only.
    """
    batch = torch.arange(len(u), device=Y.device)
    r = graph.degree.rsqrt()
    ru_new, rv_new = (graph.degree[u] - 1).rsqrt(), (graph.degree[v] - 1).rsqrt()
    Y_u, Y_v = Y[u], Y[v]
    # R' Y' - R Y
    delta_a = EdgeTriplets(batch, u, (ru_new - r[u])[:, None] * Y_u) + EdgeTriplets(
        batch, v, (rv_new - r[v])[:, None] * Y_v
    )
    if delta_Y is not None:
        delta_a = delta_a + delta_Y.scaled(_new_scale(delta_Y, r, u, v, ru_new, rv_new))
        Y_u, Y_v = Y_u + delta_Y.at(u, len(u)), Y_v + delta_Y.at(v, len(u))
    indptr, indices = (graph.train_indptr, graph.train_indices) if train_only else (graph.indptr, graph.indices)
    delta_b = delta_a.spread(indptr, indices)
    delta_b = delta_b + EdgeTriplets(batch, u, -rv_new[:, None] * Y_v) + EdgeTriplets(batch, v, -ru_new[:, None] * Y_u)
    delta = delta_b.scaled(_new_scale(delta_b, r, u, v, ru_new, rv_new))
    delta = delta + EdgeTriplets(batch, u, (ru_new - r[u])[:, None] * B[u])
    delta = delta + EdgeTriplets(batch, v, (rv_new - r[v])[:, None] * B[v])
    if train_only:
        delta = delta.where(graph.is_train[delta.node])
    return delta.coalesce(len(Y))


def _closed_adjacency(graph: TrainingGraph, dtype) -> torch.Tensor:
    """``M = A + I`` as a sparse tensor."""
    n = len(graph.degree)
    rows = torch.repeat_interleave(torch.arange(n, device=graph.indices.device), graph.indptr.diff())
    values = torch.ones(len(graph.indices), dtype=dtype, device=graph.indices.device)
    return torch.sparse_coo_tensor(
        torch.stack([rows, graph.indices]), values, size=(n, n), is_coalesced=True, check_invariants=False
    )


def influence_direction(
    module: GCN,
    *,
    train_index: np.ndarray,
    y_train: torch.Tensor,
    val_index: np.ndarray,
    y_val: torch.Tensor,
    weight_decay: float,
    val_operator: torch.Tensor | None = None,
    damping: float = 0.0,
    cg_tol: float = 1e-10,
    cg_max_iter: int = 1000,
) -> dict[str, torch.Tensor]:
    """``s = (H + damping I)^-1 grad L_val`` by conjugate gradients, per parameter name.

    ``H`` is the Hessian of the training cross-entropy plus ``weight_decay / 2 ||theta||^2``
    (reverse-over-reverse Hessian-vector products: sparse matmul has no forward-mode rule);
    the validation loss is taken on ``val_operator`` (default: the training graph).

    Parameters
    ----------
    module : GCN
        Fitted (evaluated deterministically: dropout is off).
    train_index, val_index : int arrays
    y_train, y_val : long tensors
    weight_decay : float
        The training penalty ``weight_decay / 2 ||theta||^2`` (part of the Hessian).
    val_operator : sparse tensor or None
        Normalised operator the validation nodes are scored on.
    damping : float
        Added to the Hessian diagonal; a GCN's Hessian need not be positive definite.
    cg_tol, cg_max_iter : float, int
        Conjugate-gradient stopping rule (relative residual, iterations).
    """
    names = [name for name, _ in module.named_parameters()]
    theta = tuple(p.detach().requires_grad_(True) for _, p in module.named_parameters())
    buffers = dict(module.named_buffers())
    device = module.X.device
    was_training = module.training
    module.eval()

    def loss(index, labels, operator):
        nodes = torch.as_tensor(index, device=device)
        state = {**dict(zip(names, theta, strict=True)), **buffers}
        return F.cross_entropy(functional_call(module, state, (nodes, operator)), labels)

    val_operator = module.operator if val_operator is None else val_operator
    val_gradient = _flat(torch.autograd.grad(loss(val_index, y_val, val_operator), theta))
    penalty = 0.5 * weight_decay * sum(p.square().sum() for p in theta)
    train_loss = loss(train_index, y_train, module.operator) + penalty
    train_gradient = _flat(torch.autograd.grad(train_loss, theta, create_graph=True))
    direction = conjugate_gradient(
        lambda vector: _flat(torch.autograd.grad(train_gradient @ vector, theta, retain_graph=True)) + damping * vector,
        val_gradient,
        tol=cg_tol,
        max_iter=cg_max_iter,
        advice="The GCN edge influences are approximate; raise cg_max_iter or the damping.",
    ).detach()
    module.train(was_training)
    pieces = direction.split([p.numel() for p in theta])
    return {name: piece.view_as(p) for name, piece, p in zip(names, pieces, theta, strict=True)}


def gcn_edge_influence(
    module: GCN,
    adjacency: sp.csr_matrix,
    edges: np.ndarray,
    *,
    train_index: np.ndarray,
    y_train: torch.Tensor,
    val_adjacency: sp.csr_matrix | None = None,
    batch_size: int = 2048,
    progress: Callable = lambda it, **_: it,
    **direction_options,
) -> np.ndarray:
    """``I(e) = -grad L_val^T H^-1 [grad L_tr(G \\ e) - grad L_tr(G)]`` for each undirected edge.

    Only ``s = H^-1 grad L_val`` is solved for (once, :func:`influence_direction`); the rest is
    ``s^T grad l_i`` for the training nodes ``i`` a deletion reaches. That is the derivative of
    node ``i``'s loss along ``s``, so the network is run forward with a tangent: the first layer
    propagates ``[X W1 + b1 | X dW1 + db1]`` (``s = (dW1, db1, dW2, db2)``), the ReLU and the
    second layer act on value and tangent, and a deleted edge changes ``A_hat`` only in the rows
    and columns of its endpoints. Hidden activations are therefore recomputed exactly on the
    endpoints' closed neighbourhoods and outputs on the training nodes within 2 hops, for a
    batch of edges at once (sparse per-edge changes, as in the SGC influence). No approximation
    beyond the influence function itself: the result equals rebuilding the graph without each
    edge and taking the full training gradient.

    Parameters
    ----------
    module : GCN
        Fitted on ``adjacency`` (evaluated deterministically: dropout is off).
    adjacency : scipy CSR of shape (n_nodes, n_nodes)
        The graph the model was trained on.
    edges : int array of shape (2, n_edges)
    train_index : int array
    y_train : long tensor
    val_adjacency : scipy CSR or None
        Graph the validation nodes are scored on (default ``adjacency``; RGE uses the original).
    batch_size : int
        Edges processed together.
    **direction_options
        :func:`influence_direction`'s other keywords, passed to it: ``val_index``, ``y_val`` and
        ``weight_decay`` (required), ``damping``, ``cg_tol``, ``cg_max_iter``.

    Returns
    -------
    ndarray of shape (n_edges,)
    """
    device, dtype = module.X.device, module.X.dtype
    val_operator = None if val_adjacency is None else normalized_operator(val_adjacency, device, dtype)
    step = influence_direction(
        module, train_index=train_index, y_train=y_train, val_operator=val_operator, **direction_options
    )
    with torch.no_grad():
        W1, b1 = module.hidden.weight, module.hidden.bias
        W2, b2 = module.output.weight, module.output.bias
        dW1, db1 = step["hidden.weight"], step["hidden.bias"]
        dW2, db2 = step["output.weight"], step["output.bias"]
        n_hidden, n_classes = W1.shape[0], W2.shape[0]

        def second_layer_input(H: torch.Tensor) -> torch.Tensor:
            """``[R W2^T + b2 | dR W2^T + R dW2^T + db2]`` from ``H = [pre-activation | tangent]``."""
            pre, tangent = H.split(n_hidden, dim=1)
            R, dR = torch.relu(pre), (pre > 0) * tangent
            return torch.cat([R @ W2.T + b2, dR @ W2.T + R @ dW2.T + db2], dim=1)

        labels = torch.full((len(module.X),), -1, dtype=torch.long, device=device)
        labels[torch.as_tensor(train_index, device=device)] = y_train

        def directional_loss(z: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
            """``s^T grad l_i`` from ``z = [logits | tangent]`` of training nodes ``nodes``."""
            logits, tangent = z.split(n_classes, dim=1)
            residual = logits.softmax(dim=1)
            residual[torch.arange(len(nodes), device=device), labels[nodes]] -= 1.0
            return (residual * tangent).sum(dim=1)

        graph = TrainingGraph.build(adjacency, train_index, device, dtype)
        M, r = _closed_adjacency(graph, dtype), graph.degree.rsqrt()[:, None]
        Y1 = torch.cat([torch.sparse.mm(module.X, W1.T) + b1, torch.sparse.mm(module.X, dW1.T) + db1], dim=1)
        B1 = M @ (r * Y1)
        H1 = r * B1
        Y2 = second_layer_input(H1)
        B2 = M @ (r * Y2)
        out = r * B2
        edges_t = torch.as_tensor(edges, dtype=torch.long, device=device)
        influence = torch.zeros(edges.shape[1], dtype=dtype, device=device)
        for start in progress(range(0, edges.shape[1], batch_size), desc="GCN edge influence"):
            u, v = edges_t[0, start : start + batch_size], edges_t[1, start : start + batch_size]
            hidden = _one_hop_change(graph, Y1, B1, u, v, None, train_only=False)
            changed = second_layer_input(H1[hidden.node] + hidden.values) - Y2[hidden.node]
            output = _one_hop_change(
                graph, Y2, B2, u, v, EdgeTriplets(hidden.edge, hidden.node, changed), train_only=True
            )
            base = out[output.node]
            delta = directional_loss(base + output.values, output.node) - directional_loss(base, output.node)
            influence[start : start + len(u)].index_add_(0, output.edge, delta)
    return (-influence / len(train_index)).cpu().numpy()
