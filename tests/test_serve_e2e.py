"""``llmcal serve`` end to end: the real embedded model behind a real uvicorn on loopback, the
``llmcal serve`` command itself, and the web page in headless Chromium (Selenium).

The browser tests need Debian's ``chromium`` and ``chromium-driver``; they skip, saying so,
where either is missing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from served import Served  # noqa: E402  (tests/ is on sys.path)

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from llmcal.policy import Thresholds  # noqa: E402
from llmcal.serve.answerer import Answerer  # noqa: E402
from llmcal.serve.app import create_app  # noqa: E402
from llmcal.serve.saved import SavedCalibration  # noqa: E402

pytestmark = pytest.mark.slow

REFUSAL = "I can't answer this safely."
FRANCE = {"question": "What is the capital of France?", "choices": ["Lyon", "Paris", "Nice"]}
# the embedded model, cloze style, on FRANCE: option_prob ~ 0.99 (Paris); temperature 1.5 keeps it >= 0.9
TEMPERATURE = 1.5


def write_run(path, temperature=TEMPERATURE):
    path.mkdir(parents=True, exist_ok=True)
    (path / "calibration.json").write_text(json.dumps({
        "schema_version": 1, "signal": "option_prob", "primary": "temperature", "threshold": 0.75,
        "style": "cloze", "chat": False, "model_args": {"dtype": "float32"},
        "calibrators": {"temperature": {"name": "temperature", "version": 1, "bounds": [0.01, 100.0],
                                        "temperature_": temperature, "mode_": "multiclass", "n_classes_": 4}}}))
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return SavedCalibration.from_run(write_run(tmp_path_factory.mktemp("serve") / "run"))


@pytest.fixture(scope="module")
def served(embedded_backend, saved):
    """The embedded model at the brief's thresholds (0.90 / 0.75)."""
    s = Served(create_app(Answerer(embedded_backend, saved), max_queue=4))
    yield s
    s.close()


@pytest.fixture(scope="module")
def served_strict(embedded_backend, saved, served):
    """The same model, abstaining below 1.0: every answer is refused."""
    s = Served(create_app(Answerer(embedded_backend, saved, Thresholds(high=1.0, abstain=1.0))))
    yield s
    s.close()


def test_real_model_over_http(served, saved):
    r = httpx.post(served.url + "/v1/ask", json=FRANCE, timeout=120)
    assert r.status_code == 200, r.text
    d = r.json()
    c = d["confidence"]
    assert d["answer"] == "Paris" and c["model_answer"] == "Paris" and c["id"] == d["id"]
    assert c["calibration_version"] == saved.version and len(saved.version) == 12
    assert c["calibrator"] == "temperature" and c["signal"] == "option_prob" and c["calibrated"]
    assert c["raw_score"] > 0.95 and 0.9 <= c["score"] < c["raw_score"]  # T > 1 softens it
    assert (c["level"], c["colour"], c["abstained"]) == ("high", "green", False)
    chat = httpx.post(served.url + "/v1/chat/completions", timeout=120, json={
        "model": "smol", "messages": [{"role": "user", "content": FRANCE["question"]}], "options": FRANCE["choices"]})
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] == "Paris"
    assert chat.json()["confidence"]["score"] == pytest.approx(c["score"])
    free = httpx.post(served.url + "/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": FRANCE["question"]}], "max_tokens": 12})
    assert free.status_code == 200, free.text
    f = free.json()
    assert "Paris" in f["confidence"]["model_answer"] and f["usage"]["completion_tokens"] <= 12
    assert f["confidence"]["signal"] == "mean_token_prob" and f["confidence"]["calibrator"] == "none"
    assert "model;dur=" in free.headers["server-timing"]


def test_llmcal_serve_command(tmp_path):
    """``llmcal serve`` itself: loads the run's model, answers on loopback, refuses without the key."""
    run = write_run(tmp_path / "run")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LLMCAL_TEST_KEY": "k3y"}
    proc = subprocess.Popen([sys.executable, "-m", "llmcal.cli.serve_commands", "--run", str(run), "--port", str(port),
                             "--api_key_env", "LLMCAL_TEST_KEY", "--log_level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=tmp_path)  # whatever it writes by default (runs/serve.db) stays out of the repo
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        h = httpx.get(url + "/health").json()
        assert h["auth"] is True and h["calibration"]["multiple_choice"]["calibrator"] == "temperature"
        assert httpx.post(url + "/v1/ask", json=FRANCE).status_code == 401
        r = httpx.post(url + "/v1/ask", json=FRANCE, headers={"Authorization": "Bearer k3y"}, timeout=120)
        assert r.status_code == 200 and r.json()["answer"] == "Paris"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "llmcal serve:" in out and f"127.0.0.1:{port}" in out


# ------------------------------------------------------------------ the browser
@pytest.fixture(scope="module")
def browser():
    from served import headless_chrome

    drv = headless_chrome(1000, 900, "--disable-extensions")
    yield drv
    drv.quit()


def _ask_in_page(drv, url, question, choices=()):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    drv.get(url + "/")
    assert drv.title.startswith("llmcal")
    WebDriverWait(drv, 30).until(EC.text_to_be_present_in_element((By.ID, "model"), "SmolLM2"))
    drv.find_element(By.ID, "question").send_keys(question)
    drv.find_element(By.ID, "choices").send_keys("\n".join(choices))
    drv.find_element(By.ID, "ask").click()
    WebDriverWait(drv, 120).until(EC.visibility_of_element_located((By.ID, "result")))
    WebDriverWait(drv, 30).until(lambda d: d.find_element(By.ID, "ask").is_enabled())
    assert drv.find_element(By.ID, "error").text == ""
    fill = drv.find_element(By.ID, "meter-fill")
    at = ("const m = document.getElementById(arguments[0]); if (m.hidden) return null; "
          "const r = m.parentElement.getBoundingClientRect(); return (m.getBoundingClientRect().left + "
          "m.getBoundingClientRect().width / 2 - r.left) / r.width;")
    return {
        "threshold_mark": drv.execute_script(at, "meter-threshold"),
        "high_mark": drv.execute_script(at, "meter-high"),
        "page_text": drv.find_element(By.ID, "result").text,
        "warning": " ".join(w.text for w in drv.find_elements(By.CSS_SELECTOR, "#meta .warn")),
        "answer": drv.find_element(By.ID, "answer").text,
        "colour": fill.get_attribute("data-colour"),
        "background": fill.value_of_css_property("background-color"),
        "width": drv.execute_script("return arguments[0].getBoundingClientRect().width / "
                                    "arguments[0].parentElement.getBoundingClientRect().width", fill),
        "sentence": drv.find_element(By.ID, "sentence").text,
        "alternatives": [li.text for li in drv.find_elements(By.CSS_SELECTOR, "#alternatives li")],
        "level": drv.find_element(By.ID, "level").text,
    }


GREEN, RED = "rgba(26, 127, 55, 1)", "rgba(207, 34, 46, 1)"


def test_page_answers_with_a_green_meter(browser, served):
    expected = httpx.post(served.url + "/v1/ask", json=FRANCE, timeout=120).json()["confidence"]
    assert expected["colour"] == "green"
    got = _ask_in_page(browser, served.url, FRANCE["question"], FRANCE["choices"])
    assert got["answer"] == "Paris"
    assert got["colour"] == "green" and got["background"] == GREEN
    assert got["width"] == pytest.approx(expected["score"], abs=0.02)
    assert got["sentence"] == "I'm very sure about this." and got["level"].startswith("high")
    # the meter marks where the policy abstains (0.75) and where "very sure" starts (0.90)
    assert got["threshold_mark"] == pytest.approx(0.75, abs=0.01)
    assert got["high_mark"] == pytest.approx(0.90, abs=0.01)


def test_page_names_an_uncalibrated_free_answer_once(browser, served):
    got = _ask_in_page(browser, served.url, FRANCE["question"])
    assert "Paris" in got["answer"]
    assert got["warning"].startswith("Uncalibrated: the raw mean_token_prob signal") and got["warning"].count(
        "ncalibrated") == 1
    if got["sentence"].startswith("I'm unsure"):  # a listed free answer keeps one full stop
        assert ".." not in got["sentence"]


def test_page_shows_the_safe_refusal_when_abstaining(browser, served_strict):
    got = _ask_in_page(browser, served_strict.url, FRANCE["question"], FRANCE["choices"])
    assert got["answer"] == REFUSAL and got["sentence"] == "" and got["page_text"].count(REFUSAL) == 1
    assert got["threshold_mark"] == pytest.approx(1.0, abs=0.01)
    assert got["colour"] == "red" and got["background"] == RED and got["level"].startswith("low")
    # the model's answer stays visible, for reference, with the other options
    assert got["alternatives"][0].startswith("Paris (") and len(got["alternatives"]) == 3
