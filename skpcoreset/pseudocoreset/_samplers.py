"""Posterior samples on a coreset (SGHMC, cyclical SGHMC, deep ensembles) and model averaging.

All chains (or ensemble members) run at once: their parameters are the rows of one ``(S, P)``
tensor, the per-chain losses are summed (so each row gets exactly its own gradient) and the
update is written on the whole tensor. The coreset of M points stands in for N real points, so
the likelihood is tempered by N / M through the noise scale, as in pi_u ~ p(theta) prod_m
p(v_m|u_m, theta)^(N/M).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, StrOptions, validate_parameter_constraints

from .._base import store_params
from ._functional import FlatModel, soft_cross_entropy

__all__ = ["POSTERIORS", "PosteriorSampler", "sample_posterior", "bayesian_model_average"]

# Zhang et al. (2020, cSGHMC): 4 cycles, noise only in the last 20% of each cycle.
_CSGHMC_CYCLES = 4
_CSGHMC_EXPLORATION = 0.8

POSTERIORS = ("sghmc", "csghmc", "ensemble")


def _chain_loss(model, thetas, X, targets, weight_decay):
    data = soft_cross_entropy(model.batched(thetas, X), targets).sum()
    return data + 0.5 * weight_decay * thetas.square().sum()


def _run_chains(
    model: FlatModel,
    thetas: torch.Tensor,
    X: torch.Tensor,
    targets: torch.Tensor,
    *,
    lrs: list[float],
    noisy: list[bool],
    friction: float,
    noise_std: float,
    weight_decay: float,
    generator: torch.Generator,
    collect_at: set[int],
    progress=iter,
) -> list[torch.Tensor]:
    """SGHMC in its SGD-with-momentum form (Chen et al. 2014; Zhang et al. 2020):

    v <- (1 - a) v - lr grad L + sqrt(2 a lr) noise_std eps,  theta <- theta + v,
    with L the mean coreset loss plus weight decay and noise_std = sqrt(T / N).
    Returns the parameters after each step listed in ``collect_at``.
    """
    thetas = thetas.clone().requires_grad_(True)
    velocity = torch.zeros_like(thetas)
    collected = []
    for step, (lr, add_noise) in progress(enumerate(zip(lrs, noisy, strict=True))):
        (grad,) = torch.autograd.grad(_chain_loss(model, thetas, X, targets, weight_decay), thetas)
        with torch.no_grad():
            velocity.mul_(1 - friction).add_(grad, alpha=-lr)
            if add_noise and noise_std > 0:
                eps = torch.randn(thetas.shape, generator=generator, device=thetas.device)
                velocity.add_(eps, alpha=math.sqrt(2 * friction * lr) * noise_std)
            thetas.add_(velocity)
        if step in collect_at:
            collected.append(thetas.detach().clone())
    return collected


def sample_posterior(
    method: str,
    model: FlatModel,
    initial: torch.Tensor,
    X: torch.Tensor,
    targets: torch.Tensor,
    *,
    n_samples: int,
    steps: int,
    lr: float,
    temperature: float,
    n_represented: int,
    weight_decay: float,
    generator: torch.Generator,
    progress=None,
) -> torch.Tensor:
    """Draw ``n_samples`` parameter vectors ``(n_samples, P)`` from the coreset posterior.

    Parameters
    ----------
    method : {'sghmc', 'csghmc', 'ensemble'}
        'sghmc': one chain per sample, constant step size, the final state is the sample.
        'csghmc': ceil(n_samples / 4) chains with a cosine step-size cycle repeated 4 times;
        noise in the last 20% of each cycle, a sample at the end of each cycle.
        'ensemble': independent MAP fits (no noise, cosine-decayed step size).
    initial : Tensor of shape (n_chains_max, P)
        Independent initialisations; the first rows are used.
    n_represented : int
        N, the number of real points the coreset stands for (scales the noise, T / N).
    progress : callable or None, default=None
        ``progress(iterable, total=n_steps)`` wraps the steps (a progress bar).
    """
    noise_std = math.sqrt(temperature / n_represented)
    if method == "csghmc":
        n_chains = math.ceil(n_samples / _CSGHMC_CYCLES)
        cycle = max(steps // _CSGHMC_CYCLES, 1)
        lrs = [0.5 * lr * (1 + math.cos(math.pi * (k % cycle) / cycle)) for k in range(cycle * _CSGHMC_CYCLES)]
        noisy = [(k % cycle) / cycle >= _CSGHMC_EXPLORATION for k in range(len(lrs))]
        collect = {c * cycle + cycle - 1 for c in range(_CSGHMC_CYCLES)}
    elif method == "sghmc":
        n_chains = n_samples
        lrs, noisy, collect = [lr] * steps, [True] * steps, {steps - 1}
    elif method == "ensemble":
        n_chains = n_samples
        lrs = [0.5 * lr * (1 + math.cos(math.pi * k / steps)) for k in range(steps)]
        noisy, collect = [False] * steps, {steps - 1}
    else:
        raise ValueError(f"posterior must be one of {POSTERIORS}; got {method!r}.")
    collected = _run_chains(
        model,
        initial[:n_chains],
        X,
        targets,
        lrs=lrs,
        noisy=noisy,
        friction=0.1,
        noise_std=noise_std,
        weight_decay=weight_decay,
        generator=generator,
        collect_at=collect,
        progress=iter if progress is None else lambda steps_: progress(steps_, total=len(lrs)),
    )
    return torch.cat(collected)[:n_samples]


def bayesian_model_average(
    model: FlatModel, samples: torch.Tensor, X: torch.Tensor, statistics: dict | None = None
) -> torch.Tensor:
    """Mean of the samples' class probabilities, shape ``(N, C)`` (probabilities, not logits).

    ``statistics``: the samples' batch-norm statistics (:meth:`FlatModel.statistics`), for
    networks with batch norms.
    """
    return model.predict_batched(samples, statistics or {}, X).softmax(-1).mean(0)


class PosteriorSampler(BaseEstimator):
    """How a coreset's posterior is sampled for Bayesian model averaging.

    The settings of one sampler in one object, given to
    :class:`~skpcoreset.PseudocoresetSynthesizer` as ``posterior=`` (tunable as
    ``posterior__lr`` and so on in a grid search).

    Parameters
    ----------
    method : {'sghmc', 'csghmc', 'ensemble'}, default='sghmc'
        'sghmc': one chain per sample at a constant step size, the final state is the sample
        (the papers' evaluation); 'csghmc': cyclical SGHMC, ceil(n_samples / 4) chains with a
        cosine step-size cycle repeated 4 times, a sample at the end of each cycle;
        'ensemble': independent MAP fits with a cosine-decayed step size (no noise).
    n_samples : int, default=8
        Posterior samples (networks averaged by ``predict_proba``).
    steps : int, default=300
        Steps of each chain (or ensemble member's training) on the coreset. Each step is one
        forward and backward pass of every chain over the whole coreset.
    lr : float, default=0.05
        Step size.
    temperature : float, default=0.01
        Posterior temperature T of SGHMC (0.01 in the papers' evaluation); the injected noise
        is scaled by sqrt(T / N), N the number of real points the coreset stands for.
    weight_decay : float, default=5e-4
        Gaussian prior precision per real data point.

    Examples
    --------
    >>> from skpcoreset.pseudocoreset import PosteriorSampler, PseudocoresetSynthesizer
    >>> pc = PseudocoresetSynthesizer(posterior=PosteriorSampler("csghmc", n_samples=16))
    >>> pc.get_params()["posterior__n_samples"]
    16
    """

    _parameter_constraints = {
        "method": [StrOptions(set(POSTERIORS))],
        "n_samples": [Interval(Integral, 1, None, closed="left")],
        "steps": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "temperature": [Interval(Real, 0, None, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, method="sghmc", *, n_samples=8, steps=300, lr=0.05, temperature=0.01, weight_decay=5e-4):
        store_params(self, locals())

    @classmethod
    def of(cls, posterior) -> PosteriorSampler:
        """``posterior`` as a sampler: a method name gets the default settings."""
        return cls(posterior) if isinstance(posterior, str) else posterior

    def sample(
        self,
        model: FlatModel,
        initial: torch.Tensor,
        X: torch.Tensor,
        targets: torch.Tensor,
        *,
        n_represented: int,
        generator: torch.Generator,
        progress=None,
    ) -> torch.Tensor:
        """Draw ``n_samples`` flat parameter vectors ``(n_samples, P)`` (see :func:`sample_posterior`)."""
        validate_parameter_constraints(self._parameter_constraints, self.get_params(deep=False), type(self).__name__)
        return sample_posterior(
            self.method,
            model,
            initial,
            X,
            targets,
            n_samples=self.n_samples,
            steps=self.steps,
            lr=self.lr,
            temperature=self.temperature,
            n_represented=n_represented,
            weight_decay=self.weight_decay,
            generator=generator,
            progress=progress,
        )
