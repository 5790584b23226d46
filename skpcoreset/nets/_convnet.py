from __future__ import annotations

from torch import nn

from ._staged import StagedNet


def make_norm(norm: str, channels: int) -> nn.Module:
    """'instancenorm' is GroupNorm with one group per channel (affine), as in dataset distillation.

    Examples
    --------
    >>> from skpcoreset.nets import make_norm
    >>> norm = make_norm("instancenorm", 16)
    >>> type(norm).__name__, norm.num_groups
    ('GroupNorm', 16)
    """
    if norm == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "groupnorm":
        return nn.GroupNorm(min(32, channels), channels, affine=True)
    if norm == "batchnorm":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'instancenorm', 'groupnorm', 'batchnorm' or 'none'; got {norm!r}.")


class ConvNet(StagedNet):
    """ConvNet-D of dataset distillation (conv3x3 - norm - ReLU - avgpool2, D times, then linear).

    Parameters
    ----------
    input_shape : tuple of int
        ``(channels, height, width)`` of one image.
    n_classes : int
    width : int, default=128
        Channels of every convolution.
    depth : int, default=3
        Number of conv blocks; each halves the spatial size.
    norm : {'instancenorm', 'groupnorm', 'batchnorm', 'none'}, default='instancenorm'

    Examples
    --------
    >>> import torch
    >>> from skpcoreset.nets import ConvNet
    >>> net = ConvNet((3, 32, 32), n_classes=10, width=16)
    >>> net(torch.zeros(2, 3, 32, 32)).shape, net.forward_until(torch.zeros(2, 3, 32, 32), 2).shape
    (torch.Size([2, 10]), torch.Size([2, 16, 8, 8]))
    """

    def __init__(self, input_shape, n_classes, width=128, depth=3, norm="instancenorm"):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"ConvNet needs input_shape=(C, H, W); got {tuple(input_shape)}.")
        channels, height, width_px = input_shape
        if min(height, width_px) < 2**depth:
            raise ValueError(
                f"ConvNet depth={depth} halves the image {depth} times; images of "
                f"{height}x{width_px} are too small (use depth <= {min(height, width_px).bit_length() - 1})."
            )
        stages = []
        for _ in range(depth):
            stages.append(
                nn.Sequential(
                    nn.Conv2d(channels, width, kernel_size=3, padding=1),
                    make_norm(norm, width),
                    nn.ReLU(inplace=True),
                    nn.AvgPool2d(2),
                )
            )
            channels, height, width_px = width, height // 2, width_px // 2
        stages.append(nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width_px, n_classes)))
        self.stages = nn.ModuleList(stages)
