"""Robust layers and model surgery: activations (ch. 5), normalization (ch. 6, 7),
feature denoising (ch. 4).

>>> model = rl.nn.swap_activation(model, "silu")
>>> model = rl.nn.add_denoise_blocks(model, op="nonlocal_gaussian", where="stages")
>>> model = rl.nn.convert_norm(model, "mbn", routes=("clean", "adv"))
>>> with rl.nn.route(model, "adv"): logits = model(x)
>>> export = rl.nn.drop_routes(model, keep="clean")
"""
from robustlab.nn.activations import (
    PSOFTPLUS_ALPHA,
    SMOOTHRELU_INIT,
    ParametricSoftplus,
    ReLUSoftplusBackward,
    SmoothReLU,
    activation_names,
    create_activation,
    describe_activations,
    relu_softplus_backward,
    smooth_relu,
    smooth_relu_backward,
)
from robustlab.nn.denoise import (
    DENOISE_OPS,
    BilateralDenoise,
    DenoiseBlock,
    MeanDenoise,
    MedianDenoise,
    NonLocalDenoise,
    NullDenoise,
    bilateral_filter,
    create_op,
    mean_filter,
    median_filter,
    nonlocal_means,
)
from robustlab.nn.norm import (
    DEFAULT_ROUTES,
    MixtureBatchNorm,
    bn_finetune_parameters,
    drop_routes,
    group_norm_like,
    route,
    route_names,
    use_running_stats,
)
from robustlab.nn.state import inference_state
from robustlab.nn.surgery import add_denoise_blocks, convert_norm, count_parameters, find_stages, swap_activation

__all__ = [
    "DENOISE_OPS", "BilateralDenoise", "DenoiseBlock", "MeanDenoise", "MedianDenoise", "NonLocalDenoise",
    "NullDenoise", "bilateral_filter", "create_op", "mean_filter", "median_filter", "nonlocal_means",
    "DEFAULT_ROUTES", "MixtureBatchNorm", "PSOFTPLUS_ALPHA", "ParametricSoftplus", "ReLUSoftplusBackward",
    "SMOOTHRELU_INIT", "SmoothReLU", "activation_names", "add_denoise_blocks", "bn_finetune_parameters",
    "convert_norm", "count_parameters", "create_activation", "describe_activations", "drop_routes",
    "find_stages", "group_norm_like", "inference_state", "relu_softplus_backward", "route", "route_names",
    "smooth_relu", "smooth_relu_backward", "swap_activation", "use_running_stats",
]
