"""Lightning callbacks: embedding plots, training curves, RNG-state checkpointing, staged unfreezing, reward normalization, Parquet and JSON Lines prediction rows."""

from prismrl.callbacks.embedding_plot import EmbeddingPlotCallback
from prismrl.callbacks.jsonl_writer import JsonlPredictionWriter
from prismrl.callbacks.prediction_writer import ParquetPredictionWriter
from prismrl.callbacks.reward_normalization import RewardNormalizationCallback
from prismrl.callbacks.rng_state import RNGStateCallback
from prismrl.callbacks.staged_unfreezing import Stage, StagedUnfreezing
from prismrl.callbacks.training_curves import TrainingCurvesCallback

__all__ = ["EmbeddingPlotCallback", "JsonlPredictionWriter", "ParquetPredictionWriter", "RNGStateCallback", "RewardNormalizationCallback", "Stage", "StagedUnfreezing", "TrainingCurvesCallback"]
