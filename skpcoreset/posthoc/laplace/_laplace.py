"""ConnectivityLaplaceClassifier: a post-hoc, reparameterisation-invariant Laplace posterior."""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ..._base import (
    TorchEstimatorMixin,
    fill_doc,
    make_generator,
    seed_from_random_state,
    shared_constraints,
    store_params,
)
from ..._holdout import beats_by_one_standard_error, holdout_split, scores, warn_if_no_benefit
from ..._skorch import train_spec_from_net
from ..._train import predict_batched, train_members
from .._theta_star import fitted_or_trained, warn_if_clone_unfits
from ._curvature import CURVATURES, GGN, Curvature, make_curvature
from ._linearized import PARAMETERIZATIONS, SUBSETS, LinearizedModel, linearize
from ._sharpness import connectivity_sharpness

__all__ = ["ConnectivityLaplaceClassifier"]

# log10 of the prior precisions searched by 'marglik' (then refined) and by 'cv'. The 'cv' grid
# reaches 10^6, where the posterior has all but collapsed onto the MAP, so a network that a
# posterior can only make worse gets the smallest possible change.
_MARGLIK_GRID = np.linspace(-6.0, 8.0, 57)
_CV_GRID = np.linspace(-2.0, 6.0, 17)


def probit_proba(logits: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """Probit approximation of ``E softmax(f)``: ``softmax(f / sqrt(1 + pi/8 var(f)))``."""
    variance = covariance.diagonal(dim1=-2, dim2=-1)
    return (logits / torch.sqrt(1.0 + math.pi / 8.0 * variance)).softmax(-1)


def monte_carlo_proba(
    logits: torch.Tensor, covariance: torch.Tensor, n_samples: int, generator: torch.Generator
) -> torch.Tensor:
    """Mean of ``softmax(f)`` over ``n_samples`` draws ``f ~ N(logits, covariance)``."""
    values, vectors = torch.linalg.eigh(covariance)
    root = vectors * values.clamp_min(0.0).sqrt().unsqueeze(-2)  # (B, C, C), root @ root^T = cov
    noise = torch.randn((n_samples, *logits.shape), generator=generator, dtype=logits.dtype, device=logits.device)
    draws = logits + torch.einsum("bck,sbk->sbc", root, noise)
    return draws.softmax(-1).mean(0)


@fill_doc
class ConnectivityLaplaceClassifier(TorchEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Post-hoc Laplace posterior of a trained network, in connectivity or weight coordinates.

    The trained weights ``theta*`` are kept; a Gaussian posterior is placed around them and the
    prediction is the linearised (GLM) predictive. With ``parameterization='connectivity'``
    the posterior lives on the connectivity ``c`` of ``theta = theta* * c``: prior
    ``c ~ N(1, I / prior_precision)``, posterior ``N(1, (diag(theta*) J^T Lambda J diag(theta*)
    + prior_precision I)^-1)``. Its predictive and its sharpness are unchanged by rescalings
    that leave the network function unchanged, unlike the ordinary Laplace approximation,
    which is the same code with ``parameterization='weight'``.

    Parameters
    ----------
    net : None, nn.Module subclass, skorch NeuralNetClassifier or nn.Module instance, default=None
        A *fitted* skorch net (its ``module_``) or a module instance is used as trained, never
        modified; its logit columns must follow the sorted labels of ``y``. ``None``, a module
        class or an unfitted skorch template is first trained on ``(X, y)`` by skpcoreset's
        loop (see :func:`skpcoreset.make_net`). :func:`sklearn.base.clone` (``GridSearchCV``,
        ``cross_val_score``) turns a fitted skorch net into an unfitted template, which the
        clone re-trains; cloning warns about it. Pass ``FrozenEstimator(net)``
        (:class:`sklearn.frozen.FrozenEstimator`) or ``net.module_`` to keep it trained.
    parameterization : {'connectivity', 'weight'}, default='connectivity'
        Coordinates of the posterior; 'weight' is the ordinary Laplace approximation.
    subset_of_weights : {'last_layer', 'all'}, default='last_layer'
        Parameters carrying the posterior: the last ``nn.Linear`` or every parameter.
    hessian_structure : {'full', 'diag', 'lowrank', 'rto'}, default='full'
        How the GGN is represented: dense, diagonal, top-``rank`` Lanczos eigenpairs, or
        ``n_samples`` randomize-then-optimize posterior samples (for large networks).
    prior_precision : float or {'marglik', 'cv'}, default='cv'
        Precision ``delta`` of the isotropic prior (``alpha^-2`` in connectivity coordinates).
        'marglik' maximises the Laplace evidence (weight parameterisation only: in
        connectivity coordinates the prior mean is the MAP, so the evidence grows without
        bound with ``delta``); 'cv' picks the value of the grid ``10^-2 .. 10^6`` with the best
        predictive NLL on the validation split (see ``validation_fraction``). A network
        trained elsewhere should not have seen all of ``(X, y)``, or 'cv' favours the MAP.
    validation_fraction : float in [0, 1), default=0.2
        Share of every class of ``(X, y)`` held out (:func:`skpcoreset._holdout.holdout_split`);
        the network (when trained here) and the curvature are fitted on the rest. On the
        held-out part 'cv' tunes the prior precision and the posterior predictive is compared
        with the MAP network alone (``validation_scores_``): when it does not lower the NLL, a
        :class:`~skpcoreset.exceptions.NoBenefitWarning` says so. 0 holds out nothing (no
        check; 'cv' then raises).
    link_approx : {'probit', 'mc'}, default='probit'
        Probit approximation of the softmax-Gaussian integral, or Monte Carlo.
    rank : int, default=10
        Eigenpairs kept by ``hessian_structure='lowrank'``.
    n_samples : int, default=100
        Monte Carlo draws of the 'mc' link, and posterior samples of 'rto'.
    n_sharpness_probes : int, default=10
        Hutchinson probes per batch for ``connectivity_sharpness_``; each costs one backward
        pass through the whole network over ``X``. 0 skips it (the attribute is None).
    batch_size : int, default=256
        Samples per Jacobian batch.
    input_shape : tuple of int or None, default=None
        Shape of one sample when flat rows hold images, e.g. ``(1, 8, 8)``.
    device : {'cpu', 'cuda', 'cuda:N', 'auto'}, default='cpu'
    random_state : int, RandomState or None, default=None
    verbose : int, default=0
        1 shows progress bars: training (when the network is trained here), GGN batches,
        Lanczos and conjugate-gradient iterations.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    module_ : nn.Module
        The trained network (a copy of the one given, or the one trained here).
    net_ : skorch.NeuralNetClassifier or None
        The skorch net trained here (None when a trained network was given).
    curvature_ : Curvature
        The fitted curvature backend (holds the GGN in the chosen structure).
    prior_precision_ : float
        The prior precision used (tuned when ``prior_precision`` is a string).
    validation_scores_ : dict or None
        ``{'laplace': {...}, 'map': {...}}``: accuracy, NLL and ECE of the posterior predictive
        and of the MAP network on the validation split (None when ``validation_fraction=0``).
    posterior_precision_ : ndarray or None
        ``H + delta I``: ``(P, P)`` for 'full', its diagonal ``(P,)`` for 'diag', the top
        ``rank`` eigenvalues for 'lowrank' (eigenvectors in ``posterior_eigenvectors_``);
        None for 'rto' (see ``posterior_samples_``). Read from ``curvature_`` on access, so a
        fitted (and pickled) estimator holds one copy of the curvature.
    posterior_eigenvectors_ : ndarray of shape (P, rank) or None
    posterior_samples_ : ndarray of shape (n_samples, P) or None
        RTO draws of ``u - u*``.
    connectivity_sharpness_ : float or None
        ``tr(CTK) / N`` of the network on the training inputs (all parameters); None when
        ``n_sharpness_probes=0``.
    log_marginal_likelihood_ : float or None
        Laplace evidence at ``prior_precision_`` (None for 'rto').
    n_posterior_params_ : int
    input_shape_ : tuple of int
    device_ : torch.device
    interrupted_ : str or None
        ``'MAP network'`` when a KeyboardInterrupt stopped training the MAP network here (the
        posterior is then fitted around the weights reached so far); None otherwise.
    n_features_in_ : int

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skpcoreset import make_net
    >>> from skpcoreset.posthoc.laplace import ConnectivityLaplaceClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = ConnectivityLaplaceClassifier(make_net(max_epochs=10), random_state=0)
    >>> clf.fit(X / 16, y).score(X / 16, y) > 0.9
    True

    References
    ----------
    .. [1] S.-Y. Kim, S. Park, K.-S. Kim, E. Yang. "Scale-invariant Bayesian neural networks
       with connectivity tangent kernel." ICLR 2023.
    .. [2] E. Daxberger, A. Kristiadi, A. Immer, R. Eschenhagen, M. Bauer, P. Hennig.
       "Laplace Redux -- Effortless Bayesian Deep Learning." NeurIPS 2021.
    """

    _parameter_constraints = {
        "net": "no_validation",
        "parameterization": [StrOptions(set(PARAMETERIZATIONS))],
        "subset_of_weights": [StrOptions(set(SUBSETS))],
        "hessian_structure": [StrOptions(set(CURVATURES))],
        "prior_precision": [Interval(Real, 0, None, closed="neither"), StrOptions({"marglik", "cv"})],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "link_approx": [StrOptions({"probit", "mc"})],
        "rank": [Interval(Integral, 1, None, closed="left")],
        "n_samples": [Interval(Integral, 1, None, closed="left")],
        "n_sharpness_probes": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        **shared_constraints("input_shape", "device", "random_state", "verbose"),
    }

    def __init__(
        self,
        net=None,
        *,
        parameterization="connectivity",
        subset_of_weights="last_layer",
        hessian_structure="full",
        prior_precision="cv",
        validation_fraction=0.2,
        link_approx="probit",
        rank=10,
        n_samples=100,
        n_sharpness_probes=10,
        batch_size=256,
        input_shape=None,
        device="cpu",
        random_state=None,
        verbose=0,
    ):
        store_params(self, locals())

    def _fit(self, X, y):
        """Obtain a trained network (training it if needed) and fit the Laplace posterior."""
        self._check_prior_choice()
        self._init_torch()
        X_t, y_t = self._to_tensor(X), self._to_tensor(y, dtype=torch.long)
        (X_fit, y_fit), validation = self._validation_split(X_t, y_t)
        self.module_ = self._trained_module(X_fit, y_fit)
        self._check_outputs(X_fit)
        model = self._linearized_model()
        self.n_posterior_params_ = model.n_params
        inputs = model.inputs(X_fit, self.batch_size)
        self.curvature_ = self._fit_curvature(model, inputs)
        self.prior_precision_ = self._tune_prior_precision(model, validation)
        self.validation_scores_ = self._check_benefit(model, validation)
        self.log_marginal_likelihood_ = self._log_marginal_likelihood(model, inputs, y_fit, self.prior_precision_)
        self.connectivity_sharpness_ = self._connectivity_sharpness(X_fit)
        return self

    def _connectivity_sharpness(self, X_fit: torch.Tensor) -> float | None:
        if self.n_sharpness_probes == 0:
            return None
        return connectivity_sharpness(
            self.module_, X_fit, n_probes=self.n_sharpness_probes, batch_size=self.batch_size, random_state=self._seed
        )

    def _validation_split(self, X_t: torch.Tensor, y_t: torch.Tensor):
        """``((X, y) for the network and curvature, (X, y) held out or None)``."""
        if self.validation_fraction == 0:
            return (X_t, y_t), None
        fit_idx, valid_idx = holdout_split(y_t.cpu().numpy(), self.validation_fraction, self._seed)
        if len(valid_idx) == 0:
            return (X_t, y_t), None
        fit_idx, valid_idx = (torch.as_tensor(i, device=X_t.device) for i in (fit_idx, valid_idx))
        return (X_t[fit_idx], y_t[fit_idx]), (X_t[valid_idx], y_t[valid_idx])

    def _check_benefit(self, model: LinearizedModel, validation) -> dict | None:
        """Posterior predictive vs the MAP network on the validation split; warn when no better."""
        if validation is None:
            return None
        X_valid, y_valid = validation
        inputs = model.inputs(X_valid, self.batch_size)
        laplace = self._proba_tensor(model, self.curvature_, inputs, self.prior_precision_).double().cpu().numpy()
        dtype = next(self.module_.parameters()).dtype
        map_proba = predict_batched(lambda xb: self.module_(xb.to(dtype)).softmax(-1), X_valid, self.batch_size)
        y_np = y_valid.cpu().numpy()
        found = {
            "laplace": scores(y_np, laplace / laplace.sum(1, keepdims=True)),
            "map": scores(y_np, map_proba.double().cpu().numpy()),
        }
        advice = (
            "The posterior predictive does not improve on the trained network here; use map_proba, "
            "or try another parameterization / subset_of_weights."
            if self.prior_precision == "cv"
            else "Use prior_precision='cv' to pick the prior on held-out data, or map_proba."
        )
        warn_if_no_benefit("ConnectivityLaplaceClassifier", "laplace", "map", found, advice)
        return found

    def _check_prior_choice(self) -> None:
        if self.prior_precision == "cv" and self.validation_fraction == 0:
            raise ValueError("prior_precision='cv' tunes the prior on held-out data: set validation_fraction > 0.")
        if self.prior_precision == "marglik" and self.parameterization == "connectivity":
            raise ValueError(
                "prior_precision='marglik' is degenerate for parameterization='connectivity': the "
                "prior mean c=1 is the MAP, so the Laplace evidence increases without bound with "
                "the prior precision. Use prior_precision='cv' or a float."
            )
        if self.prior_precision == "marglik" and self.hessian_structure == "rto":
            raise ValueError(
                "prior_precision='marglik' needs log det(H + delta I), which hessian_structure='rto' "
                "(posterior samples only) does not provide; use 'cv' or a float."
            )

    def _trained_module(self, X_t: torch.Tensor, y_t: torch.Tensor) -> nn.Module:
        """A copy of the given trained network, or a network trained here on ``(X, y)``."""
        init_seed, train_seed = seed_from_random_state(self._seed, 2)

        def train(net):
            return train_members(
                [net.module_],
                (X_t, y_t),
                train_spec_from_net(self.net, n_samples=len(X_t)),
                seeds=[train_seed],
                strategy="sequential",
                verbose=self.verbose,
                desc="MAP network",
            )

        module, self.net_, trained = fitted_or_trained(self, init_seed=init_seed, train=train)
        self.interrupted_ = "MAP network" if trained is not None and trained.interrupted else None
        return module

    def __sklearn_clone__(self):
        warn_if_clone_unfits(self.net, type(self).__name__)
        return super().__sklearn_clone__()

    def _check_outputs(self, X_t: torch.Tensor) -> None:
        dtype = next(self.module_.parameters()).dtype
        with torch.no_grad():
            n_outputs = self.module_(X_t[:2].to(dtype)).shape[-1]
        if n_outputs != len(self.classes_):
            raise ValueError(f"The network returns {n_outputs} logits but y has {len(self.classes_)} classes.")

    def _linearized_model(self) -> LinearizedModel:
        return linearize(self.module_, self.subset_of_weights, self.parameterization)

    def _fit_curvature(self, model: LinearizedModel, inputs: torch.Tensor) -> Curvature:
        curvature = make_curvature(self.hessian_structure, rank=self.rank, n_samples=self.n_samples)
        ggn = GGN(model, inputs, self.batch_size, verbose=self.verbose)
        return curvature.fit(ggn, make_generator(self._seed, self.device_))

    # -- the prior precision ------------------------------------------------------------------
    def _tune_prior_precision(self, model: LinearizedModel, validation) -> float:
        if self.prior_precision == "marglik":
            return self._maximise_evidence(model)
        if self.prior_precision == "cv":
            return self._cross_validate_prior(model, *validation)
        return float(self.prior_precision)

    def _log_marginal_likelihood(self, model, inputs, y_t, prior_precision: float) -> float | None:
        """Laplace evidence ``log p(y | X) ~= log p(y | X, u*) - 1/2 (delta ||u* - m||^2
        + log det(H + delta I) - P log delta)`` (constants in ``2 pi`` cancel)."""
        if self.hessian_structure == "rto":
            return None
        return self._log_likelihood(model, inputs, y_t) + self._evidence_penalty(model, prior_precision)

    def _log_likelihood(self, model, inputs, y_t) -> float:
        logits = predict_batched(model.logits, inputs)
        return -float(torch.nn.functional.cross_entropy(logits, y_t.to(logits.device), reduction="sum"))

    def _evidence_penalty(self, model: LinearizedModel, prior_precision: float) -> float:
        scatter = float(model.prior_offset().double().square().sum())
        log_det = self.curvature_.log_det_precision(prior_precision)
        return -0.5 * (prior_precision * scatter + log_det - model.n_params * math.log(prior_precision))

    def _maximise_evidence(self, model: LinearizedModel) -> float:
        grid = 10.0**_MARGLIK_GRID
        values = [self._evidence_penalty(model, delta) for delta in grid]
        best = int(np.argmax(values))
        low, high = _MARGLIK_GRID[max(best - 1, 0)], _MARGLIK_GRID[min(best + 1, len(grid) - 1)]
        refined = minimize_scalar(
            lambda log_delta: -self._evidence_penalty(model, 10.0**log_delta), bounds=(low, high), method="bounded"
        )
        return float(10.0**refined.x)

    def _cross_validate_prior(self, model: LinearizedModel, X_valid: torch.Tensor, y_valid: torch.Tensor) -> float:
        """The prior precision of lowest held-out NLL, by the one-standard-error rule.

        The best precision on the grid is taken only where it beats the largest (the posterior
        closest to the MAP) by more than one standard error of the paired per-sample NLL
        differences; otherwise the largest: a split of a few dozen rows cannot tell a prior that
        helps from noise (wine, 24 held-out rows: the best prior halved the held-out NLL and
        doubled the test NLL).
        """
        inputs = model.inputs(X_valid, self.batch_size)
        losses = []
        for delta in 10.0**_CV_GRID:
            proba = self._proba_tensor(model, self.curvature_, inputs, float(delta)).clamp_min(1e-12)
            losses.append(-proba.log().gather(1, y_valid[:, None].to(proba.device))[:, 0].double().cpu().numpy())
        losses = np.stack(losses)
        best = int(np.argmin(losses.mean(axis=1)))
        if not beats_by_one_standard_error(losses[-1] - losses[best]):
            best = len(_CV_GRID) - 1
        return float(10.0 ** _CV_GRID[best])

    # The posterior in the estimator's own form, read from ``curvature_`` (one copy in memory and
    # in a pickle; issue 19: a stored copy of H + delta I made a pickle 26.7 MB where 20.0 MB is one).
    @property
    def posterior_precision_(self) -> np.ndarray | None:
        check_is_fitted(self, "curvature_")
        if self.hessian_structure == "rto":
            return None
        return self.curvature_.posterior_precision(self.prior_precision_).cpu().numpy()

    @property
    def posterior_eigenvectors_(self) -> np.ndarray | None:
        check_is_fitted(self, "curvature_")
        return self.curvature_.eigenvectors.cpu().numpy() if self.hessian_structure == "lowrank" else None

    @property
    def posterior_samples_(self) -> np.ndarray | None:
        check_is_fitted(self, "curvature_")
        return self.curvature_.samples(self.prior_precision_).cpu().numpy() if self.hessian_structure == "rto" else None

    # -- prediction ---------------------------------------------------------------------------
    def _proba_tensor(
        self, model: LinearizedModel, curvature: Curvature, inputs: torch.Tensor, prior_precision: float
    ) -> torch.Tensor:
        """Predictive probabilities from sub-network inputs (``model.inputs(X)``)."""
        generator = make_generator(self._seed, self.device_)

        def batch_proba(batch):
            logits = model.logits(batch)
            covariance = curvature.functional_covariance(model, batch, prior_precision)
            if self.link_approx == "mc":
                return monte_carlo_proba(logits, covariance, self.n_samples, generator)
            return probit_proba(logits, covariance)

        return predict_batched(batch_proba, inputs, batch_size=self.batch_size)

    def predictive_covariance(self, X) -> np.ndarray:
        """Covariance of the linearised logits, shape ``(n_samples, n_classes, n_classes)``."""
        check_is_fitted(self)
        model = self._linearized_model()
        inputs = model.inputs(self._to_tensor(self._validate_X(X, reset=False)), self.batch_size)

        def batch_covariance(batch):
            return self.curvature_.functional_covariance(model, batch, self.prior_precision_)

        return predict_batched(batch_covariance, inputs, batch_size=self.batch_size).double().cpu().numpy()

    def predict_proba(self, X) -> np.ndarray:
        """Linearised Laplace predictive probabilities, shape ``(n_samples, n_classes)``."""
        check_is_fitted(self)
        model = self._linearized_model()
        inputs = model.inputs(self._to_tensor(self._validate_X(X, reset=False)), self.batch_size)
        proba = self._proba_tensor(model, self.curvature_, inputs, self.prior_precision_).double().cpu().numpy()
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """Most probable class label under the predictive."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    def map_proba(self, X) -> np.ndarray:
        """Probabilities of the trained network alone (the MAP point estimate)."""
        check_is_fitted(self)
        X_t = self._to_tensor(self._validate_X(X, reset=False))
        dtype = next(self.module_.parameters()).dtype
        proba = predict_batched(lambda xb: self.module_(xb.to(dtype)).softmax(-1), X_t, batch_size=self.batch_size)
        return proba.double().cpu().numpy()
