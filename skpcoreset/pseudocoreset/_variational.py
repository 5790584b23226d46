"""Variational Bayesian pseudocoreset (VBPC): a closed-form last-layer posterior on the coreset.

After H. Lee, S. Lee, J. Lee, "Variational Bayesian Pseudo-Coreset", ICLR 2025
(arXiv 2502.21143). What the stored public pages give of the paper: last-layer variational
inference; a Gaussian likelihood for the coreset so that the coreset posterior is closed form
(no unrolled inner loop, no stop-gradient, no weight-space sampling); a bilevel problem whose
outer objective is evaluated on the real data; a model pool of feature extractors; a predictive
distribution approximated in one forward pass. The equations below are derived here (the
paper's section 3 could not be read line by line), and where a choice had to be made it is
said so.

Model. phi(x) in R^D is the input of the network's last linear layer with a constant 1 appended
(the bias); W in R^{D x C} has the prior N(0, 1/lambda) entry-wise. The coreset (u_m, v_m),
m = 1..M, with real-valued soft labels v_m in R^C, has the likelihood N(v_m; W^T phi(u_m),
1/beta) weighted by N / M so that M rows stand for N real points: beta_eff = beta N / M.

Inner problem (closed form). With Phi = phi(U) (M x D) and V (M x C), the posterior of each
column of W is Gaussian with one shared covariance:

    S = (beta_eff Phi^T Phi + lambda I_D)^-1,   m = beta_eff S Phi^T V   (D x C).

When M < D the Woodbury identity gives everything from the M x M matrix
K = Phi Phi^T + (lambda / beta_eff) I_M: m = Phi^T K^-1 V (kernel ridge regression),
phi^T S phi = (|phi|^2 - k^T K^-1 k) / lambda with k = Phi phi, tr S = (D - tr(K^-1 Phi Phi^T))
/ lambda and log det S = -(D log lambda + log det K + M log(beta_eff / lambda)). Both paths are
differentiable, so the outer gradient reaches u (through Phi) and v exactly.

Outer loss (per real point). The negative full-data ELBO at the coreset posterior q,
-E_q[log p(y | x, W)] averaged over a real minibatch + KL(q || prior) / N. Under q the logits
f = W^T phi(x) are N(mu, sigma^2 I_C) with mu = m^T phi(x), sigma^2 = phi(x)^T S phi(x) (the
classes share S, so the logits are independent given x). E[log softmax_y(f)] is approximated to
second order around mu (our choice; one forward pass): log softmax_y(mu) - sigma^2 (1 - |p|^2) / 2,
p = softmax(mu), since the Hessian of log-sum-exp is diag(p) - p p^T.

beta and lambda are learned with the coreset by the same outer loss (on a log scale; our choice:
the full-data ELBO is an objective for them too), and the targets start at 9 on the true class
(see ``_VARIATIONAL_TARGET_SCALE`` in the synthesizer).

Prediction. E_q[softmax(f)] by the probit-style (mean-field) approximation
softmax(mu / sqrt(1 + pi sigma^2 / 8)), one forward pass per feature extractor. Averaged over
the posterior networks it is under-confident (the Gaussian likelihood's targets fix the logits'
scale only loosely), so the synthesizer calibrates softmax(t mu / sqrt(1 + c pi sigma^2 / 8)) on
its held-out split: t as a rescaling of the targets V (m is linear in V), c of the variance.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ._functional import FlatModel

__all__ = [
    "LastLayerPosterior",
    "last_layer_features",
    "expected_log_likelihood",
    "predictive_proba",
    "negative_elbo",
    "fresh_parameters",
]


class _Features(Exception):
    """Raised by the hook on the last linear layer to hand back its input (and skip the head)."""

    def __init__(self, value):
        super().__init__("features")
        self.value = value


def _last_linear_name(module: nn.Module) -> str:
    names = [name for name, layer in module.named_modules() if isinstance(layer, nn.Linear)]
    if not names:
        raise ValueError(
            "divergence='variational' puts a Gaussian posterior on the network's last linear layer; "
            f"{type(module).__name__} has no nn.Linear layer."
        )
    return names[-1]


def last_layer_features(
    model: FlatModel, theta: torch.Tensor, X: torch.Tensor, statistics: dict | None = None
) -> torch.Tensor:
    """phi(X): the input of the last ``nn.Linear`` at parameters ``theta``, with a 1 appended, ``(n, D)``.

    ``statistics``: one parameter vector's batch-norm statistics (prediction); without them batch
    norms use the batch's own statistics, as during synthesis.
    """
    module = model.reference if statistics else model.module
    layer = module.get_submodule(_last_linear_name(module))

    def hook(_layer, inputs):
        raise _Features(inputs[0])

    handle = layer.register_forward_pre_hook(hook)
    try:
        functional_call(module, {**model.unflatten(theta), **(statistics or {})}, (X,))
    except _Features as caught:
        features = caught.value
    else:  # pragma: no cover - the hook always fires
        raise RuntimeError("the last linear layer was not called")
    finally:
        handle.remove()
    features = features.flatten(1)
    return torch.cat([features, features.new_ones(len(features), 1)], dim=1)


class LastLayerPosterior:
    """The closed-form Gaussian posterior N(m, S) of the last layer given coreset features.

    Parameters
    ----------
    Phi : Tensor of shape (M, D)
        Coreset features (bias column included).
    V : Tensor of shape (M, C)
        Real-valued coreset targets.
    beta : float or Tensor
        Effective likelihood precision (already multiplied by N / M).
    prior_precision : float or Tensor
        lambda (a tensor may carry gradients: it is learned with the coreset).
    method : {'auto', 'woodbury', 'direct'}, default='auto'
        'auto': Woodbury (M x M systems) when M < D, else the D x D solve.
    """

    def __init__(self, Phi, V, beta, prior_precision: float, method: str = "auto"):
        self.Phi, self.V = Phi, V
        self.beta = torch.as_tensor(beta, dtype=Phi.dtype, device=Phi.device)
        self.lam = torch.as_tensor(prior_precision, dtype=Phi.dtype, device=Phi.device)
        M, D = Phi.shape
        self.M, self.D = M, D
        self.method = ("woodbury" if M < D else "direct") if method == "auto" else method
        if self.method == "woodbury":
            eye = torch.eye(M, dtype=Phi.dtype, device=Phi.device)
            self.gram = Phi @ Phi.T
            self.chol = torch.linalg.cholesky(self.gram + (self.lam / self.beta) * eye)
            self.alpha = torch.cholesky_solve(V, self.chol)  # K^-1 V
            self.mean = Phi.T @ self.alpha  # (D, C)
        elif self.method == "direct":
            eye = torch.eye(D, dtype=Phi.dtype, device=Phi.device)
            self.chol = torch.linalg.cholesky(self.beta * Phi.T @ Phi + self.lam * eye)
            self.mean = self.beta * torch.cholesky_solve(Phi.T @ V, self.chol)
        else:
            raise ValueError(f"method must be 'auto', 'woodbury' or 'direct'; got {method!r}.")

    def covariance(self) -> torch.Tensor:
        """S, ``(D, D)`` (formed explicitly; for tests and small D)."""
        eye = torch.eye(self.D, dtype=self.Phi.dtype, device=self.Phi.device)
        if self.method == "direct":
            return torch.cholesky_solve(eye, self.chol)
        return (eye - self.Phi.T @ torch.cholesky_solve(self.Phi, self.chol)) / self.lam

    def predictive(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(n, C)`` and variance ``(n,)`` of the logits W^T phi under the posterior."""
        mu = phi @ self.mean
        if self.method == "woodbury":
            k = phi @ self.Phi.T  # (n, M)
            solved = torch.cholesky_solve(k.T, self.chol)  # (M, n)
            var = (phi.square().sum(1) - (k.T * solved).sum(0)) / self.lam
        else:
            solved = torch.cholesky_solve(phi.T, self.chol)  # (D, n)
            var = (phi.T * solved).sum(0)
        return mu, var.clamp_min(0)

    def kl(self) -> torch.Tensor:
        """KL(N(m, S) per class || N(0, I / lambda)), summed over the C classes."""
        C, D, lam = self.V.shape[1], self.D, self.lam
        if self.method == "woodbury":
            trace = (D - (torch.cholesky_solve(self.gram, self.chol)).diagonal().sum()) / lam
            logdet_K = 2 * torch.log(self.chol.diagonal()).sum()
            logdet_S = -(D * torch.log(lam) + logdet_K + self.M * torch.log(self.beta / lam))
        else:
            eye = torch.eye(D, dtype=self.Phi.dtype, device=self.Phi.device)
            trace = torch.cholesky_solve(eye, self.chol).diagonal().sum()
            logdet_S = -2 * torch.log(self.chol.diagonal()).sum()
        per_class = lam * trace - D - D * torch.log(lam) - logdet_S
        return 0.5 * (C * per_class + lam * self.mean.square().sum())


def expected_log_likelihood(mu: torch.Tensor, var: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Second-order E[log softmax_y(f)], f ~ N(mu, var I): ``(n,)``."""
    log_p = F.log_softmax(mu, dim=-1)
    p = log_p.exp()
    return log_p.gather(1, y[:, None]).squeeze(1) - 0.5 * var * (1 - p.square().sum(1))


def predictive_proba(
    mu: torch.Tensor, var: torch.Tensor, variance_scale: float = 1.0, logit_scale: float = 1.0
) -> torch.Tensor:
    """Probit-style E[softmax(f)], f ~ N(logit_scale * mu, variance_scale * var I): ``(n, C)``.

    ``logit_scale`` t rescales the mean as rescaling the regression targets V by t would (m is
    linear in V); ``variance_scale`` c rescales the posterior variance. Both 1: the posterior as is.
    """
    return torch.softmax(logit_scale * mu / torch.sqrt(1 + math.pi / 8 * variance_scale * var)[:, None], dim=-1)


def negative_elbo(posterior: LastLayerPosterior, phi_real, y_real, n_represented: int) -> torch.Tensor:
    """Per-point negative full-data ELBO: -mean E_q log p(y|x,W) + KL(q || prior) / N."""
    mu, var = posterior.predictive(phi_real)
    return -expected_log_likelihood(mu, var, y_real).mean() + posterior.kl() / n_represented


def fresh_parameters(module: nn.Module, model: FlatModel, seed: int) -> torch.Tensor:
    """A freshly initialised flat parameter vector of ``module``'s architecture (global RNG untouched)."""
    module = copy.deepcopy(module)
    devices = [module_device] if (module_device := next(module.parameters()).device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for layer in module.modules():
            if hasattr(layer, "reset_parameters") and layer is not module:
                layer.reset_parameters()
    return model.flatten(module)
