from __future__ import annotations

import math

from torch import nn

from ._staged import StagedNet

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class MLP(StagedNet):
    """Multi-layer perceptron returning logits; inputs of any sample shape are flattened.

    Parameters
    ----------
    input_shape : tuple of int
        Shape of one sample, e.g. ``(64,)`` or ``(1, 8, 8)``.
    n_classes : int
        Number of output logits.
    hidden_sizes : tuple of int, default=(128,)
        Width of each hidden layer; one stage per hidden layer plus the output layer.
    activation : {'relu', 'gelu', 'tanh', 'silu'}, default='relu'
    dropout : float, default=0.0
        Dropout after each hidden activation.

    Examples
    --------
    >>> import torch
    >>> from skpcoreset.nets import MLP
    >>> net = MLP((1, 8, 8), n_classes=10, hidden_sizes=(32,))
    >>> net(torch.zeros(5, 1, 8, 8)).shape, net.features(torch.zeros(5, 1, 8, 8)).shape
    (torch.Size([5, 10]), torch.Size([5, 32]))
    """

    def __init__(self, input_shape, n_classes, hidden_sizes=(128,), activation="relu", dropout=0.0):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}; got {activation!r}.")
        width = math.prod(input_shape)
        stages = []
        for i, hidden in enumerate(hidden_sizes):
            layers = [nn.Flatten()] if i == 0 else []
            layers += [nn.Linear(width, hidden), _ACTIVATIONS[activation]()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            stages.append(nn.Sequential(*layers))
            width = hidden
        head = [nn.Linear(width, n_classes)]
        if not hidden_sizes:
            head.insert(0, nn.Flatten())
        stages.append(nn.Sequential(*head))
        self.stages = nn.ModuleList(stages)
