"""Simplified graph convolution (SGC): softmax regression on ``A_hat^K X``."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .._base import TorchEstimatorMixin, fill_doc, shared_constraints, store_params
from ..exceptions import warn
from ._node_classifier import NodeClassifierMixin
from ._operations import graph_or_edgeless, propagate
from ._softmax_regression import fit_softmax_regression

__all__ = ["SGCClassifier"]


@fill_doc
class SGCClassifier(NodeClassifierMixin, TorchEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Simplified graph convolution: softmax regression on ``A_hat^K X``.

    ``A_hat = D^-1/2 (A + I) D^-1/2`` is the symmetrically normalised adjacency with self
    loops, ``K = n_hops``. The model is transductive: ``X`` holds the features of every node
    of the graph, ``y`` their labels with ``-1`` for unlabeled nodes, and ``predict`` labels
    the nodes of the graph it is given. Without ``adjacency`` the graph has no edges, so
    ``A_hat`` is the identity and the estimator is plain L2-regularised softmax regression on
    a table (this is what scikit-learn's generic checks exercise).

    ``adjacency`` is a fit/predict parameter; with ``sklearn.set_config(
    enable_metadata_routing=True)`` request it with ``set_fit_request(adjacency=True)`` and
    ``set_predict_request(adjacency=True)`` to route it through a Pipeline.

    Parameters
    ----------
    n_hops : int, default=2
        Propagation steps K.
    weight_decay : float, default=5e-5
        L2 penalty ``weight_decay / 2 * ||theta||^2`` on weights and bias.
    solver : {'lbfgs', 'adam'}, default='lbfgs'
        'lbfgs' solves the convex problem to its optimum (what influence functions assume);
        'adam' is the SGC paper's full-batch Adam (``max_iter`` epochs at ``lr``).
    max_iter : int, default=200
        L-BFGS iterations or Adam epochs.
    lr : float, default=0.2
        Adam learning rate (unused by L-BFGS).
    %(device)s
    random_state : int, RandomState instance or None, default=None
        Initial weights of the Adam solver (L-BFGS starts from zero and is deterministic).
    %(verbose)s

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (n_features, n_classes)
    intercept_ : ndarray of shape (n_classes,)
    n_iter_ : int
        L-BFGS iterations or Adam epochs run.
    fitted_on_graph_ : bool
        Whether ``fit`` received an adjacency (predicting without one then warns).
    %(interrupted)s
    n_features_in_ : int
    device_ : torch.device

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> from skpcoreset import SGCClassifier
    >>> rng = np.random.RandomState(0)
    >>> y = np.repeat([0, 1], 20)
    >>> X = rng.normal(y[:, None], 1.0, size=(40, 3))
    >>> A = sp.csr_matrix((y[:, None] == y[None, :]).astype(float))
    >>> y_partial = np.where(np.arange(40) % 4 == 0, y, -1)
    >>> clf = SGCClassifier(weight_decay=1e-3).fit(X, y_partial, adjacency=A)
    >>> float((clf.predict(X, adjacency=A) == y).mean())
    1.0

    References
    ----------
    F. Wu, T. Zhang, A. H. de Souza Jr., C. Fifty, T. Yu, K. Q. Weinberger. "Simplifying Graph
    Convolutional Networks." ICML 2019.
    """

    _parameter_constraints = {
        "n_hops": [Interval(Integral, 0, None, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "solver": [StrOptions({"lbfgs", "adam"})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        **shared_constraints("device", "random_state", "verbose"),
    }

    def __init__(
        self,
        n_hops=2,
        *,
        weight_decay=5e-5,
        solver="lbfgs",
        max_iter=200,
        lr=0.2,
        device="cpu",
        random_state=None,
        verbose=0,
    ):
        store_params(self, locals())

    def _fit_nodes(self, X, labeled, y, adjacency, generator):
        Z = self.propagated_features(X, adjacency, rows=np.flatnonzero(labeled))
        coef, intercept, self.n_iter_, interrupted = fit_softmax_regression(
            Z.double(),
            y,
            len(self.classes_),
            weight_decay=self.weight_decay,
            solver=self.solver,
            max_iter=self.max_iter,
            lr=self.lr,
            generator=generator,
            verbose=self.verbose,
        )
        self.coef_ = coef.cpu().numpy()
        self.intercept_ = intercept.cpu().numpy()
        self.fitted_on_graph_ = adjacency is not None
        self.interrupted_ = "solver" if interrupted else None
        return self

    def propagated_features(self, X: np.ndarray, adjacency, rows: np.ndarray | None = None) -> torch.Tensor:
        """Rows ``rows`` (default: all) of ``A_hat^K X``, float32 on ``device_`` (``X`` validated)."""
        return propagate(self._to_tensor(X), graph_or_edgeless(adjacency, len(X)), self.n_hops, rows=rows)

    def _logits(self, X, adjacency) -> np.ndarray:
        """Class logits of every node, shape ``(n_nodes, n_classes)``."""
        check_is_fitted(self)
        if adjacency is None and self.fitted_on_graph_:
            warn(
                f"{type(self).__name__} was fitted on a graph but got no adjacency; predicting with no "
                "edges. Pass adjacency= (or request it with set_predict_request/set_score_request)."
            )
        X = self._validate_X(X, reset=False)
        Z = self.propagated_features(X, adjacency).double()
        logits = Z @ torch.as_tensor(self.coef_, device=Z.device) + torch.as_tensor(self.intercept_, device=Z.device)
        return logits.cpu().numpy()

    def predict_proba(self, X, adjacency=None) -> np.ndarray:
        """Class probabilities of every node, shape ``(n_nodes, n_classes)``."""
        logits = torch.from_numpy(self._logits(X, adjacency))
        return logits.softmax(dim=1).numpy()

    def predict(self, X, adjacency=None) -> np.ndarray:
        """Most probable label of every node."""
        logits = self._logits(X, adjacency)
        return self.classes_[logits.argmax(axis=1)]
