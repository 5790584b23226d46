"""A 2-layer GCN node classifier (Kipf & Welling); its edge influence is in skpcoreset.posthoc.graph."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted
from torch.func import functional_call

from .._base import TorchEstimatorMixin, fill_doc, shared_constraints, store_params, torch_seed
from .._train import Trainer, TrainSpec
from ._node_classifier import NodeClassifierMixin
from ._operations import graph_or_edgeless, normalized_operator

__all__ = ["GCN", "GCNClassifier", "sparse_features"]


class GCN(torch.nn.Module):
    """``A_hat relu(A_hat X W1 + b1) W2 + b2`` on a fixed graph; ``forward`` takes node indices.

    Taking node indices lets the shared :class:`~skpcoreset._train.Trainer` train it as if the
    training nodes were samples (one full batch) while every node takes part in propagation.
    ``X`` is kept as a sparse tensor (bag-of-words features are ~1% non-zero, so the first
    layer costs its non-zeros, not ``n_nodes x n_features``); dropout on it drops stored
    entries, as in Kipf & Welling's sparse dropout.
    """

    def __init__(self, X: torch.Tensor, operator: torch.Tensor, n_hidden: int, n_classes: int, dropout: float):
        super().__init__()
        self.register_buffer("X", sparse_features(X))
        self.register_buffer("operator", operator)
        self.hidden = torch.nn.Linear(X.shape[1], n_hidden, dtype=X.dtype, device=X.device)
        self.output = torch.nn.Linear(n_hidden, n_classes, dtype=X.dtype, device=X.device)
        self.dropout = dropout

    def forward(self, nodes: torch.Tensor, operator: torch.Tensor | None = None) -> torch.Tensor:
        operator = self.operator if operator is None else operator
        X = self.X
        if self.training and self.dropout > 0:
            X = torch.sparse_coo_tensor(
                X.indices(),
                F.dropout(X.values(), self.dropout, True),
                X.shape,
                is_coalesced=True,
                check_invariants=False,
            )
        H = torch.relu(operator @ (torch.sparse.mm(X, self.hidden.weight.T) + self.hidden.bias))
        H = F.dropout(H, self.dropout, self.training)
        return (operator @ self.output(H))[nodes]


def sparse_features(X: torch.Tensor) -> torch.Tensor:
    return X.coalesce() if X.is_sparse else X.to_sparse().coalesce()


@fill_doc
class GCNClassifier(NodeClassifierMixin, TorchEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Two-layer graph convolutional network (Kipf & Welling) for transductive node classification.

    ``A_hat = D^-1/2 (A + I) D^-1/2`` as in :class:`SGCClassifier`; ``y`` is ``-1`` for
    unlabeled nodes and ``predict`` labels every node of the graph it is given. Trained by
    full-batch Adam (the RGE paper: 2000 epochs, lr 0.01).

    Parameters
    ----------
    n_hidden : int, default=16
    dropout : float, default=0.5
        On the input features and the hidden layer, during training only.
    weight_decay : float, default=5e-4
        L2 penalty ``weight_decay / 2 * ||theta||^2`` on every parameter.
    lr : float, default=0.01
    max_iter : int, default=2000
        Adam epochs.
    %(device)s
    %(random_state)s
    %(verbose)s

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    module_ : GCN
        The fitted network (on the training graph).
    n_iter_ : int
        Adam epochs run.
    n_features_in_ : int
    device_ : torch.device
    %(interrupted)s

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> from skpcoreset import GCNClassifier
    >>> rng = np.random.RandomState(0)
    >>> y = np.repeat([0, 1], 20)
    >>> X = rng.normal(y[:, None], 1.0, size=(40, 3))
    >>> A = sp.csr_matrix((y[:, None] == y[None, :]).astype(float))
    >>> y_partial = np.where(np.arange(40) % 4 == 0, y, -1)
    >>> clf = GCNClassifier(max_iter=200, random_state=0).fit(X, y_partial, adjacency=A)
    >>> float((clf.predict(X, adjacency=A) == y).mean()) > 0.9
    True

    References
    ----------
    T. N. Kipf, M. Welling. "Semi-Supervised Classification with Graph Convolutional Networks."
    ICLR 2017.
    """

    _parameter_constraints = {
        "n_hidden": [Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        **shared_constraints("device", "random_state", "verbose"),
    }

    def __init__(
        self,
        n_hidden=16,
        *,
        dropout=0.5,
        weight_decay=5e-4,
        lr=0.01,
        max_iter=2000,
        device="cpu",
        random_state=None,
        verbose=0,
    ):
        store_params(self, locals())

    def _fit_nodes(self, X, labeled, y, adjacency, generator):
        features = self._to_tensor(X, dtype=torch.float64)
        operator = normalized_operator(graph_or_edgeless(adjacency, len(X)), self.device_, torch.float64)
        spec = TrainSpec(
            max_epochs=self.max_iter,
            batch_size=int(labeled.sum()),
            lr=self.lr,
            optimizer=torch.optim.Adam,
            optimizer_kwargs={"weight_decay": self.weight_decay},
        )
        nodes = self._to_tensor(np.flatnonzero(labeled), dtype=torch.long)
        # nn.Linear's initialisation and dropout draw from torch's global generator
        with torch_seed(self._seed, self.device_):
            self.module_ = GCN(features, operator, self.n_hidden, len(self.classes_), self.dropout)
            trainer = Trainer(self.module_, spec, generator=generator, verbose=self.verbose, desc="gcn").fit(nodes, y)
        self.n_iter_ = len(trainer.history)
        self.interrupted_ = "training" if trainer.interrupted else None
        self.module_.eval()
        return self

    def predict_proba(self, X, adjacency=None):
        """Class probabilities of every node, propagating over ``adjacency`` (default: no edges)."""
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        graph = graph_or_edgeless(adjacency, len(X))
        module = self.module_
        with torch.no_grad():
            features = self._to_tensor(X, dtype=torch.float64)
            operator = normalized_operator(graph, self.device_, torch.float64)
            nodes = torch.arange(len(X), device=self.device_)
            state = {**dict(module.named_parameters()), "X": sparse_features(features)}
            logits = functional_call(module, state, (nodes, operator))
        return logits.softmax(dim=1).cpu().numpy()

    def predict(self, X, adjacency=None):
        """Labels of every node."""
        check_is_fitted(self)
        return self.classes_[self.predict_proba(X, adjacency).argmax(axis=1)]
