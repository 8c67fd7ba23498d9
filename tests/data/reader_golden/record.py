"""Record what ``COCOKeypoints`` returns on the COCO sample into ``reader_samples.npz``.

Run from the repository root: ``python tests/data/reader_golden/record.py``. For the train and
val subsets of ``tests/data/coco_sample`` and ``official`` False / True, every image's keypoints
(their dtype kept), areas, ignore mask (``np.packbits`` of the row-major bool mask, with its
shape and the SHA-256 of the unpacked bytes) and image id, the reader's image order, its
``num_outside_keypoints`` and the order with ``drop_images_without_annotations=True``.
Images are not stored: they are the files themselves.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from dekr.data.coco import COCOKeypoints
from dekr.keypoints import COCO_KEYPOINTS

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent / "coco_sample"
SUBSETS = ("train", "val")


def annotation_file(subset: str) -> Path:
    return SAMPLE / "annotations" / f"person_keypoints_{subset}_sample.json"


def mask_digest(mask: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(mask, dtype=bool).tobytes()).hexdigest()


def record() -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for subset in SUBSETS:
        for official in (False, True):
            prefix = f"{subset}.{'official' if official else 'default'}"
            ds = COCOKeypoints(str(annotation_file(subset)), str(SAMPLE / "images"),
                               COCO_KEYPOINTS, official=official)  # fmt: skip
            arrays[f"{prefix}.image_ids"] = np.asarray(list(ds.image_ids), np.int64)
            arrays[f"{prefix}.num_outside_keypoints"] = np.asarray(ds.num_outside_keypoints)
            dropped = COCOKeypoints(str(annotation_file(subset)), str(SAMPLE / "images"),
                                    COCO_KEYPOINTS, official=official,
                                    drop_images_without_annotations=True)  # fmt: skip
            arrays[f"{prefix}.dropped_image_ids"] = np.asarray(list(dropped.image_ids), np.int64)
            for index in range(len(ds)):
                s = ds.raw_sample(index)
                key = f"{prefix}.{s['image_id']}"
                arrays[f"{key}.image_id"] = np.asarray(s["image_id"], np.int64)
                arrays[f"{key}.keypoints"] = s["keypoints"]
                arrays[f"{key}.areas"] = s["areas"]
                arrays[f"{key}.ignore_bits"] = np.packbits(s["ignore_mask"].ravel())
                arrays[f"{key}.ignore_shape"] = np.asarray(s["ignore_mask"].shape, np.int64)
                arrays[f"{key}.ignore_sha256"] = np.asarray(mask_digest(s["ignore_mask"]))
    return arrays


if __name__ == "__main__":
    out = HERE / "reader_samples.npz"
    np.savez_compressed(out, **record())
    print(f"wrote {out} ({out.stat().st_size} bytes)")
