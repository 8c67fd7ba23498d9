"""Pretrained weights by name (dekr.weights): downloads, checksums, cache, conversion, CLI.

Everything is offline: entries point at files the tests make, served from ``file://`` URLs or a
bounded HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SPEC3
from omegaconf import OmegaConf
from torchvision.ops import deform_conv2d

import dekr
from dekr import convert, weights
from dekr.cli import eval_main, export_main, predict_main
from dekr.models.dekr import build_model
from dekr.models.hrnet import HRNet
from dekr.models.weights import HEAD_PREFIXES, load_imagenet_backbone
from dekr.module import load_checkpoint
from dekr.training import build_module

REPO = Path(__file__).resolve().parents[1]
IMAGE = sorted((REPO / "tests" / "data" / "coco_sample" / "images").glob("*.jpg"))[0]

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh $DEKR_HOME; entries a test registers are removed afterwards."""
    monkeypatch.setenv("DEKR_HOME", str(tmp_path / "home"))
    before = {w.name for w in weights.list_weights()}
    yield tmp_path / "home"
    for w in weights.list_weights():
        if w.name not in before:
            weights.unregister(w.name)


def random_like(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Tensors of these shapes keeping activations finite (fan-in scaled convs, BN var ~1)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(3)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) == 4:
            out[key] = torch.randn(shape, generator=g) * (1.0 / math.prod(shape[1:])) ** 0.5
        else:
            out[key] = torch.randn(shape, generator=g) * 0.1 + key.endswith(".weight")
    return out


def tiny_official(k: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny DEKR network state dict in the official layout (hrnet_w8_tiny)."""
    own = build_model("hrnet_w8_tiny", num_keypoints=k).state_dict()
    state = random_like({n: tuple(t.shape) for n, t in own.items()}, seed)
    for n, t in own.items():
        if n.endswith("regular_matrix"):
            state[n] = t.clone()
    return state


def tiny_recipe(tmp_path: Path) -> Path:
    """Three keypoints (conftest.SPEC3) on hrnet_w8_tiny: few tensors, fast to load."""
    path = tmp_path / "tiny_k3.yaml"
    OmegaConf.save(
        {"keypoints": SPEC3.to_dict(), "model": {"backbone": "hrnet_w8_tiny"},
         "data": {"input_size": 64}, "decode": {"flip": False}},
        path,
    )  # fmt: skip
    return path


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_entry(tmp_path: Path, name: str = "tiny_coco", **kw) -> tuple[weights.Weights, Path]:
    source = tmp_path / "src" / "pose_tiny_coco.pth"
    source.parent.mkdir(exist_ok=True)
    torch.save(tiny_official(), source)
    fields = dict(
        name=name,
        kind="model",
        layout="official_dekr",
        filename=source.name,
        urls=(source.as_uri(),),
        sha256=sha256(source),
        backbone="hrnet_w8_tiny",
        recipe=str(tiny_recipe(tmp_path)),
    )
    fields.update(kw)
    return weights.register(weights.Weights(**fields)), source


def backbone_file(path: Path) -> dict[str, torch.Tensor]:
    """An ImageNet classification HRNet file (tiny width): backbone + classification keys."""
    own = build_model("hrnet_w8_tiny", num_keypoints=1).state_dict()
    state = {k: torch.randn(v.shape) for k, v in own.items() if not k.startswith(HEAD_PREFIXES)}
    torch.save(
        {**state, "classifier.weight": torch.zeros(10, 4), "incre_modules.0.w": torch.zeros(1)},
        path,
    )
    return state


class _Handler(http.server.SimpleHTTPRequestHandler):
    folder = "."
    requests: list[str] = []
    truncate = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, directory=self.folder, **kwargs)

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        if not self.truncate:
            return super().do_GET()
        data = (Path(self.folder) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])  # then the connection closes
        self.close_connection = True


@contextmanager
def serve(folder: Path, truncate: bool = False) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 serving ``folder`` for the duration of the block."""
    handler = type("H", (_Handler,), {"folder": str(folder), "requests": [], "truncate": truncate})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port_url() -> str:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    port = server.server_address[1]
    server.server_close()
    return f"http://127.0.0.1:{port}/pose_x.pth"


# ------------------------------------------------------------------------------------ registry
def test_registry_lists_sources_checksums_ap_and_licences() -> None:
    entries = {w.name: w for w in dekr.list_weights()}
    assert {"dekr_coco_w32", "dekr_coco_w48", "dekr_crowdpose_w32", "dekr_crowdpose_w48",
            "mmpose_dekr_coco_w32", "mmpose_dekr_coco_w48", "mmpose_dekr_crowdpose_w32",
            "mmpose_dekr_crowdpose_w48", "hrnet_w18_imagenet", "hrnet_w32_imagenet",
            "hrnet_w48_imagenet"} <= set(entries)  # fmt: skip
    mm = entries["mmpose_dekr_coco_w32"]
    assert mm.sha256_prefix == "ac7c17bf" and mm.urls[0].endswith(
        "dekr_hrnet-w32_8xb10-140e_coco-512x512_ac7c17bf-20221228.pth"
    )
    assert mm.reported_ap == 0.686 and "hrnet_coco.yml" in mm.ap_source
    official = entries["dekr_crowdpose_w48"]
    assert not official.urls and official.page and official.license == "MIT"
    assert all(w.license for w in dekr.list_weights("model"))
    assert {w.kind for w in dekr.list_weights("backbone")} == {"backbone"}
    with pytest.raises(weights.WeightsError, match="already registered"):
        weights.register(mm)
    with pytest.raises(weights.WeightsError, match="layout"):
        weights.Weights(name="x", kind="model", layout="nope", filename="x.pth")


def test_readme_table_is_the_registry() -> None:
    readme = (REPO / "README.md").read_text()
    assert weights.weights_table() in readme


def test_builtin_recipes_agree_with_recipe_files() -> None:
    for name, data in convert.BUILTIN_RECIPES.items():
        builtin = convert.recipe_from_dict(data)
        yaml = dekr.load_recipe(REPO / "recipes" / f"{name}.yaml")
        for section in ("keypoints", "model.backbone", "data.input_size", "decode",
                        "targets.min_center_area"):  # fmt: skip
            assert OmegaConf.select(builtin, section) == OmegaConf.select(yaml, section), (
                name,
                section,
            )


# ------------------------------------------------------------------------------------ downloads
@pytest.mark.slow  # two conversions of a W32 file
def test_file_url_download_converts_once_and_reconverts_on_new_converter(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry, source = model_entry(tmp_path)
    ckpt = weights.resolve_checkpoint(entry.name)
    assert ckpt == home / "converted" / entry.name / "model.ckpt"
    assert (home / "downloads" / source.name).read_bytes() == source.read_bytes()
    info = json.loads((ckpt.parent / "info.json").read_text())
    assert info["model.ckpt"]["converter_version"] == convert.CONVERTER_VERSION
    module = load_checkpoint(entry.name)  # by name, through the cache
    own = module.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in torch.load(source, weights_only=True).items())
    first = ckpt.stat().st_mtime_ns
    hashed = []
    monkeypatch.setattr(weights, "_sha256", lambda p: hashed.append(p) or "0")
    assert weights.resolve_checkpoint(entry.name).stat().st_mtime_ns == first  # cached
    assert hashed == []  # the recorded digest is reused while size and mtime are unchanged
    monkeypatch.undo()
    monkeypatch.setenv("DEKR_HOME", str(home))
    monkeypatch.setattr(convert, "CONVERTER_VERSION", convert.CONVERTER_VERSION + 1)
    weights.resolve_checkpoint(entry.name)
    info = json.loads((ckpt.parent / "info.json").read_text())
    assert info["model.ckpt"]["converter_version"] == convert.CONVERTER_VERSION
    assert ckpt.stat().st_mtime_ns != first  # converted again
    assert (
        torch.load(ckpt, weights_only=True)["dekr_converter_version"] == convert.CONVERTER_VERSION
    )
    assert not list(home.rglob("*.partial"))


def test_http_download_and_one_download_for_concurrent_callers(tmp_path: Path) -> None:
    entry, source = model_entry(tmp_path, urls=())
    with serve(source.parent) as (url, requests):
        entry = weights.register(
            weights.Weights(**{**entry.as_dict(), "urls": (f"{url}/{source.name}",)}),
            overwrite=True,
        )
        results: list[Path] = []
        threads = [
            threading.Thread(target=lambda: results.append(weights.fetch_file(entry)))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(results) == 3 and len(set(results)) == 1 and len(requests) == 1
    assert results[0].read_bytes() == source.read_bytes()


_FETCH_IN_A_PROCESS = """
import json, sys
import dekr.weights as w
entry = w.Weights(**{k: tuple(v) if isinstance(v, list) else v
                     for k, v in json.loads(sys.argv[1]).items()})
print(w.fetch_file(entry))
"""


@pytest.mark.slow  # three Python processes
def test_one_download_for_concurrent_processes(tmp_path: Path, home: Path) -> None:
    """DDP ranks are processes: the file lock lets one download while the others wait."""
    import os
    import subprocess
    import sys

    entry, source = model_entry(tmp_path, urls=())
    with serve(source.parent) as (url, requests):
        fields = json.dumps({**entry.as_dict(), "urls": [f"{url}/{source.name}"]})
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _FETCH_IN_A_PROCESS, fields],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env={**os.environ, "DEKR_HOME": str(home)},
            )
            for _ in range(3)
        ]  # fmt: skip
        outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _out, err in outs]
    paths = {out.strip().splitlines()[-1] for out, _err in outs}
    assert paths == {str(home / "downloads" / source.name)} and len(requests) == 1
    assert Path(paths.pop()).read_bytes() == source.read_bytes()


def test_checksum_mismatch_is_refused_and_nothing_cached(tmp_path: Path, home: Path) -> None:
    entry, _ = model_entry(tmp_path, sha256="0" * 64)
    with pytest.raises(weights.ChecksumError, match="does not match the published"):
        weights.fetch_file(entry)
    assert not [p for p in (home / "downloads").iterdir()]
    # The same for a file put there by hand.
    entry, source = model_entry(tmp_path, name="by_hand", sha256_prefix="deadbeef", sha256=None)
    (home / "downloads" / source.name).write_bytes(source.read_bytes())
    with pytest.raises(weights.ChecksumError, match="deadbeef"):
        weights.resolve_checkpoint("by_hand")
    assert not (home / "converted" / "by_hand" / "model.ckpt").exists()


def test_interrupted_download_leaves_no_partial_file(tmp_path: Path, home: Path) -> None:
    entry, source = model_entry(tmp_path, urls=())
    with serve(source.parent, truncate=True) as (url, _):
        entry = weights.register(
            weights.Weights(**{**entry.as_dict(), "urls": (f"{url}/{source.name}",)}),
            overwrite=True,
        )
        with pytest.raises(weights.WeightsDownloadError, match="put it at"):
            weights.fetch_file(entry)
    assert not list((home / "downloads").iterdir())


def test_offline_message_names_url_and_target_and_cli_exits_2(
    tmp_path: Path, home: Path, capsys
) -> None:
    url = closed_port_url()
    model_entry(tmp_path, urls=(url,))
    out = tmp_path / "pred"
    assert predict_main(["tiny_coco", str(IMAGE), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: tiny_coco: download of ")
    assert url in lines[0] and str(home / "downloads" / "pose_tiny_coco.pth") in lines[0]
    for main, argv in ((eval_main, ["tiny_coco"]), (export_main, ["tiny_coco", "--out", "x.onnx"])):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and url in err[0] and "put it at" in err[0]


def test_cloud_drive_entry_prints_instructions_then_uses_a_hand_placed_file(
    tmp_path: Path, home: Path
) -> None:
    entry, source = model_entry(
        tmp_path, name="drive", urls=(), sha256=None, page="https://drive.example/folder"
    )
    target = home / "downloads" / source.name
    with pytest.raises(weights.WeightsDownloadError) as err:
        weights.resolve_model_weights("drive")
    message = str(err.value)
    assert "no direct download link" in message and "https://drive.example/folder" in message
    assert str(target) in message and "\n" not in message
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    assert weights.resolve_model_weights("drive") == target  # verified by structure
    record = json.loads(target.with_name(target.name + ".sha256").read_text())
    assert record["sha256"] == sha256(source)
    torch.save(tiny_official(seed=5), target)  # another file later: refused
    with pytest.raises(weights.ChecksumError, match="recorded on first use"):
        weights.fetch_file(entry)
    # A file of another structure is refused by the structure check, before its digest is
    # recorded: the right file put there afterwards is accepted.
    target.unlink()
    target.with_name(target.name + ".sha256").unlink()
    torch.save(tiny_official(), target)
    weights.register(weights.Weights(**{**entry.as_dict(), "name": "drive17", "keypoints": "coco"}))
    fetch = lambda name: weights.fetch_file(weights.get_weights(name))  # noqa: E731
    for check in (weights.resolve_model_weights, fetch):
        with pytest.raises(ValueError, match="K=3 keypoints, entry drive17 has 17"):
            check("drive17")
        assert not target.with_name(target.name + ".sha256").exists()
    torch.save(tiny_official(k=17), target)
    assert weights.resolve_model_weights("drive17") == target
    assert target.with_name(target.name + ".sha256").exists()


def test_download_without_checksum_that_fails_its_structure_is_not_cached(
    tmp_path: Path, home: Path
) -> None:
    entry, source = model_entry(tmp_path, name="nosum17", sha256=None, keypoints="coco")
    with pytest.raises(ValueError, match="K=3 keypoints, entry nosum17 has 17"):
        weights.fetch_file(entry)  # the file holds K=3: refused, and not left in the cache
    assert not (home / "downloads" / source.name).exists()
    assert not list((home / "downloads").glob("*.sha256"))


# ------------------------------------------------------------------------------------ resolution
def test_existing_path_wins_and_unknown_names_are_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_entry(tmp_path)
    monkeypatch.chdir(tmp_path)
    Path("tiny_coco").write_text("not a checkpoint")
    assert weights.resolve_checkpoint("tiny_coco") == Path("tiny_coco")
    assert weights.resolve_model_weights("tiny_coco") == Path("tiny_coco")
    weights.register(weights.Weights(**{**weights.get_weights("tiny_coco").as_dict(),
                                        "name": "tiny_backbone", "kind": "backbone"}))  # fmt: skip
    Path("tiny_backbone").write_text("not a backbone")
    assert weights.resolve_backbone("tiny_backbone") == Path("tiny_backbone")
    with pytest.raises(FileNotFoundError, match="neither a file nor a registered weights name"):
        load_checkpoint("no_such_weights")
    with pytest.raises(FileNotFoundError, match="checkpoint not found: nope.ckpt"):
        load_checkpoint("nope.ckpt")


@pytest.mark.slow  # two recipe model builds from W32 files
def test_model_weights_and_pretrained_by_name(tmp_path: Path) -> None:
    entry, source = model_entry(tmp_path)
    src = tmp_path / "src" / "hrnet_tiny_imagenet.pth"
    state = backbone_file(src)
    weights.register(
        weights.Weights(
            name="tiny_imagenet", kind="backbone", layout="hrnet_imagenet", filename=src.name,
            urls=(src.as_uri(),), sha256_prefix=sha256(src)[:8], backbone="hrnet_w8_tiny",
        )
    )  # fmt: skip
    k3 = tiny_recipe(tmp_path)
    module = build_module(dekr.load_recipe(k3, ["model.weights=tiny_coco"]))
    expected = torch.load(source, weights_only=True)
    assert torch.equal(
        module.model.state_dict()["head_heatmap.1.bias"], expected["head_heatmap.1.bias"]
    )
    module = build_module(dekr.load_recipe(k3, ["model.pretrained=tiny_imagenet"]))
    assert torch.equal(module.model.state_dict()["conv1.weight"], state["conv1.weight"])
    saved = torch.load(weights.resolve_backbone("tiny_imagenet"), weights_only=True)
    assert set(saved) == set(state)  # classification keys dropped
    with pytest.raises(weights.WeightsError, match="model.weights=tiny_coco"):
        weights.resolve_backbone("tiny_coco")
    with pytest.raises(weights.WeightsError, match="model.pretrained=tiny_imagenet"):
        weights.resolve_checkpoint("tiny_imagenet")
    model = build_model("hrnet_w8_tiny", num_keypoints=1)
    assert load_imagenet_backbone(model, weights.resolve_backbone("tiny_imagenet")) == len(state)


def test_predict_by_name_end_to_end(tmp_path: Path, home: Path) -> None:
    model_entry(tmp_path)
    out = tmp_path / "pred"
    assert predict_main(["tiny_coco", str(IMAGE), "--out", str(out), "--no-flip"]) == 0
    results = json.loads((out / "predictions.json").read_text())
    assert isinstance(results, list) and all(len(r["keypoints"]) == 3 * 3 for r in results)
    summary = json.loads((out / "images.json").read_text())
    assert [im["file"] for im in summary["images"]] == [str(IMAGE)]
    assert (home / "converted" / "tiny_coco" / "model.ckpt").is_file()


def test_dekr_layout_entry_without_checksum_is_checked_by_structure(
    tmp_path: Path, home: Path
) -> None:
    """A dekr checkpoint entry without a published checksum: a file without dekr network keys is
    refused before its digest is recorded; the dekr checkpoint is then accepted."""
    model_entry(tmp_path)
    ckpt = weights.resolve_checkpoint("tiny_coco")  # a dekr checkpoint made by conversion
    entry, _ = model_entry(tmp_path, name="tiny_dekr", layout="dekr", filename="tiny.ckpt",
                           urls=(), sha256=None)  # fmt: skip
    target = home / "downloads" / "tiny.ckpt"
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_official(), target)  # official layout, not a dekr checkpoint
    with pytest.raises(ValueError, match="not a dekr checkpoint"):
        weights.fetch_file(entry)
    assert not target.with_name("tiny.ckpt.sha256").exists()
    target.write_bytes(ckpt.read_bytes())
    assert weights.resolve_checkpoint("tiny_dekr") == target
    assert target.with_name("tiny.ckpt.sha256").exists()


# ------------------------------------------------------------------------------------ MMPose
# The MMPose 1.x DEKR head's keys and shapes, read off mmpose/models/heads/hybrid_heads/
# dekr_head.py (DEKRHead: heatmap_conv_layers = ConvModule(1x1)+BN 'conv'/'bn', BasicBlock
# 'conv1/bn1/conv2/bn2', Conv2d(K+1); displacement_conv_layers = ConvModule(1x1, K*C), two
# AdaptiveActivationBlock (regular_matrix (3, 9), transform_matrix_conv grouped 6 per keypoint,
# adapt_conv mmcv DeformConv2d weight (K*C, C, 3, 3), norm), Conv2d(K*C, 2K, groups=K); RescoreNet
# l1/l2/l3). The backbone is 'backbone.' + the official HRNet keys (mmpose/models/backbones/
# hrnet.py builds the same modules under the same names).
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def mmpose_head_table(in_ch: int, k: int, hc: int, c: int, rescore: int) -> dict[str, tuple]:
    t: dict[str, tuple] = {}

    def bn(prefix: str, n: int) -> None:
        for p in BN:
            t[f"{prefix}.{p}"] = () if p == "num_batches_tracked" else (n,)

    h, d = "head.heatmap_conv_layers.", "head.displacement_conv_layers."
    t[h + "0.conv.weight"] = (hc, in_ch, 1, 1)
    bn(h + "0.bn", hc)
    t[h + "1.conv1.weight"] = (hc, hc, 3, 3)
    bn(h + "1.bn1", hc)
    t[h + "1.conv2.weight"] = (hc, hc, 3, 3)
    bn(h + "1.bn2", hc)
    t[h + "2.weight"], t[h + "2.bias"] = (k + 1, hc, 1, 1), (k + 1,)
    t[d + "0.conv.weight"] = (k * c, in_ch, 1, 1)
    bn(d + "0.bn", k * c)
    for b in (1, 2):
        t[f"{d}{b}.regular_matrix"] = (3, 9)
        t[f"{d}{b}.transform_matrix_conv.weight"] = (6 * k, c, 3, 3)
        t[f"{d}{b}.transform_matrix_conv.bias"] = (6 * k,)
        t[f"{d}{b}.adapt_conv.weight"] = (k * c, c, 3, 3)
        bn(f"{d}{b}.norm", k * c)
    t[d + "3.weight"], t[d + "3.bias"] = (2 * k, c, 1, 1), (2 * k,)
    for name, shape in (("l1", (256, rescore)), ("l2", (256, 256)), ("l3", (1, 256))):
        t[f"head.rescore_net.{name}.weight"], t[f"head.rescore_net.{name}.bias"] = shape, shape[:1]
    return t


REGULAR = torch.tensor([[-1, -1, -1, 0, 0, 0, 1, 1, 1], [-1, 0, 1, -1, 0, 1, -1, 0, 1],
                        [1, 1, 1, 1, 1, 1, 1, 1, 1]], dtype=torch.float32)  # fmt: skip


def mmpose_state(backbone: str, k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    model = build_model(backbone, num_keypoints=k)
    spec = model.spec
    shapes = {
        f"backbone.{n}": tuple(v.shape)
        for n, v in model.state_dict().items()
        if not n.startswith(HEAD_PREFIXES)
    }
    shapes.update(
        mmpose_head_table(
            model.out_channels, k, spec.head_channels, spec.offset_channels_per_keypoint, 3 * 19 + k
        )
    )
    state = random_like(shapes, seed)
    for key in state:
        if key.endswith("regular_matrix"):
            state[key] = REGULAR.clone()
    return state


def mmpose_forward(sd: dict, images: torch.Tensor, k: int, backbone: str):
    """MMPose's network written from its source: HRNet, concat neck, DEKRHead.forward."""
    net = HRNet(build_model(backbone, num_keypoints=k).spec).eval()
    net.load_state_dict(
        {n.removeprefix("backbone."): v for n, v in sd.items() if n.startswith("backbone.")}
    )
    x = HRNet.concat(net(images))  # FeatureMapProcessor(concat=True): bilinear, align_corners=False

    def bn(t, p):
        return F.batch_norm(
            t,
            sd[p + ".running_mean"],
            sd[p + ".running_var"],
            sd[p + ".weight"],
            sd[p + ".bias"],
            False,
            0.0,
            1e-5,
        )  # noqa: E501

    h, d = "head.heatmap_conv_layers.", "head.displacement_conv_layers."
    y = F.relu(bn(F.conv2d(x, sd[h + "0.conv.weight"]), h + "0.bn"))
    z = F.relu(bn(F.conv2d(y, sd[h + "1.conv1.weight"], padding=1), h + "1.bn1"))
    y = F.relu(bn(F.conv2d(z, sd[h + "1.conv2.weight"], padding=1), h + "1.bn2") + y)
    heatmaps = F.conv2d(y, sd[h + "2.weight"], sd[h + "2.bias"])
    f = F.relu(bn(F.conv2d(x, sd[d + "0.conv.weight"]), d + "0.bn"))
    for b in (1, 2):
        p = f"{d}{b}."
        n, _, hh, ww = f.shape
        a = F.conv2d(
            f,
            sd[p + "transform_matrix_conv.weight"],
            sd[p + "transform_matrix_conv.bias"],
            padding=1,
            groups=k,
        )  # noqa: E501
        a = a.permute(0, 2, 3, 1).reshape(n, hh, ww, k, 2, 3)
        offset = (
            torch.matmul(a, sd[p + "regular_matrix"]).transpose(4, 5).reshape(n, hh, ww, k * 18)
        )
        offset = offset.permute(0, 3, 1, 2)  # mmcv DeformConv2d offsets; it adds the grid itself
        out = deform_conv2d(f, offset, sd[p + "adapt_conv.weight"], padding=(1, 1))
        f = F.relu(bn(out, p + "norm") + f)
    displacements = F.conv2d(f, sd[d + "3.weight"], sd[d + "3.bias"], groups=k)
    return heatmaps, displacements  # SPR decode: keypoint = pixel + displacement


def test_mmpose_conversion_equals_mmpose_network() -> None:
    k = 3
    sd = mmpose_state("hrnet_w8_tiny", k)
    state, info = convert.mmpose_to_official(sd)
    assert info["backbone"] == "hrnet_w8_tiny" and info["num_keypoints"] == k
    assert len(info["dropped"]) == 6  # the rescoring net
    model = build_model("hrnet_w8_tiny", num_keypoints=k).eval()
    dekr.load_official_dekr(model, state)  # strict
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected_heat, displacements = mmpose_forward(sd, images, k, "hrnet_w8_tiny")
        heat, offsets = model(images)
    assert displacements.abs().max() > 1e-3 and expected_heat.abs().max() > 1e-3
    torch.testing.assert_close(heat, expected_heat, atol=1e-5, rtol=1e-4)
    # dekr offsets are pixel - keypoint, MMPose displacements keypoint - pixel.
    torch.testing.assert_close(offsets, -displacements, atol=1e-4, rtol=1e-3)


def test_mmpose_unmapped_and_missing_keys_are_errors() -> None:
    sd = mmpose_state("hrnet_w8_tiny", 3)
    with pytest.raises(convert.ConversionError, match="unmapped keys head.extra.weight"):
        convert.mmpose_to_official({**sd, "head.extra.weight": torch.zeros(1)})
    missing = dict(sd)
    missing.pop("head.displacement_conv_layers.2.adapt_conv.weight")
    with pytest.raises(convert.ConversionError, match="missing key .*2.adapt_conv.weight"):
        convert.mmpose_to_official(missing)
    wrong = {**sd, "data_preprocessor.mean": torch.tensor([0.485, 0.456, 0.406])}
    with pytest.raises(convert.ConversionError, match="data_preprocessor.mean"):
        convert.mmpose_to_official(wrong)
    old = {k.replace("displacement_conv_layers", "offset_conv_layers"): v for k, v in sd.items()}
    with pytest.raises(convert.ConversionError, match="MMPose 0.x"):
        convert.mmpose_to_official(old)


def test_mmpose_w32_coco_key_table_maps_onto_the_w32_network() -> None:
    """The full-size key/shape table (COCO W32) maps onto the official network key for key."""
    fixture = REPO / "tests" / "fixtures" / "official_dekr_keys.json"
    official = {k: tuple(v) for k, v in json.loads(fixture.read_text())["coco_w32"].items()}
    table = {f"backbone.{n}": s for n, s in official.items() if not n.startswith(HEAD_PREFIXES)}
    table.update(mmpose_head_table(480, 17, 32, 15, 74))
    sd = {n: REGULAR.clone() if n.endswith("regular_matrix") else torch.empty(s)
          for n, s in table.items()}  # fmt: skip
    state, info = convert.mmpose_to_official(sd)
    assert set(state) == set(official) and info["backbone"] == "hrnet_w32"
    assert all(tuple(state[n].shape) == official[n] for n in official)


@pytest.mark.slow  # a W32 MMPose file
def test_mmpose_file_with_numpy_meta_loads_and_code_is_refused(tmp_path: Path, capsys) -> None:
    """MMPose files keep `meta` (NumPy arrays, the config) beside the state dict, saved in the
    legacy format (tools/misc/publish_model.py): they load with weights_only and NumPy arrays
    allowlisted; an object that would run code is refused, and nothing runs."""

    class Evil:
        def __reduce__(self):  # noqa: D105
            return (print, ("pwned",))

    sd = OrderedDict(mmpose_state("hrnet_w8_tiny", 3))
    meta = {"dataset_meta": {"sigmas": np.ones(3, np.float32), "n": np.int64(3)}, "cfg": "x"}
    path = tmp_path / "dekr_hrnet-tiny_00000000-20240101.pth"
    torch.save({"meta": meta, "state_dict": sd}, path, _use_new_zipfile_serialization=False)
    state = convert.read_tensors_only(path)
    assert set(state) == set(sd)
    assert torch.equal(state["backbone.conv1.weight"], sd["backbone.conv1.weight"])
    out, _, _ = convert.convert_official(
        path, tmp_path / "mm.ckpt", layout="mmpose_dekr", recipe=str(tiny_recipe(tmp_path))
    )
    assert load_checkpoint(out).spec.num_keypoints == 3
    evil = tmp_path / "evil.pth"
    torch.save(
        {"meta": {"x": Evil()}, "state_dict": sd}, evil, _use_new_zipfile_serialization=False
    )
    with pytest.raises(ValueError, match=r"evil.pth: it holds a \S*print object"):
        convert.read_tensors_only(evil)
    assert "pwned" not in capsys.readouterr().out


def test_mmpose_entry_by_name_converts_through_the_cache(tmp_path: Path, home: Path) -> None:
    """A registered MMPose-layout entry resolves by name to a dekr checkpoint whose network is
    the MMPose network (the same heatmaps and the negated displacements)."""
    k = 3
    sd = mmpose_state("hrnet_w8_tiny", k, seed=3)
    source = tmp_path / "src" / "dekr_tiny_mmpose-0a1b2c3d.pth"
    source.parent.mkdir()
    torch.save({"state_dict": sd, "meta": {"epoch": 1}}, source)
    fields = dict(filename=source.name, sha256=sha256(source), layout="mmpose_dekr")
    model_entry(tmp_path, name="tiny_mmpose", urls=(source.as_uri(),), **fields)
    path = weights.resolve_checkpoint("tiny_mmpose")
    assert path.is_file() and path.is_relative_to(home / "converted")
    model = load_checkpoint("tiny_mmpose").model.eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        heatmaps, offsets = model(images)
        ref_heatmaps, displacements = mmpose_forward(sd, images, k, "hrnet_w8_tiny")
    torch.testing.assert_close(heatmaps, ref_heatmaps, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(offsets, -displacements, rtol=1e-4, atol=1e-4)
    assert weights.resolve_checkpoint("tiny_mmpose") == path  # converted once, then cached


def test_timm_safetensors_backbone_entry_by_name(tmp_path: Path, home: Path) -> None:
    """timm publishes its ImageNet HRNets as ``.safetensors`` (read with the ``safetensors``
    extra): a backbone entry of that format resolves by name to the backbone's tensors, the
    classification-only keys dropped."""
    from safetensors.torch import save_file

    torch_file = tmp_path / "imagenet.pth"
    state = backbone_file(torch_file)
    full = torch.load(torch_file, weights_only=True)
    source = tmp_path / "src" / "model.safetensors"
    source.parent.mkdir()
    save_file({k: v.contiguous() for k, v in full.items()}, str(source))
    fields = dict(kind="backbone", layout="timm_hrnet", filename=source.name)
    model_entry(tmp_path, name="tiny_timm", urls=(source.as_uri(),), sha256=sha256(source),
                **fields)  # fmt: skip
    path = weights.resolve_backbone("tiny_timm")
    kept = torch.load(path, weights_only=True)
    assert set(kept) == set(state)
    assert all(torch.equal(kept[k], state[k]) for k in state)
    model = build_model("hrnet_w8_tiny", num_keypoints=17)
    dekr.load_imagenet_backbone(model, path)
    assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"])
