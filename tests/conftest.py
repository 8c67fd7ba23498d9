"""Shared fixtures: a tiny synthetic dataset and a tiny trained checkpoint.

No test is ever skipped: everything a test needs is in the repository (``tests/data``) or in the
``dev`` extra, so a skip means something is missing and fails the run (see the hooks below).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dekr.keypoints import KeypointSpec

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"

# A three-keypoint set with one flip pair: proves nothing assumes 17 keypoints.
SPEC3 = KeypointSpec(
    names=("a", "left_b", "right_b"),
    sigmas=(0.05, 0.05, 0.05),
    flip_pairs=(("left_b", "right_b"),),
    skeleton=(("a", "left_b"), ("a", "right_b")),
    name="k3",
)


def tiny_overrides(root: Path, out: Path, **extra: object) -> list[str]:
    """Overrides that turn the quickstart recipe into a seconds-long CPU run."""
    items = {
        "model.backbone": "hrnet_w8_tiny",
        "data.synthetic.root": str(root),
        "data.synthetic.train_images": 12,
        "data.synthetic.val_images": 4,
        "data.synthetic.size": 96,
        "data.synthetic.max_people": 3,
        "data.input_size": 64,
        "data.batch_size": 4,
        "data.val_batch_size": 2,
        "data.num_workers": 0,
        "data.persistent_workers": False,
        "data.pin_memory": False,
        "trainer.max_epochs": 1,
        "trainer.max_time_minutes": None,
        "trainer.budget_minutes": None,
        "trainer.check_val_every_n_epoch": 1,
        "trainer.log_every_n_steps": 1,
        "trainer.benchmark": False,
        "trainer.precision": "32-true",  # not timed per machine (tests/test_precision.py)
        "output_dir": str(out),
    }
    items.update(extra)
    return [f"{k}={'null' if v is None else v}" for k, v in items.items()]



@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module's models: on a shared 2-core machine, threads contend
    (up to 10x slower for tiny models). Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="session")
def tiny_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One epoch of the tiny quickstart variant; returns train()'s result and the output dir."""
    from dekr.config import load_recipe
    from dekr.training import train

    out = tmp_path_factory.mktemp("run")
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", tiny_overrides(synthetic_root, out))
    result = train(recipe)
    return {"result": result, "out": out, "root": synthetic_root}


_SKIPPED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test fails the run: with the ``dev`` extra installed nothing may be skipped."""
    if _SKIPPED and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if _SKIPPED:
        terminalreporter.write_line(
            f"error: {len(_SKIPPED)} test(s) skipped; nothing may be skipped "
            f"(install the dev extra: pip install -e '.[dev]'): {', '.join(_SKIPPED)}",
            red=True,
        )
