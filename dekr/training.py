"""Training and evaluation entry points: recipe → datasets, DataModule, LightningModule, Trainer.

``train(recipe)`` is what ``dekr-train`` runs; ``evaluate(checkpoint)`` what ``dekr-eval`` runs.
Every process count, device and precision setting is handed to Lightning unchanged.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    Timer,
    TQDMProgressBar,
)
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch.utils.data import Dataset, Subset

from dekr import budget as time_budget
from dekr.binding import section_kwargs, target_kwargs, trainer_kwargs
from dekr.budget import TimeBudget
from dekr.callbacks import RNGStateCallback, ValidationReport
from dekr.config import import_target, recipe_from_dict
from dekr.data.coco import COCOKeypoints
from dekr.data.datamodule import DekrDataModule, TrainSampleTransform
from dekr.data.robust import SkipBadImages
from dekr.errors import (
    CheckpointError,
    DataError,
    MissingFileError,
    OptionError,
    RecipeError,
    SpecError,
    UserError,
    first_line,
)
from dekr.keypoints import KeypointSpec
from dekr.models.weights import load_imagenet_backbone, load_official_dekr
from dekr.module import DekrModule, load_checkpoint, spec_from_recipe
from dekr.precision import PrecisionChoice, choose_precision
from dekr.preflight import (
    check_output_dir,
    check_resume,
    check_steps,
    check_values,
    clear_run,
    count_processes,
    is_rank_zero,
    training_device,
)

__all__ = [
    "train",
    "evaluate",
    "build_datamodule",
    "build_trainer",
    "build_module",
    "AtomicCheckpointIO",
]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed: a crash while saving leaves the
    previous checkpoint readable."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)


class _Transformed(Dataset):
    """Apply a transform to the items of any dataset of raw samples."""

    def __init__(self, dataset: Dataset, transform: Any) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.transform(self.dataset[index])


def _custom_dataset(node: DictConfig, spec: KeypointSpec) -> Dataset:
    kwargs = OmegaConf.to_container(node, resolve=True)
    factory = import_target(kwargs.pop("_target_"))
    import inspect

    if "spec" in inspect.signature(factory).parameters:
        kwargs["spec"] = spec
    return factory(**kwargs)


def _coco_dataset(annotations: str, images: str, spec: KeypointSpec, **kwargs: Any) -> Dataset:
    """The COCO reader on user-given paths; its file and format errors become user errors."""
    try:
        return COCOKeypoints(annotations, images, spec, **kwargs)
    except UserError:
        raise
    except FileNotFoundError as err:
        raise MissingFileError(str(err)) from None
    except ValueError as err:
        raise DataError(str(err)) from None


class _ReadErrorsNamed(Subset):
    """The first ``n`` samples of a validation dataset; an image that cannot be read
    (``OSError``: missing, not decodable) is a :class:`DataError` naming the file. A ``Subset``,
    so that the evaluator still finds the dataset's COCO ground truth."""

    def __init__(self, dataset: Dataset, n: int) -> None:
        super().__init__(dataset, range(n))

    def __getitem__(self, index: int) -> Any:
        try:
            return super().__getitem__(index)
        except UserError:
            raise
        except OSError as err:
            raise DataError(str(err)) from None

    def __getitems__(self, indices: list[int]) -> list[Any]:
        return [self[i] for i in indices]


class RecipeDataModule(DekrDataModule):
    """The DataModule a recipe describes; synthetic data is generated once, in ``prepare_data``."""

    def __init__(
        self,
        recipe: DictConfig,
        spec: KeypointSpec,
        train_dataset: Optional[Dataset] = None,
        val_dataset: Optional[Dataset] = None,
    ) -> None:
        d, t = recipe.data, recipe.targets
        targets = target_kwargs(recipe)
        super().__init__(
            **section_kwargs(recipe, "data"),
            targets_on_device=t.on_device,
            target_kwargs=targets,
        )
        self.recipe, self.spec = recipe, spec
        self.given = {"train": train_dataset, "val": val_dataset}  # raw-sample datasets
        self.passed = {split: ds is not None for split, ds in self.given.items()}
        a = recipe.augment
        self.transform = TrainSampleTransform(
            spec,
            input_size=d.input_size,
            targets_on_device=t.on_device,
            target_kwargs=targets,
            flip_prob=a.flip_prob,
            seed=recipe.seed,
            augment_kwargs=section_kwargs(recipe, "augment"),
        )

    def _synthetic(self) -> dict[str, Path]:
        from dekr.data.synthetic import ensure_synthetic_splits

        return ensure_synthetic_splits(
            spec=self.spec,
            progress=is_rank_zero(),
            **section_kwargs(self.recipe, "data.synthetic"),
        )

    def prepare_data(self) -> None:
        needed = any(self.given[s] is None for s in ("train", "val"))
        if needed and self.recipe.data.source == "synthetic":
            self._synthetic()

    def load_datasets(self, splits: tuple[str, ...] = ("train", "val")) -> int:
        """Read the datasets now, so that their errors (annotation files, image folders, an
        empty split) come before a run starts, and keep them for ``setup``; returns the number
        of images of the first split."""
        if self.recipe.data.source == "synthetic" and any(self.given[s] is None for s in splits):
            self._synthetic()
        for split in splits:
            if self.given[split] is None:
                self.given[split] = self._split(split)
            if len(self.given[split]) == 0:  # type: ignore[arg-type]
                raise DataError(f"the {split} data has no images ({self._describe(split)})")
        return len(self.given[splits[0]])  # type: ignore[arg-type]

    def _describe(self, split: str) -> str:
        d = self.recipe.data
        if self.passed[split]:
            return f"the {split}_dataset given to train()"
        if d.get(f"{split}_dataset") is not None:
            return f"data.{split}_dataset"
        if d.source == "synthetic":
            return f"data.synthetic.{split}_images={d.synthetic.get(f'{split}_images')}"
        text = f"data.{split}_annotations={d.get(f'{split}_annotations')}"
        if split == "train" and d.drop_images_without_annotations:
            text += "; images without people are left out (data.drop_images_without_annotations)"
        return text

    def _split(self, split: str) -> Dataset:
        d = self.recipe.data
        if self.given[split] is not None:
            return self.given[split]
        custom = d.get(f"{split}_dataset")
        if custom is not None:
            return _custom_dataset(custom, self.spec)
        if d.source == "synthetic":
            ann = self._synthetic()[split]  # cached: only reads the manifest
            images = Path(d.synthetic.root) / "images" / split
        elif d.source == "coco":
            ann, images = d.get(f"{split}_annotations"), d.get(f"{split}_images")
            if not ann or not images:
                raise RecipeError(
                    f"data.{split}_annotations and data.{split}_images are required "
                    "with data.source=coco"
                )
        else:
            raise RecipeError(f"data.source {d.source!r} unknown; expected coco or synthetic")
        return _coco_dataset(
            str(ann),
            str(images),
            self.spec,
            drop_images_without_annotations=split == "train" and d.drop_images_without_annotations,
            official=split == "train" and self.recipe.targets.official,
        )

    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, "fit"):
            train = SkipBadImages(self._split("train"), self.recipe.data.max_bad_image_fraction)
            self.train_dataset = _Transformed(train, self.transform)
        if stage in (None, "fit", "validate"):
            val = self._split("val")
            limit = self.recipe.data.max_val_images
            self.val_dataset = _ReadErrorsNamed(val, min(limit, len(val)) if limit else len(val))


def build_datamodule(
    recipe: DictConfig,
    spec: Optional[KeypointSpec] = None,
    train_dataset: Optional[Dataset] = None,
    val_dataset: Optional[Dataset] = None,
) -> RecipeDataModule:
    """The recipe's DataModule; given datasets (of raw samples) replace the recipe's."""
    return RecipeDataModule(recipe, spec or spec_from_recipe(recipe), train_dataset, val_dataset)


def build_module(recipe: DictConfig) -> DekrModule:
    """The LightningModule with the recipe's initial weights (ImageNet backbone / DEKR weights)."""
    from dekr.weights import resolve_backbone, resolve_model_weights  # names: dekr.list_weights()

    with _naming("decode.rescore_checkpoint"):
        module = DekrModule.from_recipe(recipe)
    if recipe.model.weights:
        with _naming("model.weights"):
            fresh = load_official_dekr(
                module.model,
                resolve_model_weights(recipe.model.weights),
                partial=recipe.model.weights_partial,
            )
        if fresh and is_rank_zero():
            print(
                f"model.weights {recipe.model.weights}: another keypoint count, so "
                f"{', '.join(fresh)} are re-initialised (model.weights_partial=true); the "
                "backbone, the other head layers and the centre heatmap are loaded"
            )
    elif recipe.model.pretrained:
        with _naming("model.pretrained"):
            load_imagenet_backbone(module.model, resolve_backbone(recipe.model.pretrained))
    return module


@contextlib.contextmanager
def _naming(key: str) -> Iterator[None]:
    """Checkpoint errors inside the block name the recipe key whose file it was."""
    try:
        yield
    except (CheckpointError, MissingFileError) as err:
        raise type(err)(f"{key}: {err}", hint=err.hint) from None


def build_trainer(
    recipe: DictConfig,
    output_dir: Path,
    extra_callbacks: Sequence[Any] = (),
    started: Optional[float] = None,
    **extra: Any,
) -> pl.Trainer:
    """The recipe's Trainer (settings bound by :func:`dekr.binding.trainer_kwargs`), with the
    run's checkpoints, loggers, progress bar, console lines and time budget
    (``trainer.budget_minutes``, counted from ``started``: :func:`dekr.budget.now` at the start
    of the command), and ``extra_callbacks`` after them."""
    t = recipe.trainer
    started = time_budget.now() if started is None else started
    callbacks: list[Any] = [
        ModelCheckpoint(
            dirpath=output_dir / "checkpoints",
            filename="best",
            monitor="val/AP",
            mode="max",
            save_top_k=1,
            enable_version_counter=False,
        ),
        # last.ckpt after every epoch. (save_last=True above would rewrite it only when val/AP
        # improves, leaving resume=auto an old epoch to continue from.)
        ModelCheckpoint(
            dirpath=output_dir / "checkpoints",
            filename="last",
            save_top_k=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        ),
        LearningRateMonitor(logging_interval="step"),
        TQDMProgressBar(refresh_rate=max(1, t.log_every_n_steps // 5)),
        RNGStateCallback(),  # resumed runs continue the random streams (dekr/callbacks.py)
        ValidationReport(started),
    ]
    if t.budget_minutes:
        callbacks.append(TimeBudget(t.budget_minutes, started=started))
    if recipe.optim.ema_decay:
        from pytorch_lightning.callbacks import EMAWeightAveraging

        callbacks.append(EMAWeightAveraging(decay=recipe.optim.ema_decay))
    csv_version = next(
        v
        for v in ("csv", *(f"csv_{i}" for i in range(1, 10_000)))
        if not (output_dir / "logs" / v).exists()
    )  # a resumed run keeps its history
    loggers = [
        TensorBoardLogger(output_dir, name="logs", version="tensorboard"),
        CSVLogger(output_dir, name="logs", version=csv_version),
    ]
    if t.wandb_project:
        from pytorch_lightning.loggers import WandbLogger

        loggers.append(WandbLogger(project=t.wandb_project, save_dir=str(output_dir)))
    kwargs = trainer_kwargs(recipe)
    kwargs["strategy"] = _strategy(t.strategy, t.process_group_timeout_minutes)
    with _trainer_settings():
        trainer = pl.Trainer(
            **kwargs,
            callbacks=callbacks + list(extra_callbacks),
            logger=loggers,
            plugins=[AtomicCheckpointIO()],
            default_root_dir=str(output_dir),
            **{"enable_model_summary": False, **extra},  # one line instead: train()
        )
    return trainer


@contextlib.contextmanager
def _trainer_settings() -> Iterator[None]:
    """Lightning's refusal of a trainer setting (strategy, precision, devices) is a recipe
    error; it comes before the Trainer prints anything."""
    try:
        yield
    except (MisconfigurationException, ValueError) as err:  # e.g. precision="16" typos
        raise RecipeError(f"trainer settings: {first_line(err)}") from None


def _strategy(name: str, timeout_minutes: float) -> Any:
    """DDP with the recipe's collective timeout (a rank that dies cannot hang the others for the
    default 30 minutes); any other strategy name goes to Lightning unchanged."""
    if name in ("ddp", "ddp_spawn"):
        from datetime import timedelta

        from pytorch_lightning.strategies import DDPStrategy

        return DDPStrategy(
            start_method="popen" if name == "ddp" else "spawn",
            timeout=timedelta(minutes=timeout_minutes),
        )
    return name


def _resume_path(resume: Optional[str], output_dir: Path) -> Optional[str]:
    if not resume:
        return None
    if resume == "auto":
        last = output_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(resume).is_file():
        raise MissingFileError(f"resume checkpoint not found: {resume}")
    return resume


def _val_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The last validation's metrics without their ``val/`` prefix (``AP``, ``AP50``, ...)."""
    return {k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items()
            if k.startswith("val/")}  # fmt: skip


def _save_run_files(recipe: DictConfig, spec: KeypointSpec, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "recipe.yaml").write_text(OmegaConf.to_yaml(recipe))
    (output_dir / "keypoints.json").write_text(json.dumps(spec.to_dict(), indent=1))


def _spec(recipe: DictConfig) -> KeypointSpec:
    try:
        return spec_from_recipe(recipe)
    except SpecError as err:
        raise SpecError(f"keypoints: {err}") from None
    except (TypeError, ValueError) as err:  # e.g. names: 5 in an inline spec
        raise SpecError(f"keypoints: not a keypoint spec: {err}") from None


def _prepare(
    recipe: DictConfig,
    train_dataset: Optional[Dataset],
    val_dataset: Optional[Dataset],
    overwrite: bool,
) -> tuple[KeypointSpec, RecipeDataModule, DekrModule, Optional[str], Optional[PrecisionChoice]]:
    """Every check of a run (dekr/preflight.py), before anything is printed or written."""
    output_dir = Path(recipe.output_dir)
    if overwrite and recipe.resume:
        raise OptionError(
            f"--overwrite starts the run in {output_dir} anew; it cannot go with "
            f"resume={recipe.resume}"
        )
    d = recipe.data
    own_data = train_dataset is not None or d.train_dataset is not None
    own_data = own_data and (val_dataset is not None or d.val_dataset is not None)
    check_values(recipe, custom_data=own_data)
    spec = _spec(recipe)
    processes = count_processes(recipe.trainer)
    if is_rank_zero():  # other ranks run after rank 0 has written the folder
        check_output_dir(output_dir, recipe.resume, overwrite=overwrite)
    datamodule = build_datamodule(recipe, spec, train_dataset, val_dataset)
    images = datamodule.load_datasets()
    check_steps(recipe, images, processes)
    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    module = build_module(recipe)
    ckpt_path = _resume_path(recipe.resume, output_dir)
    resumed = None
    if ckpt_path is not None:
        resumed = check_resume(Path(ckpt_path), module.state_dict(), recipe.model.backbone)
    choice = _auto_precision(recipe, module, processes, resumed)
    return spec, datamodule, module, ckpt_path, choice


def _auto_precision(
    recipe: DictConfig, module: DekrModule, processes: int, resumed: Optional[Any]
) -> Optional[PrecisionChoice]:
    """``trainer.precision=auto`` resolved (dekr/precision.py): a resumed run keeps the precision
    it started with, a new one times both. The recipe (and so ``recipe.yaml``) and the module's
    saved recipe get the concrete value; None when the recipe names one itself."""
    t = recipe.trainer
    if str(t.precision) != "auto":
        return None
    before = ((resumed or {}).get("trainer") or {}).get("precision")
    if before and before != "auto":
        choice = PrecisionChoice(str(before), "the precision of the resumed run")
    else:
        choice = choose_precision(
            module.model,
            batch_size=int(recipe.data.batch_size),
            input_size=int(recipe.data.input_size),
            device=training_device(t.accelerator),
            processes=processes,
            channels_last=bool(recipe.model.channels_last),
            threads=1,  # CPU only: a busy core makes a two-thread trial ten times slower
        )
    t.precision = choice.precision
    if module.recipe is not None:
        module.recipe.trainer.precision = choice.precision
        module.hparams["recipe"]["trainer"]["precision"] = choice.precision
    return choice


def train(
    recipe: Union[DictConfig, dict[str, Any]],
    *,
    spec: Optional[KeypointSpec] = None,
    train_dataset: Optional[Dataset] = None,
    val_dataset: Optional[Dataset] = None,
    callbacks: Sequence[Any] = (),
    overwrite: bool = False,
    started: Optional[float] = None,
) -> dict[str, Any]:
    """Train from a recipe; returns the final validation metrics and the checkpoint paths.

    Args:
        recipe: a loaded recipe (:func:`dekr.config.load_recipe`) or a plain mapping.
        spec: the keypoint set; replaces the recipe's ``keypoints`` (and is saved with it).
        train_dataset, val_dataset: any datasets of raw samples (docs/architecture.md),
            replacing the recipe's data sources.
        callbacks: extra Lightning callbacks, after the run's own.
        overwrite: replace the run in a non-empty ``output_dir`` (its recipe, keypoints,
            checkpoints and logs are removed once every check has passed). Without it such a
            folder is an :class:`~dekr.errors.OutputDirError` unless ``resume`` continues it.
        started: :func:`dekr.budget.now` when the command started; a time budget
            (``trainer.budget_minutes``) and the console's minutes count from it (default: now).

    Everything is checked first (recipe values, keypoint spec, devices, output folder, data,
    optimizer steps per epoch, weights and the resume checkpoint: dekr/preflight.py); a failure
    raises a :class:`~dekr.errors.UserError` before anything is printed or written. Prints the
    final validation AP as a last line ``AP <value>`` (rank 0).
    """
    started = time_budget.now() if started is None else started
    # a copy: precision=auto is resolved into it, the caller's recipe stays as given
    recipe = recipe_from_dict(recipe, [])
    if spec is not None:
        recipe.keypoints = spec.to_dict()
    output_dir = Path(recipe.output_dir)
    spec, datamodule, module, ckpt_path, precision = _prepare(
        recipe, train_dataset, val_dataset, overwrite
    )
    trainer = build_trainer(recipe, output_dir, callbacks, started=started)
    if trainer.is_global_zero:
        if overwrite:
            clear_run(output_dir)
        _save_run_files(recipe, spec, output_dir)
        params = sum(p.numel() for p in module.model.parameters())
        print(f"model {recipe.model.backbone} + DEKR heads: {params / 1e6:.2f} M parameters, "
              f"K={spec.num_keypoints} keypoints; run folder {output_dir}")  # fmt: skip
        if precision is not None:
            print(f"precision auto: training in {precision.precision} ({precision.reason})")
        elif not str(recipe.trainer.precision).startswith(("32", "64")):
            print(f"precision: training in {recipe.trainer.precision}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if module.last_validated_step != trainer.global_step:  # the final weights were not validated
        trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = _val_metrics(trainer)
    ckpt_dir = output_dir / "checkpoints"
    if trainer.is_global_zero:
        _closing_lines(trainer, module, ckpt_dir, metrics, started)
    return {"metrics": metrics, "last": ckpt_dir / "last.ckpt", "best": ckpt_dir / "best.ckpt"}


def _hard_stop_cut(trainer: pl.Trainer) -> Optional[str]:
    """The line that says Lightning's hard stop (``trainer.max_time_minutes``) ended training
    before its schedule did, or None: a cut run's AP is not that of its recipe."""
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    remaining = None if timer is None else timer.time_remaining("train")
    if remaining is None or remaining > 0:
        return None
    step = trainer.global_step
    if trainer.max_steps > 0:
        finished, where = step >= trainer.max_steps, f"step {step} of {trainer.max_steps}"
    else:
        finished = trainer.current_epoch >= (trainer.max_epochs or 0)
        where = f"step {step}, with {trainer.max_epochs} epochs planned"
    if finished:
        return None
    limit = (timer.time_elapsed("train") + remaining) / 60
    return (
        f"stopped by trainer.max_time_minutes ({limit:g}) at {where}: the learning-rate "
        "schedule did not finish, so this AP is not the recipe's (raise trainer.max_time_minutes "
        "or set it to null to run the schedule to its end)"
    )


def _closing_lines(
    trainer: pl.Trainer,
    module: DekrModule,
    ckpt_dir: Path,
    metrics: dict[str, float],
    started: float,
) -> None:
    """The run's last lines: the metrics table, the checkpoints (the best one with its epoch),
    a budget run's plan to pin, and the final AP once, as the very last line ``AP <value>``."""
    if module.evaluator is not None:
        # the last validation's metrics (evaluating again takes seconds); the AP line comes below
        print(module.evaluator.summary(metrics, ap_line=False))
    last = ckpt_dir / "last.ckpt"
    report = next((c for c in trainer.callbacks if isinstance(c, ValidationReport)), None)
    budget = next((c for c in trainer.callbacks if isinstance(c, TimeBudget)), None)
    if last.is_file():
        best = ckpt_dir / "best.ckpt"
        if best.is_file() and report is not None and report.best is not None:
            ap, epoch = report.best
            print(f"best checkpoint: {best} (epoch {epoch}, AP {ap:.4f})")
        print(f"last checkpoint: {last} (epoch {trainer.current_epoch})")
        print(f"predict with: dekr-predict {last} IMAGE_OR_FOLDER --out predictions")
    else:  # e.g. stopped by trainer.max_time_minutes before the first epoch ended
        print("no checkpoint was written (the run ended before its first epoch did)")
    minutes = (time_budget.now() - started) / 60
    cut = _hard_stop_cut(trainer)
    if cut:
        print(cut)
    if budget is not None and budget.plan is not None:
        plan = budget.plan
        steps = math.ceil(plan.batches / trainer.accumulate_grad_batches)
        print(
            f"budget {budget.minutes:g} min: {plan.epochs:.1f} epochs ({plan.batches} batches) "
            f"in {minutes:.1f} min; to pin this plan: trainer.budget_minutes=null "
            f"trainer.max_epochs={math.ceil(plan.epochs)} trainer.max_steps={steps} "
            f"trainer.precision={trainer.precision}"
        )
    print(f"AP {metrics.get('AP', float('nan')):.4f}")


def evaluate(
    checkpoint: Union[str, Path], overrides: list[str] = (), results: Optional[Path] = None
) -> dict[str, float]:
    """COCO AP of a checkpoint on the validation split its recipe (plus overrides) names."""
    module = load_checkpoint(checkpoint, overrides)
    recipe = module.recipe
    check_values(recipe)
    count_processes(OmegaConf.merge(recipe.trainer, {"devices": 1, "num_nodes": 1}))
    datamodule = build_datamodule(recipe, module.spec)
    datamodule.load_datasets(("val",))
    with _trainer_settings():
        trainer = pl.Trainer(
            accelerator=recipe.trainer.accelerator,
            devices=1,
            logger=False,
            limit_val_batches=recipe.trainer.limit_val_batches,
            callbacks=[TQDMProgressBar()],
        )
    trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = _val_metrics(trainer)
    print(module.evaluator.summary(metrics, ap_line=False))  # the AP line is the command's last
    out = results or Path(checkpoint).with_name("results.json")
    module.evaluator.write_results(out)
    print(f"results: {out}")
    return metrics
