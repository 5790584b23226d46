"""Bayesian pseudocoresets: synthetic datasets whose posterior matches the full-data posterior."""

from ._applications import continual_replay, frozen_features
from ._samplers import PosteriorSampler
from ._synthesizer import PseudocoresetSynthesizer

__all__ = ["PseudocoresetSynthesizer", "PosteriorSampler", "continual_replay", "frozen_features"]
