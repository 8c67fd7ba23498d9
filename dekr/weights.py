"""Pretrained weights by name: a registry, downloads, checksums, conversion and a cache.

Each :class:`Weights` entry names a published file, where it comes from, how to check it, its
layout and what it is for. Wherever dekr accepts a checkpoint file it also accepts an entry's
name (an existing path of the same spelling always wins):

* ``dekr-predict NAME ...``, ``dekr-eval NAME``, ``dekr-export NAME``,
  :func:`dekr.load_checkpoint` (``NAME``): whole-model entries, converted to a dekr checkpoint;
* ``model.weights=NAME`` (whole-model entries) and ``model.pretrained=NAME`` (backbone entries).

Files live under ``$DEKR_HOME`` (default ``<torch.hub.get_dir()>/dekr``): ``downloads/`` holds
the files as published, ``converted/<name>/`` what dekr made of them (with the converter version;
a new version converts again). A download goes to a temporary file that is renamed only after its
checksum matched, so a partial or corrupted file is never cached. Files without a published
checksum (cloud-drive pages) are checked by structure (the layout's keys and shapes) and their
sha256 is recorded on first use; a later change of the file is refused. Under DDP one process
per node downloads and converts under a file lock while the others wait, then all read the cache.

Entries are added from Python with :func:`register` (how tests point entries at local files).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Union

from dekr.errors import CheckpointError, MissingFileError, first_line

__all__ = [
    "Weights",
    "WeightsError",
    "UnknownWeightsError",
    "WeightsDownloadError",
    "ChecksumError",
    "register",
    "unregister",
    "get_weights",
    "list_weights",
    "weights_table",
    "cache_dir",
    "fetch_file",
    "resolve_checkpoint",
    "resolve_model_weights",
    "resolve_backbone",
]

PathLike = Union[str, Path]
KINDS = ("model", "backbone")


class WeightsError(CheckpointError):
    """A weights entry cannot be used, with the reason in one line."""


class ChecksumError(WeightsError):
    """A file whose sha256 differs from the published (or first recorded) one."""


class UnknownWeightsError(MissingFileError):
    """Neither an existing file nor a registered weights name."""


class WeightsDownloadError(MissingFileError):
    """A file that could not be downloaded; the message says where to put it by hand."""


@dataclass(frozen=True)
class Weights:
    """One pretrained file.

    Args:
        name: the registry name (``dekr-predict NAME``).
        kind: ``"model"`` (a whole DEKR network) or ``"backbone"`` (ImageNet HRNet).
        layout: one of :data:`dekr.convert.LAYOUTS` (``dekr`` is a dekr checkpoint as is).
        filename: the published file name (the name it is cached under).
        urls: direct download links tried in order (``http(s)://`` or ``file://``); empty when
            the source publishes none.
        page: where to download by hand (a cloud-drive folder, a model-zoo page).
        sha256: the full sha256 when published; ``sha256_prefix`` its published leading hex
            digits (torch.hub / MMPose file names carry 8).
        backbone: the HRNet variant (``hrnet_w32``, ...).
        keypoints: the keypoint spec (``coco``, ``crowdpose``; ``None`` for backbones).
        recipe: the recipe a converted checkpoint gets (a name of
            :data:`dekr.convert.BUILTIN_RECIPES`, or a YAML path).
        reported_ap: the AP the source reports, and ``ap_source`` where that number is read.
        license: the licence of the weights as the source states it.
        notes: anything a user must know (what was not verified, what is dropped).
    """

    name: str
    kind: str
    layout: str
    filename: str
    urls: tuple[str, ...] = ()
    page: Optional[str] = None
    sha256: Optional[str] = None
    sha256_prefix: Optional[str] = None
    backbone: Optional[str] = None
    keypoints: Optional[str] = None
    recipe: Optional[str] = None
    reported_ap: Optional[float] = None
    ap_source: Optional[str] = None
    license: Optional[str] = None
    notes: str = ""

    def __post_init__(self) -> None:
        from dekr.convert import LAYOUTS

        if self.kind not in KINDS:
            raise WeightsError(f"weights {self.name!r}: kind {self.kind!r}; expected {KINDS}")
        if self.layout not in LAYOUTS:
            raise WeightsError(f"weights {self.name!r}: layout {self.layout!r}; expected {LAYOUTS}")
        if not self.filename or "/" in self.filename or "\\" in self.filename:
            raise WeightsError(f"weights {self.name!r}: filename {self.filename!r} is not a name")
        for digest in (self.sha256, self.sha256_prefix):
            if digest is not None and not all(ch in "0123456789abcdef" for ch in digest):
                raise WeightsError(f"weights {self.name!r}: {digest!r} is not lower-case hex")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_REGISTRY: dict[str, Weights] = {}


def register(weights: Weights, *, overwrite: bool = False) -> Weights:
    """Add an entry; a name already registered needs ``overwrite=True``."""
    if weights.name in _REGISTRY and not overwrite:
        raise WeightsError(f"weights {weights.name!r} are already registered (overwrite=True)")
    _REGISTRY[weights.name] = weights
    return weights


def unregister(name: str) -> None:
    """Remove an entry (no error when absent)."""
    _REGISTRY.pop(name, None)


def get_weights(name: str) -> Weights:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownWeightsError(
            f"no weights named {name!r}; registered: {', '.join(sorted(_REGISTRY))}"
        ) from None


def list_weights(kind: Optional[str] = None) -> list[Weights]:
    """The registered entries (name, source, checksum, layout, spec, recipe, reported AP and
    where it comes from, licence), sorted by name; ``kind`` keeps ``model`` or ``backbone``."""
    return [w for n, w in sorted(_REGISTRY.items()) if kind is None or w.kind == kind]


def weights_table(entries: Optional[list[Weights]] = None) -> str:
    """A Markdown table of ``entries`` (default: all), as in the README."""
    rows = [
        "| name | kind | layout | download | checksum | reported AP | licence |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in entries if entries is not None else list_weights():
        download = "direct" if w.urls else "by hand (cloud drive)"
        digest = (
            f"sha256 {w.sha256[:8]}…"
            if w.sha256
            else f"sha256 prefix {w.sha256_prefix}"
            if w.sha256_prefix
            else "recorded on first use"
        )
        ap = f"{w.reported_ap:.3f} ({w.ap_source})" if w.reported_ap is not None else "n/a"
        rows.append(
            f"| `{w.name}` | {w.kind} | {w.layout} | {download} | {digest} | {ap} | "
            f"{w.license or 'not stated'} |"
        )
    return "\n".join(rows)


# ------------------------------------------------------------------------------------ cache
def cache_dir() -> Path:
    """``$DEKR_HOME``, default ``<torch.hub.get_dir()>/dekr``."""
    home = os.environ.get("DEKR_HOME")
    if home:
        return Path(home).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir()) / "dekr"


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """Hold ``$DEKR_HOME/locks/<name>.lock``: other processes (DDP ranks, parallel jobs) wait."""
    from filelock import FileLock

    folder = cache_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f"{name}.lock")):
        yield


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(weights: Weights, digest: str, where: str) -> None:
    expected = weights.sha256 or weights.sha256_prefix
    if expected is not None and not digest.startswith(expected):
        raise ChecksumError(
            f"{where}: sha256 {digest[:16]}… does not match the published "
            f"{expected[:16]} of {weights.name}; the file is corrupt or another version"
        )


def _hand_hint(weights: Weights, target: Path) -> str:
    where = weights.page or (weights.urls[0] if weights.urls else "its source")
    return f"download {weights.filename} from {where} and put it at {target}"


def _download(url: str, target: Path, weights: Weights, timeout: float) -> None:
    """``url`` -> ``target`` through a temporary file; renamed only when complete and verified."""
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
            total = int(length) if length and length.isdigit() else None
            received = 0
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=weights.filename, leave=False
            ) as bar:
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise OSError(f"connection closed after {received} of {total} bytes")
        _check_digest(weights, digest.hexdigest(), url)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _file_digest(path: Path) -> tuple[str, Optional[str], bool]:
    """``path``'s sha256, the one recorded beside it (``<file>.sha256``: digest, size and mtime)
    and whether that record is current. The recorded digest is reused while size and mtime are
    unchanged, so a large file is hashed once, not at every use."""
    record = _record_path(path)
    known = None
    stat = path.stat()
    if record.is_file():
        try:
            data = json.loads(record.read_text())
            known = str(data["sha256"])
            if data.get("size") == stat.st_size and data.get("mtime_ns") == stat.st_mtime_ns:
                return known, known, True
        except (ValueError, KeyError, TypeError):
            known = None
    return _sha256(path), known, False


def _write_record(path: Path, digest: str) -> None:
    from dekr.convert import atomic_write

    stat = path.stat()
    data = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    atomic_write(_record_path(path), lambda tmp: tmp.write_text(json.dumps(data) + "\n"))


def _verify(weights: Weights, path: Path) -> None:
    """The published checksum, or for files without one the sha256 recorded on first use."""
    digest, known, current = _file_digest(path)
    if weights.sha256 or weights.sha256_prefix:
        _check_digest(weights, digest, str(path))
    elif known is not None and known != digest:
        raise ChecksumError(
            f"{path}: sha256 {digest[:16]}… differs from {known[:16]}… recorded on first "
            f"use; delete {_record_path(path)} if the new file is the one you want"
        )
    if not current:
        if known is None and not (weights.sha256 or weights.sha256_prefix):
            _check_file_structure(weights, path)  # a wrong file must not pin its digest
        _write_record(path, digest)


def _check_file_structure(weights: Weights, path: Path) -> None:
    """A file of an entry without a published checksum holds what its entry describes."""
    if weights.kind == "backbone":
        with tempfile.TemporaryDirectory() as tmp:
            _imagenet_backbone(weights, path, Path(tmp) / "backbone.pth")
    elif weights.layout == "dekr":  # a dekr checkpoint: its network keys are model.*
        from dekr.models.weights import model_tensors, read_state_dict

        network = model_tensors(read_state_dict(path))
        if not network:
            raise CheckpointError(f"{path}: not a dekr checkpoint (no model.* tensors)")
        _check_structure(weights, network, str(path))
    else:
        _checked(weights, path)


def fetch_file(weights: Weights, *, timeout: float = 60.0) -> Path:
    """The published file of ``weights`` in the cache: downloaded when missing, verified.

    A file put at ``$DEKR_HOME/downloads/<filename>`` by hand is verified and used.

    Raises:
        WeightsDownloadError: no direct link, or every link failed (one line: the file, the
            URL, where to put it by hand).
        ChecksumError: the file does not match the published sha256 (nothing is cached).
    """
    target = cache_dir() / "downloads" / weights.filename
    with _locked(f"download-{weights.filename}"):
        if target.is_file():
            _verify(weights, target)
            return target
        if not weights.urls:
            raise WeightsDownloadError(
                f"{weights.name}: {weights.filename} has no direct download link; "
                f"{_hand_hint(weights, target)}"
            )
        failures = []
        for url in weights.urls:
            try:
                _download(url, target, weights, timeout)
            except ChecksumError:
                raise
            except (OSError, http.client.HTTPException, ValueError) as err:
                reason = getattr(err, "reason", None) or str(err) or type(err).__name__
                failures.append(f"{url} ({first_line(reason)})")
                continue
            try:
                _verify(weights, target)  # records the digest (hashed once more, from disk)
            except Exception:
                target.unlink(missing_ok=True)  # a file that fails its checks is not cached
                raise
            return target
        raise WeightsDownloadError(
            f"{weights.name}: download of {'; '.join(failures)} failed; "
            f"{_hand_hint(weights, target)}"
        )


# ------------------------------------------------------------------------------------ convert
def _converted(weights: Weights, product: str, make: Any) -> Path:
    """``converted/<name>/<product>``, made by ``make(source, out)`` once per converter
    version and source file (``info.json`` records both)."""
    from dekr.convert import CONVERTER_VERSION

    folder = cache_dir() / "converted" / weights.name
    out = folder / product
    info_path = folder / "info.json"
    with _locked(f"convert-{weights.name}"):
        source = fetch_file(weights)
        stamp = {
            "converter_version": CONVERTER_VERSION,
            "source": source.name,
            "source_size": source.stat().st_size,
            "source_mtime_ns": source.stat().st_mtime_ns,
        }
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        if out.is_file() and info.get(product) == stamp:
            return out
        folder.mkdir(parents=True, exist_ok=True)
        make(source, out)
        info[product] = stamp
        from dekr.convert import atomic_write

        atomic_write(info_path, lambda tmp: tmp.write_text(json.dumps(info, indent=1)))
        return out


def _model_entry(name: str, what: str) -> Weights:
    weights = get_weights(name)
    if weights.kind != "model":
        raise WeightsError(
            f"{name} is an ImageNet backbone entry, not a whole DEKR model: use it as "
            f"model.pretrained={name}, not as {what}"
        )
    return weights


def _is_name(value: PathLike) -> bool:
    return not Path(value).exists() and str(value) in _REGISTRY


def _not_found(value: PathLike, what: str) -> UnknownWeightsError:
    return UnknownWeightsError(
        f"{what} not found: {value} (neither a file nor a registered weights name; "
        f"dekr.list_weights() lists them)"
    )


def _looks_like_name(value: PathLike) -> bool:
    text = str(value)
    return not Path(text).suffix and "/" not in text and os.sep not in text


def resolve_checkpoint(value: PathLike) -> Path:
    """A dekr checkpoint path for ``value``: the path itself when it exists (or does not look
    like a name), else the registered model entry's file converted to a dekr checkpoint."""
    if not _is_name(value):
        if not Path(value).exists() and _looks_like_name(value) and _REGISTRY:
            raise _not_found(value, "checkpoint")
        return Path(value)
    weights = _model_entry(str(value), "a checkpoint")
    if weights.layout == "dekr":
        return fetch_file(weights)

    def make(source: Path, out: Path) -> None:
        from dekr.convert import convert_official

        convert_official(source, out, recipe=weights.recipe, layout=weights.layout)

    return _converted(weights, "model.ckpt", make)


def resolve_model_weights(value: PathLike) -> Path:
    """``model.weights``: a DEKR network state dict in the official layout (the path itself
    when it exists, else the registered model entry's network, converted when needed)."""
    if not _is_name(value):
        return Path(value)
    weights = _model_entry(str(value), "model.weights")
    if weights.layout == "official_dekr":
        return _checked(weights, fetch_file(weights))

    def make(source: Path, out: Path) -> None:
        import torch

        from dekr.convert import atomic_write, official_state

        if weights.layout == "dekr":  # a dekr checkpoint: its network keys are model.*
            from dekr.models.weights import model_tensors, read_state_dict

            state = model_tensors(read_state_dict(source))
        else:
            state = official_state(source, weights.layout)
        atomic_write(out, lambda tmp: torch.save(state, tmp))

    return _converted(weights, "network.pth", make)


def _checked(weights: Weights, path: Path) -> Path:
    """Entries without a checksum are verified by structure: the file must load strictly into
    the network its entry describes."""
    if weights.sha256 is None and weights.sha256_prefix is None and weights.layout != "dekr":
        from dekr.convert import official_state

        state = official_state(path, weights.layout)
        _check_structure(weights, state, str(path))
    return path


def _check_structure(weights: Weights, state: dict, source: str) -> None:
    from dekr.convert import detect_backbone, detect_num_keypoints
    from dekr.keypoints import get_keypoint_spec
    from dekr.models.dekr import build_model
    from dekr.models.weights import load_official_dekr

    backbone = detect_backbone(state, source)
    if weights.backbone and backbone != weights.backbone:
        raise WeightsError(
            f"{source}: a {backbone} network, entry {weights.name} is {weights.backbone}"
        )
    k = detect_num_keypoints(state, source)
    if weights.keypoints:
        expected = get_keypoint_spec(weights.keypoints).num_keypoints
        if k != expected:
            raise WeightsError(f"{source}: K={k} keypoints, entry {weights.name} has {expected}")
    load_official_dekr(build_model(backbone, num_keypoints=k), state)


def resolve_backbone(value: PathLike) -> Path:
    """``model.pretrained``: an ImageNet backbone state dict (the path itself when it exists,
    else the registered backbone entry's file with its backbone keys, converted once)."""
    if not _is_name(value):
        return Path(value)
    weights = get_weights(str(value))
    if weights.kind != "backbone":
        raise WeightsError(
            f"{value} is a whole DEKR model entry, not an ImageNet backbone: use it as "
            f"model.weights={value} (or as a checkpoint), not as model.pretrained"
        )

    return _converted(
        weights, "backbone.pth", lambda source, out: _imagenet_backbone(weights, source, out)
    )


def _imagenet_backbone(weights: Weights, source: Path, out: Path) -> None:
    """Convert an ImageNet file to the backbone ``out`` holds; it must be the entry's width."""
    from dekr.convert import convert_imagenet

    _path, backbone, _count = convert_imagenet(source, out)
    if weights.backbone and backbone != weights.backbone:
        out.unlink()
        raise WeightsError(
            f"{source}: a {backbone} backbone, entry {weights.name} is {weights.backbone}"
        )


# ------------------------------------------------------------------------------------ entries
def _dekr_model(dataset: str, width: str, **fields: Any) -> Weights:
    """A whole-model entry of a DEKR ``dataset`` / HRNet ``width`` pair: its backbone, keypoint
    set and recipe follow from the pair (e.g. ``coco``, ``w32``: ``hrnet_w32``, ``coco``,
    ``recipes/coco_w32.yaml``)."""
    return Weights(kind="model", backbone=f"hrnet_{width}", keypoints=dataset,
                   recipe=f"{dataset}_{width}", **fields)  # fmt: skip


# Every value below is read from a file of its source (named in the comment); None where the
# source publishes none.
#
# Official DEKR (github.com/HRNet/DEKR, README.md at commit 7a303139): the trained models are in
# a OneDrive folder (no direct file links), file names from the README's model tree, AP from its
# "Results on COCO val2017 without multi-scale test" / "Results on CrowdPose test without
# multi-scale test" tables; licence from its LICENSE (MIT).
_DEKR_ZOO = (
    "https://mailustceducn-my.sharepoint.com/:f:/g/personal/aa397601_mail_ustc_edu_cn/"
    "EmoNwNpq4L1FgUsC9KbWezABSotd3BGOlcWCdkBi91l50g?e=HWuluh"
)
_DEKR_AP = "HRNet/DEKR README.md, single-scale test"
for _dataset, _width, _ap, _split in (
    ("coco", "w32", 0.680, "COCO val2017"),
    ("coco", "w48", 0.710, "COCO val2017"),
    ("crowdpose", "w32", 0.657, "CrowdPose test"),
    ("crowdpose", "w48", 0.673, "CrowdPose test"),
):
    register(
        _dekr_model(
            _dataset,
            _width,
            name=f"dekr_{_dataset}_{_width}",
            layout="official_dekr",
            filename=f"pose_dekr_hrnet{_width}_{_dataset}.pth",
            page=_DEKR_ZOO + f" (folder pose_{_dataset}/)",
            reported_ap=_ap,
            ap_source=f"{_DEKR_AP}, {_split}",
            license="MIT",
            notes="cloud-drive file: download by hand; checked by structure, sha256 recorded "
            "on first use. The reported AP includes the official rescoring net.",
        )
    )

# MMPose 1.x (github.com/open-mmlab/mmpose at commit 759b39c1): URLs and AP from
# configs/body_2d_keypoint/dekr/coco/hrnet_coco.yml and .../crowdpose/hrnet_crowdpose.yml
# ("Weights", "Results.Metrics.AP"; COCO val2017 / CrowdPose test, no multi-scale test, flip
# test, MMPose's own decoder and rescoring); the 8 hex digits in each file name are the leading
# digits of its sha256 (tools/misc/publish_model.py: `sha256sum` ... `sha[:8]`). Licence:
# mmpose's LICENSE (Apache License 2.0).
_MM = "https://download.openmmlab.com/mmpose/v1/body_2d_keypoint/dekr/"
_MM_CFG = "configs/body_2d_keypoint/dekr"
for _dataset, _width, _file, _ap in (
    ("coco", "w32", "dekr_hrnet-w32_8xb10-140e_coco-512x512_ac7c17bf-20221228.pth", 0.686),
    ("coco", "w48", "dekr_hrnet-w48_8xb10-140e_coco-640x640_74796c32-20230124.pth", 0.714),
    ("crowdpose", "w32",
     "dekr_hrnet-w32_8xb10-300e_crowdpose-512x512_147bae97-20221228.pth", 0.663),
    ("crowdpose", "w48",
     "dekr_hrnet-w48_8xb5-300e_crowdpose-640x640_4ea6031e-20230128.pth", 0.679),
):  # fmt: skip
    register(
        _dekr_model(
            _dataset,
            _width,
            name=f"mmpose_dekr_{_dataset}_{_width}",
            layout="mmpose_dekr",
            filename=_file,
            urls=(f"{_MM}{_dataset}/{_file}",),
            page="https://github.com/open-mmlab/mmpose/tree/main/configs/body_2d_keypoint/dekr",
            sha256_prefix=_file.rsplit("_", 1)[1].split("-")[0],
            reported_ap=_ap,
            ap_source=f"open-mmlab/mmpose {_MM_CFG}/{_dataset}/hrnet_{_dataset}.yml",
            license="Apache-2.0",
            notes="the key map is derived from MMPose's source and tested on a state dict built "
            "from it, not on the real file; MMPose's rescoring net in the file is not converted; "
            "AP was measured with MMPose's decoder, dekr's may differ.",
        )
    )

# ImageNet HRNet backbones in the official HRNet-Image-Classification layout, re-hosted by
# OpenMMLab with torch.hub-style names (<name>-<leading sha256 hex>.pth; that these digits are
# sha256 is the torch.hub convention, not stated by the source). W32 and W48: the init_cfg
# checkpoints of MMPose's DEKR configs (configs/body_2d_keypoint/dekr/coco/*.py); W32 is also the
# file the official DEKR README places under model/imagenet/. W18: "msra/hrnetv2_w18" of
# mmengine/hub/openmmlab.json (open-mmlab/mmengine at commit 25434293). No source states an
# ImageNet accuracy or a licence for these files: None. Their key layout (official classification
# HRNet) is assumed from how MMPose and the official DEKR load them; not checked on the files.
for _width, _url in (
    ("w18", "https://download.openmmlab.com/pretrain/third_party/hrnetv2_w18-00eb2006.pth"),
    ("w32", "https://download.openmmlab.com/mmpose/pretrain_models/hrnet_w32-36af842e.pth"),
    ("w48", "https://download.openmmlab.com/mmpose/pretrain_models/hrnet_w48-8ef0771d.pth"),
):
    _name = _url.rsplit("/", 1)[1]
    register(
        Weights(
            name=f"hrnet_{_width}_imagenet",
            kind="backbone",
            layout="hrnet_imagenet",
            filename=_name,
            urls=(_url,),
            sha256_prefix=_name.rsplit("-", 1)[1].split(".")[0],
            backbone=f"hrnet_{_width}",
            notes="ImageNet classification HRNet; only the backbone keys are used.",
        )
    )

del _dataset, _width, _ap, _split, _file, _url, _name
