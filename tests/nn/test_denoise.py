"""Feature denoising operations and block (§4.4, eqs. 4.1-4.3; ablations of §4.6)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from robustlab.nn.denoise import (
    DENOISE_OPS,
    BilateralDenoise,
    DenoiseBlock,
    MeanDenoise,
    MedianDenoise,
    NonLocalDenoise,
    NullDenoise,
    bilateral_filter,
    count_parameters,
    create_op,
    mean_filter,
    median_filter,
    nonlocal_means,
)

SHAPE = (2, 4, 5, 6)  # odd H: the sub-sampled map pools its last row alone


def randn(*shape, seed=0, dtype=torch.float64, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(requires_grad)


def embeddings(x, d=3, seed=1):
    n, _, h, w = x.shape
    return randn(n, d, h, w, seed=seed), randn(n, d, h, w, seed=seed + 1)


# ---------------------------------------------------------------- naive references, written from the equations


def naive_pool(t):
    """2×2 max pooling with stride 2; an odd last row/column is pooled alone."""
    n, c, h, w = t.shape
    out = t.new_empty(n, c, (h + 1) // 2, (w + 1) // 2)
    for a in range(out.shape[2]):
        for b in range(out.shape[3]):
            out[:, :, a, b] = t[:, :, 2 * a:2 * a + 2, 2 * b:2 * b + 2].amax(dim=(2, 3))
    return out


def naive_weighted_mean(x, theta, phi, g, softmax, neighbours):
    """y_i = 1/C Σ_{j ∈ neighbours(i)} f(x_i, x_j) g_j, f Gaussian (C = Σ f) or dot product (C = count)."""
    n, _, h, w = x.shape
    d = theta.shape[1]
    y = torch.zeros_like(x)
    for s in range(n):
        for i1 in range(h):
            for i2 in range(w):
                js = neighbours(i1, i2)
                num, norm = 0.0, 0.0
                for a, b in js:
                    dot = torch.dot(theta[s, :, i1, i2], phi[s, :, a, b])
                    f = torch.exp(dot / math.sqrt(d)) if softmax else dot
                    num = num + f * g[s, :, a, b]
                    norm = norm + f
                y[s, :, i1, i2] = num / (norm if softmax else len(js))
    return y


def naive_nonlocal(x, theta, phi, softmax, subsample):
    """Eq. (4.1) as a double loop over positions i and j."""
    g = naive_pool(x) if subsample else x
    phi = naive_pool(phi) if subsample else phi
    js = [(a, b) for a in range(g.shape[2]) for b in range(g.shape[3])]
    return naive_weighted_mean(x, theta, phi, g, softmax, lambda i1, i2: js)


def window(h, w, i1, i2, k):
    """Positions of the k×k window around (i1, i2) that lie inside an h×w map."""
    r = k // 2
    return [(a, b) for a in range(i1 - r, i1 + r + 1) for b in range(i2 - r, i2 + r + 1) if 0 <= a < h and 0 <= b < w]


def naive_bilateral(x, theta, phi, softmax, k):
    """Eq. (4.2): eq. (4.1) restricted to the window Ω(i), positions outside the map excluded."""
    h, w = x.shape[2:]
    return naive_weighted_mean(x, theta, phi, x, softmax, lambda i1, i2: window(h, w, i1, i2, k))


def naive_mean(x, k):
    h, w = x.shape[2:]
    y = torch.zeros_like(x)
    for i1 in range(h):
        for i2 in range(w):
            y[:, :, i1, i2] = torch.stack([x[:, :, a, b] for a, b in window(h, w, i1, i2, k)]).mean(0)
    return y


def naive_median(x, k):
    """Eq. (4.3) per channel over k×k, the edge replicated (indices clamped into the map)."""
    h, w = x.shape[2:]
    r = k // 2
    y = torch.zeros_like(x)
    for i1 in range(h):
        for i2 in range(w):
            vals = [x[:, :, min(max(a, 0), h - 1), min(max(b, 0), w - 1)]
                    for a in range(i1 - r, i1 + r + 1) for b in range(i2 - r, i2 + r + 1)]
            y[:, :, i1, i2] = torch.stack(vals, -1).median(-1).values
    return y


# Functional form of each registered op, given its module (functional ≡ module).
FUNCTIONAL = {
    "nonlocal_gaussian": lambda m, x: nonlocal_means(x, m.theta(x), m.phi(x), softmax=True, subsample=m.subsample),
    "nonlocal_dot": lambda m, x: nonlocal_means(x, softmax=False, subsample=m.subsample),
    "bilateral_gaussian": lambda m, x: bilateral_filter(x, m.theta(x), m.phi(x), softmax=True),
    "bilateral_dot": lambda m, x: bilateral_filter(x, softmax=False),
    "mean": lambda m, x: mean_filter(x),
    "median": lambda m, x: median_filter(x),
    "null": lambda m, x: x,
}
FUNCTIONS = [nonlocal_means, bilateral_filter, mean_filter, median_filter]


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces, forward and backward (C++ intermediates included)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


# ---------------------------------------------------------------- equations


def test_registry_names():
    assert DENOISE_OPS == ("nonlocal_gaussian", "nonlocal_dot", "bilateral_gaussian", "bilateral_dot",
                           "mean", "median", "null")
    assert set(FUNCTIONAL) == set(DENOISE_OPS), "a new op needs its functional form in FUNCTIONAL"


@pytest.mark.parametrize("embedded", [False, True])
@pytest.mark.parametrize("subsample", [False, True])
@pytest.mark.parametrize("softmax", [True, False])
def test_nonlocal_equals_double_loop(softmax, subsample, embedded):
    x = randn(*SHAPE)
    theta, phi = embeddings(x) if embedded else (None, None)
    y = nonlocal_means(x, theta, phi, softmax=softmax, subsample=subsample)
    ref = naive_nonlocal(x, x if theta is None else theta, x if phi is None else phi, softmax, subsample)
    torch.testing.assert_close(y, ref)


def test_gaussian_weights_are_a_softmax():
    x = randn(*SHAPE)
    # constant over positions: a weighted mean with weights summing to 1 returns x
    const = x[:, :, :1, :1].expand_as(x).contiguous()
    torch.testing.assert_close(nonlocal_means(const), const)
    # zero embeddings: uniform weights, i.e. the global mean over positions (or over the pooled positions)
    zero = torch.zeros(2, 3, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(nonlocal_means(x, zero, zero), x.mean((2, 3), keepdim=True).expand_as(x))
    pooled = naive_pool(x).mean((2, 3), keepdim=True).expand_as(x)
    torch.testing.assert_close(nonlocal_means(x, zero, zero, subsample=True), pooled)
    # zero embeddings locally: the bilateral filter becomes the mean filter, borders included
    torch.testing.assert_close(bilateral_filter(x, zero, zero), mean_filter(x))


def test_chunked_gaussian_equals_unchunked_and_fused():
    x = randn(*SHAPE, requires_grad=True)
    theta, phi = (t.requires_grad_(True) for t in embeddings(x))
    n, _, h, w = SHAPE
    row_bytes = 3 * n * h * w * 8  # three N×M float64 tensors per query row
    outs, grads = [], []
    for max_bytes, fused in ((None, False), (7 * row_bytes, False), (None, True)):  # chunks of 7, 7, 7, 7, 2
        with LargestTensor() as sizes:
            y = nonlocal_means(x, theta, phi, max_bytes=max_bytes, fused=fused)
            grads.append(torch.autograd.grad((y * randn(*SHAPE, seed=5)).sum(), (x, theta, phi)))
        outs.append(y)
        if max_bytes is not None:  # the bound holds in the backward too (checkpointed chunks)
            assert sizes.numel <= 7 * n * h * w
    for out, grad in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(out, outs[0])
        for a, b in zip(grad, grads[0]):
            torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(nonlocal_means(x, theta, phi, max_bytes=row_bytes, fused=False), outs[0])


@pytest.mark.parametrize("subsample", [False, True])
def test_fused_gaussian_never_builds_the_affinity(subsample):
    x = randn(2, 4, 16, 16, requires_grad=True)
    theta, phi = (t.requires_grad_(True) for t in embeddings(x))
    affinity = 2 * 256 * (64 if subsample else 256)
    for fused in (True, False):
        with LargestTensor() as sizes:
            y = nonlocal_means(x, theta, phi, subsample=subsample, fused=fused)
            y.sum().backward()
        if fused:
            assert sizes.numel < affinity / 4
        else:  # the detector does see the affinity of the unchunked path
            assert sizes.numel >= affinity
    torch.testing.assert_close(y, naive_nonlocal(x, theta, phi, True, subsample))


def test_fused_gaussian_float32_matches_the_chunked_path():
    """The default float32 path (the one training takes) against the chunked reference, values and gradients."""
    x = randn(3, 16, 14, 14, dtype=torch.float32, requires_grad=True)
    theta, phi = (t.float().requires_grad_(True) for t in embeddings(x, d=8))
    g = randn(3, 16, 14, 14, seed=9, dtype=torch.float32)
    results = []
    for fused in (True, False):
        y = nonlocal_means(x, theta, phi, fused=fused)
        results.append((y, *torch.autograd.grad((y * g).sum(), (x, theta, phi))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_without_a_fused_kernel_the_chunked_path_runs(monkeypatch):
    from robustlab.nn import denoise

    def no_kernel(*args, **kwargs):
        raise RuntimeError("No available kernel. Aborting execution.")

    x = randn(*SHAPE)
    expected = nonlocal_means(x, fused=False)
    monkeypatch.setattr(denoise, "_NO_FUSED_KERNEL", set())
    monkeypatch.setattr(denoise.F, "scaled_dot_product_attention", no_kernel)
    torch.testing.assert_close(nonlocal_means(x), expected)
    assert denoise._NO_FUSED_KERNEL == {("cpu", torch.float64, 8, False)}  # asked once, remembered

    def broken(*args, **kwargs):
        raise RuntimeError("something else went wrong")

    monkeypatch.setattr(denoise, "_NO_FUSED_KERNEL", set())
    monkeypatch.setattr(denoise.F, "scaled_dot_product_attention", broken)
    with pytest.raises(RuntimeError, match="something else"):  # other errors are not swallowed
        nonlocal_means(x)


def test_gaussian_budget_too_small_says_how_much_is_needed():
    x = randn(*SHAPE)
    needed = 3 * 2 * 30 * 8 / 2**20
    with pytest.raises(MemoryError, match=rf"{needed:.3f} MiB.*\(2, 4, 5, 6\)"):
        nonlocal_means(x, max_bytes=100, fused=False)
    with pytest.raises(MemoryError, match="MiB"):
        NonLocalDenoise(4, max_bytes=100, fused=False).double()(x)
    nonlocal_means(x, max_bytes=100)  # the fused kernels never hold the affinity


@pytest.mark.parametrize("subsample", [False, True])
def test_dot_product_never_builds_the_affinity(subsample):
    x = randn(*SHAPE, requires_grad=True)  # C = 4 <= HW = 30
    n, _, h, w = SHAPE
    m = 9 if subsample else h * w
    affinity = n * h * w * m
    with LargestTensor() as sizes:
        nonlocal_means(x, softmax=False, subsample=subsample).sum().backward()
    assert sizes.numel < affinity
    with LargestTensor() as control:  # the detector does see an affinity when one is built
        nonlocal_means(x, softmax=True, subsample=subsample, fused=False).sum().backward()
    assert control.numel >= affinity


def test_dot_product_with_many_channels_avoids_the_channel_matrix():
    x = randn(1, 16, 2, 3)  # C = 16 > HW = 6: the 6×6 affinity is the small side
    with LargestTensor() as sizes:
        y = nonlocal_means(x, softmax=False)
    assert sizes.numel < 16 * 16
    torch.testing.assert_close(y, naive_nonlocal(x, x, x, False, False))


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("embedded", [False, True])
@pytest.mark.parametrize("softmax", [True, False])
def test_bilateral_equals_window_loop(softmax, embedded, kernel_size):
    x = randn(*SHAPE)
    theta, phi = embeddings(x) if embedded else (x, x)
    y = bilateral_filter(x, theta if embedded else None, phi if embedded else None, softmax=softmax,
                         kernel_size=kernel_size)
    torch.testing.assert_close(y, naive_bilateral(x, theta, phi, softmax, kernel_size))


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_mean_and_median_equal_window_loops(kernel_size):
    x = randn(*SHAPE)
    torch.testing.assert_close(mean_filter(x, kernel_size), naive_mean(x, kernel_size))
    torch.testing.assert_close(median_filter(x, kernel_size), naive_median(x, kernel_size), rtol=0, atol=0)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_median_equals_scipy_nearest(kernel_size):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = randn(*SHAPE)
    ref = ndimage.median_filter(x.numpy(), size=(1, 1, kernel_size, kernel_size), mode="nearest")
    assert torch.equal(median_filter(x, kernel_size), torch.from_numpy(ref))


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("max_bytes, fused", [(None, True), (None, False), (3 * 12 * 8 * 5, False)])
@pytest.mark.parametrize("subsample", [False, True])
@pytest.mark.parametrize("softmax", [True, False])
def test_gradcheck_nonlocal(softmax, subsample, max_bytes, fused):  # fused, unchunked, chunks of 5 rows
    x = randn(1, 3, 3, 4, requires_grad=True)
    theta, phi = (t.requires_grad_(True) for t in embeddings(x, d=2))
    fn = lambda x, t, p: nonlocal_means(x, t, p, softmax=softmax, subsample=subsample, max_bytes=max_bytes,
                                        fused=fused)
    assert torch.autograd.gradcheck(fn, (x, theta, phi))
    assert torch.autograd.gradcheck(lambda x: nonlocal_means(x, softmax=softmax, subsample=subsample), (x,))


@pytest.mark.parametrize("softmax", [True, False])
def test_gradcheck_bilateral(softmax):
    x = randn(1, 3, 3, 4, requires_grad=True)
    theta, phi = (t.requires_grad_(True) for t in embeddings(x, d=2))
    assert torch.autograd.gradcheck(lambda x, t, p: bilateral_filter(x, t, p, softmax=softmax), (x, theta, phi))
    assert torch.autograd.gradcheck(lambda x: bilateral_filter(x, softmax=softmax), (x,))


def test_gradcheck_mean():
    assert torch.autograd.gradcheck(mean_filter, (randn(1, 2, 4, 5, requires_grad=True),))


def test_median_gradient_goes_to_the_selected_element():
    x = torch.randperm(2 * 3 * 5 * 6, generator=torch.Generator().manual_seed(0)).double().view(2, 3, 5, 6)
    x.requires_grad_(True)  # distinct values: each median has one source element
    y = median_filter(x)
    weight = randn(*y.shape, seed=3)
    (grad,) = torch.autograd.grad((y * weight).sum(), x)
    expected = torch.zeros_like(x)
    for s, c, i1, i2 in torch.cartesian_prod(*(torch.arange(k) for k in y.shape)).tolist():
        expected[s, c][x[s, c] == y[s, c, i1, i2]] += weight[s, c, i1, i2]
    torch.testing.assert_close(grad, expected)


# ---------------------------------------------------------------- modules and the registry


@pytest.mark.parametrize("op", DENOISE_OPS)
def test_functional_equals_module(op):
    m = create_op(op, 4).double()
    x = randn(*SHAPE)
    assert torch.equal(m(x), FUNCTIONAL[op](m, x))


@pytest.mark.parametrize("op", DENOISE_OPS)
def test_op_smoke(op):
    m = create_op(op, 4)
    x = randn(*SHAPE, dtype=torch.float32, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_subsampled_module_and_block():
    m = create_op("nonlocal_gaussian", 4, subsample=True).double()
    x = randn(*SHAPE)
    assert m.subsample
    assert torch.equal(m(x), nonlocal_means(x, m.theta(x), m.phi(x), subsample=True))
    block = DenoiseBlock(4, "nonlocal_dot", subsample=True)
    assert block.op.subsample and "subsample=True" in repr(block)


def test_module_classes_and_repr():
    kinds = {"nonlocal_gaussian": NonLocalDenoise, "nonlocal_dot": NonLocalDenoise,
             "bilateral_gaussian": BilateralDenoise, "bilateral_dot": BilateralDenoise,
             "mean": MeanDenoise, "median": MedianDenoise, "null": NullDenoise}
    for op, cls in kinds.items():
        assert type(create_op(op, 4)) is cls
    r = repr(DenoiseBlock(4, "median", conv=False))
    assert "op='median'" in r and "conv=False" in r and "residual=True" in r


# ---------------------------------------------------------------- the block (§4.4.1, Table 4.1, §4.6.1)


@pytest.mark.parametrize("op", DENOISE_OPS)
def test_fresh_block_is_identity_and_trainable(op):
    block = DenoiseBlock(8, op).double()
    x = randn(4, 8, 5, 6)
    assert torch.equal(block(x), x)
    assert torch.equal(block.eval()(x), x)
    block.train()
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    target = randn(4, 8, 5, 6, seed=7)
    for _ in range(2):
        opt.zero_grad()
        (block(x) - target).square().mean().backward()
        opt.step()
    assert (block(x) - x).abs().max() > 1e-3
    for name, p in block.op.named_parameters():  # once γ != 0 the gradient reaches the embeddings
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("op", DENOISE_OPS)
def test_ablation_variants_compute_their_formula(op):
    x = randn(4, 8, 5, 6)
    no_conv = DenoiseBlock(8, op, conv=False).double()
    assert no_conv.conv is None and count_parameters(no_conv) == count_parameters(no_conv.op)
    torch.testing.assert_close(no_conv(x), x + FUNCTIONAL[op](no_conv.op, x))
    no_res = DenoiseBlock(8, op, residual=False).double()
    assert torch.equal(no_res.bn.weight, torch.ones(8, dtype=torch.float64))  # γ = 0 would output zeros
    assert torch.equal(DenoiseBlock(8, op).bn.weight, torch.zeros(8))
    torch.testing.assert_close(no_res(x), no_res.bn(no_res.conv(FUNCTIONAL[op](no_res.op, x))))


def test_parameter_counts_section_4_6_1():
    c = 8
    extra = {op: count_parameters(DenoiseBlock(c, op)) for op in DENOISE_OPS}
    base = c * c + 2 * c  # 1×1 conv without bias + BN (γ, β)
    for op in ("null", "nonlocal_dot", "bilateral_dot", "mean", "median"):
        assert extra[op] == base, op
    embeddings_ = 2 * (c * (c // 2) + c // 2)  # θ and φ: 1×1 convs C -> C/2 with bias
    assert extra["nonlocal_gaussian"] == extra["bilateral_gaussian"] == base + embeddings_
    assert count_parameters(DenoiseBlock(c, embed_channels=2)) == base + 2 * (c * 2 + 2)
    frozen = DenoiseBlock(c).requires_grad_(False)
    assert count_parameters(frozen) == 0


def test_embedding_init():
    m = NonLocalDenoise(512)
    for conv in (m.theta, m.phi):
        assert conv.out_channels == 256 and conv.kernel_size == (1, 1)
        assert abs(conv.weight.std().item() - 0.01) < 1e-3 and torch.equal(conv.bias, torch.zeros(256))


# ---------------------------------------------------------------- errors


def test_unknown_op_lists_the_names():
    with pytest.raises(ValueError, match="op must be one of nonlocal_gaussian, .*null, bottleneck; got 'gaussian'"):
        create_op("gaussian", 4)
    with pytest.raises(ValueError, match="op must be one of"):
        DenoiseBlock(4, "bilateral")


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_functions_reject_bad_input(fn):
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, H, W\).*rank 3"):
        fn(randn(4, 5, 6))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        fn(torch.ones(SHAPE, dtype=torch.long))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fn([[1.0]])


@pytest.mark.parametrize("op", DENOISE_OPS)
def test_modules_reject_bad_input(op):
    m = create_op(op, 4)
    with pytest.raises(ValueError, match="x has 3 channels.*channels=4"):
        m(torch.randn(2, 3, 5, 6))
    with pytest.raises(ValueError, match="rank 4"):
        m(torch.randn(4, 5, 6))
    with pytest.raises(ValueError, match="x has 3 channels.*channels=4"):
        DenoiseBlock(4, op)(torch.randn(2, 3, 5, 6))


@pytest.mark.parametrize("op", ["bilateral_gaussian", "bilateral_dot", "mean", "median", "null"])
def test_subsample_with_a_local_op_is_an_error(op):
    with pytest.raises(ValueError, match="subsample=True applies to the non-local ops only"):
        create_op(op, 4, subsample=True)
    with pytest.raises(ValueError, match="subsample=True applies to the non-local ops only"):
        DenoiseBlock(4, op, subsample=True)
    create_op(op, 4, subsample=False)  # off is fine


def test_other_bad_arguments():
    x = randn(*SHAPE)
    theta, phi = embeddings(x)
    with pytest.raises(ValueError, match="theta must have shape"):
        nonlocal_means(x, theta[:, :, :4], phi)
    with pytest.raises(ValueError, match="theta and phi must have the same number of channels"):
        bilateral_filter(x, theta, phi[:, :2])
    with pytest.raises(ValueError, match="dtype"):
        nonlocal_means(x, theta.float(), phi.float())
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        mean_filter(x, 2)
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        MedianDenoise(4, kernel_size=0)
    with pytest.raises(ValueError, match="embed_channels applies to the Gaussian"):
        create_op("nonlocal_dot", 4, embed_channels=2)
    with pytest.raises(ValueError, match="embed_channels=2 applies to the Gaussian ops only"):
        DenoiseBlock(4, "mean", embed_channels=2)
    with pytest.raises(ValueError, match="max_bytes must be >= 1"):
        nonlocal_means(x, max_bytes=0)
    with pytest.raises(TypeError, match="fused must be True or False; got 'yes'"):
        nonlocal_means(x, fused="yes")
    with pytest.raises(TypeError, match="fused must be True or False"):
        NonLocalDenoise(4, fused=1)
    with pytest.raises(ValueError, match="channels must be >= 1"):
        DenoiseBlock(0)
    assert isinstance(DenoiseBlock(1).op.theta, nn.Conv2d)  # C = 1 still embeds to one channel


def test_bottleneck_capacity_control_is_a_standard_bottleneck_and_starts_as_identity():
    """§4.6.1's "+4 bottleneck" (ResNet-164): x + branch(x), branch = 1×1 (C→C/4), 3×3, 1×1 (C/4→C)
    with BN after each; no extra 1×1, no denoising op."""
    from robustlab.nn.denoise import DenoiseBlock

    block = DenoiseBlock(64, "bottleneck").eval()
    assert block.conv is None
    convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [(16, 64, 1, 1), (16, 16, 3, 3), (64, 16, 1, 1)]
    x = torch.randn(2, 64, 6, 6)
    assert torch.equal(block(x), x)  # γ of the last BN starts at 0
    with pytest.raises(ValueError, match="residual"):
        DenoiseBlock(64, "bottleneck", residual=False)


def test_table_4_1_ablations_build_through_create_model():
    import robustlab as rl

    def blocks(**kw):
        m = rl.models.create_model("resnet20_cifar", 10, **kw)
        return [b for b in m.modules() if type(b).__name__ == "DenoiseBlock"]

    no_conv = blocks(denoise="nonlocal_gaussian", denoise_options={"conv": False})
    no_res = blocks(denoise="nonlocal_gaussian", denoise_options={"residual": False})
    every = blocks(denoise="nonlocal_gaussian", denoise_where="all", denoise_options={"subsample": True})
    assert len(no_conv) == len(no_res) == 3 and len(every) == 9  # 3 stages; 3 residual blocks each
    assert all(b.conv is None for b in no_conv) and not any(b.residual for b in no_res)
    assert all(b.subsample for b in every)
