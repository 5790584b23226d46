"""BatchEnsemble: M members that share one weight and differ by rank-one factors.

Member ``i`` of a layer with shared weight ``W`` (``out x in``) uses ``W * (s_i r_i^T)``: the input
is scaled by ``r_i`` (``in_factors``), multiplied by ``W``, scaled by ``s_i`` (``out_factors``) and
shifted by its own bias ``b_i`` (Wen, Tran and Ba, 2020). Members run in one batched program: the
input batch is tiled M times along the batch axis (member-major), so every other layer
(activations, pooling, per-sample normalisation) is shared unchanged.

LatentBE (Nam, Lee, Heo and Lee, 2022) starts the factors at 1 and keeps them near 1, so the
members stay in one basin and the *average of their weights*,
``W * mean_i(s_i r_i^T)`` with bias ``mean_i(b_i)``, is a single plain network
(:meth:`BatchEnsembleNet.merge`) that costs one forward pass.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BatchEnsembleLinear", "BatchEnsembleConv2d", "BatchEnsembleNet"]

_FACTOR_INITS = ("batchensemble", "latent")


def _init_factors(factors: torch.Tensor, init: str) -> None:
    """N(1, 0.5) for BatchEnsemble (diverse members); exactly 1 for LatentBE (one basin)."""
    with torch.no_grad():
        if init == "batchensemble":
            factors.normal_(1.0, 0.5)
        else:
            factors.fill_(1.0)


class _RankOneLayer(nn.Module):
    """Shared logic of the BatchEnsemble layers: factors, per-member bias, merging."""

    weight: nn.Parameter
    in_factors: nn.Parameter  # (M, in_features), r_i
    out_factors: nn.Parameter  # (M, out_features), s_i
    bias: nn.Parameter | None  # (M, out_features)

    def _setup(self, base: nn.Module, n_members: int, init: str) -> None:
        if init not in _FACTOR_INITS:
            raise ValueError(f"init must be one of {_FACTOR_INITS}; got {init!r}.")
        out_features, in_features = base.weight.shape[:2]
        self.n_members = n_members
        self.weight = nn.Parameter(base.weight.detach().clone())
        self.in_factors = nn.Parameter(torch.empty(n_members, in_features, device=base.weight.device))
        self.out_factors = nn.Parameter(torch.empty(n_members, out_features, device=base.weight.device))
        _init_factors(self.in_factors, init)
        _init_factors(self.out_factors, init)
        self.bias = None
        if base.bias is not None:
            self.bias = nn.Parameter(base.bias.detach().clone().repeat(n_members, 1))

    def factor_parameters(self) -> list[nn.Parameter]:
        return [self.in_factors, self.out_factors]

    def averaged_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``W * mean_i(s_i r_i^T)`` and ``mean_i(b_i)``: the weights of the merged layer."""
        mean_outer = self.out_factors.T @ self.in_factors / self.n_members  # (out, in)
        extra_dims = (1,) * (self.weight.dim() - 2)
        weight = self.weight * mean_outer.view(*mean_outer.shape, *extra_dims)
        bias = None if self.bias is None else self.bias.mean(dim=0)
        return weight, bias

    def _scale(self, x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """Multiply member-major rows ``(M*B, F, ...)`` by their member's factors ``(M, F)``."""
        members = x.view(self.n_members, -1, *x.shape[1:])
        shape = (self.n_members, 1, factors.shape[1]) + (1,) * (x.dim() - 2)
        return (members * factors.view(shape)).view_as(x)

    def _add_bias(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return x
        members = x.view(self.n_members, -1, *x.shape[1:])
        shape = (self.n_members, 1, self.bias.shape[1]) + (1,) * (x.dim() - 2)
        return (members + self.bias.view(shape)).view_as(x)


class BatchEnsembleLinear(_RankOneLayer):
    """A linear layer of M BatchEnsemble members built from a plain ``nn.Linear``.

    Input ``(M * B, in_features)``, member-major (rows ``m*B .. (m+1)*B-1`` belong to member m).

    Examples
    --------
    >>> import torch
    >>> from skpcoreset.nets import BatchEnsembleLinear
    >>> layer = BatchEnsembleLinear(torch.nn.Linear(4, 3), n_members=2)
    >>> layer(torch.zeros(2 * 5, 4)).shape, layer.merge()
    (torch.Size([10, 3]), Linear(in_features=4, out_features=3, bias=True))
    """

    def __init__(self, base: nn.Linear, n_members: int, init: str = "batchensemble"):
        super().__init__()
        self._setup(base, n_members, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(self._scale(x, self.in_factors), self.weight)
        return self._add_bias(self._scale(out, self.out_factors))

    def merge(self) -> nn.Linear:
        weight, bias = self.averaged_weight()
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device)
        _copy_into(layer, weight, bias)
        return layer


class BatchEnsembleConv2d(_RankOneLayer):
    """A 2-D convolution of M BatchEnsemble members built from a plain ``nn.Conv2d``.

    Input ``(M * B, C, H, W)``, member-major. Factors scale input and output channels.

    Examples
    --------
    >>> import torch
    >>> from skpcoreset.nets import BatchEnsembleConv2d
    >>> layer = BatchEnsembleConv2d(torch.nn.Conv2d(3, 8, 3, padding=1), n_members=4, init="latent")
    >>> layer(torch.zeros(4 * 2, 3, 6, 6)).shape
    torch.Size([8, 8, 6, 6])
    """

    def __init__(self, base: nn.Conv2d, n_members: int, init: str = "batchensemble"):
        super().__init__()
        if base.groups != 1 or base.padding_mode != "zeros":
            raise ValueError("BatchEnsembleConv2d supports groups=1 and padding_mode='zeros' only.")
        self._setup(base, n_members, init)
        self.conv_kwargs = {
            "stride": base.stride,
            "padding": base.padding,
            "dilation": base.dilation,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(self._scale(x, self.in_factors), self.weight, None, **self.conv_kwargs)
        return self._add_bias(self._scale(out, self.out_factors))

    def merge(self) -> nn.Conv2d:
        weight, bias = self.averaged_weight()
        out_channels, in_channels, *kernel = weight.shape
        layer = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=tuple(kernel),
            bias=bias is not None,
            device=weight.device,
            **self.conv_kwargs,
        )
        _copy_into(layer, weight, bias)
        return layer


@torch.no_grad()
def _copy_into(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    layer.weight.copy_(weight)
    if bias is not None:
        layer.bias.copy_(bias)


_CONVERTIBLE = {nn.Linear: BatchEnsembleLinear, nn.Conv2d: BatchEnsembleConv2d}


def _convert(module: nn.Module, n_members: int, init: str) -> nn.Module:
    """Replace every ``nn.Linear`` / ``nn.Conv2d`` below ``module`` by its BatchEnsemble twin."""
    for name, child in module.named_children():
        layer_cls = _CONVERTIBLE.get(type(child))
        if layer_cls is not None:
            setattr(module, name, layer_cls(child, n_members, init))
        else:
            _convert(child, n_members, init)
    return module


def _merge(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, _RankOneLayer):
            setattr(module, name, child.merge())
        else:
            _merge(child)
    return module


class BatchEnsembleNet(nn.Module):
    """Any network of ``nn.Linear`` / ``nn.Conv2d`` layers, turned into M BatchEnsemble members.

    The shared weights start as a copy of ``base``'s; every linear and convolution layer gets
    rank-one factors and a per-member bias. Other parameters (normalisation affines) are shared
    by all members; batch-norm statistics are pooled over members.

    Parameters
    ----------
    base : nn.Module
        A plain network mapping ``(B, *input_shape)`` to logits ``(B, n_classes)``; not modified.
    n_members : int
        Number of members M.
    init : {'batchensemble', 'latent'}, default='batchensemble'
        Factor initialisation: N(1, 0.5) (BatchEnsemble) or 1 (LatentBE).

    Notes
    -----
    ``forward(x)`` returns member logits of shape ``(M, B, n_classes)``;
    ``forward_members(x)`` takes a different input per member, ``(M, B, *input_shape)``.

    Examples
    --------
    >>> import torch
    >>> from skpcoreset.nets import MLP, BatchEnsembleNet
    >>> members = BatchEnsembleNet(MLP((4,), 3, hidden_sizes=(8,)), n_members=4, init="latent")
    >>> members(torch.zeros(5, 4)).shape  # (M, B, n_classes)
    torch.Size([4, 5, 3])
    >>> type(members.merge()).__name__  # LatentBE: one plain network with the averaged weights
    'MLP'
    """

    def __init__(self, base: nn.Module, n_members: int, init: str = "batchensemble"):
        super().__init__()
        if n_members < 1:
            raise ValueError(f"n_members must be >= 1; got {n_members}.")
        self.n_members = n_members
        self.body = _convert(copy.deepcopy(base), n_members, init)
        if not self.factor_parameters():
            raise ValueError(
                f"BatchEnsembleNet needs a network with nn.Linear or nn.Conv2d layers; {type(base).__name__} has none."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tiled = x.unsqueeze(0).expand(self.n_members, *x.shape)
        return self.forward_members(tiled)

    def forward_members(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(M, B, n_classes)`` of member m on its own input ``x[m]``."""
        logits = self.body(x.reshape(-1, *x.shape[2:]))
        return logits.view(self.n_members, x.shape[1], -1)

    def factor_parameters(self) -> list[nn.Parameter]:
        """The rank-one factors (exempt from weight decay; LatentBE pulls them towards 1)."""
        return [p for layer in self._layers() for p in layer.factor_parameters()]

    def _layers(self) -> list[_RankOneLayer]:
        return [m for m in self.modules() if isinstance(m, _RankOneLayer)]

    @torch.no_grad()
    def merge(self) -> nn.Module:
        """One plain network whose weights are the members' averaged weights (LatentBE).

        Returns a new module of ``base``'s architecture (a copy); this one is not changed.
        """
        return _merge(copy.deepcopy(self.body)).eval()
