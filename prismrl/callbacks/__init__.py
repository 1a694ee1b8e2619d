"""Lightning callbacks: embedding plots, training curves, RNG-state checkpointing, staged unfreezing, reward normalization."""

from prismrl.callbacks.embedding_plot import EmbeddingPlotCallback
from prismrl.callbacks.reward_normalization import RewardNormalizationCallback
from prismrl.callbacks.rng_state import RNGStateCallback
from prismrl.callbacks.staged_unfreezing import Stage, StagedUnfreezing
from prismrl.callbacks.training_curves import TrainingCurvesCallback

__all__ = ["EmbeddingPlotCallback", "RNGStateCallback", "RewardNormalizationCallback", "Stage", "StagedUnfreezing", "TrainingCurvesCallback"]
