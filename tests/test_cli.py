import os
import re
import subprocess
import sys

import pytest

from charlie.cli import STAGES, main

HEAVY = {"torch", "transformers", "datasets", "pandas", "numpy", "lxml", "pydantic", "yaml", "dvc"}


def test_top_level_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert re.search(rf"^    {re.escape(stage)}\b", out, re.MULTILINE), stage
    assert "CHARLIE_<SECTION>__<KEY>" in out


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_explains_itself(stage, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([stage, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--params" in out
    assert out.count("--") >= 4  # every flag is listed with its help


def test_help_imports_nothing_heavy():
    code = (
        "import sys; from charlie.cli import build_parser; build_parser().format_help(); "
        f"print(sorted(set({sorted(HEAVY)!r}) & {{m.split('.')[0] for m in sys.modules}}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_no_stage_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "required: <stage>" in capsys.readouterr().err


def test_a_config_error_is_one_sentence_and_exit_2(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("parse:\n  strict: maybe\n")
    assert main(["parse", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("charlie parse: error: ")
    assert "'parse.strict' = 'maybe' is not allowed" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_dotenv_is_loaded_but_never_beats_the_real_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "CHARLIE_PARSE__INPUT_DIR=from-dotenv\nCHARLIE_SAMPLE__TICKERS=nope\n"
    )
    monkeypatch.setenv("CHARLIE_SAMPLE__TICKERS", "2")
    assert main(["parse"]) == 2
    assert "input directory from-dotenv does not exist" in capsys.readouterr().err
    assert (
        main(
            [
                "sample",
                "--out-dir",
                str(tmp_path / "s"),
                "--start",
                "2024-01-02",
                "--end",
                "2024-01-31",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "s" / "xml").iterdir()) == ["ACME.xml", "BOLT.xml"]


def test_each_run_writes_a_log_file(tmp_path, capsys):
    assert main(["parse", "--input-dir", str(tmp_path / "missing")]) == 2
    logs = list((tmp_path / "logs").glob("parse-*.log"))
    assert len(logs) == 1


# A stage's settings are declared once, in its section: each field is a flag with its help.
SECTIONS = {"sample": "sample", "parse": "parse", "dataset": "dataset",
            "init-model": "init_model", "backtest": "backtest", "evaluate": "evaluate"}  # fmt: skip


@pytest.mark.parametrize("stage", list(SECTIONS))
def test_each_field_of_a_stage_section_is_a_flag_with_its_help(stage, capsys):
    from charlie.config import Params

    section = SECTIONS[stage]
    with pytest.raises(SystemExit):
        main([stage, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for key, info in Params.model_fields[section].annotation.model_fields.items():
        flag = f"--{key.replace('_', '-')}"
        assert flag in out, flag
        assert f"(default: params.yaml {section}.{key};" in out, key
        if info.description:
            assert " ".join(info.description.split()) in out, key


@pytest.mark.parametrize("stage", ["evaluate", "backtest", "train", "tokenize"])
def test_a_missing_config_file_is_an_error_not_silent_defaults(stage, tmp_path, capsys):
    assert main([stage, "--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err == f"charlie {stage}: error: config file {tmp_path / 'nope.yaml'} does not exist.\n"


def test_only_the_named_stage_is_imported():
    code = (
        "import sys; from charlie.cli import build_parser; build_parser(['parse']); "
        "print(sorted(m for m in sys.modules if m.startswith('charlie.stages.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "['charlie.stages.parse']"


@pytest.mark.parametrize("verbose", [False, True])
def test_library_noise_is_hidden_at_its_source_unless_verbose(verbose, tmp_path):
    """DeepSpeed's "Setting accelerator to CPU" (a real import, in a fresh process),
    bitsandbytes' optional-kernel message and TRL's read of a deprecated property are hidden;
    other messages of the same loggers are not; CHARLIE_VERBOSE=1 (--verbose) shows them all."""
    script = """
import logging, warnings
from charlie.logs import quiet_libraries
quiet_libraries()
from deepspeed.accelerator import get_accelerator
get_accelerator()
logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
    "Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "no kernels")
logging.getLogger("bitsandbytes.backends.cpu.ops").warning("a real bitsandbytes problem")
warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
warnings.warn("some other deprecation", FutureWarning)
"""
    env = {**os.environ, "CHARLIE_VERBOSE": "1" if verbose else "0", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "a real bitsandbytes problem" in out and "some other deprecation" in out
    for noise in ("Setting accelerator to CPU", "Failed to load CPU gemm_4bit_forward",
                  "`is_gradient_checkpointing` is deprecated"):  # fmt: skip
        assert (noise in out) == verbose, (noise, out)


def test_a_mistyped_stage_or_flag_gets_a_did_you_mean(capsys):
    for argv, line in ((["trian"], "'trian' is not a stage (did you mean 'train'?)"),
                       (["parse", "--input-dri", "x"], "--input-dri (did you mean '--input-dir'?)"),
                       (["train", "--confg=x"], "--confg (did you mean '--config'?)")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and line in capsys.readouterr().err
