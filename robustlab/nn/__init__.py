"""Robust layers: activations (ch. 5); denoising and normalization follow (ch. 4, 6)."""
from robustlab.nn.activations import (
    PSOFTPLUS_ALPHA,
    ReLUSoftplusBackward,
    relu_softplus_backward,
    smooth_relu_backward,
)
from robustlab.nn.state import inference_state

__all__ = [
    "PSOFTPLUS_ALPHA", "ReLUSoftplusBackward", "inference_state", "relu_softplus_backward", "smooth_relu_backward",
]
