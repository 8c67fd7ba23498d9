"""ONNX export of DEKR *with* its adaptive convolutions, and onnxruntime wrappers.

``torchvision.ops.deform_conv2d`` has no ONNX symbolic (official HRNet/DEKR issue #53), so the
network is traced with the ``"grid_sample"`` formulation of :mod:`dekr.models.adaptive` (same
weights; ONNX ``GridSample`` needs opset >= 16). The TorchScript-based exporter (``dynamo=False``)
is used: it runs offline and handles the traced sizes of the explicit-size interpolations.

Graph contract: input ``images`` (B, 3, H, W) float32 normalised RGB; outputs ``heatmaps``
(B, K+1, H/4, W/4) and ``offsets`` (B, 2K, H/4, W/4) as :class:`dekr.models.dekr.DEKR`. With the
decoder in the graph (:class:`InGraphDecoder`) the outputs are ``poses`` (B, M, K, 3) = x, y in
input pixels and joint score, and ``scores`` (B, M), M = ``max_people``; there is no pose NMS in
the graph, the caller thresholds on ``scores``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from dekr.decoder import sample_heat_values
from dekr.errors import CheckpointError, MissingDependencyError, OptionError, first_line
from dekr.maps import pool_kernel_for, suppress_non_maxima
from dekr.models import adaptive

__all__ = [
    "EXPORT_FORMATS",
    "InGraphDecoder",
    "ONNXPoseModel",
    "ONNXPoseDetector",
    "check_format",
    "check_onnx",
    "export_onnx",
]

EXPORT_FORMATS = ("onnx",)
DEFAULT_OPSET = 17  # GridSample needs >= 16; 17 is well supported by onnxruntime >= 1.13


def check_format(name: str) -> str:
    """Validate an export format name (``--format``); returns it lower-cased."""
    if name.lower() not in EXPORT_FORMATS:
        raise OptionError(f"unknown export format {name!r}; expected one of {EXPORT_FORMATS}")
    return name.lower()


def _require_onnx() -> tuple[Any, Any]:
    """Import onnx and onnxruntime (export), or say how to install them."""
    try:
        import onnx
    except ImportError as err:
        raise MissingDependencyError(
            f"ONNX export needs onnx and onnxruntime ({err}); install them with "
            "`pip install dekr[export]`"
        ) from None
    return onnx, _require_onnxruntime()


def _require_onnxruntime() -> Any:
    """Import onnxruntime (running an exported file needs no onnx, whose import takes a second),
    or say how to install it."""
    try:
        import onnxruntime
    except ImportError as err:
        raise MissingDependencyError(
            f"running an ONNX file needs onnxruntime ({err}); install it with "
            "`pip install dekr[export]`"
        ) from None
    return onnxruntime


class InGraphDecoder(nn.Module):
    """Model + trace-friendly single-scale, no-flip decoding (the package decoder without NMS).

    Centres: max-pool NMS of the centre map (:func:`dekr.maps.suppress_non_maxima`) with a fixed
    ``pool_kernel`` and the top ``max_people`` peaks (the map must have at least ``max_people``
    pixels). Poses: pixel − offset at the centre, times ``stride``. Joint scores: centre score ×
    heat value, the heat read by :func:`dekr.decoder.sample_heat_values` at scale 1 (bilinear in
    the stride-4 map at ``clamp(floor(x), 0, 4(w−1)) / 4``). Candidates whose centre score is
    ``<= center_threshold`` get all-zero poses and scores. Candidates come in decreasing centre
    score.

    ``forward(images (B, 3, H, W))`` → ``poses (B, M, K, 3)`` (x, y in input pixels, joint
    score), ``scores (B, M)`` (mean joint score).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        max_people: int = 30,
        center_threshold: float = 0.01,
        pool_kernel: int = 3,
        stride: int = 4,
    ) -> None:
        super().__init__()
        if pool_kernel % 2 != 1:
            raise ValueError(f"pool_kernel must be odd, got {pool_kernel}")
        self.model = model
        self.max_people = int(max_people)
        self.center_threshold = float(center_threshold)
        self.pool_kernel = int(pool_kernel)
        self.stride = int(stride)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        heatmaps, offsets = self.model(images)
        return self.decode(heatmaps, offsets)

    def decode(self, heatmaps: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
        """Maps (B, K+1, h, w), (B, 2K, h, w) → poses (B, M, K, 3), scores (B, M)."""
        b, k2, h, w = offsets.shape
        peaks = suppress_non_maxima(heatmaps[:, -1], self.pool_kernel)
        center_scores, indices = peaks.flatten(1).topk(self.max_people, dim=1)  # (B, M)
        ys = torch.div(indices, w, rounding_mode="floor")
        xs = indices - ys * w
        gathered = offsets.flatten(2).gather(2, indices[:, None].expand(-1, k2, -1))  # (B, 2K, M)
        off = gathered.transpose(1, 2).reshape(b, self.max_people, k2 // 2, 2)
        pixel = torch.stack((xs, ys), dim=-1).to(offsets.dtype)[:, :, None]  # (B, M, 1, 2)
        xy = (pixel - off) * self.stride  # (B, M, K, 2)
        one = xy.new_ones(())  # keeps traced sizes in the graph (dynamic shapes)
        sizes = torch.stack((one * h, one * w))[None].expand(b, -1)  # (B, 2) map size (h, w)
        heat = sample_heat_values([heatmaps], [sizes], [1.0], xy, stride=self.stride)
        valid = (center_scores > self.center_threshold).to(offsets.dtype)[..., None]
        joint_scores = center_scores[..., None] * heat * valid
        poses = torch.cat((xy * valid[..., None], joint_scores[..., None]), dim=-1)
        return poses, joint_scores.mean(-1)


@contextlib.contextmanager
def export_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and ``grid_sample`` adaptive convs for tracing; both restored afterwards."""
    convs = [m for m in model.modules() if isinstance(m, adaptive.AdaptiveConv)]
    impls = [m.impl for m in convs]
    training = model.training
    try:
        model.eval()
        for m in convs:
            m.impl = "grid_sample"
        yield
    finally:
        for m, impl in zip(convs, impls):
            m.impl = impl
        model.train(training)


def export_onnx(
    model: nn.Module,
    path: Union[str, Path],
    *,
    input_size: Sequence[int] = (512, 512),
    dynamic: bool = False,
    with_decoder: bool = False,
    opset: int = DEFAULT_OPSET,
    batch_size: int = 1,
    max_people: int = 30,
    center_threshold: float = 0.01,
    pool_kernel: Optional[int] = None,
    stride: int = 4,
) -> Path:
    """Export a DEKR network (with its adaptive convolutions) to an ONNX file.

    Args:
        model: a :class:`~dekr.models.dekr.DEKR` (any module with the same contract works); its
            adaptive conv implementation and train/eval mode are restored afterwards.
        path: output file.
        input_size: (H, W) of the traced input; the fixed size unless ``dynamic``.
        dynamic: batch, height and width dynamic (any H, W >= 32 run; multiples of 32, as the
            package's inference pads to, avoid the odd-size rounding of the stride-2 convs). With
            the decoder the centre NMS kernel stays fixed and H·W/16 must be >= ``max_people``.
        with_decoder: append :class:`InGraphDecoder`; outputs ``poses``, ``scores``.
        opset: ONNX opset (>= 16 for GridSample).
        batch_size: batch of the traced input (the fixed batch unless ``dynamic``).
        max_people, center_threshold, stride: decoder settings (``with_decoder`` only).
        pool_kernel: centre NMS kernel; default from ``input_size`` by the official rule.

    Returns:
        the path written. The decoder settings and K are stored as ONNX metadata.
    """
    onnx, _ = _require_onnx()
    if opset < 16:
        raise OptionError(f"opset {opset} has no GridSample; use opset >= 16")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = (int(s) for s in input_size)
    kernel = pool_kernel or pool_kernel_for((h // stride, w // stride))
    net: nn.Module = model
    outputs = ["heatmaps", "offsets"]
    if with_decoder:
        net = InGraphDecoder(
            model, max_people=max_people, center_threshold=center_threshold,
            pool_kernel=kernel, stride=stride,
        )  # fmt: skip
        outputs = ["poses", "scores"]
    axes = _dynamic_axes(outputs, with_decoder) if dynamic else None
    param = next(model.parameters())
    images = torch.randn(batch_size, 3, h, w, dtype=param.dtype, device=param.device)
    with export_mode(model), torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated upstream but is the one that traces this model
        # offline; the adaptive convolutions' regular tap grid is a constant torch.tensor, which
        # the tracer reports as "registered as constants" (correct: it never changes).
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # The constant −inf Pad of max_filter is built with a reversed Slice of its pads, which
        # the exporter reports it does not constant-fold; the graph is correct either way.
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        net.eval()  # the wrapper; export_mode restores the model's own mode
        torch.onnx.export(
            net, (images,), str(path), dynamo=False, opset_version=opset,
            input_names=["images"], output_names=outputs, dynamic_axes=axes,
            do_constant_folding=True,
        )  # fmt: skip
    meta = {
        "with_decoder": int(with_decoder), "dynamic": int(dynamic), "input_size": f"{h},{w}",
        "max_people": max_people, "center_threshold": center_threshold, "pool_kernel": kernel,
        "stride": stride, "num_keypoints": getattr(model, "num_keypoints", -1),
    }  # fmt: skip
    proto = onnx.load(str(path))
    for key, value in meta.items():
        proto.metadata_props.add(key=f"dekr.{key}", value=str(value))
    onnx.save(proto, str(path))
    return path


def _dynamic_axes(outputs: list[str], with_decoder: bool) -> dict[str, dict[int, str]]:
    """Dynamic batch, height and width of ``images`` (and the maps, or the batch of poses)."""
    maps = {0: "batch", 2: "map_height", 3: "map_width"}
    axes = {"images": {0: "batch", 2: "height", 3: "width"}}
    axes.update({name: ({0: "batch"} if with_decoder else maps) for name in outputs})
    return axes


class _ONNXSession:
    """An onnxruntime session on an exported DEKR graph and its ``dekr.*`` metadata."""

    outputs: tuple[str, str] = ("heatmaps", "offsets")

    def __init__(self, path: Union[str, Path], *, providers: Optional[list[str]] = None) -> None:
        ort = _require_onnxruntime()
        self.path = Path(path)
        options = ort.SessionOptions()
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime's own types (InvalidProtobuf, Fail, ...)
            if not type(err).__module__.startswith("onnxruntime"):
                raise
            raise CheckpointError(
                f"{self.path}: onnxruntime cannot load it: {first_line(err)}"
            ) from None
        names = tuple(o.name for o in self.session.get_outputs())
        if names != self.outputs:
            raise CheckpointError(
                f"{self.path} has outputs {names}, {type(self).__name__} expects {self.outputs}; "
                f"use {'ONNXPoseDetector' if 'poses' in names else 'ONNXPoseModel'}"
            )
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.training = False

    def eval(self) -> _ONNXSession:
        """No-op, for code written for ``nn.Module`` models."""
        return self

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Run the graph on ``images`` (B, 3, H, W); outputs come back on the input's device."""
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        first, second = self.session.run(list(self.outputs), {"images": array})
        return torch.from_numpy(first).to(images.device), torch.from_numpy(second).to(images.device)


class ONNXPoseModel(_ONNXSession):
    """Exported network as a drop-in for the torch model (graph without decoder).

    ``model(images (B, 3, H, W))`` → ``heatmaps (B, K+1, H/4, W/4)``, ``offsets (B, 2K, H/4,
    W/4)`` as torch tensors, so :mod:`dekr.inference` and the decoder run unchanged.
    """


class ONNXPoseDetector(_ONNXSession):
    """Exported network with the decoder in the graph (``export_onnx(..., with_decoder=True)``).

    ``detector(images (B, 3, H, W))`` → ``poses (B, M, K, 3)`` (x, y in input pixels, joint
    score) and ``scores (B, M)``; :meth:`results` thresholds them (no pose NMS).
    """

    outputs = ("poses", "scores")

    def results(self, images: Tensor, *, score_threshold: float = 0.0) -> list[dict[str, Tensor]]:
        """Per image ``{"keypoints" (N, K, 3), "scores" (N,)}`` with score > threshold."""
        poses, scores = self(images)
        keep = scores > score_threshold
        return [{"keypoints": p[m], "scores": s[m]} for p, s, m in zip(poses, scores, keep)]


def _reference(model: nn.Module, meta: dict[str, str]) -> nn.Module:
    """The torch module an exported graph was traced from, rebuilt from its metadata."""
    if not int(meta.get("dekr.with_decoder", "0")):
        return model
    return InGraphDecoder(
        model,
        max_people=int(meta["dekr.max_people"]),
        center_threshold=float(meta["dekr.center_threshold"]),
        pool_kernel=int(meta["dekr.pool_kernel"]),
        stride=int(meta["dekr.stride"]),
    )


def check_onnx(
    path: Union[str, Path],
    model: nn.Module,
    *,
    input_size: Optional[Sequence[int]] = None,
    atol: float = 1e-4,
    seed: int = 0,
    batch_size: int = 1,
) -> float:
    """Max abs difference between onnxruntime (CPU) and torch on random normal inputs.

    Args:
        path: an :func:`export_onnx` file (with or without decoder; read from its metadata).
        model: the exported model (evaluated with the grid_sample adaptive convs, on CPU).
        input_size: (H, W); default the exported size. batch_size: B of the random input.
        atol: raise ``AssertionError`` when the difference is larger.
        seed: seed of the random input.

    Returns:
        max |onnxruntime − torch| over all outputs (poses in input pixels for the decoder).
    """
    ort = _require_onnxruntime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if input_size is None:
        input_size = [int(s) for s in meta.get("dekr.input_size", "512,512").split(",")]
    h, w = (int(s) for s in input_size)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, h, w, generator=generator)
    reference = _reference(model, meta)
    param = next(model.parameters())
    with export_mode(model), torch.no_grad():
        expected = reference(images.to(param.device, param.dtype))
    names = [o.name for o in session.get_outputs()]
    actual = session.run(names, {"images": images.numpy()})
    diff = max(
        float((torch.from_numpy(a) - e.cpu().float()).abs().max()) for a, e in zip(actual, expected)
    )
    if diff > atol:
        raise AssertionError(f"onnxruntime differs from torch by {diff:.3g} > atol {atol:g}")
    return diff
