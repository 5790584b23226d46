"""Networks as a sequence of stages, so intermediate feature maps are a slice away."""

from __future__ import annotations

import torch
from torch import nn


class StagedNet(nn.Module):
    """A network that is a plain sequence of stages.

    ``forward_until(x, k)`` returns the feature map after the first ``k`` stages and
    ``forward_from(h, k)`` runs the remaining ones, so ``forward_from(forward_until(x, k), k)``
    equals ``forward(x)``. Bridges (tails fed with intermediate features) and influence methods
    (last-layer features) rely on this.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skpcoreset.nets import StagedNet
    >>> class Tiny(StagedNet):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.stages = nn.ModuleList([nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Linear(8, 2)])
    >>> net, x = Tiny(), torch.zeros(3, 4)
    >>> torch.equal(net.forward_from(net.forward_until(x, 1), 1), net(x))
    True
    """

    stages: nn.ModuleList

    @property
    def n_stages(self) -> int:
        return len(self.stages)

    def forward_until(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        for block in self.stages[:stage]:
            x = block(x)
        return x

    def forward_from(self, h: torch.Tensor, stage: int) -> torch.Tensor:
        for block in self.stages[stage:]:
            h = block(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(x, 0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Input of the last (linear) stage: the penultimate-layer features."""
        return self.forward_until(x, self.n_stages - 1)
