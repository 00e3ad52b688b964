"""Batched, device-agnostic HQ -> LQ degradations (no Lightning imports here)."""

from headsup.degradations.base import Degradation
from headsup.degradations.bicubic import BicubicDegradation
from headsup.degradations.face import FaceDegradation
from headsup.degradations.realesrgan import RealESRGANDegradation

__all__ = ["Degradation", "BicubicDegradation", "FaceDegradation", "RealESRGANDegradation"]
