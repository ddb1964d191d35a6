"""Chapter 4's references against PyTorch in float64, and its checks against right and wrong answers.

- conv2d (loop, unfold and channels-last im2col) vs F.conv2d, max/avg pooling vs
  F.max_pool2d / F.avg_pool2d, over random shapes, strides, paddings (hypothesis);
- the output-size formula vs the shapes PyTorch produces; conv_params vs nn.Conv2d;
- the architectures' parameter counts vs the published (torchvision) ones, built on the
  meta device; residual blocks' shapes; augmentation; the 1-D CNN and the guide's CNN;
- the explorer builds and redraws headlessly;
- each check passes the reference (visible and hidden) and fails plausible wrong
  implementations with a message that names the mistake.
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from companion import cnn as C  # noqa: E402
from companion.checks import CheckFailed  # noqa: E402
from companion.checks import ch04 as check  # noqa: E402

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ====================================================================== convolution and pooling

@st.composite
def conv_setups(draw):
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 4))
    o = draw(st.integers(1, 5))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    square = draw(st.booleans())
    if square:  # an int for stride, padding and dilation: the same along both axes
        sw, pw, dw = sh, ph, dh
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 12))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 12))
    stride = sh if square else (sh, sw)
    padding = ph if square else (ph, pw)
    dilation = dh if square else (dh, dw)
    return (n, c, h, w), (o, c, kh, kw), stride, padding, dilation, draw(st.booleans()), draw(st.integers(0, 2**16))


@settings(max_examples=120, deadline=None)
@given(conv_setups())
def test_conv2d_matches_torch(setup):
    xs, ws, stride, padding, dilation, with_bias, seed = setup
    g = gen(seed)
    x, w = torch.randn(xs, generator=g, dtype=F64), torch.randn(ws, generator=g, dtype=F64)
    b = torch.randn(ws[0], generator=g, dtype=F64) if with_bias else None
    expected = F.conv2d(x, w, b, stride, padding, dilation)
    got = C.conv2d(x, w, b, stride, padding, dilation)
    assert got.shape == expected.shape and got.dtype == F64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    if dilation in (1, (1, 1)):
        torch.testing.assert_close(C.conv2d_unfold(x, w, b, stride, padding), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(C.conv2d_loop(x, w, b, stride, padding), expected, rtol=1e-12, atol=1e-12)
    # the output-size formula gives PyTorch's shape
    s, p, d = C._pair(stride), C._pair(padding), C._pair(dilation)
    assert expected.shape[2] == C.conv_output_size(xs[2], ws[2], s[0], p[0], d[0])
    assert expected.shape[3] == C.conv_output_size(xs[3], ws[3], s[1], p[1], d[1])


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("kernel, dilation", [((3, 3), 1), ((2, 4), 1), ((3, 2), (2, 3)), ((1, 5), 2)])
def test_conv2d_same_and_valid_padding(kernel, dilation):
    g = gen(7)
    x, w = torch.randn(2, 3, 9, 12, generator=g, dtype=F64), torch.randn(4, 3, *kernel, generator=g, dtype=F64)
    for padding in ("same", "valid"):
        torch.testing.assert_close(C.conv2d(x, w, None, 1, padding, dilation), F.conv2d(x, w, None, 1, padding, dilation),
                                   rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        C.conv2d(x, w, padding="same", stride=2)


def test_conv2d_unbatched_gradients_and_float32():
    g = gen(3)
    x = torch.randn(3, 10, 10, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=F64, requires_grad=True)
    ours = C.conv2d(x, w, b, stride=2, padding=1)
    theirs = F.conv2d(x, w, b, stride=2, padding=1)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    for a, t in zip(torch.autograd.grad(ours.square().sum(), (x, w, b)), torch.autograd.grad(theirs.square().sum(), (x, w, b))):
        torch.testing.assert_close(a, t, rtol=1e-10, atol=1e-10)
    x32, w32 = torch.randn(4, 16, 28, 28, generator=g), torch.randn(8, 16, 3, 3, generator=g)
    torch.testing.assert_close(C.conv2d(x32, w32, padding=1), F.conv2d(x32, w32, padding=1), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="channels"):
        C.conv2d(x32, torch.randn(8, 3, 3, 3))


@st.composite
def pool_setups(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.one_of(st.none(), st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h, w = draw(st.integers(max(1, kh - 2 * ph), 11)), draw(st.integers(max(1, kw - 2 * pw), 11))
    square = draw(st.booleans()) and kh == kw and ph == pw
    kernel = kh if square else (kh, kw)
    padding = ph if square else (ph, pw)
    return (draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w), kernel, stride, padding, draw(st.integers(0, 2**16))


@settings(max_examples=120, deadline=None)
@given(pool_setups())
def test_pooling_matches_torch(setup):
    shape, kernel, stride, padding, seed = setup
    x = torch.randn(shape, generator=gen(seed), dtype=F64) - 1.0  # mostly negative: padding must never win
    expected = F.max_pool2d(x, kernel, stride, padding)
    torch.testing.assert_close(C.max_pool2d(x, kernel, stride, padding), expected, rtol=0, atol=0)
    torch.testing.assert_close(C.max_pool2d_loop(x, kernel, stride, padding), expected, rtol=0, atol=0)
    torch.testing.assert_close(C.avg_pool2d(x, kernel, stride, padding), F.avg_pool2d(x, kernel, stride, padding),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(C.max_pool2d(x[0], kernel, stride, padding), expected[0], rtol=0, atol=0)


def test_max_pool_gradient_goes_to_the_max():
    x = torch.randn(2, 3, 6, 6, generator=gen(1), dtype=F64, requires_grad=True)
    (a,) = torch.autograd.grad(C.max_pool2d(x, 2).sum(), x)
    (b,) = torch.autograd.grad(F.max_pool2d(x, 2).sum(), x)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("n, k, s, p, d", [(28, 3, 1, 1, 1), (28, 3, 2, 0, 1), (224, 11, 4, 2, 1), (7, 2, 2, 0, 1),
                                           (10, 3, 1, 0, 2), (224, 7, 2, 3, 1), (5, 5, 1, 0, 1), (50, 4, 2, 1, 3)])
def test_output_size_matches_torch_shapes(n, k, s, p, d):
    layer = nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d)
    assert layer(torch.zeros(1, 1, n, n)).shape[-1] == C.conv_output_size(n, k, s, p, d)
    assert isinstance(C.conv_output_size(n, k, s, p, d), int)


@pytest.mark.parametrize("i, o, k, bias, groups", [(1, 6, 5, True, 1), (3, 64, 3, True, 1), (64, 128, 3, False, 1),
                                                   (96, 256, 5, True, 2), (32, 32, 3, True, 32), (8, 16, (3, 5), False, 4)])
def test_conv_params_matches_nn_conv2d(i, o, k, bias, groups):
    assert C.conv_params(i, o, k, bias, groups) == C.count_params(nn.Conv2d(i, o, k, bias=bias, groups=groups))


def test_benchmark_reports_a_ratio():
    result = C.benchmark_conv2d(shape=(2, 4, 10, 10), out_channels=3, repeats=3)
    assert set(result) == {"companion", "torch", "torch_im2col", "ratio", "max_abs_diff"}
    assert result["ratio"] > 0 and result["max_abs_diff"] < 1e-4


# ====================================================================== images and augmentation

def test_sample_photo_and_filters():
    img = C.sample_photo()
    assert img.shape == (427, 640) and 0 <= img.min() and img.max() <= 1
    assert C.sample_photo(gray=False, scale=4).shape == (3, 106, 160)
    small = C.sample_photo(scale=4)
    for name in C.FILTERS:
        out = C.apply_filter(small, name)
        assert out.shape == small.shape
        torch.testing.assert_close(out, F.conv2d(small[None, None], C.filter_kernel(name), padding=1)[0, 0])
    torch.testing.assert_close(C.apply_filter(small, "identity"), small)
    # a vertical step edge: Sobel x responds, Sobel y does not
    step = torch.zeros(8, 8)
    step[:, 4:] = 1
    assert C.apply_filter(step, "Sobel x (vertical edges)", padding=0).abs().max() == 4
    assert C.apply_filter(step, "Sobel y (horizontal edges)", padding=0).abs().max() == 0


def test_augmentation_is_seeded_shape_preserving_and_identity_at_zero():
    x = torch.rand(6, 1, 28, 28, generator=gen(0))
    a = C.random_shift_rotate(x, generator=gen(1))
    b = C.random_shift_rotate(x, generator=gen(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, x)
    torch.testing.assert_close(C.random_shift_rotate(x, 0.0, 0.0, generator=gen(2)), x, rtol=1e-5, atol=1e-5)
    # a whole-pixel shift is a roll with zeros coming in
    img = torch.zeros(1, 1, 10, 10)
    img[0, 0, 4, 4] = 1.0
    theta = torch.tensor([[[1.0, 0.0, 0.2], [0.0, 1.0, 0.0]]])  # 0.2 of the half-width = 1 pixel
    moved = F.grid_sample(img, F.affine_grid(theta, [1, 1, 10, 10], align_corners=False), align_corners=False)
    assert moved[0, 0, 4, 3] == pytest.approx(1.0)
    batches = C.AugmentedBatches(x, torch.arange(6), batch_size=4, seed=0)
    first, second = list(batches), list(batches)
    assert len(batches) == 2 and [len(yb) for _, yb in first] == [4, 2]
    assert not torch.equal(first[0][0], second[0][0])  # re-augmented every epoch


def test_chapter_models_shapes_and_sizes():
    assert C.guide_cnn()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    model = C.cnn1d()
    assert model(torch.zeros(3, 40)).shape == (3, 10)
    assert 4000 < C.count_params(model) < 6000
    assert C.lenet5()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


# ====================================================================== the architecture tour

@pytest.mark.parametrize("name, build", [
    ("LeNet-5", lambda: C.lenet5()),
    ("AlexNet (torchvision layout)", lambda: C.alexnet()),
    ("VGG-16", lambda: C.vgg16()),
    ("ResNet-50", lambda: C.resnet50()),
    ("EfficientNet-B0", lambda: C.efficientnet(1.0, 1.0)),
    ("EfficientNet-B1", lambda: C.efficientnet(1.0, 1.1)),
    ("EfficientNet-B2", lambda: C.efficientnet(1.1, 1.2)),
    ("EfficientNet-B3", lambda: C.efficientnet(1.2, 1.4)),
])
def test_parameter_counts_match_the_published_ones(name, build):
    with torch.device("meta"):
        model = build()
    published = C.PUBLISHED[name][0]
    if name == "LeNet-5":
        assert C.count_params(model) == 61_706 and abs(C.count_params(model) - published) / published < 0.05
    else:
        assert C.count_params(model) == published


def test_original_alexnet_and_inception_counts():
    with torch.device("meta"):
        assert C.count_params(C.alexnet(original=True)) == 60_965_224
    module = C.InceptionModule(192, 64, 96, 128, 16, 32, 32)
    assert C.count_params(module) == 163_696
    assert module(torch.zeros(1, 192, 28, 28)).shape == (1, 256, 28, 28)


def test_forward_shapes_on_the_meta_device_and_macs():
    with torch.device("meta"):
        r50, vgg = C.resnet50(), C.vgg16()
        assert r50(torch.empty(2, 3, 224, 224)).shape == (2, 1000)
        assert vgg(torch.empty(1, 3, 224, 224)).shape == (1, 1000)
    assert C.count_macs(r50, (1, 3, 224, 224)) == pytest.approx(4.09e9, rel=0.01)   # the paper's 3.8-4.1 GFLOPs
    assert C.count_macs(vgg, (1, 3, 224, 224)) == pytest.approx(15.47e9, rel=0.01)


@pytest.mark.parametrize("block, args, x_shape, out_shape", [
    (C.BasicBlock, (8, 8, 1), (2, 8, 6, 6), (2, 8, 6, 6)),
    (C.BasicBlock, (8, 16, 2), (2, 8, 6, 6), (2, 16, 3, 3)),
    (C.Bottleneck, (64, 64, 1), (2, 64, 8, 8), (2, 256, 8, 8)),
    (C.Bottleneck, (256, 128, 2), (2, 256, 8, 8), (2, 512, 4, 4)),
])
def test_residual_blocks(block, args, x_shape, out_shape):
    b = block(*args)
    assert b(torch.randn(x_shape)).shape == out_shape
    identity = args[0] == out_shape[1] and args[2] == 1
    assert isinstance(b.shortcut, nn.Identity) == identity


def test_residual_block_is_identity_plus_relu_when_the_branch_is_zero():
    block = C.BasicBlock(4, 4).eval()
    with torch.no_grad():
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(block(x), F.relu(x))


def test_compound_scaling_and_scaled_cnn():
    s = C.compound_scaling(1)
    assert (s["depth"], s["width"], s["resolution"]) == pytest.approx((1.2, 1.1, 1.15))
    assert s["flops"] == pytest.approx(1.92, abs=0.01)
    macs = []
    for phi in range(4):
        model, res = C.scaled_cnn(phi)
        assert model(torch.zeros(1, 1, res, res)).shape == (1, 10)
        macs.append(C.count_macs(model, (1, 1, res, res)))
    ratios = [m / macs[0] for m in macs]
    assert ratios == sorted(ratios) and 1.5 < ratios[1] < 2.5 and 5 < ratios[3] < 10


# ====================================================================== the explorer

def _controls(box):
    found, stack = [], [box]
    while stack:
        widget = stack.pop()
        found.append(widget)
        stack.extend(getattr(widget, "children", ()))
    return found


def test_conv_explorer_builds_and_redraws():
    import ipywidgets as w
    import matplotlib.pyplot as plt

    plt.close("all")
    box = C.conv_explorer(C.sample_photo(scale=8))
    assert isinstance(box, w.VBox)
    controls = _controls(box)
    filt = next(c for c in controls if isinstance(c, w.Dropdown) and c.description == "filter")
    pool = next(c for c in controls if isinstance(c, w.Dropdown) and c.description == "then pool")
    stride = next(c for c in controls if isinstance(c, w.IntSlider) and c.description == "stride")
    padding = next(c for c in controls if isinstance(c, w.IntSlider) and c.description == "padding")
    assert len(plt.get_fignums()) == 1
    for name in filt.options[:3]:
        filt.value = name
    stride.value, padding.value = 3, 0
    h, wd = 53, 80
    expected = (C.conv_output_size(h, 3, 3, 0), C.conv_output_size(wd, 3, 3, 0))
    assert str(expected) in plt.gcf().axes[2].get_title()
    pool.value = "max 2x2"
    assert str((expected[0] // 2, expected[1] // 2)) in plt.gcf().axes[2].get_title()
    plt.close("all")


# ====================================================================== checks: right answers pass

def _conv2d_plain_unfold(x, weight, bias=None, stride=1, padding=0):
    return C.conv2d_unfold(x, weight, bias, stride, padding)


def _pool_as_strided(x, kernel_size, stride=None, padding=0):
    kh, kw = C._pair(kernel_size)
    sh, sw = C._pair(stride if stride is not None else kernel_size)
    ph, pw = C._pair(padding)
    x = F.pad(x, (pw, pw, ph, ph), value=-math.inf)
    n, c, h, w = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    s = x.stride()
    win = x.as_strided((n, c, oh, ow, kh, kw), (s[0], s[1], s[2] * sh, s[3] * sw, s[2], s[3]))
    return win.amax(dim=(-2, -1))


class _TorchvisionStyleBlock(nn.Module):
    """Same maths as the reference, other names: a 'downsample' attribute and an explicit ReLU module."""

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


@pytest.mark.parametrize("hidden", [False, True])
def test_references_pass_every_check(hidden, capsys):
    cpu = torch.device("cpu")
    assert check.conv_output_size(C.conv_output_size, hidden=hidden) is None
    check.conv_output_size(lambda n, kernel, stride=1, padding=0, dilation=1:
                           math.floor((n + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1, hidden=hidden)
    assert check.conv2d(C.conv2d, hidden=hidden, device=cpu) is None
    check.conv2d(C.conv2d_loop, hidden=hidden, device=cpu)
    check.conv2d(_conv2d_plain_unfold, hidden=hidden, device=cpu)
    check.conv2d(F.conv2d, hidden=hidden, device=cpu)  # PyTorch's own, passed directly, agrees
    assert check.max_pool2d(C.max_pool2d, hidden=hidden, device=cpu) is None
    check.max_pool2d(C.max_pool2d_loop, hidden=hidden, device=cpu)
    check.max_pool2d(_pool_as_strided, hidden=hidden, device=cpu)
    assert check.conv_params(C.conv_params, hidden=hidden) is None
    assert check.basic_block(C.BasicBlock, hidden=hidden, device=cpu) is None
    check.basic_block(_TorchvisionStyleBlock, hidden=hidden, device=cpu)
    out = capsys.readouterr()
    assert out.err == ""
    assert out.out.count("\u2714") == 12


def test_checks_leave_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check.basic_block(C.BasicBlock, device="cpu")
    check.conv2d(C.conv2d, device="cpu")
    assert torch.equal(torch.rand(3), expected)


# ====================================================================== checks: wrong answers fail helpfully

def _not_written(*args, **kwargs):
    raise NotImplementedError()


@pytest.mark.parametrize("run", [
    lambda: check.conv_output_size(_not_written), lambda: check.conv2d(_not_written),
    lambda: check.max_pool2d(_not_written), lambda: check.conv_params(_not_written),
    lambda: check.basic_block(_not_written),
])
def test_unwritten_exercises_fail_with_the_friendly_message(run):
    with pytest.raises(CheckFailed, match="not written yet"):
        run()


def _size(fn):
    return lambda n, kernel, stride=1, padding=0, dilation=1: fn(n, kernel, stride, padding, dilation)


def _calls_torch_conv(x, weight, bias=None, stride=1, padding=0):
    return F.conv2d(x, weight, bias, stride, padding)


def _calls_torch_pool(x, kernel_size, stride=None, padding=0):
    return F.max_pool2d(x, kernel_size, stride, padding)


def _block(forward, *, no_projection=False, biased=False, always_project=False):
    class Wrong(C.BasicBlock):
        def __init__(self, in_channels, out_channels, stride=1):
            super().__init__(in_channels, out_channels, stride)
            if biased:
                self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1)
                self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
            if no_projection:
                self.shortcut = nn.Identity()
            if always_project:
                self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                              nn.BatchNorm2d(out_channels))

        def forward(self, x):
            return forward(self, x)

    return Wrong


def _relu_before_add(b, x):
    return F.relu(b.bn2(b.conv2(F.relu(b.bn1(b.conv1(x)))))) + b.shortcut(x)


def _no_shortcut(b, x):
    return F.relu(b.bn2(b.conv2(F.relu(b.bn1(b.conv1(x))))))


def _conv_relu_bn(b, x):
    return F.relu(b.bn2(b.conv2(b.bn1(F.relu(b.conv1(x))))) + b.shortcut(x))


def _inplace_on_input(b, x):
    out = b.bn2(b.conv2(F.relu(b.bn1(b.conv1(x)))))
    x += out if x.shape == out.shape else 0
    return F.relu(x if x.shape == out.shape else out + b.shortcut(x))


WRONG = [
    ("size ceil", lambda h: check.conv_output_size(_size(
        lambda n, k, s, p, d: math.ceil((n + 2 * p - d * (k - 1) - 1) / s) + 1), hidden=h), "round \\*down\\*"),
    ("size no padding", lambda h: check.conv_output_size(_size(
        lambda n, k, s, p, d: (n - d * (k - 1) - 1) // s + 1), hidden=h), "padding is ignored"),
    ("size one-sided padding", lambda h: check.conv_output_size(_size(
        lambda n, k, s, p, d: (n + p - d * (k - 1) - 1) // s + 1), hidden=h), "both"),
    ("size float", lambda h: check.conv_output_size(_size(
        lambda n, k, s, p, d: (n + 2 * p - d * (k - 1) - 1) / s + 1), hidden=h), "//"),
    ("size no dilation", lambda h: check.conv_output_size(_size(
        lambda n, k, s, p, d: (n + 2 * p - k) // s + 1), hidden=h), "dilat"),
    ("size float but whole", lambda h: check.conv_output_size(_size(
        lambda n, k, s, p, d: float(C.conv_output_size(n, k, s, p, d))), hidden=h), "Python int"),
    ("conv flipped", lambda h: check.conv2d(
        lambda x, w, b=None, stride=1, padding=0: C.conv2d(x, w.flip(-1, -2), b, stride, padding), hidden=h),
     "cross-correlation"),
    ("conv no padding", lambda h: check.conv2d(
        lambda x, w, b=None, stride=1, padding=0: C.conv2d(x, w, b, stride, 0), hidden=h), "padding is missing"),
    ("conv no stride", lambda h: check.conv2d(
        lambda x, w, b=None, stride=1, padding=0: C.conv2d(x, w, b, 1, padding), hidden=h), "stride is ignored"),
    ("conv no bias", lambda h: check.conv2d(
        lambda x, w, b=None, stride=1, padding=0: C.conv2d(x, w, None, stride, padding), hidden=h), "bias is missing"),
    ("conv calls torch", lambda h: check.conv2d(_calls_torch_conv, hidden=h), "PyTorch's own"),
    ("pool zero padding", lambda h: check.max_pool2d(
        lambda x, k, stride=None, padding=0: C.max_pool2d(F.pad(x, (padding,) * 4), k, stride) if isinstance(padding, int)
        else C.max_pool2d(x, k, stride, padding), hidden=h), "-inf"),
    ("pool stride 1", lambda h: check.max_pool2d(
        lambda x, k, stride=None, padding=0: C.max_pool2d(x, k, stride or 1, padding), hidden=h), "default to kernel_size"),
    ("pool average", lambda h: check.max_pool2d(C.avg_pool2d, hidden=h), "average pooling"),
    ("pool calls torch", lambda h: check.max_pool2d(_calls_torch_pool, hidden=h), "PyTorch's own"),
    ("params no bias", lambda h: check.conv_params(
        lambda i, o, k, bias=True, groups=1: C.conv_params(i, o, k, False, groups), hidden=h), "biases are missing"),
    ("params bias flag", lambda h: check.conv_params(
        lambda i, o, k, bias=True, groups=1: C.conv_params(i, o, k, True, groups), hidden=h), "no biases to count"),
    ("params no in_channels", lambda h: check.conv_params(
        lambda i, o, k, bias=True, groups=1: C.conv_params(1, o, k, bias), hidden=h), "all"),
    ("params no groups", lambda h: check.conv_params(
        lambda i, o, k, bias=True, groups=1: C.conv_params(i, o, k, bias, 1), hidden=h), "groups"),
    ("block relu before add", lambda h: check.basic_block(_block(_relu_before_add), hidden=h), "after"),
    ("block no shortcut", lambda h: check.basic_block(_block(_no_shortcut), hidden=h), "shortcut is missing"),
    ("block conv relu bn", lambda h: check.basic_block(_block(_conv_relu_bn), hidden=h), "conv -> BN -> ReLU"),
    ("block no projection", lambda h: check.basic_block(_block(C.BasicBlock.forward, no_projection=True), hidden=h),
     "projection"),
    ("block biased convs", lambda h: check.basic_block(_block(C.BasicBlock.forward, biased=True), hidden=h),
     "bias=False"),
    ("block always projects", lambda h: check.basic_block(_block(C.BasicBlock.forward, always_project=True),
                                                          hidden=h), "identity"),
    ("block in place", lambda h: check.basic_block(_block(_inplace_on_input), hidden=h), "in place"),
    ("block returns tensor", lambda h: check.basic_block(lambda i, o, s=1: torch.zeros(1), hidden=h), "nn.Module"),
]


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("name, run, hint", WRONG, ids=[w[0] for w in WRONG])
def test_wrong_answers_fail_with_a_helpful_message(name, run, hint, hidden):
    with pytest.raises(CheckFailed, match=hint):
        run(hidden)


def test_torch_is_restored_after_a_refused_call():
    original = F.conv2d
    with pytest.raises(CheckFailed):
        check.conv2d(_calls_torch_conv)
    assert F.conv2d is original and torch.conv2d is not None
    F.conv2d(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 1, 1))


@pytest.mark.cuda
@pytest.mark.parametrize("hidden", [False, True])
def test_references_pass_the_checks_on_cuda(hidden):
    cuda = torch.device("cuda")
    check.conv2d(C.conv2d, hidden=hidden, device=cuda)
    check.max_pool2d(C.max_pool2d, hidden=hidden, device=cuda)
    check.basic_block(C.BasicBlock, hidden=hidden, device=cuda)
