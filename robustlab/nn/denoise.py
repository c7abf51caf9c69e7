"""Feature denoising of chapter 4: the denoising operations of §4.4.2 and the block of §4.4.1.

Each operation is a pure function on a feature map ``x: (N, C, H, W)`` paired
with a module that owns its parameters (STYLE.md point 2):

=====================  ==========================  ====================
name                   function                    module
=====================  ==========================  ====================
``nonlocal_gaussian``  ``nonlocal_means``          ``NonLocalDenoise``
``nonlocal_dot``       ``nonlocal_means``          ``NonLocalDenoise``
``bilateral_gaussian`` ``bilateral_filter``        ``BilateralDenoise``
``bilateral_dot``      ``bilateral_filter``        ``BilateralDenoise``
``mean``               ``mean_filter``             ``MeanDenoise``
``median``             ``median_filter``           ``MedianDenoise``
``null``               identity                    ``NullDenoise``
=====================  ==========================  ====================

Borders of the local ops (k×k window Ω(i), k odd, output the size of the input):
the bilateral and mean filters *exclude* positions outside the map, so they
count neither in the softmax nor in the normalization C; the median filter
replicates the edge instead (its window then always holds k² values, an odd
count with a unique median; for k = 3 this equals scipy's ``mode="nearest"``
and ``mode="reflect"``).
"""
from __future__ import annotations

import inspect
import math
import warnings
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from robustlab._checks import check_number

#: Default bound (bytes) on the extra memory of the Gaussian non-local affinity.
NONLOCAL_MAX_BYTES = 256 * 2**20

# Per query row the Gaussian path holds up to three N×M tensors at once: the
# logits and the softmax weights in the forward, and the weights with their two
# gradients in the (recomputed) backward of a chunk.
_ROW_COPIES = 3


def _check_features(x: object, name: str = "x", channels: int | None = None) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, C, H, W); got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W) (rank 4); got rank {x.dim()}, shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point feature map; got dtype {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels but the module was built for channels={channels}; "
                         f"got shape {tuple(x.shape)}")
    return x


def _check_kernel(kernel_size: object) -> int:
    k = int(check_number(kernel_size, "kernel_size", low=1, integer=True))
    if k % 2 == 0:
        raise ValueError(f"kernel_size must be odd so that the output keeps the input's size; got {kernel_size!r}")
    return k


def _check_max_bytes(max_bytes: object) -> int:
    return int(check_number(max_bytes, "max_bytes", low=1, integer=True))


def _check_flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return value


def _check_channels(channels: object, name: str = "channels") -> int:
    return int(check_number(channels, name, low=1, integer=True))


def _embeddings(x: Tensor, theta: Tensor | None, phi: Tensor | None) -> tuple[Tensor, Tensor]:
    """θ(x), φ(x) as given, or x itself; both (N, d, H, W) with x's N, H, W and dtype."""
    theta = x if theta is None else _check_features(theta, "theta")
    phi = x if phi is None else _check_features(phi, "phi")
    n, _, h, w = x.shape
    for name, t in (("theta", theta), ("phi", phi)):
        if t.shape[0] != n or t.shape[2:] != x.shape[2:] or t.dtype != x.dtype:
            raise ValueError(f"{name} must have shape (N, d, H, W) = ({n}, d, {h}, {w}) and dtype {x.dtype} "
                             f"to match x; got shape {tuple(t.shape)}, dtype {t.dtype}")
    if theta.shape[1] != phi.shape[1]:
        raise ValueError(f"theta and phi must have the same number of channels d; "
                         f"got {theta.shape[1]} and {phi.shape[1]}")
    return theta, phi


def _attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax_j(q_iᵀ k_j) weighted mean of v_j: q (N, d, R), k (N, d, M), v (N, C, M) -> (N, C, R)."""
    weights = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (N, R, M)
    return v @ weights.transpose(1, 2)


# SDPA kernels that never hold the affinity (the math backend would build it whole).
_FUSED_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
# (device type, dtype, width, grad) for which no fused kernel applied: the chunked path, without asking again.
_NO_FUSED_KERNEL: set[tuple[str, torch.dtype, int, bool]] = set()


def _fused_gaussian(q: Tensor, k: Tensor, v: Tensor) -> Tensor | None:
    """Eq. (4.1) Gaussian in one fused attention kernel, or ``None`` where none applies.

    q (N, d, R), k (N, d, M), v (N, C, M) -> (N, C, R), q already scaled by 1/√d.
    The kernels (flash attention on CPU; flash, memory-efficient or cuDNN on
    CUDA) keep one softmax normalizer per query row instead of the R×M weights,
    forward and backward. They need q, k and v of one width: θ and φ are
    zero-padded (a zero channel adds nothing to θᵢᵀφⱼ) and g with them, to a
    multiple of 8 (the CUDA kernels' alignment).
    """
    d, c = q.shape[1], v.shape[1]
    width = -(-max(d, c) // 8) * 8
    track = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    key = (q.device.type, q.dtype, width, track)
    if key in _NO_FUSED_KERNEL:
        return None

    def heads(t: Tensor) -> Tensor:  # (N, D, L) -> (N, 1, L, width), contiguous in the last dim
        return F.pad(t, (0, 0, 0, width - t.shape[1])).transpose(1, 2).contiguous().unsqueeze(1)

    try:
        with warnings.catch_warnings(), sdpa_kernel(_FUSED_BACKENDS):
            warnings.simplefilter("ignore", UserWarning)  # SDPA's "kernel not used because ..." notes
            y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), scale=1.0)
    except RuntimeError as error:
        if "No available kernel" not in str(error):
            raise
        _NO_FUSED_KERNEL.add(key)
        return None
    return y.squeeze(1)[..., :c].transpose(1, 2)


def _gaussian(q: Tensor, k: Tensor, v: Tensor, max_bytes: int, shape: tuple[int, ...], fused: bool) -> Tensor:
    """Gaussian eq. (4.1): fused (:func:`_fused_gaussian`), else over query-row chunks whose N×R×M affinity
    fits ``max_bytes``."""
    n, d, hw = q.shape
    m = k.shape[-1]
    q = q * d**-0.5  # f = exp(θᵀφ/√d), scaled on the smaller side of the product
    y = _fused_gaussian(q, k, v) if fused else None
    if y is not None:
        return y
    row_bytes = _ROW_COPIES * n * m * q.element_size()
    rows = max_bytes // row_bytes
    if rows < 1:
        raise MemoryError(
            f"Gaussian non-local means needs {row_bytes / 2**20:.3f} MiB per query row "
            f"({hw * row_bytes / 2**20:.1f} MiB for the whole {n}×{hw}×{m} affinity) of the feature map "
            f"(N, C, H, W) = {shape}, more than max_bytes={max_bytes} ({max_bytes / 2**20:.3f} MiB); "
            f"raise max_bytes, use subsample=True or a smaller batch")
    if rows >= hw:
        return _attend(q, k, v)
    # Autograd would keep every chunk's weights, i.e. the whole affinity; a
    # checkpointed chunk keeps only its inputs and is recomputed in the backward.
    track = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    chunks = q.split(int(rows), dim=2)
    return torch.cat([checkpoint(_attend, c, k, v, use_reentrant=False) if track else _attend(c, k, v)
                      for c in chunks], dim=2)


def _dot_product(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Dot-product eq. (4.1), f = θ_iᵀφ_j, C = M: q (N, d, HW), k (N, d, M), v (N, C, M) -> (N, C, HW)."""
    (_, d, hw), (c, m) = q.shape, v.shape[1:]
    if d * c <= hw * m:
        # Associativity: θᵀ(φ gᵀ) builds a d×C matrix instead of the HW×M affinity.
        return (k @ v.transpose(1, 2) / m).transpose(1, 2) @ q
    return v @ (k.transpose(1, 2) @ q) / m


def nonlocal_means(x: Tensor, theta: Tensor | None = None, phi: Tensor | None = None, *, softmax: bool = True,
                   subsample: bool = False, max_bytes: int | None = None, fused: bool = True) -> Tensor:
    """Eq. (4.1): y_i = 1/C(x) · Σ_{j ∈ L} f(x_i, x_j) · x_j over all positions L (§4.4.2).

    The mean is over x_j itself (no embedding g), so the channels of y and x
    correspond. ``theta``, ``phi``: (N, d, H, W) embeddings θ(x), φ(x) already
    computed by the caller; ``None`` uses x.

    - ``softmax=True`` (Gaussian): f = exp(θ(x_i)ᵀφ(x_j)/√d), C = Σ_j f.
      With ``fused=True`` it runs in PyTorch's fused attention kernels
      (``scaled_dot_product_attention``: flash attention on CPU; flash,
      memory-efficient or cuDNN on CUDA), which never hold the HW×M affinity;
      on two CPU threads a forward + backward took 0.18 s instead of 0.92 s
      on a 128×16×28×28 map (d = 8) and 0.80 s instead of 1.08 s on
      4×256×56×56 (d = 128), against the chunked path. Where none
      applies (another device, a width a CUDA kernel refuses), or with
      ``fused=False``, the affinity is computed in chunks of query rows so
      that about ``max_bytes`` (default :data:`NONLOCAL_MAX_BYTES`) bounds its
      memory; a ``MemoryError`` states the MiB needed when one row does not
      fit. The fused backward is not twice differentiable; the chunked one is.
    - ``softmax=False`` (dot product): f = θ_iᵀφ_j, C = M, the number of
      positions j; the thesis uses no embedding (θ = φ = x). The HW×M matrix
      is never built when d·C ≤ HW·M (d = C ≤ HW without sub-sampling).
    - ``subsample=True`` (§4.6.2): x_j and φ_j are 2×2 max-pooled with stride
      2 while x_i stays full-size; odd sizes pool their last row/column alone
      (ceil mode), so no position is dropped. M counts the pooled positions.

    Returns y: (N, C, H, W).
    """
    x = _check_features(x)
    theta, phi = _embeddings(x, theta, phi)
    max_bytes = NONLOCAL_MAX_BYTES if max_bytes is None else _check_max_bytes(max_bytes)
    g = x
    if subsample:
        g = F.max_pool2d(x, 2, 2, ceil_mode=True)
        phi = g if phi is x else F.max_pool2d(phi, 2, 2, ceil_mode=True)
    q, k, v = theta.flatten(2), phi.flatten(2), g.flatten(2)
    fused = _check_flag(fused, "fused")
    y = _gaussian(q, k, v, max_bytes, tuple(x.shape), fused) if softmax else _dot_product(q, k, v)
    return y.reshape(x.shape)


def bilateral_filter(x: Tensor, theta: Tensor | None = None, phi: Tensor | None = None, *, softmax: bool = True,
                     kernel_size: int = 3) -> Tensor:
    """Eq. (4.2): y_i = 1/C(x) · Σ_{j ∈ Ω(i)} f(x_i, x_j) · x_j over the k×k window Ω(i) (§4.4.2).

    The weights are those of :func:`nonlocal_means` (Gaussian with ``theta``,
    ``phi``: (N, d, H, W), or dot product with C = |Ω(i)|). Border: positions
    of Ω(i) outside the map are excluded, from the softmax as from the count
    C, so a corner of a 3×3 filter averages 4 neighbours. Returns (N, C, H, W).
    """
    x = _check_features(x)
    theta, phi = _embeddings(x, theta, phi)
    k = _check_kernel(kernel_size)
    n, c, h, w = x.shape

    def window(t: Tensor) -> Tensor:  # (B, D, H, W) -> (B, D, k², HW), zero outside the map
        return F.unfold(t, k, padding=k // 2).view(t.shape[0], t.shape[1], k * k, h * w)

    inside = window(x.new_ones(1, 1, h, w))[0, 0] > 0.5  # (k², HW)
    f = torch.einsum("ndp,ndtp->ntp", theta.flatten(2), window(phi))  # (N, k², HW)
    if softmax:
        weights = (f * theta.shape[1] ** -0.5).masked_fill(~inside, -math.inf).softmax(dim=1)
    else:
        weights = f / inside.sum(0)  # zero padding already gives f = 0 outside; only C needs the true count
    return torch.einsum("ntp,nctp->ncp", weights, window(x)).reshape(n, c, h, w)


def mean_filter(x: Tensor, kernel_size: int = 3) -> Tensor:
    """Mean filter (§4.4.2): k×k average pooling with stride 1, (N, C, H, W) -> (N, C, H, W).

    Border: the mean is over the positions inside the map (``count_include_pad=False``).
    """
    x = _check_features(x)
    k = _check_kernel(kernel_size)
    return F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)


def median_filter(x: Tensor, kernel_size: int = 3) -> Tensor:
    """Eq. (4.3): y_i = median{x_j : j ∈ Ω(i)}, per channel over the k×k window (§4.4.2).

    Border: the edge is replicated, so every window holds k² (odd) values and
    the median is one of them; the gradient goes to that element. Returns (N, C, H, W).
    """
    x = _check_features(x)
    k = _check_kernel(kernel_size)
    n, c, h, w = x.shape
    p = k // 2
    windows = F.pad(x, (p, p, p, p), mode="replicate").unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H, W, k, k)
    return windows.reshape(n, c, h, w, k * k).median(dim=-1).values


def _embedding_pair(channels: int, embed_channels: int | None) -> tuple[nn.Conv2d, nn.Conv2d]:
    """θ, φ: 1×1 convs C -> d (d = C/2 by default), weights N(0, 0.01²) as in the FAIR release."""
    d = max(1, channels // 2) if embed_channels is None else _check_channels(embed_channels, "embed_channels")
    convs = []
    for _ in range(2):
        conv = nn.Conv2d(channels, d, 1)  # with a bias, as the release's tf.layers.conv2d default
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)
        convs.append(conv)
    return convs[0], convs[1]


class _Embedded(nn.Module):
    """Shared by the non-local and bilateral modules: θ, φ for the Gaussian version, none for the dot product."""

    def __init__(self, channels: int, softmax: bool, embed_channels: int | None) -> None:
        super().__init__()
        self.channels = _check_channels(channels)
        self.softmax = bool(softmax)
        if self.softmax:
            self.theta, self.phi = _embedding_pair(self.channels, embed_channels)
        elif embed_channels is not None:
            raise ValueError("embed_channels applies to the Gaussian (softmax) version only; the dot product "
                             f"uses x itself (§4.4.2); got embed_channels={embed_channels!r}")
        else:
            self.theta = self.phi = None

    def _embed(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        x = _check_features(x, "x", self.channels)
        if self.theta is None:
            return x, None, None
        return x, self.theta(x), self.phi(x)


class NonLocalDenoise(_Embedded):
    """Non-local means, eq. (4.1), Figure 4.5: Gaussian (own θ, φ) or dot product (no parameters)."""

    def __init__(self, channels: int, *, softmax: bool = True, embed_channels: int | None = None,
                 subsample: bool = False, max_bytes: int | None = None, fused: bool = True) -> None:
        super().__init__(channels, softmax, embed_channels)
        self.subsample = bool(subsample)
        self.max_bytes = None if max_bytes is None else _check_max_bytes(max_bytes)
        self.fused = _check_flag(fused, "fused")

    def forward(self, x: Tensor) -> Tensor:
        x, theta, phi = self._embed(x)
        return nonlocal_means(x, theta, phi, softmax=self.softmax, subsample=self.subsample, max_bytes=self.max_bytes,
                              fused=self.fused)

    def extra_repr(self) -> str:
        return f"{self.channels}, softmax={self.softmax}, subsample={self.subsample}"


class BilateralDenoise(_Embedded):
    """Bilateral filter, eq. (4.2): the weights of eq. (4.1) over a k×k window."""

    def __init__(self, channels: int, *, softmax: bool = True, embed_channels: int | None = None,
                 kernel_size: int = 3) -> None:
        super().__init__(channels, softmax, embed_channels)
        self.kernel_size = _check_kernel(kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        x, theta, phi = self._embed(x)
        return bilateral_filter(x, theta, phi, softmax=self.softmax, kernel_size=self.kernel_size)

    def extra_repr(self) -> str:
        return f"{self.channels}, softmax={self.softmax}, kernel_size={self.kernel_size}"


class _Local(nn.Module):
    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.channels = _check_channels(channels)
        self.kernel_size = _check_kernel(kernel_size)

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}"


class MeanDenoise(_Local):
    """Mean filter (§4.4.2), no parameters."""

    def forward(self, x: Tensor) -> Tensor:
        return mean_filter(_check_features(x, "x", self.channels), self.kernel_size)


class MedianDenoise(_Local):
    """Median filter, eq. (4.3), no parameters."""

    def forward(self, x: Tensor) -> Tensor:
        return median_filter(_check_features(x, "x", self.channels), self.kernel_size)


class NullDenoise(nn.Module):
    """The "null" operation of §4.6.1: identity, leaving a block with only its 1×1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = _check_channels(channels)

    def forward(self, x: Tensor) -> Tensor:
        return _check_features(x, "x", self.channels)

    def extra_repr(self) -> str:
        return f"{self.channels}"


class BottleneckBranch(nn.Module):
    """The residual branch of a standard bottleneck block (He et al.): Conv1×1
    (C → C/4), BN, ReLU, Conv3×3 (C/4), BN, ReLU, Conv1×1 (C/4 → C), BN with γ
    starting at 0. §4.6.1's capacity control "+4 bottleneck" (ResNet-164):
    :func:`robustlab.nn.add_denoise_blocks` with ``op="bottleneck"`` adds
    x + branch(x) where the denoising blocks would go (no extra 1×1), the
    same number of blocks, no denoising."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = _check_channels(channels)
        mid = max(1, self.channels // 4)
        self.body = nn.Sequential(
            nn.Conv2d(self.channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, self.channels, 1, bias=False), nn.BatchNorm2d(self.channels))
        nn.init.zeros_(self.body[-1].weight)  # a fresh block is the identity, as the denoising blocks are

    def forward(self, x: Tensor) -> Tensor:
        return self.body(_check_features(x, "x", self.channels))


#: Ops whose block is x + op(x) alone: they carry their own 1×1 convolutions.
OWN_CONV_OPS = ("bottleneck",)

_REGISTRY = {
    "nonlocal_gaussian": partial(NonLocalDenoise, softmax=True),
    "nonlocal_dot": partial(NonLocalDenoise, softmax=False),
    "bilateral_gaussian": partial(BilateralDenoise, softmax=True),
    "bilateral_dot": partial(BilateralDenoise, softmax=False),
    "mean": MeanDenoise,
    "median": MedianDenoise,
    "null": NullDenoise,
}

#: The denoising operations (§4.4.2, §4.6.1).
DENOISE_OPS: tuple[str, ...] = tuple(_REGISTRY)
#: Names accepted by :func:`create_op`, :class:`DenoiseBlock` and ``create_model(denoise=...)``:
#: the denoising operations and the bottleneck capacity control.
BLOCK_OPS: tuple[str, ...] = DENOISE_OPS + OWN_CONV_OPS

# Options that only some ops take: off (None / False) they are dropped for the others, on they are an error.
_OPTION_SCOPE = {"subsample": "the non-local ops only (§4.6.2)",
                 "embed_channels": "the Gaussian ops only (§4.4.2)"}


def create_op(op: str, channels: int, **kw: object) -> nn.Module:
    """A denoising operation by name (one of :data:`BLOCK_OPS`): ``create_op("median", 256)``."""
    if op not in BLOCK_OPS:
        raise ValueError(f"op must be one of {', '.join(BLOCK_OPS)}; got {op!r}")
    factory = _REGISTRY.get(op, BottleneckBranch)
    accepted = inspect.signature(factory).parameters
    for key in [k for k in kw if k in _OPTION_SCOPE and k not in accepted]:
        value = kw.pop(key)
        if value is not None and value is not False:
            raise ValueError(f"{key}={value!r} applies to {_OPTION_SCOPE[key]}, not to op={op!r}")
    return factory(channels, **kw)


class DenoiseBlock(nn.Module):
    """The denoising block of §4.4.1, Figure 4.4: y = x + BN(Conv1×1(op(x))).

    The 1×1 conv has no bias and BN's γ starts at 0, so a fresh block is
    exactly the identity (as in the authors' release). Table 4.1 ablations: ``conv=False`` gives
    y = x + op(x); ``residual=False`` gives y = BN(Conv1×1(op(x))), whose γ
    then starts at 1 (at 0 the block would output zeros). ``subsample`` is the
    §4.6.2 trick of the non-local ops; ``embed_channels`` is d of the Gaussian
    ops (C/2 by default). x: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int, op: str = "nonlocal_gaussian", *, conv: bool = True, residual: bool = True,
                 subsample: bool = False, embed_channels: int | None = None) -> None:
        super().__init__()
        self.channels = _check_channels(channels)
        self.op_name = op
        self.residual = bool(residual)
        self.subsample = bool(subsample)
        self.op = create_op(op, self.channels, subsample=self.subsample, embed_channels=embed_channels)
        if op in OWN_CONV_OPS and not residual:
            raise ValueError(f"op={op!r} is the branch of a residual block: it takes no residual=False")
        if conv and op not in OWN_CONV_OPS:
            self.conv = nn.Conv2d(self.channels, self.channels, 1, bias=False)
            self.bn = nn.BatchNorm2d(self.channels)
            if self.residual:
                nn.init.zeros_(self.bn.weight)
        else:
            self.conv = self.bn = None

    def forward(self, x: Tensor) -> Tensor:
        x = _check_features(x, "x", self.channels)
        y = self.op(x)
        if self.conv is not None:
            y = self.bn(self.conv(y))
        return x + y if self.residual else y

    def extra_repr(self) -> str:
        return (f"{self.channels}, op={self.op_name!r}, conv={self.conv is not None}, residual={self.residual}, "
                f"subsample={self.subsample}")


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (§4.6.1 compares blocks by their extra parameters)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
