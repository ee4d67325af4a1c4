"""The monitor: drift tests (metrics/drift.py), the summary (pipeline/monitor.py), serve's feedback and
monitor endpoints (serve/feedback_api.py) and the dashboard page in headless Chromium."""

from __future__ import annotations


import numpy as np
import pytest

from llmcal.metrics.calibration import ece
from llmcal.metrics.drift import cusum_calibration, ece_interval_check, windowed_ece


# ------------------------------------------------------------------ drift tests
def stream(n, seed, gap=0.0):
    """Confidences in [0.5, 1) and labels right with probability confidence - gap."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.5, 0.99, n)
    return p, rng.random(n) < np.clip(p - gap, 0, 1)


def test_cusum_reference_values():
    """Steiner et al.'s weights by hand: W = e log R - log(1 - q + R q), q = 1 - p + baseline."""
    x, c = np.array([0.9, 0.9, 0.8, 0.2]), np.array([0, 0, 1, 1])
    r = cusum_calibration(x, c, baseline_ece=0.05, odds_ratio=2.0, arl0=1e6)
    q = 1 - x + 0.05  # [0.15, 0.15, 0.25, 0.85]
    w = (1 - c) * np.log(2) - np.log(1 + q)
    np.testing.assert_allclose(r.upper, _cusum(w))
    np.testing.assert_allclose(r.upper[:2], [0.5534, 1.1067], atol=1e-4)
    q_lo = 1 - x - 0.05
    w_lo = (1 - c) * np.log(0.5) - np.log(1 - q_lo / 2)
    np.testing.assert_allclose(r.lower, _cusum(w_lo))
    assert not r.alarm and r.h == pytest.approx(np.log(1e6))
    r = cusum_calibration([0.99] * 10, [0] * 10, arl0=20)  # each wrong 0.99: log 2 - log 1.01 = 0.683
    assert r.alarm and r.direction == "over-confident" and r.alarm_at == 5  # 5 * 0.683 > log 20 = 2.996


def _cusum(w):
    out, s_ = [], 0.0
    for v in w:
        s_ = max(0.0, s_ + v)
        out.append(s_)
    return np.array(out)


@pytest.mark.parametrize("seed", range(5))
def test_cusum_quiet_on_a_calibrated_stream(seed):
    p, y = stream(2000, seed)
    assert not cusum_calibration(p, y, baseline_ece=0.02).alarm


def test_cusum_flags_over_and_under_confidence_quickly():
    at = [cusum_calibration(*stream(2000, s, gap=0.25), baseline_ece=0.02).alarm_at for s in range(10)]
    assert all(a is not None and a <= 130 for a in at), at  # 78 labeled answers at the median
    rng = np.random.default_rng(7)
    p = rng.uniform(0.3, 0.6, 1000)
    under = cusum_calibration(p, rng.random(1000) < p + 0.3, baseline_ece=0.02)
    assert under.alarm and under.direction == "under-confident"


def test_drift_input_errors():
    with pytest.raises(ValueError, match="baseline_ece must be a finite number >= 0"):
        cusum_calibration([0.5], [1], baseline_ece=-1)
    with pytest.raises(ValueError, match="odds_ratio must be a number > 1"):
        cusum_calibration([0.5], [1], odds_ratio=1.0)
    with pytest.raises(ValueError, match="confidence"):
        cusum_calibration([1.5], [1])
    with pytest.raises(ValueError, match="window must be a whole number of answers >= 1"):
        windowed_ece([0.5], [1], window=0)


def test_bootstrap_interval_check_and_windows():
    p, y = stream(400, 3, gap=0.3)
    drifted = ece_interval_check(p, y, baseline_ece=0.05, n_resamples=200)
    assert drifted["alarm"] and drifted["low"] > 0.05 and drifted["ece"] == pytest.approx(ece(p, y, n_bins=10))
    p, y = stream(2000, 4)
    assert not ece_interval_check(p, y, baseline_ece=0.05, n_resamples=200)["alarm"]
    w = windowed_ece(p[:250], y[:250], window=100)
    assert [(x["start"], x["stop"]) for x in w] == [(0, 100), (100, 200), (200, 250)]
    assert w[2]["ece"] == pytest.approx(ece(p[200:250], y[200:250], n_bins=10))
    assert w[0]["accuracy"] == pytest.approx(float(np.mean(y[:100])))


# ------------------------------------------------------------------ the summary
pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from llmcal.calibrators.calibration import Calibration, CalibrationSet  # noqa: E402
from llmcal.pipeline.monitor import calibration_version, format_summary, monitor_summary  # noqa: E402
from llmcal.records.answer_log import AnswerLog  # noqa: E402


def drifting_log(lg, n_before=300, n_after=300, gap=0.3, version="v1"):
    """Answers calibrated for ``n_before``, then right ``gap`` less often than shown; every 4th unlabeled."""
    rng = np.random.default_rng(0)
    rows, labels = [], {}
    for i in range(n_before + n_after):
        p = float(rng.uniform(0.55, 0.99))
        right = bool(rng.random() < p - (gap if i >= n_before else 0.0))
        rows.append({"id": f"a{i}", "created": 1_000_000.0 + 10 * i, "confidence": p, "abstained": p < 0.6,
                     "threshold": 0.6, "signals": {"option_prob": p}, "calibration_version": version})
        if i % 4:
            labels[f"a{i}"] = right
    lg.record_many(rows)
    lg.feedback_many([{"id": k, "correct": v} for k, v in labels.items()])
    return rows, labels


def test_summary_numbers_windows_versions_and_alarm(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cal = Calibration.none("option_prob", "mc", fitted_on={"held_out_ece": 0.04})
    CalibrationSet({"none": cal}, "none").save(run / "calibration.json")
    version = calibration_version((run / "calibration.json").read_bytes())
    with AnswerLog(f"sqlite:///{tmp_path / 'log.db'}") as lg:
        rows, labels = drifting_log(lg, version=version)
        s = monitor_summary(lg, run_dir=run, window_s=1000.0, bootstrap=100)
    o = s["overall"]
    assert o["answers"] == 600 and o["labeled"] == len(labels) == 450
    assert o["coverage"] == pytest.approx(np.mean([not r["abstained"] for r in rows]))
    lab = [(r["confidence"], labels[r["id"]], r["abstained"]) for r in rows if r["id"] in labels]
    x, c = np.array([a[0] for a in lab]), np.array([a[1] for a in lab])
    kept = ~np.array([a[2] for a in lab])
    assert o["ece"] == pytest.approx(ece(x, c, n_bins=10)) and o["accuracy"] == pytest.approx(c.mean())
    assert o["accuracy_at_threshold"] == pytest.approx(c[kept].mean())
    assert sum(o["reliability"]["counts"]) == 450 and len(o["reliability"]["edges"]) == 11
    assert len(s["per_window"]) == 6 and sum(w["answers"] for w in s["per_window"]) == 600  # 100 answers a window
    assert s["per_window"][0]["start"] == "1970-01-12T13:46:40Z"
    assert [v["version"] for v in s["per_version"]] == [version] and s["per_version"][0]["baseline_ece"] == 0.04
    d = s["drift"]
    assert d["alarm"] and d["baseline_ece"] == 0.04
    # flagged after the switch (225 labeled answers came before it), within 100 labeled answers of it
    assert 225 < d["cusum"]["alarm_at"] <= 325, d["cusum"]
    assert d["message"].startswith(f"calibration drift: over-confident after {d['cusum']['alarm_at']} labeled "
                                   f"answers of calibration {version}")
    assert "ALARM: calibration drift" in format_summary(s)


def test_a_new_version_starts_a_new_watch(tmp_path):
    with AnswerLog(f"sqlite:///{tmp_path / 'log.db'}") as lg:
        drifting_log(lg, version="old")
        rng = np.random.default_rng(1)
        rows = [{"id": f"n{i}", "created": 2_000_000.0 + i, "confidence": float(p), "abstained": False,
                 "calibration_version": "new"} for i, p in enumerate(rng.uniform(0.5, 0.99, 300))]
        lg.record_many(rows)
        lg.feedback_many([{"id": r["id"], "correct": bool(rng.random() < r["confidence"])} for r in rows])
        s = monitor_summary(lg, baseline=0.03, bootstrap=0)
    assert [v["version"] for v in s["per_version"]] == ["old", "new"]
    assert s["drift"]["version"] == "new" and s["drift"]["labeled"] == 300 and not s["drift"]["alarm"]
    assert s["drift"]["message"] == "no drift in 300 labeled answers of calibration new"


# ------------------------------------------------------------------ serve: /v1/feedback, /v1/monitor, /dashboard
fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from llmcal.serve.answerer import mc_reply  # noqa: E402
from llmcal.serve.app import create_app  # noqa: E402
from llmcal.serve.feedback_api import answer_log_wiring  # noqa: E402
from llmcal.serve.saved import SavedCalibration  # noqa: E402


class TinyAnswerer:
    """Multiple choice from fixed option log-likelihoods, scored with a saved run's calibration."""

    model_name = "tiny"

    def __init__(self, run):
        self.saved = SavedCalibration.from_run(run, use_probe=False)
        self.thresholds = self.saved.thresholds()

    def describe(self):
        return {"model": self.model_name, **self.saved.describe()}

    def answer(self, q):
        ll = np.array([0.0] + [-1.5] * (len(q.options) - 1))
        return mc_reply(q, q.options, ll, np.ones(len(ll), dtype=int), self.saved, self.thresholds, {}, 3)

    def reload(self):
        self.saved = SavedCalibration.from_run(self.saved.path, use_probe=False)
        return self.saved.version


@pytest.fixture
def served_log(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    CalibrationSet({"none": Calibration.none("option_prob", "mc", fitted_on={"held_out_ece": 0.02})},
                   "none").save(run / "calibration.json")
    db = f"sqlite:///{tmp_path / 'serve.db'}"
    kw, close = answer_log_wiring(db, True, None, run)
    yield TinyAnswerer(run), kw, db
    close()


QUESTION = {"question": "Capital of France?", "choices": ["Paris", "Lyon", "Nice"]}


def test_feedback_endpoint_stores_labels(served_log):
    answerer, kw, db = served_log
    with TestClient(create_app(answerer, api_key="k3y", **kw)) as client:
        auth = {"Authorization": "Bearer k3y"}
        assert client.post("/v1/feedback", json={"id": "x", "correct": True}).status_code == 401
        answer = client.post("/v1/ask", json=QUESTION, headers=auth).json()
        aid = answer["id"]
        r = client.post("/v1/feedback", json={"id": aid, "rating": -1}, headers=auth)
        assert r.status_code == 200 and r.json() == {"id": aid, "label": False, "stored": True}
        r = client.post("/v1/feedback", json={"id": "chatcmpl-nope", "correct": True}, headers=auth)
        assert r.status_code == 404 and "no answer with id 'chatcmpl-nope'" in r.json()["error"]["message"]
        r = client.post("/v1/feedback", json={"id": aid}, headers=auth)
        assert r.status_code == 422 and "give one of 'correct', 'rating' or 'corrected_answer'" in r.text
        assert client.post("/v1/feedback", json={"id": aid, "rating": 5}, headers=auth).status_code == 422
        m = client.get("/v1/monitor", headers=auth).json()
        assert m["overall"]["answers"] == 1 and m["overall"]["labeled"] == 1 and m["overall"]["accuracy"] == 0.0
        assert client.get("/dashboard").status_code == 200
    with AnswerLog(db) as lg:
        row = lg.get(aid)
        assert row["answer"] == "Paris" and row["question"] == "Capital of France?"
        assert row["confidence"] == pytest.approx(answer["confidence"]["score"])
        assert row["calibration_version"] == answerer.saved.version and row["run"] == "run"
        assert lg.labeled()[0].correct is False


def test_serve_flags_make_the_log(tmp_path):
    from llmcal.cli.main import build_parser

    args = build_parser().parse_args(["serve", "--run", "r"])
    assert (args.db, args.log_text, args.retention_days) == ("sqlite:///runs/serve.db", "on", None)
    kw, close = answer_log_wiring(f"sqlite:///{tmp_path / 'h.db'}", log_text=False)
    try:  # hashes only, and a retention limit unless one was given
        assert kw["on_answer"].log.log_text is False and kw["on_answer"].log.retention_days == 30
        assert [r.path for r in kw["extra_routers"][0].routes] == ["/v1/feedback", "/v1/monitor", "/dashboard"]
    finally:
        close()
    kw, close = answer_log_wiring("off")
    assert kw == {}
    close()


# ------------------------------------------------------------------ the dashboard in headless Chromium
from served import Served  # noqa: E402,F401  (tests/ is on sys.path)


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("uvicorn")
    from served import headless_chrome

    drv = headless_chrome(1000, 1200)
    yield drv
    drv.quit()


@pytest.mark.slow  # a real browser
def test_dashboard_draws_the_diagram_and_the_alarm(browser, served_log):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    answerer, kw, db = served_log
    with AnswerLog(db) as lg:
        drifting_log(lg, version=answerer.saved.version)
    s = Served(create_app(answerer, **kw))
    try:
        browser.get(s.url + "/dashboard")
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))
        banner = browser.find_element(By.ID, "banner")
        assert banner.get_attribute("data-alarm") == "1" and "calibration drift: over-confident" in banner.text
        assert banner.value_of_css_property("color") == "rgba(207, 34, 46, 1)"  # red
        bars = browser.find_elements(By.CSS_SELECTOR, "#reliability rect.bar")
        points = browser.find_elements(By.CSS_SELECTOR, "#reliability circle.point")
        with AnswerLog(db) as lg:
            counts = monitor_summary(lg, bootstrap=0)["overall"]["reliability"]["counts"]
        assert len(bars) == len(points) == sum(1 for n in counts if n) >= 4
        assert len(browser.find_elements(By.CSS_SELECTOR, "#reliability line.diagonal")) == 1
        rows = browser.find_elements(By.CSS_SELECTOR, "#versions tr")
        assert len(rows) == 2 and answerer.saved.version in rows[1].text
    finally:
        s.close()


@pytest.mark.slow  # a real browser
def test_page_feedback_buttons_store_a_label(browser, served_log):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    answerer, kw, db = served_log
    s = Served(create_app(answerer, **kw))
    try:
        browser.get(s.url + "/")
        browser.find_element(By.ID, "question").send_keys(QUESTION["question"])
        browser.find_element(By.ID, "choices").send_keys("\n".join(QUESTION["choices"]))
        browser.find_element(By.ID, "ask").click()
        WebDriverWait(browser, 30).until(EC.visibility_of_element_located((By.ID, "feedback-down")))
        browser.find_element(By.ID, "feedback-down").click()
        WebDriverWait(browser, 30).until(EC.text_to_be_present_in_element((By.ID, "feedback-status"), "recorded"))
        assert browser.find_element(By.ID, "feedback-status").text == "Thanks, recorded."
        assert browser.find_element(By.ID, "feedback-down").get_attribute("aria-pressed") == "true"
    finally:
        s.close()
    with AnswerLog(db) as lg:
        labeled = lg.labeled()
        assert len(labeled) == 1 and labeled[0].correct is False
        assert lg.get(labeled[0].id)["question"] == QUESTION["question"]
