"""Lightning callbacks of headsup."""

from headsup.callbacks.checkpoint import Checkpoint
from headsup.callbacks.config import VersionedSaveConfig
from headsup.callbacks.ema import TrainableEMA
from headsup.callbacks.predict_writer import PredictWriter
from headsup.callbacks.results import ResultsWriter

__all__ = ["Checkpoint", "PredictWriter", "ResultsWriter", "TrainableEMA", "VersionedSaveConfig"]
