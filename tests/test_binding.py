"""The recipe sections and the objects they build cannot drift apart (dekr/binding.py).

For every bound section: each field is an argument of one of its targets with the same default
(or listed as exempt / different-by-design with its reason), and, where the binding is complete,
every target argument is a field or supplied by the run.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest
from omegaconf import OmegaConf

from dekr.binding import BINDINGS, binding, decoder_kwargs, section_kwargs, trainer_kwargs
from dekr.config import Recipe, recipe_from_dict

_MISSING = inspect.Parameter.empty


def _field_default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _MISSING


def _params(b) -> dict[str, list[inspect.Parameter]]:
    out: dict[str, list[inspect.Parameter]] = {}
    for target in b.resolve_targets():
        for name, p in inspect.signature(target).parameters.items():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or name == "self":
                continue
            out.setdefault(name, []).append(p)
    return out


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _same(a: object, b: object) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if _number(a) and _number(b):
        return float(a) == float(b)  # a recipe's 1024.0 is the function's 1024
    return type(a) is type(b) and a == b


def _nested(schema: type) -> set[str]:
    hints = typing.get_type_hints(schema)
    return {f.name for f in dataclasses.fields(schema) if dataclasses.is_dataclass(hints[f.name])}


@pytest.mark.parametrize("b", BINDINGS, ids=[b.section for b in BINDINGS])
def test_fields_are_arguments_with_the_same_default(b) -> None:
    params = _params(b)
    nested = _nested(b.schema)
    problems = []
    for f in dataclasses.fields(b.schema):
        if f.name in nested:
            # a section of its own, bound separately; the target takes it as one argument of the
            # same name, or the field is exempt (another object is built from it)
            if f"{b.section}.{f.name}" not in {x.section for x in BINDINGS}:
                problems.append(f"{f.name}: nested section without a binding of its own")
            if f.name not in params and f.name not in b.exempt:
                problems.append(f"{f.name}: nested section neither an argument nor exempt")
            continue
        if f.name in b.exempt:
            if f.name in params and f.name not in b.given:
                problems.append(f"{f.name}: exempt but an argument of the target")
            continue
        if f.name not in params:
            problems.append(f"{f.name}: not an argument of {b.targets}")
            continue
        mine = _field_default(f)
        theirs = [p.default for p in params[f.name]]
        differs = any(not _same(mine, t) for t in theirs)
        if f.name in b.defaults:
            if not differs:
                problems.append(f"{f.name}: listed as a different default but equals {theirs}")
        elif differs:
            problems.append(f"{f.name}: recipe default {mine!r} != argument default {theirs!r}")
    assert not problems, f"[{b.section}] " + "; ".join(problems)


@pytest.mark.parametrize("b", BINDINGS, ids=[b.section for b in BINDINGS])
def test_arguments_are_fields_or_given(b) -> None:
    params = _params(b)
    fields = {f.name for f in dataclasses.fields(b.schema)}
    unknown = sorted(set(b.given) - set(params))
    assert not unknown, f"[{b.section}] given names that are no arguments: {unknown}"
    for name in (*b.exempt, *b.defaults):
        assert name in fields, f"[{b.section}] {name} listed but not a recipe field"
    for reasons in (b.exempt, b.given, b.defaults):
        assert all(isinstance(r, str) and r.strip() for r in reasons.values())
    if b.complete:
        missing = sorted(set(params) - fields - set(b.given))
        assert not missing, f"[{b.section}] arguments not reachable from a recipe: {missing}"


def test_every_section_of_the_recipe_is_bound_or_typed() -> None:
    """The recipe's object sections are all bound; the rest are run settings read whole."""
    bound = {b.section.split(".")[0] for b in BINDINGS}
    sections = {
        f.name
        for f in dataclasses.fields(Recipe)
        if dataclasses.is_dataclass(typing.get_type_hints(Recipe)[f.name])
    }
    # optim: a typed dataclass the module takes whole (OptimConfig); keypoints: the KeypointSpec
    assert sections - bound <= {"optim", "predict", "export"}, sections - bound


def test_section_kwargs_follow_overrides() -> None:
    recipe = recipe_from_dict(
        {}, ["decode.nms_num=3", "decode.matching.num_candidates=7", "loss.offset_factor=0.1"]
    )
    kw = decoder_kwargs(recipe)
    assert kw["nms_num"] == 3 and kw["matching"].num_candidates == 7
    assert "flip" not in kw and "scales" not in kw
    assert section_kwargs(recipe, "loss")["offset_factor"] == 0.1
    t = trainer_kwargs(recipe_from_dict({}, ["trainer.max_time_minutes=2"]))
    assert t["max_time"] == {"minutes": 2} and "max_time_minutes" not in t


def test_unknown_section_is_an_error() -> None:
    with pytest.raises(KeyError, match="no binding"):
        binding("nothing")


def test_plain_mapping_is_accepted() -> None:
    recipe = OmegaConf.to_container(recipe_from_dict({}), resolve=True)
    assert section_kwargs(recipe, "loss") == section_kwargs(recipe_from_dict({}), "loss")


def test_predict_options_take_the_defaults_of_predict_files(monkeypatch, tmp_path) -> None:
    """``dekr-predict`` passes only the options given; the defaults are predict_files' own."""
    import dekr.predict
    from dekr.cli import predict_main

    params = inspect.signature(dekr.predict.predict_files).parameters
    calls: list[dict] = []

    def fake(checkpoint, inputs, out, **options):
        calls.append(options)
        return tmp_path / "predictions.json"

    monkeypatch.setattr(dekr.predict, "predict_files", fake)
    base = ["model.ckpt", "a.jpg", "--out", str(tmp_path)]
    assert predict_main(base) == 0
    given = ["--annotations", "a.json", "--strict", "--recursive", "--no-flip", "--scales",
             "1", "0.5", "--batch-size", "2", "--score-threshold", "0.2", "--onnx", "m.onnx"]
    assert predict_main(base + given) == 0
    assert calls[0] == {}
    assert set(calls[1]) <= set(params), set(calls[1]) - set(params)
    # every keyword option of predict_files is reachable from the command line
    keyword = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert set(calls[1]) == keyword
    assert calls[1]["flip"] is False and calls[1]["batch_size"] == 2
    assert calls[1]["scales"] == [1.0, 0.5] and calls[1]["score_threshold"] == 0.2
