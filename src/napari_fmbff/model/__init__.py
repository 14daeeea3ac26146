"""The network only: pure torch + timm."""

from .config import ModelConfig
from .network import INPUT_MULTIPLE, EncoderWeightsUnavailable, FMBFFNet

__all__ = ["ModelConfig", "FMBFFNet", "INPUT_MULTIPLE", "EncoderWeightsUnavailable"]
