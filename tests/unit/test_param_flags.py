"""The analysis flags are generated from `AnalysisParams`: they follow its fields."""

from __future__ import annotations

import argparse
from typing import Literal, get_args

from pydantic import Field

from api_schemas import AnalysisParams
from nnkgeo.cli import build_parser
from nnkgeo.cli.param_flags import add_analysis_flags, given_analysis_params


def _subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    return commands.choices[name]


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(action for action in parser._actions if flag in action.option_strings)


def test_a_changed_default_changes_the_help_and_the_parsed_value() -> None:
    class Changed(AnalysisParams):
        k: int = Field(7, ge=1, le=1024, description="Number of kNN candidates per point.")
        kernel: Literal["cosine", "gaussian", "laplace"] = Field("gaussian", description="K.")

    parser = argparse.ArgumentParser()
    add_analysis_flags(parser, with_defaults=True, model=Changed)
    assert "(default: 7)" in parser.format_help()
    parsed = given_analysis_params(parser.parse_args([]), model=Changed)
    assert parsed["k"] == 7 and parsed["kernel"] == "gaussian"
    assert _option(parser, "--kernel").choices == ["cosine", "gaussian", "laplace"]


def test_local_analyze_offers_every_field_with_its_choices_and_default() -> None:
    analyze = _subcommand("analyze")
    for name, field in AnalysisParams.model_fields.items():
        option = _option(analyze, "--" + name.replace("_", "-"))
        assert option.default == field.default, name
        if option.choices is not None:
            assert list(option.choices) == list(get_args(field.annotation)), name
    parsed = analyze.parse_args(["emb.npy", "--out", "r.json"])
    assert AnalysisParams(**given_analysis_params(parsed)) == AnalysisParams()


def test_remote_submit_sends_only_the_flags_given() -> None:
    submit = _subcommand("submit")
    parsed = submit.parse_args(["--set", "s=ds_x", "--k", "7", "--no-ignore-identical"])
    assert given_analysis_params(parsed) == {"k": 7, "ignore_identical": False}
    assert given_analysis_params(submit.parse_args(["--set", "s=ds_x"])) == {}


def test_a_study_keeps_its_own_seed_and_device() -> None:
    study = _subcommand("study")
    parsed = study.parse_args(
        ["--dataset", "digits", "--out", "r.json", "--seed", "3", "--k", "12"]
    )
    assert parsed.seed == 3 and parsed.device == "cpu" and parsed.k == 12
    assert "training" in _option(study, "--device").help
