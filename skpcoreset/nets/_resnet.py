from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._convnet import make_norm
from ._staged import StagedNet


class BasicBlock(nn.Module):
    """The two-convolution residual block of CIFAR ResNets (a projection shortcut when the shape changes).

    Parameters
    ----------
    in_channels, out_channels : int
    stride : int
        Stride of the first convolution (2 halves the feature map).
    norm : {'batchnorm', 'groupnorm', 'instancenorm', 'none'}

    Examples
    --------
    >>> import torch
    >>> from skpcoreset.nets import BasicBlock
    >>> BasicBlock(16, 32, stride=2, norm="batchnorm")(torch.zeros(2, 16, 8, 8)).shape
    torch.Size([2, 32, 4, 4])
    """

    def __init__(self, in_channels, out_channels, stride, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm1 = make_norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = make_norm(norm, out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                make_norm(norm, out_channels),
            )

    def forward(self, x):
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CIFARResNet(StagedNet):
    """CIFAR ResNet-(6n+2) with width multiplier k (channels 16k, 32k, 64k).

    Stages: the stem, every residual block, and the pooling + linear head, so a bridge can
    take the last two or three residual blocks as its tail.

    Parameters
    ----------
    input_shape : tuple of int
        ``(channels, height, width)`` of one image.
    n_classes : int
    depth : int, default=20
        6n+2 (20, 32, 44, 56, ...).
    width : int, default=1
        Width multiplier k.
    norm : {'batchnorm', 'groupnorm', 'instancenorm', 'none'}, default='batchnorm'

    Examples
    --------
    >>> import torch
    >>> from skpcoreset.nets import CIFARResNet
    >>> net = CIFARResNet((3, 32, 32), n_classes=10, depth=20)
    >>> net.n_stages, net(torch.zeros(2, 3, 32, 32)).shape
    (11, torch.Size([2, 10]))
    """

    def __init__(self, input_shape, n_classes, depth=20, width=1, norm="batchnorm"):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFARResNet depth must be 6n+2 (20, 32, 44, ...); got {depth}.")
        if len(input_shape) != 3:
            raise ValueError(f"CIFARResNet needs input_shape=(C, H, W); got {tuple(input_shape)}.")
        blocks_per_group = (depth - 2) // 6
        channels = [16 * width, 32 * width, 64 * width]
        stages = [
            nn.Sequential(
                nn.Conv2d(input_shape[0], channels[0], 3, 1, 1, bias=False),
                make_norm(norm, channels[0]),
                nn.ReLU(inplace=True),
            )
        ]
        in_channels = channels[0]
        for group, out_channels in enumerate(channels):
            for block in range(blocks_per_group):
                stride = 2 if group > 0 and block == 0 else 1
                stages.append(BasicBlock(in_channels, out_channels, stride, norm))
                in_channels = out_channels
        stages.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, n_classes)))
        self.stages = nn.ModuleList(stages)
