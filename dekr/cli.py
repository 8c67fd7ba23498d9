"""Command-line entry points: ``dekr-train``, ``dekr-eval``, ``dekr-predict``, ``dekr-export``.

Bad input (a recipe key, a missing file, a checkpoint of another K: a
:class:`dekr.errors.UserError`) ends with one line ``error: ...`` on stderr (and a ``hint: ...``
line where there is one) and exit code 2; ``--debug`` raises it with its traceback instead. Any
other exception is a bug: its traceback is printed and the exit code is 1.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

from dekr.errors import OptionError, OutputError, UserError, first_line

__all__ = ["train_main", "eval_main", "predict_main", "export_main"]

_STARTED = time.monotonic()  # the command's start: a time budget counts from here

# Lightning's start-up lines that say nothing about the run (hidden by the commands, shown with
# --debug; the library keeps Lightning's logging as it is)
_NOISE = (
    "GPU available:", "TPU available:", "HPU available:", "litlogger", "LOCAL_RANK:",
    "`Trainer.fit` stopped:", "Loading `train_dataloader` to estimate",
    "Automatic Mixed Precision (AMP)",  # dekr-train names the precision itself
)  # fmt: skip


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(part in message for part in _NOISE)


def _quiet() -> None:
    """Hide Lightning's start-up noise and the deprecation warnings of dependencies (dekr's own
    warnings stay)."""
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        for logger in (name, f"{name}.utilities.rank_zero"):  # filters do not propagate
            logging.getLogger(logger).addFilter(_DropNoise())
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module=r"dekr(\.|$)")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")


def _run(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    if args.debug:
        return fn(args)
    _quiet()
    try:
        return fn(args)
    except UserError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # non-finite loss (DekrModule): the run stopped
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug, not bad input: show where
        traceback.print_exc()
        print("internal error in dekr (traceback above); please report it", file=sys.stderr)
        return 1


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


# ---------------------------------------------------------------------------------- dekr-train
def _train(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from dekr.config import load_recipe
    from dekr.training import train

    recipe = load_recipe(args.recipe, args.overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(recipe), end="")
        return 0
    train(recipe, overwrite=args.overwrite, started=_STARTED)
    return 0


def train_main(argv: list[str] | None = None) -> int:
    """``dekr-train RECIPE [key=value ...]``."""
    parser = _parser("dekr-train", "Train a DEKR model from a recipe.")
    parser.add_argument("recipe", help="recipe YAML, e.g. recipes/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in a non-empty output_dir (its recipe, keypoints, checkpoints and "
        "logs; removed once every check has passed). Without it such a folder is refused unless "
        "resume=auto continues it. Not stored in the recipe.",
    )
    return _run(_train, parser.parse_intermixed_args(argv))


# ---------------------------------------------------------------------------------- dekr-eval
def _check_results_path(path: Path, default: bool) -> None:
    """The results JSON can be written: not a folder, in an existing writable folder. Checked
    before the checkpoint is loaded, so that a bad path never costs an evaluation."""
    what = f"--results {path}"
    if default:
        what = f"results file {path} (next to the checkpoint; choose another with --results)"
    if path.is_dir():
        raise OutputError(f"{what} is a folder; give a file path, e.g. {path / 'results.json'}")
    folder = path.parent
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise OutputError(f"{what}: the folder {folder} {state}")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise OutputError(f"{what}: the folder {folder} is not writable ({err.strerror})") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} exists and is not writable")


def _eval(args: argparse.Namespace) -> int:
    from dekr.training import evaluate

    results = args.results
    if results is not None:
        _check_results_path(results, default=False)
    elif Path(args.checkpoint).is_file():  # a missing checkpoint is load_checkpoint's error
        _check_results_path(Path(args.checkpoint).with_name("results.json"), default=True)
    metrics = evaluate(args.checkpoint, args.overrides, results=results)
    print(f"AP {metrics['AP']:.4f}")
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    """``dekr-eval CHECKPOINT [key=value ...]``."""
    parser = _parser("dekr-eval", "COCO keypoint AP of a checkpoint on its validation data.")
    parser.add_argument(
        "checkpoint", help="a dekr checkpoint (.ckpt) or a weights name (dekr.list_weights())"
    )
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. decode.flip=false")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="COCO results JSON file, in an existing folder (default: results.json next to the "
        "checkpoint); checked before the evaluation starts",
    )
    return _run(_eval, parser.parse_intermixed_args(argv))


# ---------------------------------------------------------------------------------- dekr-predict
def _predict(args: argparse.Namespace) -> int:
    from dekr.predict import SUMMARY, predict_files

    # Options left out on the command line are not in ``args``: predict_files' defaults apply.
    options = {k: v for k, v in vars(args).items() if k not in ("checkpoint", "inputs", "out")}
    options.pop("debug")
    written = predict_files(args.checkpoint, args.inputs, args.out, **options)
    print(f"wrote {written} (COCO results) and {written.with_name(SUMMARY)} (per image)")
    return 0


def predict_main(argv: list[str] | None = None) -> int:
    """``dekr-predict CHECKPOINT INPUT... --out DIR``."""
    parser = _parser(
        "dekr-predict",
        "Poses for images, folders and videos: predictions.json (COCO results list), "
        "images.json (per image: id, file, size, people, overlay) and overlays (PNG / MP4) at "
        "the inputs' paths relative to their common folder.",
    )
    parser.add_argument(
        "checkpoint",
        help="a dekr checkpoint (.ckpt) or a weights name (dekr.list_weights()); its recipe "
        "and spec are used",
    )
    parser.add_argument("inputs", nargs="+", help="image files, folders or video files")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    # The options below have no argparse default (SUPPRESS): the defaults are predict_files'.
    option = functools.partial(parser.add_argument, default=argparse.SUPPRESS)
    option(
        "--annotations",
        type=Path,
        help="COCO JSON whose images are the inputs: its image ids (matched by file_name) are "
        "used in predictions.json (default: 1, 2, ... in input order)",
    )
    option(
        "--strict",
        action="store_true",
        help="stop at the first unreadable input (default: skip it with a warning)",
    )
    option("--recursive", action="store_true", help="also the subfolders of folder inputs")
    option(
        "--flip",
        action=argparse.BooleanOptionalAction,
        help="flip test (default: the recipe's)",
    )
    option(
        "--scales", type=float, nargs="+", help="test scales, e.g. 2 1 0.5 (default: the recipe's)"
    )
    option("--batch-size", type=int, help="images per network pass")
    option("--score-threshold", type=float, help="minimum pose score to draw")
    option("--onnx", type=Path, help="run the network through onnxruntime from this exported file")
    return _run(_predict, parser.parse_args(argv))


# ---------------------------------------------------------------------------------- dekr-export
def _check_export_args(out: Path, input_size: int | None) -> None:
    """``--out`` can become a file and ``--input-size`` fits the network, before any loading."""
    if input_size is not None and (input_size <= 0 or input_size % 4):
        raise OptionError(f"--input-size {input_size}: expected a positive multiple of 4")
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; give a file path, e.g. {out / 'model.onnx'}")
    from dekr.preflight import check_creatable

    check_creatable(out.parent, f"--out {out}")


def _export(args: argparse.Namespace) -> int:
    from dekr.export import check_format, check_onnx, export_onnx
    from dekr.module import load_checkpoint

    check_format(args.format)
    _check_export_args(args.out, args.input_size)
    module = load_checkpoint(args.checkpoint)
    size = args.input_size or module.recipe.data.input_size
    d = module.recipe.decode
    path = export_onnx(
        module.model,
        args.out,
        input_size=(size, size),
        dynamic=args.dynamic,
        with_decoder=args.with_decoder,
        max_people=d.max_people,
        center_threshold=d.center_threshold,
    )
    # With the decoder the compared outputs are poses in input pixels (4x the offsets' scale).
    diff = check_onnx(
        path, module.model, input_size=(size, size), atol=1e-3 if args.with_decoder else 1e-4
    )
    outputs = "poses, scores" if args.with_decoder else "heatmaps, offsets"
    print(f"onnxruntime vs torch ({outputs}): max abs difference {diff:.3g}")
    print(f"wrote {path}")
    return 0


def export_main(argv: list[str] | None = None) -> int:
    """``dekr-export CHECKPOINT --format onnx [--dynamic] [--with-decoder] --out FILE``."""
    parser = _parser(
        "dekr-export", "Export a checkpoint's network (adaptive convolutions included)."
    )
    parser.add_argument("checkpoint", help="a dekr checkpoint (.ckpt) or a weights name")
    parser.add_argument("--format", default="onnx", help="export format (onnx)")
    parser.add_argument("--out", type=Path, required=True, help="output file")
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    parser.add_argument(
        "--with-decoder",
        action="store_true",
        help="put centre NMS, offset reading and scoring in the graph",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="square export size (default: the recipe's data.input_size)",
    )
    return _run(_export, parser.parse_args(argv))
