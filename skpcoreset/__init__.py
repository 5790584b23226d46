"""skpcoreset: Bayesian pseudocoresets, post-hoc analysis of trained nets, bridge ensembles and
diversity-preserving distillation, as scikit-learn estimators.

Every public name is importable from here and from its subpackage. Names load lazily on first
use, so ``import skpcoreset`` costs nothing beyond Python itself; ``from skpcoreset import
DeepEnsembleClassifier`` imports torch, scikit-learn and skorch then.
"""

import importlib

__version__ = "0.2.0"

_PUBLIC = {
    # estimators
    "DeepEnsembleClassifier": "skpcoreset.ensemble",
    "BridgeEnsembleClassifier": "skpcoreset.ensemble",
    "PseudocoresetSynthesizer": "skpcoreset.pseudocoreset",
    "DiverseDistiller": "skpcoreset.distill",
    "ConnectivityLaplaceClassifier": "skpcoreset.posthoc",
    "GeometricEnsembleInfluence": "skpcoreset.posthoc",
    "RepulsiveEdgeEliminator": "skpcoreset.posthoc",
    "SGCClassifier": "skpcoreset.graph",
    "GCNClassifier": "skpcoreset.graph",
    # their helpers
    "PosteriorSampler": "skpcoreset.pseudocoreset",
    "deep_ensemble_equivalent": "skpcoreset.ensemble",
    "connectivity_sharpness": "skpcoreset.posthoc",
    # networks through skorch
    "make_net": "skpcoreset._skorch",
    "TemplateNet": "skpcoreset._skorch",
    "DeviceBatchIterator": "skpcoreset._skorch",
    "fast_iterator_params": "skpcoreset._skorch",
    "make_accelerated_net": "skpcoreset._accelerate",
    "WarmupCosineLR": "skpcoreset._train",
    # warnings
    "NoBenefitWarning": "skpcoreset.exceptions",
}

__all__ = [*sorted(_PUBLIC), "__version__"]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'skpcoreset' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_PUBLIC])
