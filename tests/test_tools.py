"""Command-line tools: show_targets renders the recipe's targets; every tool's --help; the imports
of tools/ (no cycle, nothing imports the benchmark entry point); the benchmark entry point."""

from __future__ import annotations

import ast
import importlib
import json
import math
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import torch
from conftest import REPO, TEST_DATA
from test_imports import find_cycle, import_graph

sys.path.insert(0, str(REPO / "tools"))
import show_targets  # noqa: E402


def test_show_targets_from_a_recipe(tmp_path: Path, capsys) -> None:
    sample = TEST_DATA / "coco_sample"
    show_targets.main([
        "--recipe", str(REPO / "recipes" / "coco_w32.yaml"), "data.input_size=128",
        "--annotations", str(sample / "annotations" / "person_keypoints_val_sample.json"),
        "--images", str(sample / "images"), "--index", "4", "--out", str(tmp_path),
    ])  # fmt: skip
    names = {"image", "heatmaps", "centers", "weights", "offsets"}
    assert {p.stem for p in tmp_path.glob("*.png")} == names
    assert cv2.imread(str(tmp_path / "heatmaps.png")).shape[:2] == (128, 128)


@pytest.mark.parametrize("name", ["train_main", "eval_main", "predict_main", "export_main"])
def test_cli_help(name: str, capsys) -> None:
    import dekr.cli

    with pytest.raises(SystemExit) as exit_info:
        getattr(dekr.cli, name)(["--help"])
    assert exit_info.value.code == 0
    assert "usage: dekr-" in capsys.readouterr().out


# --- every command line in tools/: --help, imports, the benchmark entry point ---------------------

TOOLS = REPO / "tools"
SUBCOMMAND_OPTIONS = {
    "model": ["--backbone", "--size", "--impl", "--repeats", "--channels-last", "--bf16"],
    "targets": ["--threads"],
    "data": ["--threads", "--sample"],
    "decode": ["--repeats", "--match-heatmaps"],
    "train": ["--case", "--repeats"],
    "export": ["--repeats", "--backbone"],
    "scale": ["--images", "--epochs", "--workers"],
}


def _has_main_block(path: Path) -> bool:
    """Whether the file has an ``if __name__ == "__main__":`` block at module level."""
    for node in ast.parse(path.read_text()).body:
        test = node.test if isinstance(node, ast.If) else None
        if (
            isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name)
            and test.left.id == "__name__"
            and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__"
        ):
            return True
    return False


def command_lines() -> list[Path]:
    return [path for path in sorted(TOOLS.rglob("*.py")) if _has_main_block(path)]


def test_every_top_level_tool_is_a_command_line_and_benchmark_modules_are_not() -> None:
    tops = sorted(TOOLS.glob("*.py"))
    assert {p.stem for p in tops} >= {"benchmark", "convert_checkpoint", "show_targets"}
    assert command_lines() == tops  # no second way to run a benchmark module
    assert (TOOLS / "benchmarks" / "timing.py").is_file()


def test_tools_import_graph_is_acyclic_and_nothing_imports_the_entry_point() -> None:
    graph = import_graph(TOOLS, root=TOOLS)  # `python tools/NAME.py` puts tools/ on sys.path
    areas = {f"benchmarks.{name}" for name in SUBCOMMAND_OPTIONS}
    assert graph["benchmark"] == areas | {"benchmarks.timing"}  # function-level imports count
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
    assert [name for name, deps in graph.items() if "benchmark" in deps] == []
    assert graph["benchmarks.timing"] == set()  # the shared timing helper is a leaf
    assert {area: graph[area] for area in areas} == dict.fromkeys(areas, {"benchmarks.timing"})


def test_import_graph_of_another_root_sees_relative_and_function_imports(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from . import b\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from .c import g\n")
    (tmp_path / "pkg" / "c.py").write_text("from ..main import x\n")
    (tmp_path / "main.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, root=tmp_path)
    assert graph == {
        "main": {"pkg.a"},
        "pkg": set(),
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.c"},
        "pkg.c": {"main"},
    }
    assert find_cycle(graph) == ["main", "pkg.a", "pkg.b", "pkg.c", "main"]


def test_importing_the_benchmark_modules_runs_nothing(monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(TOOLS))
    names = ["benchmark", "benchmarks", "benchmarks.timing"]
    names += [f"benchmarks.{name}" for name in SUBCOMMAND_OPTIONS]
    for name in names:  # their dependencies first, unwatched
        importlib.import_module(name)
    files = {str(path) for path in TOOLS.rglob("*.py")}
    bodies, calls, clocks = set(), [], []

    def watch(frame, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_filename in files:
            if frame.f_code.co_name == "<module>":
                bodies.add(frame.f_code.co_filename)
            else:
                calls.append(frame.f_code.co_name)
        elif event == "c_call" and arg in (time.perf_counter, time.process_time, time.time):
            clocks.append(arg)

    for name in names:
        monkeypatch.delitem(sys.modules, name)
    sys.setprofile(watch)
    try:
        for name in names:
            importlib.import_module(name)
    finally:
        sys.setprofile(None)
    assert bodies == {sys.modules[name].__file__ for name in names}  # each module ran, watched
    assert calls == [] and clocks == []  # and no function of tools/ ran, nothing was timed
    assert capsys.readouterr().out == ""


HELP_CASES = [(path.name, []) for path in command_lines()]
HELP_CASES += [("benchmark.py", [name]) for name in SUBCOMMAND_OPTIONS]
HELP_IDS = [" ".join([tool, *args]) for tool, args in HELP_CASES]


@pytest.mark.parametrize("tool, args", HELP_CASES, ids=HELP_IDS)
def test_help_prints_usage_and_does_nothing_else(tool, args, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(TOOLS))  # as `python tools/NAME.py` has it
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(TOOLS / tool), *args, "--help"])
    for _ in range(2):  # the first run also imports what the tool imports; the second is timed
        start = time.perf_counter()
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(TOOLS / tool), run_name="__main__")
        seconds = time.perf_counter() - start
        out = capsys.readouterr().out
        assert exit_info.value.code == 0
        assert out.startswith("usage: "), out
    assert seconds < 1.0  # no work: a benchmark or a conversion takes seconds at least
    assert list(tmp_path.iterdir()) == []  # nothing written
    for option in ["--json", *SUBCOMMAND_OPTIONS[args[0]]] if args else []:
        assert option in out  # the subcommand's own options are on its help


@pytest.mark.slow
@pytest.mark.parametrize("tool, args", HELP_CASES, ids=HELP_IDS)
def test_help_in_a_fresh_process(tool: str, args: list[str], tmp_path: Path) -> None:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(TOOLS / tool), *args, "--help"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: ")
    assert seconds < 30  # imports only (torch, Lightning); a benchmark run takes minutes
    assert list(tmp_path.iterdir()) == []


def test_benchmark_entry_point_runs_the_subcommand(monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(TOOLS))
    import benchmark
    import benchmarks.decode

    seen, records = [], [{"name": "decode.x", "value": 1.5, "unit": "ms"}]

    def fake_run(args) -> list[dict]:
        seen.append(args)
        return records

    monkeypatch.setattr(benchmarks.decode, "run", fake_run)
    assert benchmark.main(["decode", "--repeats", "2", "--match-heatmaps", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == records
    assert (seen[0].repeats, seen[0].match_heatmaps) == (2, True)
    assert benchmark.main(["decode"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# ") and "torch" in lines[0]  # the machine line
    assert lines[1].split() == ["decode.x", "1.5", "ms"] and seen[1].repeats == 15
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["decoding"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def _expected_records(command: str) -> list[tuple[str, str]]:
    """(name, unit) of each record of ``command``'s run in SMALLEST (docs/benchmarks.md's names)."""
    if command == "model":
        base = "model.hrnet_w8_tiny.64"
        out = [(f"{base}.params", "count"), (f"{base}.multiply_adds", "G")]
        out += [("machine.matmul.fp32", "GFLOP/s"), ("machine.matmul.bf16", "GFLOP/s")]
        for variant in ("fp32", "fp32.channels_last"):
            name = f"{base}.forward.{variant}"
            out += [(name, "ms"), (f"{name}.gflops", "GFLOP/s")]
            out += [(f"{name}.fraction_of_matmul_peak", "ratio")]
        return out
    if command == "targets":
        people = [f"targets.{s}.people{n}" for s in (512, 640) for n in (1, 5, 15, 30)]
        return [(f"{p}.{path}", "ms") for p in people for path in ("numpy", "torch_batch")]
    if command == "data":
        return [("data.512.samples_per_s", "samples/s")]
    if command == "decode":
        threads = sorted({1, torch.get_num_threads()})
        names = [f"decode.640x480.flip.people{n}.t{t}.b{b}"
                 for t in threads for n in (5, 15, 30) for b in (1, 8)]  # fmt: skip
        return [(f"{name}{cpu}", "ms") for name in names for cpu in ("", ".cpu")]
    if command == "train":
        variants = ["fp32", "bf16", "fp32.channels_last", "bf16.channels_last",
                    "fp32.targets_on_device"]  # fmt: skip
        return [(f"train.quickstart.128.b8.{v}", "images/s") for v in variants]
    base = "export.hrnet_w16_small.256"
    out = [("export.torch_threads", "count"), (f"{base}.export.s", "s"), (f"{base}.onnx.mb", "MiB")]
    return out + [(f"{base}.{what}.ms", "ms") for what in
                  ("torch", "onnxruntime", "torch_decoder", "onnxruntime_decoder")]  # fmt: skip


SMALLEST = {
    "model": ["--backbone", "hrnet_w8_tiny", "--size", "64", "--repeats", "1", "--no-bf16"],
    "targets": [],
    "data": ["--sample", str(TEST_DATA / "coco_sample")],
    "decode": ["--repeats", "1"],
    "train": ["--case", "quickstart", "--repeats", "1"],
    "export": ["--backbone", "hrnet_w16_small", "--repeats", "1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(SMALLEST))
def test_benchmark_records_keep_their_names_and_units(command: str, monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(TOOLS))
    import benchmark

    assert benchmark.main([command, *SMALLEST[command], "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["unit"]) for r in records] == _expected_records(command)
    assert all(math.isfinite(r["value"]) and r["value"] >= 0 for r in records), records
