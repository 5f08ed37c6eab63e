import argparse
import datetime as dt
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from charlie.backtest.config import BacktestConfig
from charlie.config import (
    CONFIG,
    Params,
    ParseParams,
    SampleParams,
    Section,
    add_flags,
    load_config,
    load_params,
)
from charlie.errors import ConfigError

from .conftest import REPO


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_the_committed_params_file_loads_and_matches_the_defaults():
    # params.yaml spells the defaults out so users see them; the two must not drift apart.
    assert load_params(REPO / "params.yaml", env={}) == Params()


def test_a_missing_file_means_defaults(tmp_path):
    assert load_params(tmp_path / "nope.yaml", env={}) == Params()


def test_unknown_key_names_the_key_and_the_allowed_ones(tmp_path):
    path = write(tmp_path, "parse:\n  inptu_dir: x\n")
    with pytest.raises(ConfigError) as err:
        load_params(path, env={})
    assert str(err.value) == (
        f"{path}: unknown key 'parse.inptu_dir' (did you mean 'input_dir'?); allowed keys here are: "
        "input_dir, dvc_repo, dvc_rev, out, rejects, report, strict."
    )


def test_unknown_section_names_the_sections(tmp_path):
    path = write(tmp_path, "prase: {}\n")
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'prase' \(did you mean 'parse'\?\); allowed keys here are: sample, parse",
    ):
        load_params(path, env={})


def test_a_wrong_value_names_the_allowed_values(tmp_path):
    path = write(tmp_path, "sample:\n  detail: verbose\n")
    with pytest.raises(ConfigError) as err:
        load_params(path, env={})
    message = str(err.value)
    assert "'sample.detail' = 'verbose' is not allowed" in message
    assert "'compact'" in message and "'full'" in message
    assert message.count("\n") == 0


def test_cross_field_rules_are_one_sentence(tmp_path):
    path = write(tmp_path, 'sample:\n  start: "2025-01-01"\n  end: "2024-01-01"\n')
    with pytest.raises(ConfigError, match=r"end \(2024-01-01\) must be after start"):
        load_params(path, env={})


def test_invalid_yaml_gives_the_line(tmp_path):
    path = write(tmp_path, "parse:\n  strict: [\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML at line 3"):
        load_params(path, env={})


def test_environment_overrides_file_and_flags_override_environment(tmp_path):
    path = write(tmp_path, "parse:\n  strict: false\n  input_dir: from-file\n")
    env = {"CHARLIE_PARSE__STRICT": "true", "CHARLIE_PARSE__INPUT_DIR": "from-env"}
    params = load_params(path, env=env)
    assert params.parse.strict is True
    assert params.parse.input_dir == "from-env"  # text: an s3:// URI must survive
    params = load_params(
        path, env=env, overrides={"parse.input_dir": "from-flag", "parse.out": None}
    )
    assert params.parse.input_dir == "from-flag"
    assert params.parse.out == Path("data/jsonl/records.jsonl")  # unset flag falls through


def test_errors_name_the_environment_variable_they_came_from(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"^environment variable CHARLIE_SAMPLE__TICKERS: 'sample.tickers' = 'many'",
    ):
        load_params(tmp_path / "none.yaml", env={"CHARLIE_SAMPLE__TICKERS": "many"})
    with pytest.raises(ConfigError, match=r"environment variable CHARLIE_PARSE__NOPE: unknown key"):
        load_params(tmp_path / "none.yaml", env={"CHARLIE_PARSE__NOPE": "1"})


def test_errors_name_the_flag_they_came_from(tmp_path):
    with pytest.raises(
        ConfigError, match=r"^--start: 'sample.start' = '2024-13-01' is not allowed"
    ):
        load_params(tmp_path / "none.yaml", env={}, overrides={"sample.start": "2024-13-01"})


def test_values_are_typed(tmp_path):
    path = write(tmp_path, 'sample:\n  start: "2024-01-02"\n  tickers: "3"\n')
    sample = load_params(path, env={}).sample
    assert sample.start == dt.date(2024, 1, 2)
    assert sample.tickers == 3


class Toy(Section):
    """A stand-in for a stage's config file model (configs/*.yaml)."""

    class Optimizer(Section):
        name: Literal["adamw", "sgd"] = "adamw"
        lr: float = 1e-4

    steps: int = 10
    optimizer: Optimizer = Optimizer()


def test_config_files_load_into_their_model_with_the_same_errors(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("steps: 3\noptimizer:\n  lr: 0.5\n")
    assert load_config(path, Toy) == Toy(steps=3, optimizer=Toy.Optimizer(lr=0.5))
    path.write_text("optimizer:\n  nmae: sgd\n")
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'optimizer.nmae' \(did you mean 'name'\?\); allowed keys here are: name, lr\.$",
    ):
        load_config(path, Toy)
    path.write_text("optimizer:\n  name: adam\n")
    with pytest.raises(
        ConfigError,
        match=r"'optimizer.name' = 'adam' is not allowed: Input should be 'adamw' or 'sgd'",
    ):
        load_config(path, Toy)
    with pytest.raises(ConfigError, match=r"config file .*missing.yaml does not exist\."):
        load_config(tmp_path / "missing.yaml", Toy)


# ---------------------------------------------------------------- flags from sections


class Knobs(Section):
    """A section whose fields become flags."""

    input_dir: Path = Field(Path("in"), description="Where to read 100% of it.")
    strict: bool = Field(False, description="Stop on the first problem.")
    mode: Literal["fast", "slow"] = Field("fast", description="How hard to try.")
    windows: list[int] = Field([1, 5], description="Horizons.")
    when: dt.date | None = None
    optimizer: Toy.Optimizer = Toy.Optimizer()  # nested: params.yaml or environment only


def knob_parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="charlie knobs")
    add_flags(parser, Knobs, "knobs", **kwargs)
    return parser


def test_a_flag_is_declared_once_by_its_field(capsys):
    help_text = " ".join(knob_parser().format_help().split())
    assert (
        "--input-dir PATH Where to read 100% of it. (default: params.yaml knobs.input_dir; in if unset)"
        in help_text
    )
    assert "--strict, --no-strict Stop on the first problem." in help_text
    assert "--mode {fast,slow}" in help_text and "--windows A,B,..." in help_text
    assert (
        "--when YYYY-MM-DD" in help_text
        and "(default: params.yaml knobs.when; none if unset)" in help_text
    )
    assert "--optimizer" not in help_text
    args = knob_parser().parse_args(["--no-strict", "--windows", "2,3", "--mode", "slow"])
    assert vars(args)["knobs.strict"] is False and vars(args)["knobs.windows"] == ["2", "3"]
    assert vars(args)["knobs.input_dir"] is None  # unset: falls through
    with pytest.raises(SystemExit):
        knob_parser().parse_args(["--mode", "medium"])
    assert "invalid choice: 'medium'" in capsys.readouterr().err


def test_flags_can_be_chosen_and_renamed():
    parser = knob_parser(fields={"source": "input_dir"})
    assert "--source PATH" in parser.format_help() and "--strict" not in parser.format_help()
    assert vars(parser.parse_args(["--source", "x"]))["knobs.input_dir"] == "x"
    with pytest.raises(TypeError, match=r"Knobs\.optimizer cannot be a command-line flag"):
        knob_parser(fields=["optimizer"])


def test_parsed_flags_override_params_and_errors_name_the_flag(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--params")
    add_flags(parser, ParseParams, "parse", {"from": "input_dir", "strict": "strict"})
    path = write(tmp_path, "parse:\n  input_dir: from-file\n  strict: true\n")
    args = parser.parse_args(["--params", str(path), "--from", "from-flag"])
    params = load_params(args, env={})
    assert params.parse.input_dir == "from-flag" and params.parse.strict is True
    add_flags(parser, SampleParams, "sample", ["tickers"])
    args = parser.parse_args(["--params", str(path), "--tickers", "0"])
    with pytest.raises(ConfigError, match=r"^--tickers: 'sample.tickers' = 0 is not allowed"):
        load_params(args, env={})


def test_config_file_flags_override_the_file(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("steps: 3\n")
    parser = argparse.ArgumentParser()
    add_flags(parser, Toy, CONFIG)
    assert load_config(path, Toy, overrides=parser.parse_args([])).steps == 3
    assert load_config(path, Toy, overrides=parser.parse_args(["--steps", "7"])).steps == 7
    path.write_text("slippage_bps: 3\n")
    parser = argparse.ArgumentParser()
    add_flags(parser, BacktestConfig, CONFIG)
    args = parser.parse_args(["--slippage-bps", "-5"])
    with pytest.raises(ConfigError, match=r"^--slippage-bps: 'slippage_bps' = -5.0 is not allowed"):
        load_config(path, BacktestConfig, overrides=args)


def test_an_unknown_price_provider_names_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown provider 'bloomberg'; known: file, eodhd"):
        load_params(tmp_path / "none.yaml", env={}, overrides={"prices.providers": ["bloomberg"]})
