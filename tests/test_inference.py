"""Inference: eval resize and its inverse, flip test, multi-scale, batching by padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SPEC3

from dekr.decoder import DEKRDecoder
from dekr.inference import IMAGENET_MEAN, IMAGENET_STD, eval_transform, predict_poses, resize_image
from dekr.keypoints import KeypointSpec


class FakeModel:
    """Flip-symmetric stand-in: heat = grey value at input pixel (4u, 4v); constant offsets.

    Joint ``left_b`` sits 3 output px left of the centre, ``right_b`` 3 px right, ``a`` 2 px up:
    a mirrored person is again a person of that shape, so the model is flip-equivariant.
    """

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grey = images[:, :1, ::4, ::4] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        heat = grey.repeat(1, 4, 1, 1)
        off = torch.zeros(images.shape[0], 6, *grey.shape[-2:], dtype=images.dtype)
        off[:, 1] = 2.0
        off[:, 2], off[:, 4] = 3.0, -3.0
        return heat, off


def blob_image(h: int, w: int, centers: list, seed: int = 0) -> np.ndarray:
    """Grey image of Gaussian blobs, constant over aligned 4×4 blocks."""
    ys, xs = np.mgrid[0 : h // 4, 0 : w // 4]
    low = np.zeros((h // 4, w // 4))
    for i, (cx, cy) in enumerate(centers):
        low = np.maximum(low, (0.9 - 0.05 * i) * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / 18))
    img = np.kron(low, np.ones((4, 4)))
    return np.repeat((img * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def mirror(result: dict, width: int, spec: KeypointSpec) -> np.ndarray:
    kpts = result["keypoints"][:, spec.flip_index].copy()
    kpts[..., 0] = width - 1 - kpts[..., 0]
    return kpts


def by_x(kpts: np.ndarray) -> np.ndarray:
    return kpts[np.argsort(kpts[:, 0, 0])]


@pytest.mark.parametrize("hw", [(480, 640), (640, 427), (333, 500), (512, 512)])
def test_resize_inverse_is_identity_and_official_size(hw):
    t = eval_transform(*hw, input_size=512)
    pts = np.random.default_rng(0).uniform(0, 400, size=(7, 2))
    np.testing.assert_allclose(t.to_original(t.to_input(pts)), pts, atol=1e-9)
    np.testing.assert_allclose(t.to_original(torch.from_numpy(t.to_input(pts))).numpy(), pts)
    assert min(t.input_hw) == 512 and max(t.input_hw) % 64 == 0
    assert (t.input_hw.h > t.input_hw.w) == (hw[0] > hw[1])  # rows first, like the image
    if hw == (480, 640):
        assert t.input_hw == (512, 704)  # maps 128 × 176


def test_resize_image_matches_transform():
    img = np.zeros((100, 150, 3), np.uint8)
    img[40, 60] = 255
    t = eval_transform(100, 150, input_size=64)
    out = resize_image(img, t)
    assert out.shape == (64, 128, 3)
    y, x = np.unravel_index(out[..., 0].argmax(), out.shape[:2])
    np.testing.assert_allclose(t.to_input(np.array([60.0, 40.0])), [x, y], atol=0.7)


@pytest.mark.parametrize("shift", [3, 0])
def test_flip_test_is_equivariant(shift):
    h, w = 512, 640  # identity resize: original pixels are input pixels
    img = blob_image(h, w, [(30, 40), (100, 60), (140, 90)])
    kw = dict(spec=SPEC3, input_size=512, flip=True, flip_shift=shift)
    res = predict_poses(FakeModel(), [img, img[:, ::-1].copy()], **kw)
    assert len(res[0]["scores"]) == 3 and len(res[1]["scores"]) == 3
    # Mirroring moves the stride-4 sampling grid (input 4u) onto 4u + 3: the fake model's
    # mirrored-back output is 3 px right of the direct one, whatever the flip test does.
    back = by_x(mirror(res[1], w, SPEC3)) - np.array([3.0, 0.0, 0.0])
    atol = 1e-3 if shift == 3 else 1.0
    np.testing.assert_allclose(back, by_x(res[0]["keypoints"]), atol=atol)
    # the people's shape survives the flip average: left_b 12 input px left of the centre
    k = by_x(res[0]["keypoints"])
    np.testing.assert_allclose(k[:, 2, 0] - k[:, 1, 0], 24.0, atol=atol)


def test_flip_matches_no_flip_for_symmetric_input():
    img = blob_image(512, 576, [(40, 50), (100, 70)])
    kw = dict(spec=SPEC3, input_size=512)
    plain = predict_poses(FakeModel(), [img], flip=False, **kw)[0]
    flip = predict_poses(FakeModel(), [img], flip=True, flip_shift=3, **kw)[0]
    np.testing.assert_allclose(by_x(flip["keypoints"]), by_x(plain["keypoints"]), atol=1e-4)
    assert (plain["keypoints"][:, 0, 0] % 4 == 0).all()  # centres at output pixels


def test_padding_in_a_batch_does_not_change_results():
    small = blob_image(384, 512, [(30, 40), (90, 30)])
    big = blob_image(512, 704, [(50, 50), (120, 100), (160, 30)])
    kw = dict(spec=SPEC3, input_size=384, flip=True, flip_shift=0)
    alone = predict_poses(FakeModel(), [small], **kw)[0]
    both = predict_poses(FakeModel(), [big, small], **kw)
    np.testing.assert_allclose(both[1]["keypoints"], alone["keypoints"], atol=1e-5)
    np.testing.assert_allclose(both[1]["scores"], alone["scores"], atol=1e-6)
    assert len(both[0]["scores"]) == 3


def test_multi_scale_and_resized_image_in_original_pixels():
    img = blob_image(256, 384, [(20, 30), (70, 25)])
    res = predict_poses(FakeModel(), [img], spec=SPEC3, input_size=128, scales=(1.0, 2.0),
                        flip=True, decoder=DEKRDecoder(SPEC3, nms_threshold=0.15))  # fmt: skip
    top = np.argsort(-res[0]["scores"])[:2]  # quantised Gaussian tails add weak plateau peaks
    k = by_x(res[0]["keypoints"][top])
    np.testing.assert_allclose(k[:, 0, 0], [80, 280], atol=6)  # centres at 4·(20, 70) original
    # 'a' is 2 output px up: 16 original px at scale 1, 8 at scale 2 (the fake is not scale-aware)
    up = np.array([120.0, 100.0]) - k[:, 0, 1]
    assert ((up > 7) & (up < 17)).all(), up
    with pytest.raises(ValueError, match="must contain 1.0"):
        predict_poses(FakeModel(), [img], spec=SPEC3, scales=(2.0,))
