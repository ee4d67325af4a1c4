"""The command line: fast help, clear errors naming the argument."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmcal.backends.model_args import parse_model_args
from llmcal.cli.main import main


def test_help_and_probe_modules_import_nothing_heavy():
    code = ("import sys, llmcal.probe, llmcal.cli.probe_commands, llmcal.report.probe_section; "
            "from llmcal.cli.main import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'sklearn', 'transformers', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for cmd in ("run", "measure", "calibrate", "report", "tasks"):
        assert cmd in text


def test_calibrators_help_names_every_registered_calibrator(capsys):
    from llmcal.calibrators import CALIBRATORS

    for cmd in ("run", "calibrate"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
        listed = text.rsplit("--calibrators CALIBRATORS", 1)[1].split("(default", 1)[0]
        assert [name for name in CALIBRATORS if name not in listed.replace(",", " ").split()] == [], cmd


def test_model_args_parsing():
    assert parse_model_args("pretrained=a/b,dtype=bfloat16,trust_remote_code=True,max_tokens=512") == {
        "pretrained": "a/b", "dtype": "bfloat16", "trust_remote_code": True, "max_tokens": 512}
    assert parse_model_args("") == {}
    with pytest.raises(ValueError, match="unknown key 'pretraind'"):
        parse_model_args("pretraind=x")
    with pytest.raises(ValueError, match="key=value"):
        parse_model_args("pretrained")


def test_bad_arguments_exit_2_with_named_field(capsys, tmp_path):
    assert main(["run", "--model_args", "dtype=float8", "--output_path", str(tmp_path / "r")]) == 2
    assert "dtype" in capsys.readouterr().err
    assert main(["run", "--model_args", "oops=1", "--output_path", str(tmp_path / "r")]) == 2
    assert "oops" in capsys.readouterr().err
    assert main(["run", "--tasks", "no_such_task", "--output_path", str(tmp_path / "r")]) == 2
    assert "no_such_task" in capsys.readouterr().err
    assert main(["run", "--hidden_layers", "top", "--output_path", str(tmp_path / "r")]) == 2
    assert "--hidden_layers" in capsys.readouterr().err


def test_calibrate_missing_run_dir(capsys, tmp_path):
    assert main(["calibrate", str(tmp_path / "nothing")]) == 2
    assert "config.json" in capsys.readouterr().err
