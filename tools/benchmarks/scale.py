"""COCO-scale annotations: start-up, memory per rank and data-worker memory growth.

Generates a COCO-sized person-keypoint JSON in a temporary folder (no images): ``--images``
images with people (default 57,000, as COCO train2017), as many without, 2.6 people with
keypoints and 1.9 keypoint-less people per image with people (polygons), 1 % crowd regions
(uncompressed RLE) — about 150k + 110k annotations and 240 MB at the default size. Then, each in
a fresh process, records:

* ``scale.coco.startup_s``: ``COCOKeypoints`` constructor to first sample's annotations, no cache
  yet (it parses the JSON, builds the arrays and writes the cache);
* ``scale.coco.startup_cached_s``: the same with the cache written;
* ``scale.coco.rank_mib``: resident memory (RSS) the cached dataset adds to a fresh process
  (the arrays are memory maps of the cache file: shared between the ranks of a node),
  ``scale.coco.rank_private_mib`` the private dirty part of it, ``scale.coco.cache_file_mib``
  the cache file (``official=True``, as the COCO recipes read: keypoints float64);
* ``scale.coco.worker_growth_mib``: the largest private memory (USS, ``/proc/PID/smaps_rollup``)
  a DataLoader worker gains over ``--epochs`` epochs of every sample's annotations (keypoints,
  areas, ignore mask decoded; no image) and a full ``gc.collect()``, ``--workers`` workers, less
  what a control worker gains that runs as many empty steps and the same ``gc.collect()`` (the
  collection alone copies the pages of every Python object the parent holds: torch's, numpy's);
  both raw gains are printed too (``worker_uss_gain_mib``, ``..._control_mib``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from .timing import record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=57000, help="images with people (57000)")
    parser.add_argument("--epochs", type=int, default=2, help="simulated epochs in the workers")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")


def _polygon(rng: random.Random, x: float, y: float, r: float, points: int) -> list[float]:
    out = []
    for i in range(points):
        a = 6.2832 * i / points
        out += [round(x + r * rng.uniform(0.6, 1.0) * math.cos(a), 2),
                round(y + r * rng.uniform(0.6, 1.0) * math.sin(a), 2)]  # fmt: skip
    return out


def generate(path: Path, images: int, seed: int = 0) -> dict[str, int]:
    """Write a COCO-sized keypoint JSON at ``path``; counts of what it holds."""
    rng = random.Random(seed)
    imgs, anns, next_id = [], [], 1
    people = unlabelled = crowds = 0
    for i in range(2 * images):
        w, h = rng.choice([(640, 480), (640, 427), (480, 640), (500, 375)])
        imgs.append({"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": w, "height": h,
                     "license": 1, "coco_url": "", "date_captured": "", "flickr_url": ""})
        if i >= images:
            continue
        n_people = rng.choice([1, 1, 2, 2, 3, 3, 4, 5])
        n_other = rng.choice([0, 1, 1, 2, 2, 3, 4])
        for j in range(n_people + n_other):
            x, y, r = rng.uniform(40, w - 40), rng.uniform(40, h - 40), rng.uniform(15, 60)
            kps: list[float] = []
            if j < n_people:
                for _ in range(17):
                    v = rng.choice([0, 1, 2, 2, 2])
                    kps += [0, 0, 0] if v == 0 else [round(x + rng.uniform(-r, r), 1),
                                                      round(y + rng.uniform(-r, r), 1), v]
                people += 1
            else:
                kps = [0] * 51
                unlabelled += 1
            crowd = j >= n_people and rng.random() < 0.05
            box = [round(x - r, 2), round(y - r, 2), round(2 * r, 2), round(2 * r, 2)]
            if crowd:
                crowds += 1
                first = int(max(x - r, 0))
                cols = max(min(int(2 * r), w - first), 1)
                top, mid = int(h * 0.2), int(h * 0.6)  # a band in each column, column-major
                counts = [first * h + top]
                for c in range(cols):
                    counts += [mid, h - mid] if c < cols - 1 else [mid]
                counts.append(h * w - sum(counts))
                segm: object = {"size": [h, w], "counts": counts}
            else:
                segm = [_polygon(rng, x, y, r, 20), _polygon(rng, x + r, y, r / 2, 12)]
            anns.append({"segmentation": segm, "num_keypoints": sum(1 for v in kps[2::3] if v),
                         "area": round(3.0 * r * r, 2), "iscrowd": int(crowd), "keypoints": kps,
                         "image_id": i + 1, "bbox": box, "category_id": 1, "id": next_id})
            next_id += 1
    names = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
             "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
             "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]
    doc = {"info": {"description": "generated, COCO train2017 sized"}, "licenses": [],
           "images": imgs, "annotations": anns,
           "categories": [{"id": 1, "name": "person", "supercategory": "person",
                           "keypoints": names, "skeleton": []}]}  # fmt: skip
    with open(path, "w") as f:
        json.dump(doc, f)
    return {"images": len(imgs), "people": people, "unlabelled": unlabelled, "crowds": crowds,
            "bytes": path.stat().st_size}  # fmt: skip


_CHILD = textwrap.dedent(
    """
    import gc, json, os, sys, time
    def mem():
        out = {}
        for line in open("/proc/self/smaps_rollup"):
            parts = line.split()
            if parts[0] in ("Rss:", "Private_Clean:", "Private_Dirty:"):
                out[parts[0][:-1]] = int(parts[1]) / 1024
        out["Uss"] = out["Private_Clean"] + out["Private_Dirty"]
        return out
    import numpy, torch
    from dekr.data.coco import COCOKeypoints
    from dekr.keypoints import COCO_KEYPOINTS
    ann, images, epochs, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    gc.collect()
    before = mem()
    start = time.perf_counter()
    ds = COCOKeypoints(ann, images, COCO_KEYPOINTS, cache=True, official=True)
    ds.annotations(0)
    seconds = time.perf_counter() - start
    gc.collect()
    after = mem()
    result = {"seconds": seconds, "status": ds.cache_status, "images": len(ds),
              "rss": after["Rss"] - before["Rss"],
              "private": after["Private_Dirty"] - before["Private_Dirty"]}
    from dekr.data.cache import cache_paths
    from dekr.data.coco import _variant
    cache = cache_paths(ann, _variant(COCO_KEYPOINTS, True))[0]
    result["cache_mib"] = os.path.getsize(cache) / 2**20
    if workers:
        class Touch(torch.utils.data.Dataset):
            def __init__(self, touch):
                self.touch = touch
            def __len__(self):
                return epochs * len(ds) + workers
            def __getitem__(self, i):
                if i >= epochs * len(ds):
                    gc.collect()
                    return mem()["Uss"] - BASE[0]
                if not self.touch:
                    return 0.0
                s = ds.annotations(i % len(ds))
                return float(s["keypoints"].sum()) * 0.0
        BASE = [0.0]
        def init(_):
            BASE[0] = mem()["Uss"]
        for touch in (False, True):
            loader = torch.utils.data.DataLoader(Touch(touch), batch_size=None,
                                                 num_workers=workers, worker_init_fn=init)
            values = list(loader)
            result["growth" if touch else "control"] = max(values[-workers:])
    print(json.dumps(result))
    """
)


def _child(ann: Path, images: Path, epochs: int, workers: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(ann), str(images), str(epochs),
                          str(workers)], capture_output=True, text=True)  # fmt: skip
    if out.returncode:
        raise RuntimeError(f"benchmark process failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> list[dict]:
    """Generate the annotations, then start-up, rank memory and worker growth in fresh processes."""
    with tempfile.TemporaryDirectory(prefix="dekr-scale-") as tmp:
        ann, images = Path(tmp) / "person_keypoints_generated.json", Path(tmp) / "images"
        images.mkdir()
        counts = generate(ann, args.images)
        cold = _child(ann, images, 0, 0)
        warm = _child(ann, images, args.epochs, args.workers)
        assert cold["status"] == "built" and warm["status"] == "read", (cold, warm)
    return [
        record("scale.coco.json_mib", counts["bytes"] / 2**20, "MiB", 1),
        record("scale.coco.images", counts["images"], "images", 0),
        record("scale.coco.people", counts["people"], "people", 0),
        record("scale.coco.unlabelled_and_crowd", counts["unlabelled"], "annotations", 0),
        record("scale.coco.startup_s", cold["seconds"], "s", 3),
        record("scale.coco.startup_cached_s", warm["seconds"], "s", 3),
        record("scale.coco.rank_mib", warm["rss"], "MiB", 1),
        record("scale.coco.rank_private_mib", warm["private"], "MiB", 1),
        record("scale.coco.cache_file_mib", warm["cache_mib"], "MiB", 1),
        record("scale.coco.worker_growth_mib", warm["growth"] - warm["control"], "MiB", 1),
        record("scale.coco.worker_uss_gain_mib", warm["growth"], "MiB", 1),
        record("scale.coco.worker_uss_gain_control_mib", warm["control"], "MiB", 1),
    ]
