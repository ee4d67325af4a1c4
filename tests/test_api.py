"""The Python API: ``llmcal.run(RunConfig)`` is the run that ``llmcal run`` does, number for number."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import llmcal

VOLATILE = ("created", "versions", "git_hash")


def _numbers(results: dict) -> dict:
    out = {k: v for k, v in results.items() if k not in VOLATILE}
    matmul = out.get("config", {}).get("backend", {}).get("matmul")
    if isinstance(matmul, dict):  # how long the load-time matmul probe took, and whether it was cached
        out["config"]["backend"]["matmul"] = {k: v for k, v in matmul.items() if k not in ("probe_seconds", "probe")}
    return out


def test_import_llmcal_is_light_and_exports_the_api():
    out = subprocess.run([sys.executable, "-c", "import sys, llmcal; llmcal.RunConfig; llmcal.run;"
                          "print('torch' in sys.modules, 'sklearn' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert {"run", "RunConfig", "load_run", "Calibration", "Sample", "load_backend"} <= set(dir(llmcal))


@pytest.mark.parametrize("bad, match", [
    ({"tasks": []}, "--tasks: no task named"),
    ({"calibrators": ["temprature"]}, "--calibrators: unknown 'temprature'"),
    ({"threshold": 1.5}, "--threshold must be in"),
    ({"style": "essay"}, "--style: 'essay'"),
    ({"hidden_layers": "mid,top"}, "--hidden_layers: 'top'"),
    ({"cal_fraction": 1.0}, "--cal_fraction must be in"),
])
def test_run_config_refuses_bad_values_on_construction(bad, match):
    with pytest.raises(ValueError, match=match):
        llmcal.RunConfig(**bad)


def test_run_config_takes_lm_eval_strings_or_lists():
    a = llmcal.RunConfig(tasks="builtin, arc_easy", calibrators="temperature,platt")
    b = llmcal.RunConfig(tasks=["builtin", "arc_easy"], calibrators=("temperature", "platt"))
    assert a == b and a.tasks == ("builtin", "arc_easy")


@pytest.mark.slow
def test_api_run_gives_exactly_the_numbers_of_the_cli(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from llmcal.cli.main import main

    # A private cache for the matmul speed probe: the API run measures it and the CLI run reads
    # those timings back, so both choose the same kernel. With the shared cache another test in a
    # parallel suite could re-time it in between, and under load choose another kernel.
    monkeypatch.setenv("LLMCAL_CACHE_DIR", str(tmp_path / "cache"))

    r = llmcal.run(llmcal.RunConfig(tasks=["builtin"], limit=40, output_path=str(tmp_path / "x")))
    assert main(["run", "--tasks", "builtin", "--limit", "40", "--output_path", str(tmp_path / "y"), "--quiet"]) == 0
    cli = json.loads((tmp_path / "y" / "results.json").read_text())
    assert _numbers(r.results) == _numbers(cli)
    assert (tmp_path / "x" / "samples.jsonl").read_bytes() == (tmp_path / "y" / "samples.jsonl").read_bytes()
    assert r.report_path is not None and r.report_path.exists()

    # the returned object holds the run: samples, the fitted calibration, the test metrics
    assert len(r.samples) == 40 and r.calibration.calibrator == "temperature"
    assert r.accuracy == pytest.approx(np.mean([s.correct for s in r.samples]))
    again = llmcal.load_run(tmp_path / "y")
    confs = again.calibration.confidences(again.samples)
    assert np.allclose(confs, r.calibration.confidences(r.samples))
    assert np.all((confs > 0) & (confs <= 1))
