"""Encoder → decoder round trip: real COCO sample and a dense synthetic crowd."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dekr import targets
from dekr.decoder import DEKRDecoder
from dekr.keypoints import COCO_KEYPOINTS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import roundtrip  # noqa: E402
from conftest import REPO, TEST_DATA  # noqa: E402

COCO_VAL = TEST_DATA / "coco_sample" / "annotations" / "person_keypoints_val_sample.json"
RECIPE = REPO / "recipes" / "quickstart.yaml"

# A standing person, 17 COCO joints, unit height, origin at the hips' midpoint.
_TEMPLATE = np.array([
    [0.0, -0.85], [-0.04, -0.88], [0.04, -0.88], [-0.08, -0.86], [0.08, -0.86],
    [-0.18, -0.62], [0.18, -0.62], [-0.24, -0.35], [0.24, -0.35], [-0.27, -0.1], [0.27, -0.1],
    [-0.11, 0.0], [0.11, 0.0], [-0.12, 0.42], [0.12, 0.42], [-0.13, 0.85], [0.13, 0.85],
])  # fmt: skip


def dense_crowd(n: int = 30, seed: int = 0) -> np.ndarray:
    """n overlapping people (N, 17, 3) in output pixels of a 128 × 176 map."""
    rng = np.random.default_rng(seed)
    cols = 10
    people = []
    for i in range(n):
        height = rng.uniform(26, 32)
        cx = 10 + (i % cols) * 17.3 + rng.uniform(-1.5, 1.5)
        cy = 31 + (i // cols) * 33 + rng.uniform(-1, 1)
        xy = _TEMPLATE * height + [cx, cy] + rng.normal(0, 0.8, size=(17, 2))
        people.append(np.concatenate([xy, np.full((17, 1), 2.0)], axis=1))
    return np.stack(people)


def test_dense_crowd_of_30_people_is_recovered():
    people = dense_crowd()
    lo, hi = people[..., :2].min(1), people[..., :2].max(1)
    assert (lo >= 0).all() and (hi[:, 0] < 176).all() and (hi[:, 1] < 128).all()
    overlap = (np.minimum(hi[:, None], hi[None]) > np.maximum(lo[:, None], lo[None])).all(-1)
    assert overlap.sum() - 30 >= 2 * 30  # every person's box overlaps others
    t = targets.encode_targets(people, np.full(30, 1e4), None, output_size=(128, 176))
    heat = torch.from_numpy(t["heatmaps"])[None]
    offsets = torch.from_numpy(t["offsets"] * (t["offset_weights"] > 0))[None]
    det = DEKRDecoder(COCO_KEYPOINTS)(heat, offsets)[0]
    found = det["keypoints"][..., :2].numpy() / 4
    dist = np.linalg.norm(found[:, None] - people[None, ..., :2], axis=-1).mean(-1)  # (D, N)
    recovered = {int(dist[d].argmin()) for d in range(len(found)) if dist[d].min() < 1.0}
    assert len(recovered) >= 29, (len(found), sorted(set(range(30)) - recovered))


def test_roundtrip_on_coco_val_sample(capsys):
    assert roundtrip.main([str(RECIPE), "--annotations", str(COCO_VAL), "data.input_size=512"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("AP ") and float(last.split()[1]) >= 0.99


def test_recipe_settings_and_overrides():
    from dekr.config import RecipeError, load_recipe

    recipe = load_recipe(RECIPE, ["decode.nms_threshold=0.1", "targets.sigma=2.5"])
    got = roundtrip.recipe_settings(recipe)
    assert got["decoder_kwargs"]["nms_threshold"] == 0.1 and got["target_kwargs"]["sigma"] == 2.5
    assert got["spec"].name == "coco" and got["input_size"] == recipe.data.input_size
    with pytest.raises(RecipeError, match="did you mean 'decode.nms_threshold'"):
        load_recipe(RECIPE, ["decode.nms_treshold=0.1"])


@pytest.mark.slow
def test_roundtrip_on_synthetic_val(tmp_path, capsys):
    """The target ceiling of the official W32 settings on the embedded synthetic data."""
    from dekr.data.synthetic import ensure_synthetic_splits

    paths = ensure_synthetic_splits(tmp_path, spec=COCO_KEYPOINTS, train_images=1, val_images=100)
    w32 = REPO / "recipes" / "coco_w32.yaml"
    assert roundtrip.main([str(w32), "--annotations", str(paths["val"])]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert float(last.split()[1]) >= 0.99, last


@pytest.mark.parametrize("official", [False, True])
def test_roundtrip_image_under_both_target_rules(official: bool) -> None:
    people = dense_crowd(10) * [4.0, 4.0, 1.0]  # original pixels of a 704 × 512 image
    decoder = DEKRDecoder(COCO_KEYPOINTS)
    kwargs = {"official": official}
    out = roundtrip.roundtrip_image(people, np.full(10, 1e4), 512, 704, decoder=decoder,
                                    input_size=512, target_kwargs=kwargs)  # fmt: skip
    dist = np.linalg.norm(out["keypoints"][:, None, :, :2] - people[None, ..., :2], axis=-1)
    assert (dist.mean(-1).min(0) < 4.0).all()  # every person back within a pixel of the map
