"""DEKR network: shapes, exact sizes, official key layout, adaptive convolution equivalence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dekr.errors import OptionError
from dekr.models.adaptive import AdaptBlock, AdaptiveConv
from dekr.models.dekr import build_model
from dekr.models.summary import count_multiply_adds, count_parameters

FIXTURE = Path(__file__).parent / "fixtures" / "official_dekr_keys.json"
# Parameter and multiply-add counts of the official models, from the official model summary
# (``official_model_summary`` of the official-code golden outputs, tests/data/conformance).
OFFICIAL_SUMMARY = json.loads(
    (Path(__file__).parent / "data" / "conformance" / "model_w32.json").read_text()
)["official_model_summary"]


@pytest.fixture(scope="module")
def official_keys() -> dict[str, dict[str, list[int]]]:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("k", [3, 14, 17])
@pytest.mark.parametrize("train", [True, False])
def test_output_shapes(k: int, train: bool) -> None:
    model = build_model("hrnet_w8_tiny", num_keypoints=k).train(train)
    heatmaps, offsets = model(torch.randn(2, 3, 64, 128))
    assert heatmaps.shape == (2, k + 1, 16, 32)
    assert offsets.shape == (2, 2 * k, 16, 32)


def test_unknown_backbone_is_clear() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'hrnet_w31'.*hrnet_w32"):
        build_model("hrnet_w31", num_keypoints=17)


@pytest.mark.parametrize(
    "name,backbone,k",
    [
        ("coco_w32_512", "hrnet_w32", 17),  # 29,561,182
        pytest.param("coco_w48_640", "hrnet_w48", 17, marks=pytest.mark.slow),  # 65,684,590
        pytest.param("crowdpose_w32_512", "hrnet_w32", 14, marks=pytest.mark.slow),  # 29,522,071
    ],
)
def test_exact_parameter_counts(name: str, backbone: str, k: int) -> None:
    """Parameter counts equal the official model summary's."""
    params = OFFICIAL_SUMMARY[name]["params"]
    with torch.device("meta"):  # shapes only
        model = build_model(backbone, num_keypoints=k)
    assert count_parameters(model) == params


@pytest.mark.parametrize(
    "name,backbone,k,size",
    [
        pytest.param("coco_w32_512", "hrnet_w32", 17, 512, marks=pytest.mark.slow),  # 45.385 G
        pytest.param("coco_w48_640", "hrnet_w48", 17, 640, marks=pytest.mark.slow),  # 141.527 G
        pytest.param("crowdpose_w32_512", "hrnet_w32", 14, 512, marks=pytest.mark.slow),  # 44.749 G
    ],
)
def test_multiply_adds(name: str, backbone: str, k: int, size: int) -> None:
    """Multiply-adds equal the official model summary's."""
    with torch.device("meta"):  # shapes only: the count needs no arithmetic
        model = build_model(backbone, num_keypoints=k)
    expected = OFFICIAL_SUMMARY[name]["multiply_adds"]
    assert count_multiply_adds(model, (size, size)) == expected


@pytest.mark.parametrize(
    "name,backbone,k",
    [
        ("coco_w32", "hrnet_w32", 17),
        pytest.param("coco_w48", "hrnet_w48", 17, marks=pytest.mark.slow),
        pytest.param("crowdpose_w32", "hrnet_w32", 14, marks=pytest.mark.slow),
    ],
)
def test_state_dict_equals_official_layout(official_keys, name: str, backbone: str, k: int) -> None:
    with torch.device("meta"):  # shapes only
        model = build_model(backbone, num_keypoints=k)
    ours = {key: list(v.shape) for key, v in model.state_dict().items()}
    assert ours == official_keys[name]


def test_backbone_key_count(official_keys) -> None:
    from dekr.models.weights import HEAD_PREFIXES

    backbone = [k for k in official_keys["coco_w32"] if not k.startswith(HEAD_PREFIXES)]
    assert len(backbone) == 1830


def test_official_init() -> None:
    model = build_model("hrnet_w8_tiny", num_keypoints=3)
    block = model.offset_feature_layers[0][0]
    assert torch.count_nonzero(block.transform_matrix_conv.weight) == 0
    assert torch.count_nonzero(block.translation_conv.bias) == 0
    assert model.conv1.weight.std().item() == pytest.approx(0.001, rel=0.3)
    assert torch.equal(model.bn1.weight, torch.ones_like(model.bn1.weight))


def test_scratch_init_draws_the_convolutions_before_batchnorms_at_kaiming_scale() -> None:
    torch.manual_seed(0)
    model = build_model("hrnet_w24_tiny", num_keypoints=17, init="scratch")
    for conv in (model.conv1, model.transition_offset[0], model.head_heatmap[0][0].conv1):
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.2), conv
    # what no BatchNorm follows keeps the official values: the output convolutions N(0, 0.001²)
    # with zero biases, the adaptive blocks' transform and translation convolutions 0
    outputs = (model.head_heatmap[1], *model.offset_final_layer)
    assert model.head_heatmap[1].weight.std().item() == pytest.approx(0.001, rel=0.2)
    offset_weights = torch.cat([c.weight.flatten() for c in model.offset_final_layer])
    assert offset_weights.std().item() == pytest.approx(0.001, rel=0.2)
    assert all(torch.count_nonzero(c.bias) == 0 for c in outputs)
    for block in model.offset_feature_layers[3]:
        assert torch.count_nonzero(block.transform_matrix_conv.weight) == 0
        assert torch.count_nonzero(block.translation_conv.weight) == 0
    assert torch.equal(model.bn1.weight, torch.ones_like(model.bn1.weight))
    with pytest.raises(OptionError, match="model.init='kaiming' unknown"):
        build_model("hrnet_w8_tiny", num_keypoints=3, init="kaiming")


def _random_affine(b: int, h: int, w: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    matrix = torch.randn(b, 4, h, w, generator=g, dtype=torch.float64) * scale
    matrix[:, 0] += 1.0
    matrix[:, 3] += 1.0
    translation = torch.randn(b, 2, h, w, generator=g, dtype=torch.float64) * 3 * scale
    return matrix, translation


@pytest.mark.parametrize("scale", [0.0, 0.5, 3.0])
def test_adaptive_implementations_agree(scale: float) -> None:
    """deform_conv2d and the grid_sample form agree, values and gradients, borders included."""
    conv = AdaptiveConv(5, 7).double()
    x = torch.randn(2, 5, 9, 11, dtype=torch.float64, requires_grad=True)
    matrix, translation = _random_affine(2, 9, 11, scale)
    results = []
    for impl in ("deform", "grid_sample"):
        conv.impl = impl
        conv.zero_grad()
        x.grad = None
        out = conv(x, matrix, translation)
        out.square().sum().backward()
        results.append((out.detach(), x.grad.clone(), conv.weight.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_grid_sample_form_samples_in_fp32_under_bf16_autocast() -> None:
    """Under bf16 autocast the features and the transform arrive in bf16 (from convolutions); the
    sample positions, the sampling and the contraction must still be fp32, or positions of 16-31
    pixels land on a 1/8-pixel grid. So the result equals the fp32 computation on the same bf16
    inputs. The sub-pixel translations here move every tap by 0.3-0.7 px at 24-31 px."""
    torch.manual_seed(0)
    conv = AdaptiveConv(4, 4, "grid_sample")
    x = torch.randn(1, 4, 32, 32).bfloat16()
    matrix, translation = _random_affine(1, 32, 32, 0.2)
    matrix, translation = matrix.bfloat16(), (translation.sign() * 0.5 + 0.2).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = conv(x, matrix, translation)
    exact = conv(x.float(), matrix.float(), translation.float())
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, exact, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (6, 1), (1, 2), (2, 1)])
@pytest.mark.parametrize("scale", [0.0, 0.4])
def test_adaptive_implementations_agree_on_one_pixel_wide_maps(
    size: tuple[int, int], scale: float
) -> None:
    """On maps one pixel high or wide both forms read zeros outside the map, values and gradients
    (the grid_sample form once sampled row / column 0 there instead).

    With ``scale`` 0 every tap sits on an integer position (M = I, t = 0): gradients are compared
    for the input and the weight only, since the one-sided derivative of bilinear sampling at an
    integer position on the border is a convention; with ``scale`` 0.4 the positions are
    generic and the matrix and translation gradients are compared too.
    """
    h, w = size
    conv = AdaptiveConv(3, 4).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=torch.float64))
    x = torch.randn(2, 3, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    matrix = torch.randn(2, 4, h, w, generator=g, dtype=torch.float64) * scale
    matrix[:, 0] += 1.0
    matrix[:, 3] += 1.0
    translation = torch.randn(2, 2, h, w, generator=g, dtype=torch.float64) * scale
    geometry = (matrix.requires_grad_(scale > 0), translation.requires_grad_(scale > 0))
    inputs = (x, conv.weight, *geometry) if scale > 0 else (x, conv.weight)
    upstream = torch.randn(2, 4, h, w, generator=g, dtype=torch.float64)
    results = []
    for impl in ("deform", "grid_sample"):
        conv.impl = impl
        out = conv(x, *geometry)
        grads = torch.autograd.grad(out.mul(upstream).sum(), inputs)
        results.append((out.detach(), *grads))
    assert results[0][0].abs().max() > 0.1  # the taps inside the map carry signal
    for name, a, b in zip(("output", "d_x", "d_weight", "d_matrix", "d_translation"), *results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=name)


@pytest.mark.parametrize("impl", ["deform", "grid_sample"])
def test_identity_matrix_is_a_plain_conv(impl: str) -> None:
    conv = AdaptiveConv(4, 6, impl).double()
    x = torch.randn(1, 4, 8, 10, dtype=torch.float64)
    eye = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64).reshape(1, 4, 1, 1)
    out = conv(x, eye.expand(1, 4, 8, 10), torch.zeros(1, 2, 8, 10, dtype=torch.float64))
    torch.testing.assert_close(out, F.conv2d(x, conv.weight, padding=1))


@pytest.mark.parametrize("impl", ["deform", "grid_sample"])
def test_matrix_acts_on_dy_dx(impl: str) -> None:
    """M = diag(2, 1) doubles only the vertical tap spread (official (dy, dx) layout)."""
    conv = AdaptiveConv(1, 1, impl).double()
    x = torch.randn(1, 1, 12, 12, dtype=torch.float64)
    m = torch.tensor([2.0, 0.0, 0.0, 1.0], dtype=torch.float64).reshape(1, 4, 1, 1)
    out = conv(x, m.expand(1, 4, 12, 12), torch.zeros(1, 2, 12, 12, dtype=torch.float64))
    expected = F.conv2d(x, conv.weight, padding=(2, 1), dilation=(2, 1))
    torch.testing.assert_close(out, expected)


def test_zero_matrix_block_is_a_1x1_conv() -> None:
    """With the official init (M = 0, t = 0) every tap samples the centre pixel."""
    block = AdaptBlock(3, "grid_sample").double().eval()
    for conv in (block.transform_matrix_conv, block.translation_conv):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    w = block.adapt_conv.weight.sum(dim=(2, 3), keepdim=True)
    expected = torch.relu(block.bn(F.conv2d(x, w)) + x)
    torch.testing.assert_close(block(x), expected)


def test_same_weights_same_maps() -> None:
    a = build_model("hrnet_w8_tiny", num_keypoints=5).eval()
    b = build_model("hrnet_w8_tiny", num_keypoints=5).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    for ta, tb in zip(a(x), b(x)):
        assert torch.equal(ta, tb)


def test_model_impls_agree_end_to_end() -> None:
    model = build_model("hrnet_w8_tiny", num_keypoints=3).double().eval()
    for m in model.modules():
        if isinstance(m, AdaptBlock):  # make the adaptive convs really deform
            torch.nn.init.normal_(m.transform_matrix_conv.weight, std=0.3)
            torch.nn.init.normal_(m.translation_conv.weight, std=0.3)
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    model.set_adaptive_impl("deform")
    ref = model(x)
    model.set_adaptive_impl("grid_sample")
    for a, b in zip(ref, model(x)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_bad_impl_is_clear() -> None:
    with pytest.raises(ValueError, match="adaptive conv impl 'dcn' unknown"):
        build_model("hrnet_w8_tiny", num_keypoints=3, adaptive_impl="dcn")


def _deforming(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, AdaptBlock):
            torch.nn.init.normal_(m.transform_matrix_conv.weight, std=0.3)
            torch.nn.init.normal_(m.translation_conv.weight, std=0.3)
    return model


@pytest.mark.parametrize(
    ("impl", "blocks"), [("deform", 2), ("grid_sample", 2), ("grid_sample", 1)]
)
@pytest.mark.parametrize("train", [True, False])
def test_grouped_offset_branches_equal_per_branch(impl: str, blocks: int, train: bool) -> None:
    """The grouped offset head gives the same maps, gradients and BN statistics as the loop, with
    the official two adaptive blocks per branch and with one (``model.offset_blocks``)."""
    torch.manual_seed(0)
    kw = dict(num_keypoints=3, adaptive_impl=impl, offset_blocks=blocks)
    a = _deforming(build_model("hrnet_w8_tiny", **kw)).double()
    assert all(len(layers) == blocks for layers in a.offset_feature_layers)
    b = build_model("hrnet_w8_tiny", **kw).double()
    b.load_state_dict(a.state_dict())
    b.grouped_offsets = False
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    outs = []
    for model in (a, b):
        model.train(train)
        heatmaps, offsets = model(x)
        (heatmaps.square().sum() + offsets.square().sum()).backward()
        outs.append(offsets)
    torch.testing.assert_close(outs[0], outs[1])
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)
    for (name, ba), bb in zip(a.named_buffers(), b.buffers()):
        torch.testing.assert_close(ba, bb, msg=name)


@pytest.mark.parametrize("blocks", [0, -1, 1.5, True, "2"])
def test_offset_blocks_must_be_a_positive_integer(blocks: object) -> None:
    with pytest.raises(OptionError, match="model.offset_blocks must be an integer >= 1"):
        build_model("hrnet_w8_tiny", num_keypoints=3, offset_blocks=blocks)  # type: ignore[arg-type]


def test_branch_concat_hands_dense_channels_last_gradients_to_the_upsampling() -> None:
    """HRNet.concat: the same values and gradients as a plain up-sample and concatenation, with
    each up-sampled branch's gradient made dense channels-last (the fast CPU backward) when the
    features are channels-last, and no extra node otherwise (NCHW, no grad: tracing, export)."""
    from dekr.models.hrnet import HRNet

    torch.manual_seed(0)
    shapes = [(2, 4, 16, 16), (2, 8, 8, 8), (2, 16, 4, 4), (2, 32, 2, 2)]
    base = [torch.randn(s, dtype=torch.float64) for s in shapes]
    weight = torch.randn(2, 60, 16, 16, dtype=torch.float64)

    def run(channels_last: bool, plain: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        feats = [f.clone().to(memory_format=fmt).requires_grad_(True) for f in base]
        if plain:
            ups = [F.interpolate(f, size=(16, 16), mode="bilinear", align_corners=False)
                   for f in feats[1:]]  # fmt: skip
            out = torch.cat([feats[0], *ups], dim=1)
        else:
            out = HRNet.concat(feats)
        (out * weight).sum().backward()
        return out.detach(), [f.grad for f in feats]

    reference, reference_grads = run(False, plain=True)
    for channels_last in (False, True):
        out, grads = run(channels_last, plain=False)
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-12)
        for g, r in zip(grads, reference_grads):
            torch.testing.assert_close(g, r, rtol=0, atol=1e-12)
    cl = [f.to(memory_format=torch.channels_last).requires_grad_(True) for f in base]
    assert "DenseChannelsLastGrad" in str(HRNet.concat(cl).grad_fn.next_functions)
    nchw = [f.clone().requires_grad_(True) for f in base]
    assert "DenseChannelsLastGrad" not in str(HRNet.concat(nchw).grad_fn.next_functions)
    with torch.no_grad():
        torch.testing.assert_close(HRNet.concat(cl), reference, rtol=0, atol=1e-12)
