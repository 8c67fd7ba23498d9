"""Loading official DEKR checkpoints and ImageNet HRNet backbones, strictly.

The official code silently trains from noise when its pretrained file is missing and loads with
``strict=False``; here a missing file, a missing or unexpected key or a shape mismatch is an error
naming the file and the first offending keys. Every load uses ``torch.load(weights_only=True)``:
a checkpoint can never execute code.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dekr.errors import CheckpointError, MissingFileError

__all__ = [
    "read_checkpoint",
    "read_state_dict",
    "load_official_dekr",
    "load_imagenet_backbone",
    "CLASSIFICATION_ONLY_PREFIXES",
    "HEAD_PREFIXES",
    "K_DEPENDENT_PREFIXES",
]

# Keys of classification HRNets (official HRNet-Image-Classification and timm ``hrnet_w*``) that
# a pose backbone does not have.
CLASSIFICATION_ONLY_PREFIXES = (
    "incre_modules.",
    "downsamp_modules.",
    "final_layer.",
    "classifier.",
)
# DEKR head modules (everything else is backbone).
HEAD_PREFIXES = (
    "transition_heatmap.", "transition_offset.", "head_heatmap.",
    "offset_feature_layers.", "offset_final_layer.",
)  # fmt: skip


def _load_failure(err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, without torch's advice to retry with
    ``weights_only=False`` (which would let the file run code)."""
    text = str(err)
    if "GLOBAL" in text or "Unsupported global" in text:
        found = text.split("GLOBAL", 1)[1].split()[0] if "GLOBAL" in text else "?"
        return (
            f"it holds Python objects, not only tensors (e.g. {found.strip(':')}); dekr loads "
            "checkpoints with weights_only=True so that a file can never run code"
        )
    if isinstance(err, EOFError) or "central directory" in text or "zip archive" in text:
        return "the file is empty, truncated or corrupt (not a complete PyTorch checkpoint)"
    return "not a PyTorch checkpoint (corrupt, or another kind of file)"


# The layers whose shape or meaning depends on the keypoint count K: the heatmap output conv
# (K + 1 channels), the offset transition (a group of channels per keypoint) and the per-keypoint
# offset branches. Everything else (backbone, heatmap transition and head body) fine-tunes.
K_DEPENDENT_PREFIXES = (
    "head_heatmap.1.", "transition_offset.", "offset_feature_layers.", "offset_final_layer.",
)  # fmt: skip
HEATMAP_OUTPUT = "head_heatmap.1."


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and say why.

    Raises:
        MissingFileError: ``path`` is not a file.
        CheckpointError: the file is not a PyTorch checkpoint of tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "not found"
        raise MissingFileError(f"checkpoint {state}: {path}")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol N": the error says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {_load_failure(err)}") from err


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``path`` safely.

    Accepts a bare state dict, or a dict holding one under ``state_dict`` / ``model``; strips a
    ``module.`` prefix left by DataParallel/DDP.
    """
    return _state_dict_of(read_checkpoint(path), path)


def _state_dict_of(obj: Any, path: str | Path) -> dict[str, Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def model_tensors(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The ``model.*`` tensors of a dekr (Lightning) checkpoint's state dict, without the
    prefix (the network's own keys); empty when there are none."""
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def _network_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The network's tensors of a dekr (Lightning) checkpoint's ``model.*`` keys; other state
    dicts unchanged."""
    if state and all(k.startswith("model.") for k in state):
        return model_tensors(state)
    return state


def _first(keys: list[str], n: int = 5) -> str:
    more = f" (and {len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _check(
    model: nn.Module, state: Mapping[str, Tensor], source: str, expected_keys: set[str]
) -> None:
    own = model.state_dict()
    key = "head_heatmap.1.weight"
    if key in state and key in own and state[key].shape[0] != own[key].shape[0]:
        raise CheckpointError(
            f"{source}: the checkpoint predicts K={state[key].shape[0] - 1} keypoints, the model "
            f"K={own[key].shape[0] - 1}; use the keypoint spec the checkpoint was trained with",
            hint="to fine-tune it to this keypoint set, add model.weights_partial=true (the "
            "backbone and the K-independent head layers load, the rest is re-initialised)",
        )
    # BN ``num_batches_tracked`` counters are absent from checkpoints of old PyTorch versions.
    missing = sorted(k for k in expected_keys - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    if missing:
        raise CheckpointError(f"{source}: missing keys {_first(missing)}")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected keys {_first(unexpected)}")
    bad = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if bad:
        raise CheckpointError(f"{source}: shape mismatch {_first(bad, 3)}")


def load_official_dekr(
    model: nn.Module, source: str | Path | Mapping[str, Tensor], *, partial: bool = False
) -> list[str]:
    """Load DEKR weights: an official checkpoint (``pose_dekr_hrnetw32_coco.pth`` layout) or a
    dekr training checkpoint (``.ckpt``).

    With the model's keypoint count everything loads strictly. With another K, ``partial=True``
    loads the backbone and the K-independent head layers strictly, keeps the centre channel of
    the heatmap output, and leaves the K-dependent layers (:data:`K_DEPENDENT_PREFIXES`) as
    initialised; without it another K is a :class:`~dekr.errors.CheckpointError` naming both.

    Returns:
        the K-dependent layers left re-initialised (empty for a strict load).
    """
    scale = 1.0  # the official layout's offset scale
    if isinstance(source, (str, Path)):
        obj = read_checkpoint(source)
        state = _state_dict_of(obj, source)
        scale = _offset_scale_of(obj)
    else:
        state = dict(source)
    state = _network_state(state)
    name = str(source) if isinstance(source, (str, Path)) else "state dict"
    own = model.state_dict()
    theirs_k, own_k = _num_keypoints(state), _num_keypoints(own)
    if theirs_k == own_k or theirs_k is None or not partial:
        _check(model, state, name, set(own))
        # The same offsets in output pixels under the model's offset scale (DEKR.offset_scale).
        ratio = scale / getattr(model, "offset_scale", 1.0)
        if ratio != 1.0:
            state = {
                k: v * ratio if k.startswith("offset_final_layer.") else v
                for k, v in state.items()
            }
        model.load_state_dict(state, strict=False)  # _check above is the strict check
        return []
    kept = {k: v for k, v in state.items() if not k.startswith(K_DEPENDENT_PREFIXES)}
    _check(model, kept, name, {k for k in own if not k.startswith(K_DEPENDENT_PREFIXES)})
    model.load_state_dict(kept, strict=False)
    with torch.no_grad():  # the centre heatmap (last channel) does not depend on K
        for suffix in ("weight", "bias"):
            key = f"{HEATMAP_OUTPUT}{suffix}"
            if key in state and key in own:
                own[key][-1].copy_(state[key][-1])
    return [p.rstrip(".") for p in K_DEPENDENT_PREFIXES]


def _offset_scale_of(checkpoint: Any) -> float:
    """The ``model.offset_scale`` a dekr checkpoint was trained with (1, the official value, for
    other files)."""
    try:
        return float(checkpoint["hyper_parameters"]["recipe"]["model"].get("offset_scale", 1.0))
    except (KeyError, TypeError, AttributeError, ValueError):
        return 1.0


def _num_keypoints(state: Mapping[str, Tensor]) -> int | None:
    weight = state.get(f"{HEATMAP_OUTPUT}weight")
    return int(weight.shape[0]) - 1 if isinstance(weight, Tensor) else None


def load_imagenet_backbone(model: nn.Module, source: str | Path | Mapping[str, Tensor]) -> int:
    """Initialise the HRNet backbone from an ImageNet classification checkpoint.

    Classification-only keys (:data:`CLASSIFICATION_ONLY_PREFIXES`) are ignored; every backbone
    key of ``model`` must be present with its shape. The heads keep their initialisation.

    Returns:
        the number of tensors loaded.
    """
    state = read_state_dict(source) if isinstance(source, (str, Path)) else dict(source)
    name = str(source) if isinstance(source, (str, Path)) else "state dict"
    state = {k: v for k, v in state.items() if not k.startswith(CLASSIFICATION_ONLY_PREFIXES)}
    head = [k for k in state if k.startswith(HEAD_PREFIXES)]
    if head:
        raise CheckpointError(
            f"{name}: holds DEKR head keys ({_first(head, 2)}); this is a pose checkpoint, "
            "not an ImageNet backbone: load it as a DEKR checkpoint instead"
        )
    backbone_keys = {k for k in model.state_dict() if not k.startswith(HEAD_PREFIXES)}
    _check(model, state, name, backbone_keys)
    model.load_state_dict(state, strict=False)
    return len(state)
