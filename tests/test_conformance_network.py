"""The W32 COCO network against golden outputs of the official DEKR code.

Fixture: ``tests/data/conformance/model_w32.json`` and ``model_w32.npz``, made by running the
official ``PoseHigherResolutionNet`` (HRNet/DEKR commit 7a30313, W32 COCO yaml, CPU float32) on
``RandomState(12345).standard_normal((1, 3, 512, 512))`` in eval mode, with two sets of weights:

* ``keyed``: every tensor a pure function of its official key name and shape (the rule is
  rebuilt here by :func:`keyed_array`, checked against the stored per-key sums);
* ``seed0``: ``torch.manual_seed(0)`` and the constructor's default initialisation.

Compared, for both adaptive-convolution forms (``deform`` and ``grid_sample``):

* the state-dict layout (keys, shapes, dtypes, order) and the parameter / buffer counts: exact;
* the per-key sums of the rebuilt ``keyed`` and ``seed0`` weights: rtol 1e-10 (same float32
  values, float64 sums);
* outputs (every 2nd pixel, row 64 and column 64 at full resolution, per-channel mean / std /
  min / max) and the statistics of the intermediates that dekr exposes to forward hooks (the four
  stage-4 branches, the 480-channel concatenation, both head transitions, the first AdaptBlock of
  keypoint 0 and its 18 deform_conv2d offsets): rtol 1e-4 / atol 1e-4, the tolerance the fixture's
  README suggests for CPU float32 with bilinear DCN sampling;
* one official AdaptBlock on a 1x15x9x11 input (``adapt_unit``): same tolerance.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from dekr.config import load_recipe
from dekr.keypoints import get_keypoint_spec
from dekr.models.adaptive import AdaptBlock, deform_offsets
from dekr.models.dekr import DEKR, build_model
from dekr.models.hrnet import HRNET_SPECS

DATA = Path(__file__).resolve().parent / "data" / "conformance"
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "coco_w32.yaml"
RTOL = ATOL = 1e-4  # fixture README, "Suggested tolerances": forward, keyed weights
SUM_RTOL = SUM_ATOL = 1e-10
IMPLS = ("deform", "grid_sample")
INTERMEDIATES = (
    *(f"stage4_branch{i}" for i in range(4)),
    "concat",
    "t_heatmap",
    "t_offset",
    "adapt0_0",
    "adapt0_0_dcn_offset",
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def info() -> dict[str, Any]:
    return json.loads((DATA / "model_w32.json").read_text())


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(DATA / "model_w32.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def w32_recipe() -> tuple[str, int]:
    """Backbone name and keypoint count of the recipe that reproduces the official W32 COCO."""
    recipe = load_recipe(RECIPE)
    return recipe.model.backbone, get_keypoint_spec(recipe.keypoints).num_keypoints


def keyed_array(key: str, shape: list[int]) -> Optional[np.ndarray]:
    """The fixture's ``keyed`` weight of one official key (model_w32 README (b)); None for the
    entries kept as constructed (``num_batches_tracked``, ``regular_matrix``).

    Seed ``crc32(key) & 0x7fffffff`` of NumPy's legacy RandomState, float64 draws cast to float32
    by the caller: 4-D conv weights N(0, 1)/sqrt(fan_in) (x0.3 for ``transform_matrix_conv``, x0.5
    for ``translation_conv``); biases 0.1·N, except ``[1, 0, 0, 1] + 0.1·N`` for
    ``transform_matrix_conv`` and 0.3·N for ``translation_conv``; BN gamma 0.5 + 0.05·N, beta
    0.1·N, running mean 0.1·N, running variance 0.5 + U[0, 1).
    """
    leaf = key.rsplit(".", 1)[-1]
    if leaf in ("num_batches_tracked", "regular_matrix"):
        return None
    rs = np.random.RandomState(zlib.crc32(key.encode()) & 0x7FFFFFFF)
    module = key.rsplit(".", 2)[-2]
    if len(shape) == 4:
        scale = {"transform_matrix_conv": 0.3, "translation_conv": 0.5}.get(module, 1.0)
        return scale / math.sqrt(math.prod(shape[1:])) * rs.standard_normal(shape)
    if leaf == "bias":
        if module == "transform_matrix_conv":
            return np.array([1.0, 0.0, 0.0, 1.0]) + 0.1 * rs.standard_normal(shape)
        return (0.3 if module == "translation_conv" else 0.1) * rs.standard_normal(shape)
    if leaf == "weight" and len(shape) == 1:  # BatchNorm gamma
        return 0.5 + 0.05 * rs.standard_normal(shape)
    if leaf == "running_mean":
        return 0.1 * rs.standard_normal(shape)
    if leaf == "running_var":
        return 0.5 + rs.random_sample(shape)
    raise KeyError(f"no keyed rule for {key} {shape}")


def load_keyed(module: nn.Module, keys: list[list[Any]], prefix: str = "") -> None:
    """Fill ``module`` (strict) with the keyed weights of the official ``keys`` under ``prefix``."""
    own = module.state_dict()
    state = {}
    for key, shape, _ in keys:
        if not key.startswith(prefix):
            continue
        array = keyed_array(key, shape)
        name = key[len(prefix) :]
        state[name] = own[name] if array is None else torch.from_numpy(array.astype(np.float32))
    module.load_state_dict(state, strict=True)


def key_sums(model: nn.Module, keys: list[list[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-key float64 sums and absolute sums of ``model``'s state, in the order of ``keys``."""
    state = model.state_dict()
    tensors = [state[key].double() for key, _, _ in keys]
    sums = [t.sum().item() for t in tensors]
    return np.array(sums), np.array([t.abs().sum().item() for t in tensors])


@pytest.fixture(scope="module")
def keyed_model(info: dict[str, Any], w32_recipe: tuple[str, int]) -> DEKR:
    backbone, k = w32_recipe
    model = build_model(backbone, num_keypoints=k).eval()
    load_keyed(model, info["state_dict_keys"])
    return model


def network_input(info: dict[str, Any]) -> Tensor:
    x = np.random.RandomState(12345).standard_normal((1, 3, 512, 512)).astype(np.float32)
    np.testing.assert_array_equal(x.reshape(-1)[:5], np.float32(info["input"]["first5"]))
    return torch.from_numpy(x)


def channel_stats(t: Tensor) -> np.ndarray:
    """(C, 4) float64 per-channel mean, std (ddof 0), min, max of a (1, C, H, W) map."""
    a = t[0].double().flatten(1)
    return torch.stack([a.mean(1), a.std(1, correction=0), a.amin(1), a.amax(1)], 1).numpy()


def run_forward(model: DEKR, x: Tensor, impl: str) -> dict[str, Any]:
    """Outputs and intermediate maps of one forward pass, caught with forward hooks.

    The first AdaptBlock of keypoint 0 is applied on its own to the first 15 channels of the
    offset transition (the official per-keypoint split): the network runs the 17 branches as
    grouped calls, which bypass the block modules; its adaptive conv's hook gives M and t, turned
    into deform_conv2d offsets by :func:`dekr.models.adaptive.deform_offsets`.
    """
    model.set_adaptive_impl(impl)
    caught: dict[str, Tensor] = {}

    def keep(name: str, inputs: bool = False):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            caught[name] = args if inputs else output

        return hook

    block = model.offset_feature_layers[0][0]
    hooks = [
        model.stage4[-1].register_forward_hook(keep("stage4")),
        model.transition_heatmap.register_forward_hook(keep("heatmap_in", inputs=True)),
        model.transition_heatmap.register_forward_hook(keep("t_heatmap")),
        model.transition_offset.register_forward_hook(keep("t_offset")),
        block.register_forward_hook(keep("adapt0_0")),
        block.adapt_conv.register_forward_hook(keep("adapt0_0_conv", inputs=True)),
    ]
    try:
        with torch.no_grad():
            heatmaps, offsets = model(x)
            block(caught["t_offset"][:, : model.spec.offset_channels_per_keypoint])
    finally:
        for h in hooks:
            h.remove()
    _, matrix, translation = caught.pop("adapt0_0_conv")
    maps = {f"stage4_branch{i}": t for i, t in enumerate(caught.pop("stage4"))}
    maps["concat"] = caught.pop("heatmap_in")[0]
    maps["adapt0_0_dcn_offset"] = deform_offsets(matrix, translation)
    maps.update(caught)
    return {"heatmap": heatmaps, "offset": offsets, **maps}


def assert_close(ours: Any, theirs: np.ndarray, what: str) -> float:
    """rtol/atol comparison; returns the max absolute difference (for the record)."""
    ours = np.asarray(ours, dtype=np.float64)
    assert ours.shape == theirs.shape, what
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL, err_msg=what)
    return float(np.abs(ours - theirs).max())


def compare_forward(out: dict[str, Any], golden: dict[str, np.ndarray], variant: str) -> None:
    for name in ("heatmap", "offset"):
        full = out[name][0].numpy()
        assert_close(full[:, ::2, ::2], golden[f"{variant}__{name}_s2"], f"{name} every 2nd px")
        assert_close(full[:, 64, :], golden[f"{variant}__{name}_row64"], f"{name} row 64")
        assert_close(full[:, :, 64], golden[f"{variant}__{name}_col64"], f"{name} column 64")
    for name in ("heatmap", "offset", *INTERMEDIATES):
        stats = channel_stats(out[name])
        assert_close(stats, golden[f"{variant}__{name}_chanstats"], f"{name} channel stats")


@pytest.mark.slow
def test_state_dict_layout_equals_official(info: dict[str, Any], keyed_model: DEKR) -> None:
    """Keys, shapes, dtypes and their order equal the official state dict; parameter and buffer
    element counts equal the official model's (model_w32.json ``n_params``, ``n_buffers_elems``)."""
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in
            keyed_model.state_dict().items()]  # fmt: skip
    assert ours == info["state_dict_keys"]
    assert sum(p.numel() for p in keyed_model.parameters()) == info["n_params"]
    assert sum(b.numel() for b in keyed_model.buffers()) == info["n_buffers_elems"]


@pytest.mark.slow
def test_keyed_weights_are_the_fixture_weights(
    info: dict[str, Any], golden: dict[str, np.ndarray], keyed_model: DEKR
) -> None:
    """The rebuilt keyed weights have the stored per-key sums and absolute sums (rtol 1e-10)."""
    sums, abs_sums = key_sums(keyed_model, info["state_dict_keys"])
    np.testing.assert_allclose(sums, golden["keyed__param_sum"], rtol=SUM_RTOL, atol=SUM_ATOL)
    np.testing.assert_allclose(abs_sums, golden["keyed__param_abs_sum"], rtol=SUM_RTOL)


@pytest.mark.slow
def test_seeded_construction_draws_the_official_initial_values(
    info: dict[str, Any], golden: dict[str, np.ndarray], w32_recipe: tuple[str, int]
) -> None:
    """``torch.manual_seed(0)`` then the constructor (``DEKR``: ``build_model`` without the official
    ``init_weights``) gives the official ``seed0`` per-key sums and absolute sums (rtol 1e-10): the
    same modules built in the same order, with the same default initialisation."""
    backbone, k = w32_recipe
    torch.manual_seed(0)
    model = DEKR(HRNET_SPECS[backbone], k)
    sums, abs_sums = key_sums(model, info["state_dict_keys"])
    np.testing.assert_allclose(sums, golden["seed0__param_sum"], rtol=SUM_RTOL, atol=SUM_ATOL)
    np.testing.assert_allclose(abs_sums, golden["seed0__param_abs_sum"], rtol=SUM_RTOL)


# The W32 network comparisons (a W32 model with keyed weights and a forward at 512 per form, several
# seconds on 2 cores) are the slow tier's, which CI runs; the default tier keeps the AdaptBlock unit
# case of both forms below and the deform = grid_sample equality tests of tests/test_models.py.
@pytest.fixture(
    scope="module", params=[pytest.param(impl, marks=pytest.mark.slow) for impl in IMPLS]
)
def keyed_forward(request: pytest.FixtureRequest, keyed_model: DEKR, info: dict[str, Any]):
    return run_forward(keyed_model, network_input(info), request.param)


def test_keyed_forward_matches_official(
    keyed_forward: dict[str, Any], golden: dict[str, np.ndarray]
) -> None:
    """Outputs and intermediates' channel statistics, keyed weights (rtol 1e-4 / atol 1e-4)."""
    compare_forward(keyed_forward, golden, "keyed")


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_seed0_forward_matches_official(
    impl: str, info: dict[str, Any], golden: dict[str, np.ndarray], w32_recipe: tuple[str, int]
) -> None:
    """The same comparison with the ``seed0`` weights (default initialisation, eval mode)."""
    backbone, k = w32_recipe
    torch.manual_seed(0)
    model = DEKR(HRNET_SPECS[backbone], k).eval()
    compare_forward(run_forward(model, network_input(info), impl), golden, "seed0")


@pytest.mark.parametrize("impl", IMPLS)
def test_adapt_block_unit(impl: str, info: dict[str, Any], golden: dict[str, np.ndarray]) -> None:
    """One AdaptBlock with the keyed weights of ``offset_feature_layers.0.0`` on
    ``RandomState(7).standard_normal((1, 15, 9, 11))``: its deform_conv2d offsets and its output
    at every pixel, borders included (rtol 1e-4 / atol 1e-4)."""
    x = np.random.RandomState(7).standard_normal((1, 15, 9, 11)).astype(np.float32)
    np.testing.assert_array_equal(x, golden["adapt_unit__x"])
    block = AdaptBlock(15, impl).eval()
    load_keyed(block, info["state_dict_keys"], prefix="offset_feature_layers.0.0.")
    caught = {}
    hook = block.adapt_conv.register_forward_hook(
        lambda module, args, output: caught.update(args=args)
    )
    with torch.no_grad():
        y = block(torch.from_numpy(x))
    hook.remove()
    _, matrix, translation = caught["args"]
    assert_close(deform_offsets(matrix, translation).numpy(), golden["adapt_unit__dcn_offset"],
                 "DCN offsets")  # fmt: skip
    assert_close(y.numpy(), golden["adapt_unit__y"], "AdaptBlock output")
