"""Lightning callbacks: embedding plots, training curves, RNG-state checkpointing, ..."""

from prismrl.callbacks.embedding_plot import EmbeddingPlotCallback
from prismrl.callbacks.rng_state import RNGStateCallback
from prismrl.callbacks.staged_unfreezing import Stage, StagedUnfreezing
from prismrl.callbacks.training_curves import TrainingCurvesCallback

__all__ = ["EmbeddingPlotCallback", "RNGStateCallback", "Stage", "StagedUnfreezing", "TrainingCurvesCallback"]
