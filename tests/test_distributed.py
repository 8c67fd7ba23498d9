"""DDP on CPU (gloo) through the real command line: 2 processes, and 2 "nodes" with torchrun.

Lightning's DDP must not run inside the pytest process (the second rank would re-run pytest), so
every run is a subprocess with a timeout: a hang fails the test instead of blocking CI.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, tiny_overrides

BIN = Path(sys.executable).parent
TIMEOUT = 300
# dekr-train plus a callback printing each rank's weight digest
TRAIN = [sys.executable, str(REPO / "tests" / "ddp_train.py")]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")])
    return {**env, **(extra or {})}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(root: Path, out: Path, **extra: object) -> list[str]:
    base = {
        "data.synthetic.train_images": 16,
        "data.batch_size": 2,
        "trainer.accelerator": "cpu",
        "trainer.max_epochs": 1,
        "trainer.deterministic": True,
        "decode.flip": False,
    }
    return tiny_overrides(root, out, **{**base, **extra})


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(env), capture_output=True, text=True, timeout=TIMEOUT)


def _digests(text: str) -> dict[int, str]:
    return {int(r): d for r, d in re.findall(r"\[rank (\d+)\] weights sha1 ([0-9a-f]+)", text)}


def _ap(text: str) -> float:
    return float(re.findall(r"^AP ([0-9.]+)$", text, re.M)[-1])


def _single_process_ap(ckpt: Path) -> float:
    done = _run([str(BIN / "dekr-eval"), str(ckpt), "decode.flip=false"])
    assert done.returncode == 0, done.stderr[-3000:]
    return _ap(done.stdout)


@pytest.mark.slow
def test_ddp_two_processes(synthetic_root: Path, tmp_path: Path) -> None:
    cmd = [
        *TRAIN,
        str(REPO / "recipes" / "quickstart.yaml"),
        *_overrides(synthetic_root, tmp_path, **{"trainer.devices": 2, "trainer.strategy": "ddp"}),
    ]
    done = _run(cmd)
    assert done.returncode == 0, done.stderr[-3000:]
    digests = _digests(done.stdout + done.stderr)
    assert set(digests) == {0, 1} and len(set(digests.values())) == 1, digests
    assert _ap(done.stdout) == pytest.approx(
        _single_process_ap(tmp_path / "checkpoints" / "last.ckpt")
    )


def _validated(text: str) -> dict[int, list[list[int]]]:
    out: dict[int, list[list[int]]] = {}
    for rank, ids in re.findall(r"\[rank (\d+)\] validated images ([0-9,]*)", text):
        out.setdefault(int(rank), []).append([int(i) for i in ids.split(",") if i])
    return out


@pytest.mark.slow
def test_uneven_shards_three_ranks_equal_single_process(tmp_path: Path) -> None:
    """7 validation images on 3 CPU ranks with validation batches of 2 (7 divisible by neither):
    every image is evaluated exactly once and the gathered AP equals a single-process dekr-eval."""
    import json

    root = tmp_path / "synthetic"
    overrides = _overrides(
        root,
        tmp_path / "run",
        **{
            "data.synthetic.val_images": 7,
            "data.val_batch_size": 2,
            "trainer.devices": 3,
            "trainer.strategy": "ddp",
        },
    )
    done = _run([*TRAIN, str(REPO / "recipes" / "quickstart.yaml"), *overrides])
    assert done.returncode == 0, done.stderr[-3000:]
    val = json.loads((root / "annotations" / "val.json").read_text())
    ids = sorted(img["id"] for img in val["images"])
    assert len(ids) == 7
    validated = _validated(done.stdout + done.stderr)
    assert set(validated) == {0, 1, 2}, validated
    for rank, runs in validated.items():
        assert runs and all(run == ids for run in runs), (rank, runs, ids)
    digests = _digests(done.stdout + done.stderr)
    assert set(digests) == {0, 1, 2} and len(set(digests.values())) == 1, digests
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert _ap(done.stdout) == pytest.approx(_single_process_ap(ckpt), abs=1e-9)


@pytest.mark.slow
def test_torchrun_two_nodes(synthetic_root: Path, tmp_path: Path) -> None:
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        cmd = [
            str(BIN / "torchrun"),
            "--nnodes",
            "2",
            "--nproc_per_node",
            "1",
            "--node_rank",
            str(rank),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            port,
            str(REPO / "tests" / "ddp_train.py"),
            str(REPO / "recipes" / "quickstart.yaml"),
            *_overrides(
                synthetic_root,
                tmp_path,
                **{"trainer.devices": 1, "trainer.num_nodes": 2, "trainer.strategy": "ddp"},
            ),
        ]
        procs.append(
            subprocess.Popen(
                cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    digests = _digests("".join(outputs))
    assert set(digests) == {0, 1} and len(set(digests.values())) == 1, digests
    ap = _ap(outputs[0])
    assert ap == pytest.approx(_single_process_ap(tmp_path / "checkpoints" / "last.ckpt"))


@pytest.mark.slow
def test_failure_on_one_rank_ends_the_job(synthetic_root: Path, tmp_path: Path) -> None:
    cmd = [
        str(BIN / "dekr-train"),
        str(REPO / "recipes" / "quickstart.yaml"),
        *_overrides(
            synthetic_root,
            tmp_path,
            **{
                "trainer.devices": 2,
                "trainer.strategy": "ddp",
                "trainer.process_group_timeout_minutes": 1,
                "data.train_dataset._target_": "failing_dataset.FailOnRankOne",
                "data.train_dataset.size": 16,
            },
        ),
    ]
    done = _run(cmd)
    assert done.returncode != 0
    assert "rank 1 fails on purpose" in done.stdout + done.stderr
