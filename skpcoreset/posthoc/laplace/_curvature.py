"""How a Laplace posterior's curvature is represented: full, diagonal, low-rank (Lanczos), or RTO samples.

Every backend sees the generalised Gauss-Newton ``H = sum_i J_i^T Lambda_i J_i`` of a
:class:`~._linearized.LinearizedModel` only through :class:`GGN` (its dense matrix or
diagonal, or matrix-free products ``H V``) and the model's structured products
(``J M J^T``, ``J U``), and answers, for any prior precision ``delta``, the two questions a
Laplace posterior ``N(u*, (H + delta I)^-1)`` needs:

- :meth:`Curvature.functional_covariance` -- ``J(x) (H + delta I)^-1 J(x)^T`` per test point;
- :meth:`Curvature.log_det_precision` -- ``log det(H + delta I)`` for the marginal likelihood.

Since ``H`` does not depend on ``delta``, backends factorise it once and tuning the prior is
cheap. The parameterisation (weight or connectivity) lives entirely in the model's Jacobians,
so the ordinary Laplace approximation and the connectivity Laplace share this file.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch

from ..._base import progress
from ..._linalg import conjugate_gradient
from ._linearized import LinearizedModel, softmax_hessian_factor

__all__ = [
    "GGN",
    "Curvature",
    "FullCurvature",
    "DiagonalCurvature",
    "LowRankCurvature",
    "RTOCurvature",
    "CURVATURES",
    "make_curvature",
    "lanczos",
]

# Full eigendecompositions above this many parameters would need > 3 GiB in float64.
MAX_FULL_PARAMS = 20_000


class GGN:
    """The GGN of a linearised model on a data set, served batch by batch.

    Parameters
    ----------
    model : LinearizedModel
    inputs : Tensor of shape (N, ...)
        Sub-network inputs (``model.inputs(X)``), on the model's device.
    batch_size : int
        Samples per Jacobian or Jacobian-vector product.
    verbose : int, default=0
        Progress bars over batches (dense/diagonal GGN) and iterations (Lanczos, CG).
    """

    def __init__(self, model: LinearizedModel, inputs: torch.Tensor, batch_size: int, verbose: int = 0):
        self.model = model
        self.inputs = inputs
        self.batch_size = batch_size
        self.verbose = verbose

    def progress(self, iterable, desc: str):
        total = math.ceil(len(self.inputs) / self.batch_size)
        return progress(iterable, verbose=self.verbose, desc=desc, total=total)

    @property
    def n_params(self) -> int:
        return self.model.n_params

    def batches(self) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.inputs), self.batch_size):
            yield self.inputs[start : start + self.batch_size]

    def matrix(self) -> torch.Tensor:
        """The dense ``(P, P)`` GGN."""
        return sum(self.model.ggn_matrix(inputs) for inputs in self.progress(self.batches(), "GGN"))

    def diagonal(self) -> torch.Tensor:
        """The ``(P,)`` diagonal of the GGN."""
        return sum(self.model.ggn_diagonal(inputs) for inputs in self.progress(self.batches(), "GGN diagonal"))

    def matvec(self, vectors: torch.Tensor) -> torch.Tensor:
        """``H v`` for each row of ``vectors`` ``(S, P)``, without forming Jacobians."""
        out = torch.zeros_like(vectors)
        for inputs in self.batches():
            p = self.model.logits(inputs).softmax(-1)
            pushed = self.model.jvp(inputs, vectors)  # (S, B, C)
            curved = p * pushed - p * (p * pushed).sum(-1, keepdim=True)
            out += self.model.vjp(inputs, curved)
        return out

    def noise_gradient(self, n_samples: int, generator: torch.Generator) -> torch.Tensor:
        """``G^T eps`` for ``n_samples`` draws ``eps ~ N(0, I)``: rows of covariance ``H``."""
        out = torch.zeros(n_samples, self.n_params, dtype=self.model.dtype, device=self.model.device)
        for inputs in self.batches():
            factor = softmax_hessian_factor(self.model.logits(inputs))
            eps = torch.randn(
                (n_samples, *factor.shape[:2]), generator=generator, dtype=factor.dtype, device=factor.device
            )
            out += self.model.vjp(inputs, torch.einsum("bck,sbk->sbc", factor, eps))
        return out


class Curvature(ABC):
    """One representation of the GGN ``H``; a Laplace posterior is ``N(u*, (H + delta I)^-1)``."""

    name: str

    @abstractmethod
    def fit(self, ggn: GGN, generator: torch.Generator) -> Curvature:
        """Compute this representation of ``ggn``'s matrix."""

    @abstractmethod
    def functional_covariance(
        self, model: LinearizedModel, inputs: torch.Tensor, prior_precision: float
    ) -> torch.Tensor:
        """``J(x) (H + delta I)^-1 J(x)^T`` of shape ``(B, C, C)``."""

    @abstractmethod
    def log_det_precision(self, prior_precision: float) -> float:
        """``log det(H + delta I)``."""

    @abstractmethod
    def posterior_precision(self, prior_precision: float) -> torch.Tensor:
        """The posterior precision in this representation's own form."""


def _as_float64(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.float64)


class FullCurvature(Curvature):
    """``H`` as a dense ``(P, P)`` float64 matrix.

    A given prior precision costs one Cholesky factorisation of ``H + delta I`` (cached); the
    eigenvalues, which make ``log det(H + delta I)`` free for every ``delta``, are computed
    only when several prior precisions are compared (tuning), or when rounding has left ``H``
    slightly indefinite and ``delta`` is too small to mask it.
    """

    name = "full"

    def fit(self, ggn, generator):
        if ggn.n_params > MAX_FULL_PARAMS:
            raise ValueError(
                f"hessian_structure='full' over {ggn.n_params} parameters needs a "
                f"{ggn.n_params}x{ggn.n_params} matrix; use 'diag', 'lowrank' or 'rto', or "
                "subset_of_weights='last_layer'."
            )
        matrix = _as_float64(ggn.matrix())
        self.matrix = 0.5 * (matrix + matrix.T)
        self._eigen: tuple[torch.Tensor, torch.Tensor] | None = None
        self._solved: tuple[float, float, torch.Tensor] | None = None
        return self

    def _eigendecomposition(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._eigen is None:
            values, vectors = torch.linalg.eigh(self.matrix)
            self._eigen = (values.clamp_min(0.0), vectors)
        return self._eigen

    def _solve(self, prior_precision: float) -> tuple[float, torch.Tensor]:
        """``(log det(H + delta I), (H + delta I)^-1)``, cached for the last ``delta``."""
        if self._solved is None or self._solved[0] != prior_precision:
            factor, info = torch.linalg.cholesky_ex(self.posterior_precision(prior_precision))
            if int(info) == 0:
                log_det, inverse = float(2.0 * factor.diagonal().log().sum()), torch.cholesky_inverse(factor)
            else:
                values, vectors = self._eigendecomposition()
                log_det = float(torch.log(values + prior_precision).sum())
                inverse = (vectors / (values + prior_precision)) @ vectors.T
            self._solved = (prior_precision, log_det, inverse)
        return self._solved[1], self._solved[2]

    def functional_covariance(self, model, inputs, prior_precision):
        return model.sandwich(inputs, self._solve(prior_precision)[1].to(model.dtype))

    def log_det_precision(self, prior_precision):
        # One delta: its Cholesky factor (needed for prediction anyway). Many (tuning): eigenvalues.
        if self._eigen is None and (self._solved is None or self._solved[0] == prior_precision):
            return self._solve(prior_precision)[0]
        values, _ = self._eigendecomposition()
        return float(torch.log(values + prior_precision).sum())

    def posterior_precision(self, prior_precision):
        eye = torch.eye(len(self.matrix), dtype=self.matrix.dtype, device=self.matrix.device)
        return self.matrix + prior_precision * eye

    def __getstate__(self):
        # Factorisations are rebuilt from the matrix on demand, and fit makes the matrix exactly
        # symmetric: a pickle keeps its upper triangle, P (P + 1) / 2 numbers.
        state = {**self.__dict__, "_solved": None, "_eigen": None}
        matrix = state.get("matrix")
        if isinstance(matrix, torch.Tensor) and matrix.ndim == 2 and torch.equal(matrix, matrix.T):
            rows, cols = torch.triu_indices(len(matrix), len(matrix), device=matrix.device)
            state["matrix"] = None
            state["matrix_upper"] = matrix[rows, cols]
        return state

    def __setstate__(self, state):
        state = dict(state)
        upper = state.pop("matrix_upper", None)
        if upper is not None:
            size = (math.isqrt(8 * len(upper) + 1) - 1) // 2
            if size * (size + 1) // 2 != len(upper):
                raise ValueError(f"{len(upper)} values are not the upper triangle of a square matrix.")
            rows, cols = torch.triu_indices(size, size, device=upper.device)
            matrix = upper.new_zeros(size, size)
            matrix[rows, cols] = upper
            matrix[cols, rows] = upper
            state["matrix"] = matrix
        self.__dict__.update(state)


class DiagonalCurvature(Curvature):
    """The diagonal of ``H`` only: ``(P,)`` values."""

    name = "diag"

    def fit(self, ggn, generator):
        self.diagonal = _as_float64(ggn.diagonal())
        return self

    def functional_covariance(self, model, inputs, prior_precision):
        variances = (1.0 / (self.diagonal + prior_precision)).to(model.dtype)
        return model.sandwich_diagonal(inputs, variances)

    def log_det_precision(self, prior_precision):
        return float(torch.log(self.diagonal + prior_precision).sum())

    def posterior_precision(self, prior_precision):
        return self.diagonal + prior_precision


def lanczos(matvec, size: int, n_iter: int, *, generator: torch.Generator, dtype, device, verbose: int = 0):
    """Eigenpairs of a symmetric PSD operator from ``n_iter`` Lanczos steps.

    Full reorthogonalisation keeps the Krylov basis orthonormal in finite precision; with
    ``n_iter == size`` the decomposition is exact. Returns ``(eigenvalues, eigenvectors)``
    with eigenvalues ascending and eigenvectors as columns ``(size, k)``.
    """
    n_iter = min(n_iter, size)
    basis = torch.zeros(n_iter, size, dtype=dtype, device=device)
    alphas, betas = [], []
    q = torch.randn(size, generator=generator, dtype=dtype, device=device)
    q = q / q.norm()
    for j in progress(range(n_iter), verbose=verbose, desc="Lanczos"):
        basis[j] = q
        w = matvec(q.unsqueeze(0)).squeeze(0)
        alphas.append(torch.dot(q, w))
        for _ in range(2):  # twice is enough (Parlett's "twice is enough")
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = w.norm()
        if j == n_iter - 1 or beta <= 1e-10 * max(1.0, float(alphas[0].abs())):
            basis = basis[: j + 1]
            break
        betas.append(beta)
        q = w / beta
    k = len(alphas)
    tridiagonal = torch.diag(torch.stack(alphas))
    if betas:
        off = torch.stack(betas[: k - 1])
        tridiagonal = tridiagonal + torch.diag(off, 1) + torch.diag(off, -1)
    ritz_values, ritz_vectors = torch.linalg.eigh(tridiagonal.to(torch.float64))
    return ritz_values.to(dtype), basis.T @ ritz_vectors.to(dtype)


class LowRankCurvature(Curvature):
    """The top-``rank`` eigenpairs of ``H`` from Lanczos on GGN-vector products.

    ``(H + delta I)^-1 ~= (I - U diag(lambda / (lambda + delta)) U^T) / delta``: exact in the
    span of ``U``, prior elsewhere. No Jacobian of the training set is ever formed.
    """

    name = "lowrank"

    def __init__(self, rank: int = 10):
        self.rank = rank

    def fit(self, ggn, generator):
        n_iter = min(ggn.n_params, 2 * self.rank + 10)
        values, vectors = lanczos(
            ggn.matvec,
            ggn.n_params,
            n_iter,
            generator=generator,
            dtype=ggn.model.dtype,
            device=ggn.model.device,
            verbose=ggn.verbose,
        )
        top = values.argsort(descending=True)[: self.rank]
        self.eigenvalues = _as_float64(values[top]).clamp_min(0.0)
        self.eigenvectors = _as_float64(vectors[:, top])
        self.n_params = ggn.n_params
        return self

    def functional_covariance(self, model, inputs, prior_precision):
        projected = model.project(inputs, self.eigenvectors.to(model.dtype))  # (B, C, k)
        shrink = (self.eigenvalues / (self.eigenvalues + prior_precision)).to(model.dtype)
        gram = model.sandwich_diagonal(inputs, torch.ones_like(model.theta))
        return (gram - (projected * shrink) @ projected.transpose(1, 2)) / prior_precision

    def log_det_precision(self, prior_precision):
        rest = self.n_params - len(self.eigenvalues)
        return float(torch.log(self.eigenvalues + prior_precision).sum()) + rest * math.log(prior_precision)

    def posterior_precision(self, prior_precision):
        return self.eigenvalues + prior_precision


class RTOCurvature(Curvature):
    """Posterior samples by randomize-then-optimize, for networks too large for any matrix.

    Each sample minimises ``1/2 ||G psi - eps||^2 + delta/2 ||psi - eps_0 / sqrt(delta)||^2``
    with ``eps, eps_0 ~ N(0, I)``; its minimiser ``(H + delta I)^-1 (G^T eps + sqrt(delta)
    eps_0)`` is exactly distributed as ``N(0, (H + delta I)^-1)``. The quadratic is minimised
    by batched conjugate gradients on GGN-vector products (to a relative residual of ``tol``;
    a :class:`~sklearn.exceptions.ConvergenceWarning` says when ``max_iter`` stops it first);
    the noise is drawn once in :meth:`fit` and the solve is repeated (and cached) per prior
    precision.
    """

    name = "rto"

    def __init__(self, n_samples: int = 32, max_iter: int = 200, tol: float = 1e-3):
        self.n_samples = n_samples
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, ggn, generator):
        self.ggn = ggn
        self.data_noise = ggn.noise_gradient(self.n_samples, generator)
        self.prior_noise = torch.randn(
            self.data_noise.shape, generator=generator, dtype=self.data_noise.dtype, device=self.data_noise.device
        )
        self._solved: dict[float, torch.Tensor] = {}
        return self

    def samples(self, prior_precision: float) -> torch.Tensor:
        """Posterior draws of ``u - u*``, shape ``(n_samples, P)``."""
        if prior_precision not in self._solved:
            rhs = self.data_noise + math.sqrt(prior_precision) * self.prior_noise
            self._solved = {
                prior_precision: conjugate_gradient(
                    lambda v: self.ggn.matvec(v) + prior_precision * v,
                    rhs,
                    max_iter=self.max_iter,
                    tol=self.tol,
                    batched=True,
                    advice="The RTO samples are under-dispersed. A larger prior precision improves the conditioning.",
                    verbose=self.ggn.verbose,
                    desc="RTO conjugate gradients",
                )
            }
        return self._solved[prior_precision]

    def functional_covariance(self, model, inputs, prior_precision):
        pushed = model.jvp(inputs, self.samples(prior_precision))  # (S, B, C)
        return torch.einsum("sbc,sbk->bck", pushed, pushed) / len(pushed)

    def log_det_precision(self, prior_precision):
        raise ValueError(
            "hessian_structure='rto' keeps posterior samples, not a factorised precision, so the "
            "marginal likelihood is unavailable; pass a float prior_precision or use 'cv'."
        )

    def posterior_precision(self, prior_precision):
        raise ValueError("hessian_structure='rto' represents the posterior by samples only.")

    def __getstate__(self):
        # The GGN holds the training inputs; keep only the solved samples when pickling. Without
        # the GGN the noise cannot be solved for another prior precision, so it goes too.
        state = dict(self.__dict__)
        for key in ("ggn", "data_noise", "prior_noise"):
            state.pop(key, None)
        return state


CURVATURES = {"full": FullCurvature, "diag": DiagonalCurvature, "lowrank": LowRankCurvature, "rto": RTOCurvature}


def make_curvature(name: str, *, rank: int, n_samples: int) -> Curvature:
    """The curvature backend registered under ``name``."""
    if name == "lowrank":
        return LowRankCurvature(rank=rank)
    if name == "rto":
        return RTOCurvature(n_samples=n_samples)
    if name not in CURVATURES:
        raise ValueError(f"hessian_structure must be one of {sorted(CURVATURES)}; got {name!r}.")
    return CURVATURES[name]()
