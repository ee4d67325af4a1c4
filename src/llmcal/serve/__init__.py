"""``llmcal serve``: a calibrated model behind an OpenAI-compatible API, with a web page.

* :mod:`llmcal.serve.saved` -- a run folder's saved calibration, applied to one answer
  (multiple choice: the run's calibrator, or ``combined`` when the run has a probe;
  free form: the run's ``generation`` calibrator, else the raw signal, marked uncalibrated).
* :mod:`llmcal.serve.answerer` -- :class:`~llmcal.serve.answerer.Answerer`: a question
  (+ optional options) -> answer + :class:`~llmcal.policy.Decision`, on a transformers backend
  or an upstream OpenAI-compatible server (a calibrating proxy in front of vLLM / llama.cpp,
  through :class:`~llmcal.backends.openai.OpenAIBackend`).
* :mod:`llmcal.serve.app` -- ``create_app(answerer, ...)``: the FastAPI app (auth, limits,
  the one-worker bounded queue).

FastAPI, uvicorn and httpx are the optional ``serve`` extra; nothing here imports them
at package import time.
"""
