"""Generate (or reuse) the synthetic train/val splits and print their JSON paths and timing.

Example: ``python tools/make_synthetic.py --out data/synthetic --train 1000 --val 100 --size 256``
"""

from __future__ import annotations

import argparse
import time

from dekr.data.synthetic import ensure_synthetic_splits


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="dataset folder (new, empty or synthetic)")
    parser.add_argument("--train", type=int, default=1000, help="train images (default 1000)")
    parser.add_argument("--val", type=int, default=100, help="val images (default 100)")
    parser.add_argument("--size", type=int, default=256, help="square image side (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--max-people", type=int, default=6, help="people per image, at most")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    paths = ensure_synthetic_splits(
        args.out,
        train_images=args.train,
        val_images=args.val,
        size=args.size,
        seed=args.seed,
        max_people=args.max_people,
    )
    elapsed = time.perf_counter() - start
    for split, path in paths.items():
        print(f"{split}: {path}")
    print(f"ready in {elapsed:.2f} s ({args.train + args.val} images; reused if unchanged)")


if __name__ == "__main__":
    main()
