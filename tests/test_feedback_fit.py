"""``llmcal calibrate --from-feedback``: the refit on labeled answers, its held-out check, the new version."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from llmcal.calibrators.calibration import Calibration, CalibrationSet  # noqa: E402
from llmcal.cli.main import main  # noqa: E402
from llmcal.pipeline.feedback_fit import fit_from_feedback, request_reload  # noqa: E402
from llmcal.pipeline.monitor import VERSIONS_DIR, baseline_ece, calibration_version  # noqa: E402
from llmcal.records.answer_log import AnswerLog  # noqa: E402


def make_run(path, seed=0):
    """A run folder whose primary is Platt on option_prob, fitted where option_prob was calibrated."""
    rng = np.random.default_rng(seed)
    v = rng.uniform(0.3, 1.0, 600)
    y = rng.random(600) < v
    cal = Calibration.fit_arrays("option_prob", "platt", y, values=v, kind="mc", threshold=0.6,
                                 held_out_ece=0.03, context={"style": "cloze", "chat": False})
    path.mkdir(parents=True, exist_ok=True)
    CalibrationSet({"platt": cal}, "platt").save(path / "calibration.json")
    return path, cal


def fill_log(lg, cal, n, truth, seed=1, shown=None, version="v0"):
    """``n`` answers with raw option_prob v, shown the run's calibrated confidence, labeled y ~ truth(v)."""
    rng = np.random.default_rng(seed)
    v = rng.uniform(0.3, 1.0, n)
    y = rng.random(n) < truth(v)
    conf = cal.predict(values=v) if shown is None else shown(v, y)
    lg.record_many([{"id": f"a{i}", "created": 1000.0 + i, "confidence": float(conf[i]), "abstained": False,
                     "signals": {"option_prob": float(v[i]), "margin": 0.1}, "calibration_version": version}
                    for i in range(n)])
    lg.feedback_many([{"id": f"a{i}", "correct": bool(y[i])} for i in range(n)])
    return v, y


def test_refit_on_drifted_feedback_writes_a_new_version(tmp_path):
    run, cal = make_run(tmp_path / "run")
    old_bytes = (run / "calibration.json").read_bytes()
    with AnswerLog(f"sqlite:///{tmp_path / 'log.db'}") as lg:
        fill_log(lg, cal, 600, truth=lambda v: v ** 3)  # the new questions: right far less often than shown
        fit = fit_from_feedback(lg, run, n_bins=10)
    assert fit.passed and fit.written
    assert fit.n_fit + fit.n_held_out == 600 and fit.n_held_out == 180
    assert fit.held_out_ece_before > 0.15 and fit.held_out_ece_after < 0.08
    new_bytes = (run / "calibration.json").read_bytes()
    assert fit.previous_version == calibration_version(old_bytes) != fit.version == calibration_version(new_bytes)
    assert (run / VERSIONS_DIR / f"{fit.previous_version}.json").read_bytes() == old_bytes
    cset = CalibrationSet.load(run / "calibration.json")
    assert cset.primary_name == f"feedback-{fit.calibrator}" and "platt" in cset.by_name
    new = cset.primary
    assert new.fitted_on["source"] == "feedback"
    assert new.fitted_on["held_out_ece"] == pytest.approx(fit.held_out_ece_after)
    assert new.threshold == 0.6 and new.context["style"] == "cloze"
    # the refit map is the truth v**3: at v = 0.9 about 0.73
    assert new.predict(values=np.array([0.9]))[0] == pytest.approx(0.9 ** 3, abs=0.08)
    # the monitor's baseline for the new version is its held-out ECE; the old one's comes from the archive
    assert baseline_ece(run, fit.version) == pytest.approx(fit.held_out_ece_after)
    assert baseline_ece(run, fit.previous_version) == pytest.approx(0.03)


def test_the_held_out_check_refuses_a_worse_calibration(tmp_path):
    run, cal = make_run(tmp_path / "run")
    before = (run / "calibration.json").read_bytes()
    with AnswerLog(f"sqlite:///{tmp_path / 'log.db'}") as lg:
        # what users were shown was exactly right (1 for right answers, 0 for wrong): ECE 0, nothing can beat it
        fill_log(lg, cal, 200, truth=lambda v: v, shown=lambda v, y: y.astype(float))
        fit = fit_from_feedback(lg, run)
    assert fit.held_out_ece_before == 0.0 and not fit.passed and not fit.written and fit.version is None
    assert (run / "calibration.json").read_bytes() == before and not (run / VERSIONS_DIR).exists()


def test_refit_refusals_name_the_reason(tmp_path):
    run, cal = make_run(tmp_path / "run")
    with AnswerLog(f"sqlite:///{tmp_path / 'log.db'}") as lg:
        fill_log(lg, cal, 30, truth=lambda v: v)
        with pytest.raises(ValueError, match="30 labeled answers carry the 'option_prob' signal .*at least 40"):
            fit_from_feedback(lg, run)
        with pytest.raises(ValueError, match="choose among platt, isotonic, histogram, beta .got temperature"):
            fit_from_feedback(lg, run, calibrators=["temperature"])
        with pytest.raises(FileNotFoundError, match="calibration.json: not found"):
            fit_from_feedback(lg, tmp_path / "nowhere")
    with AnswerLog(f"sqlite:///{tmp_path / 'right.db'}") as lg:
        fill_log(lg, cal, 60, truth=lambda v: np.ones_like(v))
        with pytest.raises(ValueError, match="all 60 labeled answers are right; a refit needs both"):
            fit_from_feedback(lg, run)


def test_cli_from_feedback_then_monitor(tmp_path, capsys):
    run, cal = make_run(tmp_path / "run")
    db = f"sqlite:///{tmp_path / 'log.db'}"
    with AnswerLog(db) as lg:
        fill_log(lg, cal, 400, truth=lambda v: v ** 3, version=calibration_version(
            (run / "calibration.json").read_bytes()))
    # the drift is there before the refit: monitor exits 1 with the alarm and the command to fix it
    assert main(["monitor", db, "--run", str(run)]) == 1
    out = capsys.readouterr().out
    assert "ALARM: calibration drift: over-confident after" in out and "llmcal calibrate --from-feedback" in out
    assert main(["calibrate", "--from-feedback", db, "--run", str(run), "--dry-run"]) == 0
    assert "dry run: nothing written" in capsys.readouterr().out
    assert main(["calibrate", "--from-feedback", db, "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "held-out check (120 answers)" in out and ": passed" in out and "calibration-versions/" in out
    assert main(["monitor", db, "--run", str(run), "--json"]) == 1  # the old answers still show the drift
    summary = json.loads(capsys.readouterr().out)
    assert summary["overall"]["labeled"] == 400 and summary["per_version"][0]["baseline_ece"] == pytest.approx(0.03)
    assert main(["calibrate", "--from-feedback", "mysql://x/y", "--run", str(run)]) == 2
    assert "unsupported database" in capsys.readouterr().err
    assert main(["calibrate"]) == 2
    assert "give the run folder (RUN_DIR), or --from-feedback DB --run RUN" in capsys.readouterr().err


def test_reload_to_an_unreachable_server_says_the_calibration_is_written():
    pytest.importorskip("httpx")
    with pytest.raises(ValueError, match="could not be reached .*the new calibration is written"):
        request_reload("http://127.0.0.1:9", None, timeout=2)
