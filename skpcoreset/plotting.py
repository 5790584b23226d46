"""Display objects in the style of scikit-learn's (``from_estimator`` / ``plot(ax=...)``).

matplotlib is imported only when a display is plotted (``pip install skpcoreset[plot]``).
Each display stores what it drew as attributes (``ax_``, ``figure_`` and the artists), so
tests and users can inspect or restyle them.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

from .metrics import expected_calibration_error

__all__ = [
    "ReliabilityDisplay",
    "CoresetDisplay",
    "CurveLossDisplay",
    "InfluenceDisplay",
    "EdgeRemovalDisplay",
]


def _axes(ax):
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("Plotting needs matplotlib: pip install 'skpcoreset[plot]'.") from exc
    if ax is None:
        _, ax = plt.subplots()
    return ax


class ReliabilityDisplay:
    """Reliability diagram: accuracy against confidence in equal-width bins, with the ECE.

    Parameters
    ----------
    bin_confidence, bin_accuracy, bin_count : ndarray of shape (n_bins,)
        Mean confidence, accuracy and sample count of each bin (empty bins hold NaN / 0).
    ece : float
        Expected calibration error of the same bins.
    name : str or None
        Legend label.

    Examples
    --------
    >>> import numpy as np
    >>> from skpcoreset.plotting import ReliabilityDisplay
    >>> proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> display = ReliabilityDisplay.from_predictions([0, 1, 1], proba, n_bins=5)
    >>> round(float(display.ece), 3)
    0.3
    """

    def __init__(self, bin_confidence, bin_accuracy, bin_count, ece, name=None):
        self.bin_confidence = bin_confidence
        self.bin_accuracy = bin_accuracy
        self.bin_count = bin_count
        self.ece = ece
        self.name = name

    @classmethod
    def from_predictions(cls, y_true, proba, *, classes=None, n_bins=15, name=None, ax=None):
        """Build from labels and predicted probabilities, then plot."""
        proba = np.asarray(proba, dtype=np.float64)
        classes = np.arange(proba.shape[1]) if classes is None else np.asarray(classes)
        correct = classes[proba.argmax(axis=1)] == np.asarray(y_true)
        confidence = proba.max(axis=1)
        bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
        count = np.bincount(bins, minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_conf = np.bincount(bins, weights=confidence, minlength=n_bins) / count
            mean_acc = np.bincount(bins, weights=correct, minlength=n_bins) / count
        ece = expected_calibration_error(y_true, proba, classes, n_bins=n_bins)
        return cls(mean_conf, mean_acc, count, ece, name=name).plot(ax=ax)

    @classmethod
    def from_estimator(cls, estimator, X, y, *, n_bins=15, name=None, ax=None):
        """Build from any fitted estimator with ``predict_proba``, then plot."""
        check_is_fitted(estimator)
        name = type(estimator).__name__ if name is None else name
        return cls.from_predictions(
            y, estimator.predict_proba(X), classes=estimator.classes_, n_bins=n_bins, name=name, ax=ax
        )

    def plot(self, ax=None):
        ax = _axes(ax)
        n_bins = len(self.bin_count)
        centers = (np.arange(n_bins) + 0.5) / n_bins
        filled = self.bin_count > 0
        label = f"{self.name or 'model'} (ECE {self.ece:.3f})"
        self.bars_ = ax.bar(
            centers[filled], self.bin_accuracy[filled], width=1 / n_bins, edgecolor="black", alpha=0.7, label=label
        )
        (self.line_,) = ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title="Reliability diagram")
        ax.legend(loc="upper left")
        self.ax_, self.figure_ = ax, ax.figure
        return self


class CoresetDisplay:
    """A pseudocoreset: an image grid (one row per class) or a 2-D projection for tabular data.

    Parameters
    ----------
    coreset_X : ndarray of shape (n_coreset, *input_shape)
    coreset_y : ndarray of shape (n_coreset,)
        Hard labels of the coreset rows.
    X_reference, y_reference : ndarray or None
        Real data drawn behind a 2-D projection (tabular coresets only).

    Examples
    --------
    >>> from skpcoreset.plotting import CoresetDisplay
    >>> display = CoresetDisplay.from_estimator(fitted_synthesizer)  # doctest: +SKIP
    >>> display.ax_.set_title("10 synthetic images per class")  # doctest: +SKIP
    """

    def __init__(self, coreset_X, coreset_y, X_reference=None, y_reference=None):
        self.coreset_X = coreset_X
        self.coreset_y = coreset_y
        self.X_reference = X_reference
        self.y_reference = y_reference

    @classmethod
    def from_estimator(cls, estimator, X=None, y=None, *, ax=None):
        """Read ``coreset_X_`` / ``coreset_y_`` (soft labels are shown by their argmax)."""
        check_is_fitted(estimator, "coreset_X_")
        coreset_X = np.asarray(estimator.coreset_X_).reshape(-1, *estimator.input_shape_)
        coreset_y = np.asarray(estimator.coreset_y_)
        if coreset_y.ndim == 2:
            coreset_y = estimator.classes_[coreset_y.argmax(axis=1)]
        return cls(coreset_X, coreset_y, X, y).plot(ax=ax)

    def _is_image(self) -> bool:
        return self.coreset_X.ndim == 4 and self.coreset_X.shape[1] in (1, 3)

    def plot(self, ax=None):
        ax = _axes(ax)
        if self._is_image():
            self._plot_grid(ax)
        else:
            self._plot_projection(ax)
        self.ax_, self.figure_ = ax, ax.figure
        return self

    def _plot_grid(self, ax):
        classes = np.unique(self.coreset_y)
        per_class = max(int(np.sum(self.coreset_y == c)) for c in classes)
        _, channels, height, width = self.coreset_X.shape
        grid = np.ones((len(classes) * (height + 1), per_class * (width + 1), channels))
        for row, c in enumerate(classes):
            for col, image in enumerate(self.coreset_X[self.coreset_y == c]):
                lo, hi = image.min(), image.max()
                image = (image - lo) / (hi - lo + 1e-12)
                grid[
                    row * (height + 1) : row * (height + 1) + height, col * (width + 1) : col * (width + 1) + width
                ] = image.transpose(1, 2, 0)
        self.image_ = ax.imshow(grid.squeeze(-1) if channels == 1 else grid, cmap="gray")
        ax.set_yticks((np.arange(len(classes)) + 0.5) * (height + 1), [str(c) for c in classes])
        ax.set_xticks([])
        ax.set(title="Pseudocoreset (one row per class)")

    def _plot_projection(self, ax):
        from sklearn.decomposition import PCA

        flat = self.coreset_X.reshape(len(self.coreset_X), -1)
        fit_on = flat if self.X_reference is None else np.asarray(self.X_reference).reshape(len(self.X_reference), -1)
        pca = PCA(n_components=2).fit(fit_on)
        if self.X_reference is not None:
            ref = pca.transform(fit_on)
            self.reference_ = ax.scatter(ref[:, 0], ref[:, 1], c=_codes(self.y_reference), s=5, alpha=0.2, cmap="tab10")
        points = pca.transform(flat)
        self.coreset_ = ax.scatter(
            points[:, 0], points[:, 1], c=_codes(self.coreset_y), s=80, marker="*", edgecolor="black", cmap="tab10"
        )
        ax.set(title="Pseudocoreset (PCA of the data)", xlabel="PC 1", ylabel="PC 2")


def _codes(labels):
    if labels is None:
        return None
    return np.unique(np.asarray(labels), return_inverse=True)[1]


class CurveLossDisplay:
    """Loss and accuracy along a Bezier curve between two modes, with bridge positions.

    Parameters
    ----------
    lambdas : ndarray of shape (n_points,)
        Positions on the curve in [0, 1].
    losses, accuracies : ndarray of shape (n_points,)
        Test loss (NLL) and accuracy at each position.
    bridge_lambdas : sequence of float
        Curve positions the bridges were trained to predict.

    Examples
    --------
    >>> from skpcoreset.plotting import CurveLossDisplay
    >>> display = CurveLossDisplay.from_estimator(fitted_bridge_ensemble, X_test, y_test)  # doctest: +SKIP
    >>> display.losses.argmax()  # the curve's worst point  # doctest: +SKIP
    """

    def __init__(self, lambdas, losses, accuracies, bridge_lambdas=()):
        self.lambdas = lambdas
        self.losses = losses
        self.accuracies = accuracies
        self.bridge_lambdas = bridge_lambdas

    @classmethod
    def from_estimator(cls, estimator, X, y, *, n_points=11, curve=0, ax=None):
        """Evaluate ``estimator.curve_proba(X, lam, curve=curve)`` on a grid of lambdas."""
        check_is_fitted(estimator, "curves_")
        lambdas = np.linspace(0.0, 1.0, n_points)
        y_index = np.searchsorted(estimator.classes_, y)
        losses, accuracies = [], []
        for lam in lambdas:
            proba = estimator.curve_proba(X, float(lam), curve=curve)
            losses.append(-np.mean(np.log(np.clip(proba[np.arange(len(y_index)), y_index], 1e-12, None))))
            accuracies.append(np.mean(proba.argmax(axis=1) == y_index))
        bridge_lambdas = getattr(estimator, "bridge_lambdas_", ())
        return cls(lambdas, np.array(losses), np.array(accuracies), bridge_lambdas).plot(ax=ax)

    def plot(self, ax=None):
        ax = _axes(ax)
        (self.loss_line_,) = ax.plot(self.lambdas, self.losses, "o-", color="C0", label="test NLL")
        ax.set(xlabel="position on the curve (lambda)", ylabel="NLL", title="Along the Bezier curve")
        twin = ax.twinx()
        (self.accuracy_line_,) = twin.plot(self.lambdas, self.accuracies, "s--", color="C1", label="accuracy")
        twin.set_ylabel("accuracy")
        self.bridge_lines_ = [ax.axvline(lam, color="C2", alpha=0.6) for lam in self.bridge_lambdas]
        ax.legend(handles=[self.loss_line_, self.accuracy_line_], loc="upper right")
        self.ax_, self.accuracy_ax_, self.figure_ = ax, twin, ax.figure
        return self


class InfluenceDisplay:
    """Histogram of self-influence with the flagging threshold; clean vs mislabeled if known.

    Parameters
    ----------
    self_influence : ndarray of shape (n_samples,)
    threshold : float or None
        Samples above it are flagged.
    is_mislabeled : ndarray of bool or None
        Ground truth, when known, to colour the two populations.

    Examples
    --------
    >>> from skpcoreset.plotting import InfluenceDisplay
    >>> InfluenceDisplay.from_estimator(fitted_gex, is_mislabeled=flipped)  # doctest: +SKIP
    """

    def __init__(self, self_influence, threshold=None, is_mislabeled=None):
        self.self_influence = self_influence
        self.threshold = threshold
        self.is_mislabeled = is_mislabeled

    @classmethod
    def from_estimator(cls, estimator, *, is_mislabeled=None, ax=None):
        """Read ``self_influence_`` and ``threshold_`` of a fitted influence estimator."""
        check_is_fitted(estimator, "self_influence_")
        return cls(estimator.self_influence_, getattr(estimator, "threshold_", None), is_mislabeled).plot(ax=ax)

    def plot(self, ax=None, bins=50):
        ax = _axes(ax)
        values = np.log10(np.asarray(self.self_influence, dtype=float) + 1e-12)
        edges = np.histogram_bin_edges(values, bins=bins)
        if self.is_mislabeled is None:
            self.hist_ = [ax.hist(values, bins=edges, alpha=0.8, label="all samples")]
        else:
            mask = np.asarray(self.is_mislabeled, dtype=bool)
            self.hist_ = [
                ax.hist(values[~mask], bins=edges, alpha=0.6, label="clean"),
                ax.hist(values[mask], bins=edges, alpha=0.6, label="mislabeled"),
            ]
        self.threshold_line_ = None
        if self.threshold is not None:
            self.threshold_line_ = ax.axvline(np.log10(self.threshold + 1e-12), color="red", label="threshold")
        ax.set(xlabel="log10 self-influence", ylabel="samples", title="Self-influence")
        ax.legend()
        self.ax_, self.figure_ = ax, ax.figure
        return self


class EdgeRemovalDisplay:
    """Validation accuracy (and edges removed) per round of influence-based edge removal.

    Parameters
    ----------
    history : list of dict
        One dict per round with at least ``'val_accuracy'`` and ``'n_removed'`` (edges removed
        so far, as in ``RepulsiveEdgeEliminator.history_``).
    best_round : int or None
        The round whose graph was kept.

    Examples
    --------
    >>> from skpcoreset.plotting import EdgeRemovalDisplay
    >>> EdgeRemovalDisplay.from_estimator(fitted_rge)  # doctest: +SKIP
    """

    def __init__(self, history, best_round=None):
        self.history = history
        self.best_round = best_round

    @classmethod
    def from_estimator(cls, estimator, *, ax=None):
        check_is_fitted(estimator, "history_")
        return cls(estimator.history_, getattr(estimator, "best_round_", None)).plot(ax=ax)

    def plot(self, ax=None):
        ax = _axes(ax)
        rounds = np.arange(len(self.history))
        accuracy = [record["val_accuracy"] for record in self.history]
        removed = [record["n_removed"] for record in self.history]
        (self.accuracy_line_,) = ax.plot(rounds, accuracy, "o-", label="validation accuracy")
        ax.set(xlabel="round", ylabel="validation accuracy", title="Influence-based edge removal")
        twin = ax.twinx()
        self.removed_bars_ = twin.bar(rounds, removed, alpha=0.25, color="gray", label="edges removed so far")
        twin.set_ylabel("edges removed")
        self.best_marker_ = None
        if self.best_round is not None:
            (self.best_marker_,) = ax.plot(
                [self.best_round], [accuracy[self.best_round]], "r*", markersize=15, label="kept graph"
            )
        ax.legend(loc="lower right")
        self.ax_, self.removed_ax_, self.figure_ = ax, twin, ax.figure
        return self
