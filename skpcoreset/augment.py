"""Image augmentation on the device, one batch at a time, for every estimator that needs it.

An augmentation is a callable ``augment(X, generator) -> X`` on a batch ``(B, C, H, W)`` with a
``torch.Generator`` on the batch's device; estimators take one as their ``augment`` parameter,
by name or as a callable, through :func:`resolve_augmentation`:

- 'shift' / 'shift_flip' (:class:`RandomShift`): the standard training augmentation -- random
  translation (the "random crop with padding" of CIFAR) and horizontal flips. Ensembles train
  their members with it and the distiller augments its transfer set (Nam et al. 2021 distil on
  the augmented training set).
- 'dsa' (:class:`DifferentiableAugmentation`, Zhao & Bilen 2021): differentiable w.r.t. the
  pixels, for learning synthetic images (pseudocoresets): colour, crop, cutout, flip, scale,
  rotate, one family drawn per call, as every trajectory-matching protocol does.

All of them are plain tensor programs on the device: no PIL, no DataLoader, no per-sample Python.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "DSA_OPERATIONS",
    "NAMED_AUGMENTATIONS",
    "DifferentiableAugmentation",
    "RandomShift",
    "default_max_shift",
    "random_horizontal_flip",
    "random_shift",
    "resolve_augmentation",
]

NAMED_AUGMENTATIONS = ("shift", "shift_flip", "dsa")

DSA_OPERATIONS = ("color", "crop", "cutout", "flip", "scale", "rotate")

# DSA's default strengths (Zhao & Bilen 2021, also used by MTT and the BPC code).
_SCALE = 0.2
_ROTATE_DEGREES = 15.0
_CROP = 0.125
_CUTOUT = 0.5
_BRIGHTNESS = 1.0
_SATURATION = 2.0
_CONTRAST = 0.5


class DifferentiableAugmentation:
    """Random, differentiable augmentation of an image batch ``(N, C, H, W)``.

    Parameters
    ----------
    operations : sequence of str, default=DSA_OPERATIONS
        Families to draw from, one per call: 'color' (brightness, saturation, contrast),
        'crop' (translation by up to 12.5% of the size), 'cutout' (a zeroed square of half the
        size), 'flip' (horizontal, half of the images), 'scale' (0.8-1.2 per axis), 'rotate'
        (+-15 degrees). Leave out 'flip' for data whose meaning changes under mirroring.

    Examples
    --------
    >>> import torch
    >>> augment = DifferentiableAugmentation(("crop", "rotate"))
    >>> x = torch.rand(4, 3, 16, 16, requires_grad=True)
    >>> out = augment(x, torch.Generator().manual_seed(0))
    >>> out.shape, out.requires_grad
    (torch.Size([4, 3, 16, 16]), True)
    """

    def __init__(self, operations=DSA_OPERATIONS):
        unknown = set(operations) - set(DSA_OPERATIONS)
        if unknown or not operations:
            raise ValueError(f"operations must be a non-empty subset of {DSA_OPERATIONS}; got {tuple(operations)}.")
        self.operations = tuple(operations)

    def __call__(self, X: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if X.ndim != 4:
            raise ValueError(f"Differentiable augmentation needs images (N, C, H, W); got shape {tuple(X.shape)}.")
        pick = int(torch.randint(len(self.operations), (1,), generator=generator, device=generator.device))
        return getattr(self, f"_{self.operations[pick]}")(X, generator)

    def __repr__(self) -> str:
        return f"DifferentiableAugmentation({self.operations!r})"

    # -- operations: each gets fresh per-image parameters ---------------------------------
    @staticmethod
    def _uniform(X, generator, *shape):
        """U(0, 1) of shape ``(N, *shape)`` on X's device, broadcastable against X."""
        u = torch.rand((X.shape[0], *shape), generator=generator, device=generator.device)
        return u.to(device=X.device, dtype=X.dtype)

    def _color(self, X, generator):
        X = X + (self._uniform(X, generator, 1, 1, 1) - 0.5) * _BRIGHTNESS
        grey = X.mean(1, keepdim=True)
        X = grey + (X - grey) * self._uniform(X, generator, 1, 1, 1) * _SATURATION
        mean = X.mean((1, 2, 3), keepdim=True)
        return mean + (X - mean) * (self._uniform(X, generator, 1, 1, 1) + _CONTRAST)

    def _flip(self, X, generator):
        return random_horizontal_flip(X, generator)

    def _cutout(self, X, generator):
        n, _, h, w = X.shape
        centre = self._uniform(X, generator, 2)
        rows = torch.arange(h, device=X.device, dtype=X.dtype) / h
        cols = torch.arange(w, device=X.device, dtype=X.dtype) / w
        inside_rows = (rows[None, :] - centre[:, :1]).abs() < _CUTOUT / 2
        inside_cols = (cols[None, :] - centre[:, 1:]).abs() < _CUTOUT / 2
        hole = inside_rows[:, :, None] & inside_cols[:, None, :]
        return X * (~hole).unsqueeze(1).to(X.dtype)

    def _crop(self, X, generator):
        shift = (self._uniform(X, generator, 2) * 2 - 1) * _CROP * 2  # grid units span 2
        eye = torch.eye(2, device=X.device, dtype=X.dtype).expand(X.shape[0], 2, 2)
        return self._warp(X, torch.cat([eye, shift.unsqueeze(-1)], dim=-1))

    def _scale(self, X, generator):
        factors = 1 + (self._uniform(X, generator, 2) * 2 - 1) * _SCALE
        return self._warp(X, F.pad(torch.diag_embed(factors), (0, 1)))

    def _rotate(self, X, generator):
        angle = (self._uniform(X, generator) * 2 - 1) * math.radians(_ROTATE_DEGREES)
        cos, sin = angle.cos(), angle.sin()
        rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        return self._warp(X, F.pad(rotation, (0, 1)))

    @staticmethod
    def _warp(X, theta):
        grid = F.affine_grid(theta, list(X.shape), align_corners=False)
        return F.grid_sample(X, grid, align_corners=False, padding_mode="zeros")


def random_shift(X: torch.Tensor, generator: torch.Generator, *, max_shift: int, fill: float) -> torch.Tensor:
    """Translate each image by its own random offset in ``[-max_shift, max_shift]`` pixels per axis.

    The same as padding by ``max_shift`` pixels of value ``fill`` and cropping the original size
    at a random position (the CIFAR "random crop with padding").
    """
    if max_shift == 0:
        return X
    batch, channels, height, width = X.shape
    padded = F.pad(X, (max_shift,) * 4, value=fill)
    offsets = torch.randint(2 * max_shift + 1, (2, batch), generator=generator, device=generator.device).to(X.device)
    rows = (torch.arange(height, device=X.device) + offsets[0, :, None])[:, None, :, None]
    cols = (torch.arange(width, device=X.device) + offsets[1, :, None])[:, None, None, :]
    samples = torch.arange(batch, device=X.device)[:, None, None, None]
    planes = torch.arange(channels, device=X.device)[None, :, None, None]
    return padded[samples, planes, rows, cols]


def random_horizontal_flip(X: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(len(X), generator=generator, device=generator.device).to(X.device) < 0.5
    return torch.where(flip[:, None, None, None], X.flip(-1), X)


def default_max_shift(height: int) -> int:
    """An eighth of the image side, at least one pixel (4 px on 32x32 CIFAR, 3 px on 28x28)."""
    return max(1, height // 8)


class RandomShift:
    """Random translation by up to ``max_shift`` pixels (padding with ``fill``), then optionally
    a horizontal flip of half of the images.

    Parameters
    ----------
    max_shift : int
    fill : float
        Value of the pixels shifted in (the lower end of the data range: black on [0, 1]).
    flip : bool, default=False

    Examples
    --------
    >>> import torch
    >>> from skpcoreset.augment import RandomShift
    >>> shift = RandomShift(max_shift=2, fill=0.0, flip=True)
    >>> shift(torch.rand(4, 1, 8, 8), torch.Generator().manual_seed(0)).shape
    torch.Size([4, 1, 8, 8])
    """

    def __init__(self, max_shift: int, fill: float, flip: bool = False):
        self.max_shift, self.fill, self.flip = max_shift, fill, flip

    def __call__(self, X: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        X = random_shift(X, generator, max_shift=self.max_shift, fill=self.fill)
        return random_horizontal_flip(X, generator) if self.flip else X

    def __repr__(self) -> str:
        return f"RandomShift(max_shift={self.max_shift}, fill={self.fill}, flip={self.flip})"


def resolve_augmentation(augment, input_shape: tuple[int, ...], *, fill: float = 0.0):
    """The callable ``(X, generator) -> X`` an estimator's ``augment`` parameter stands for.

    Parameters
    ----------
    augment : None, {'auto', 'shift', 'shift_flip', 'dsa'} or callable
        None -> None (no augmentation); 'shift' / 'shift_flip' -> :class:`RandomShift` by an
        eighth of the image side; 'dsa' -> :class:`DifferentiableAugmentation`; 'auto' -> DSA
        for images of at least 16x16 pixels, None otherwise; a callable is used as it is. Each
        estimator's parameter validation says which of these it accepts.
    input_shape : tuple of int
        Shape of one sample; the named augmentations need images ``(C, H, W)``.
    fill : float, default=0.0
        Value of the pixels shifted in by 'shift' and 'shift_flip'.

    Returns
    -------
    callable or None
    """
    if augment is None or callable(augment):
        return augment
    is_image = len(input_shape) == 3
    if augment == "auto":
        return DifferentiableAugmentation() if is_image and min(input_shape[1:]) >= 16 else None
    if augment not in NAMED_AUGMENTATIONS:
        raise ValueError(f"augment must be None, 'auto', one of {NAMED_AUGMENTATIONS} or a callable; got {augment!r}.")
    if not is_image:
        raise ValueError(
            f"augment={augment!r} needs image inputs: samples shaped (C, H, W); got {tuple(input_shape)}. "
            "Pass input_shape=(C, H, W) for flat rows holding images, or augment=None."
        )
    if augment == "dsa":
        return DifferentiableAugmentation()
    return RandomShift(default_max_shift(input_shape[1]), fill, flip=augment == "shift_flip")
