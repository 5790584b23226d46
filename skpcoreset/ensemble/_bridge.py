"""Bridge networks: a light tail that maps a mode's features to a point of a Bezier curve.

A bridge (Yun et al., 2023) reads an intermediate feature map ``h(x; theta_0)`` of mode 0, which
the base model computes anyway, so each bridge adds only the cost of its tail. Where the
network is cut is a :class:`FeatureSplit`: after a stage of a network made of stages
(:class:`~skpcoreset.nets.StagedNet`, ``nn.Sequential``, or any module whose named children,
applied in order, are its forward pass), or at the output of a named submodule of any module.

The bridge's tail is a fresh copy of the network's stages after the cut. A Type II bridge reads
the channel concatenation of both endpoints' feature maps and feeds it straight into that tail,
whose first layer (and a residual block's shortcut) is widened to take it -- no adapter layer,
as in the official code. When the tail would be a single linear readout (the default MLP's
head) or the cut is a named submodule, the tail is a small hidden-layer head instead, whose
width is sized to a fixed share of one base forward pass, so a bridge has capacity of its own
and stays cheap. The bridge is trained to reproduce the curve's midpoint ``theta(0.5)``:

    L = KL(p(y | x~; theta(0.5)) || q(y | h(x~))) - r mean_k KL(p(y | x~; theta_k) || q(y | h(x~)))

on input-mixup points ``x~ = a x + (1 - a) x[perm]``, ``a ~ Beta(alpha, alpha)`` drawn per
sample, with the targets recomputed on ``x~``; the optional ``r`` term pushes the bridge away
from the modes ``theta_k`` it reads (mode 0 for Type I, both endpoints for Type II). The
checkpoint with the lowest held-out KL to the midpoint is kept.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._base import torch_seed
from .._skorch import LogProbabilities
from .._train import Trainer
from ..nets import StagedNet
from ..nets._resnet import BasicBlock

__all__ = [
    "Bridge",
    "BridgeTrainer",
    "FeatureSplit",
    "make_bridge",
    "stages_of",
    "run_stages",
    "kl_divergence",
    "children_compose",
]

# A hidden-layer head costs at most this share of one base forward pass.
HEAD_BUDGET = 0.3


def stages_of(module: nn.Module) -> list[nn.Module]:
    """The ordered stages of a network: ``StagedNet.stages``, an ``nn.Sequential``'s layers, or
    any other module's named children (check with :func:`children_compose` that they are its
    forward pass)."""
    if isinstance(module, StagedNet):
        return list(module.stages)
    return list(module.children())


@torch.no_grad()
def children_compose(module: nn.Module, probe: torch.Tensor) -> bool:
    """Whether applying ``module``'s named children in order reproduces ``module(probe)`` (eval mode)."""
    if isinstance(module, (StagedNet, nn.Sequential)):
        return True
    children = list(module.children())
    if not children:
        return False
    was_training = module.training
    module.eval()
    try:
        x = probe
        for child in children:
            x = child(x)
        reference = module(probe)
        return x.shape == reference.shape and torch.allclose(x, reference, rtol=1e-4, atol=1e-5)
    except Exception:  # noqa: BLE001 - children that do not chain are not stages
        return False
    finally:
        module.train(was_training)


def run_stages(module: nn.Module, x: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
    """Apply stages ``start .. stop - 1`` of ``module`` to ``x``."""
    for stage in stages_of(module)[start:stop]:
        x = stage(x)
    return x


class _Features(Exception):
    """Carries a feature map out of a forward pass stopped at the feature layer."""

    def __init__(self, value):
        super().__init__()
        self.value = value


class FeatureSplit:
    """Where a network is cut: after ``stage`` stages, or at the output of submodule ``layer``.

    Parameters
    ----------
    stage : int or None
        Index of the first tail stage (the bridge reads the output of stages ``0 .. stage-1``).
    layer : str or None
        Dotted name of the submodule (``module.get_submodule(layer)``) whose output is the
        feature map, for networks that are not made of stages.
    """

    def __init__(self, stage: int | None = None, layer: str | None = None):
        if (stage is None) == (layer is None):
            raise ValueError("A FeatureSplit cuts after a stage or at a layer: give exactly one.")
        self.stage = stage
        self.layer = layer

    def __repr__(self) -> str:
        return f"FeatureSplit(stage={self.stage})" if self.layer is None else f"FeatureSplit(layer={self.layer!r})"

    def feature_module(self, module: nn.Module) -> nn.Module:
        """The submodule ``layer`` of ``module``, looking through the wrapper of softmax modules.

        A module that ends in a softmax (trained with NLLLoss) runs wrapped in
        :class:`~skpcoreset._skorch.LogProbabilities`, which holds the user's module as ``module``.
        """
        try:
            return module.get_submodule(self.layer)
        except AttributeError:
            if isinstance(module, LogProbabilities):
                return module.module.get_submodule(self.layer)
            raise

    def features(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The feature map of ``x`` (only the layers before the cut run)."""
        if self.layer is None:
            return run_stages(module, x, 0, self.stage)

        def stop(_, __, output):
            raise _Features(output)

        handle = self.feature_module(module).register_forward_hook(stop)
        try:
            module(x)
        except _Features as found:
            return found.value
        finally:
            handle.remove()
        raise RuntimeError(f"The feature layer {self.layer!r} did not run in the forward pass.")

    def logits_and_features(self, module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``module(x)`` and the feature map, from one forward pass."""
        if self.layer is None:
            features = run_stages(module, x, 0, self.stage)
            return run_stages(module, features, self.stage), features
        found = []
        handle = self.feature_module(module).register_forward_hook(lambda _, __, output: found.append(output))
        try:
            logits = module(x)
        finally:
            handle.remove()
        return logits, found[0]

    def tail(self, module: nn.Module) -> list[nn.Module] | None:
        """The stages after the cut (None when the cut is a named layer: the tail is a head)."""
        return None if self.layer is not None else stages_of(module)[self.stage :]


def kl_divergence(target_log_proba: torch.Tensor, log_proba: torch.Tensor) -> torch.Tensor:
    """Mean over samples of ``KL(p || q)`` from log-probabilities of shape ``(N, C)``."""
    return F.kl_div(log_proba, target_log_proba, log_target=True, reduction="batchmean")


class Bridge(nn.Module):
    """A tail fed with the channel concatenation of one or two feature maps.

    Parameters
    ----------
    tail : nn.Module
        Maps the (concatenated) feature map to logits.
    """

    def __init__(self, tail: nn.Module):
        super().__init__()
        self.tail = tail

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.tail(features[0] if len(features) == 1 else torch.cat(features, dim=1))


def _reset_parameters(module: nn.Module) -> nn.Module:
    for layer in module.modules():
        if layer is not module and hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return module


def _weight_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _is_linear_readout(stages: list[nn.Module]) -> bool:
    layers = [layer for stage in stages for layer in _weight_layers(stage)]
    return len(layers) == 1 and isinstance(layers[0], nn.Linear)


def _widened(layer: nn.Module, factor: int) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features * factor, layer.out_features, bias=layer.bias is not None)
    return nn.Conv2d(
        layer.in_channels * factor,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.groups if layer.groups == 1 else layer.groups * factor,
        bias=layer.bias is not None,
        padding_mode=layer.padding_mode,
    )


def _replace(root: nn.Module, target: nn.Module, new: nn.Module) -> None:
    for module in root.modules():
        for child_name, child in module.named_children():
            if child is target:
                setattr(module, child_name, new)
                return
    raise ValueError("layer not found")  # pragma: no cover


def _widen_input(stage: nn.Module, factor: int) -> nn.Module:
    """``stage`` taking ``factor`` times as many input channels (the concatenated feature maps)."""
    if isinstance(stage, BasicBlock):
        conv1 = stage.conv1
        stage.conv1 = _widened(conv1, factor)
        if isinstance(stage.shortcut, nn.Identity):  # the residual now needs a projection
            stage.shortcut = nn.Conv2d(conv1.in_channels * factor, conv1.out_channels, 1, conv1.stride, bias=False)
        else:
            projection = _weight_layers(stage.shortcut)[0]
            _replace(stage.shortcut, projection, _widened(projection, factor))
        return stage
    layers = _weight_layers(stage)
    if not layers:
        raise ValueError("A Type II bridge widens the first layer of its tail; the first tail stage has none.")
    if stage is layers[0]:
        return _widened(stage, factor)
    _replace(stage, layers[0], _widened(layers[0], factor))
    return stage


def head_width(in_features: int, n_classes: int, mode_flops: int, budget: float = HEAD_BUDGET, cap: int = 256) -> int:
    """Hidden width of a head ``Linear(in, h) -> ReLU -> Linear(h, C)`` costing ``budget`` of a base pass."""
    affordable = int(budget * mode_flops // (2 * (in_features + n_classes)))
    return int(max(1, min(affordable, cap)))


def _hidden_head(example: torch.Tensor, n_classes: int, mode_flops: int) -> nn.Module:
    """A hidden-layer head over a feature map shaped like ``example`` (conv maps are average-pooled)."""
    layers: list[nn.Module] = []
    if example.dim() > 2:
        layers += [nn.AdaptiveAvgPool2d(1)] if example.dim() == 4 else []
        layers += [nn.Flatten()]
    in_features = example.shape[1] if example.dim() in (2, 4) else int(np.prod(example.shape[1:]))
    hidden = head_width(in_features, n_classes, mode_flops, cap=max(in_features, 2 * n_classes))
    return nn.Sequential(*layers, nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


def make_bridge(
    mode: nn.Module,
    split: FeatureSplit | int,
    example: torch.Tensor,
    n_inputs: int,
    seed: int,
    *,
    n_classes: int | None = None,
    mode_flops: int | None = None,
) -> Bridge:
    """A freshly initialised bridge over the tail of ``mode`` after ``split``.

    Parameters
    ----------
    mode : nn.Module
        A trained network whose architecture the tail copies (its weights are not reused).
    split : FeatureSplit or int
        Where the network is cut (an int: after that many stages).
    example : Tensor
        A feature map of one mode at the cut, shape ``(N, C, ...)``.
    n_inputs : int
        1 for a Type I bridge, 2 for Type II (the tail's first layer takes ``2 C`` channels).
    seed : int
        Seed of the initialisation.
    n_classes, mode_flops : int or None
        Output width and FLOPs of one base forward pass per sample; they size the hidden-layer
        head that replaces a linear readout (or serves a named-layer cut). Without them a
        linear readout is copied as it is.
    """
    split = split if isinstance(split, FeatureSplit) else FeatureSplit(stage=split)
    tail = split.tail(mode)
    with torch_seed(seed, example.device):
        use_head = tail is None or (_is_linear_readout(tail) and n_classes is not None and mode_flops)
        if use_head:
            if n_classes is None or not mode_flops:
                raise ValueError("A head bridge needs n_classes and mode_flops.")
            widened = torch.cat([example] * n_inputs, dim=1)
            module = _hidden_head(widened, n_classes, mode_flops)
        else:
            stages = [copy.deepcopy(stage) for stage in tail]
            if n_inputs > 1:
                stages[0] = _widen_input(stages[0], n_inputs)
            module = _reset_parameters(nn.Sequential(*stages))
    return Bridge(module).to(example.device).requires_grad_(True)


class BridgeTrainer(Trainer):
    """Trains a :class:`Bridge` to match a curve point on input-mixup points.

    Parameters
    ----------
    bridge : Bridge
    spec : TrainSpec
    sources : list of nn.Module
        The frozen modes whose features the bridge reads (mode 0 first).
    split : FeatureSplit or int
        Where the features are taken.
    target : nn.Module
        The frozen curve point the bridge imitates (``theta(0.5)``).
    repulsion : float
        Weight ``r`` of the term pushing the bridge away from the ``sources`` (mean KL).
    mixup_alpha : float
        ``Beta(alpha, alpha)`` mixing weights, one per sample; 0 disables mixup.
    seed : int
        Seed of the mixing weights (drawn on the host).
    **kwargs
        Passed to :class:`~skpcoreset._train.Trainer` (``generator`` is required).

    Attributes
    ----------
    best_epoch : int or None
        With ``fit(X, validation=(X_val,))``: the epoch (1-based) whose weights were kept, the one
        with the lowest held-out KL to the target (no mixup).
    """

    def __init__(self, bridge, spec, *, sources, split, target, repulsion, mixup_alpha, seed, **kwargs):
        super().__init__(bridge, spec, **kwargs)
        self.sources = [source.eval() for source in sources]
        self.split = split if isinstance(split, FeatureSplit) else FeatureSplit(stage=split)
        self.target = target.eval()
        self.repulsion = repulsion
        self.mixup_alpha = mixup_alpha
        self.mixing_rng = np.random.RandomState(seed)
        self.best_epoch, self._best = None, (np.inf, None)

    def mix(self, X: torch.Tensor) -> torch.Tensor:
        """Input mixup with one ``Beta(alpha, alpha)`` weight per sample (Zhang et al., 2018)."""
        if self.mixup_alpha == 0:
            return X
        weights = self.mixing_rng.beta(self.mixup_alpha, self.mixup_alpha, size=len(X))
        weight = torch.as_tensor(weights, dtype=X.dtype, device=X.device).view(-1, *[1] * (X.dim() - 1))
        partner = torch.randperm(len(X), generator=self.generator, device=self.device)
        return weight * X + (1 - weight) * X[partner]

    def _divergence(self, X: torch.Tensor, repulsion: float) -> torch.Tensor:
        with torch.no_grad():
            outputs = [self.split.logits_and_features(source, X) for source in self.sources]
            target = F.log_softmax(self.target(X), dim=-1)
        log_q = F.log_softmax(self.model([features for _, features in outputs]), dim=-1)
        loss = kl_divergence(target, log_q)
        if repulsion:
            anchors = [F.log_softmax(logits, dim=-1) for logits, _ in outputs]
            loss = loss - repulsion * sum(kl_divergence(anchor, log_q) for anchor in anchors) / len(anchors)
        return loss

    def loss(self, X: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        return self._divergence(self.prepare_input(self.mix(X)), self.repulsion)

    @torch.no_grad()
    def validation_scores(self, tensors: tuple[torch.Tensor, ...]) -> dict[str, float]:
        """``valid_loss``: held-out KL to the target on clean inputs; the best epoch's weights are kept."""
        self.module.eval()
        total, count = 0.0, 0
        for start in range(0, len(tensors[0]), 1024):
            X = self.prepare_input(tensors[0][start : start + 1024])
            total += float(self._divergence(X, 0.0)) * len(X)
            count += len(X)
        loss = total / max(count, 1)
        if loss < self._best[0]:
            state = {name: value.detach().clone() for name, value in self.module.state_dict().items()}
            self._best = (loss, state)
            self.best_epoch = len(self.history)  # the row of the current epoch
        return {"valid_loss": loss}

    def fit(self, *tensors: torch.Tensor, validation=None):
        super().fit(*tensors, validation=validation)
        if self._best[1] is not None:
            self.module.load_state_dict(self._best[1])
        self._best = (self._best[0], None)
        return self
