"""Shared fixtures: the public data folder (skip where absent) and the embedded model (loaded once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the suite on two pytest-xdist workers, one per core: each worker (and every server it
    # starts) gets one thread, since two torch processes with default threads on 2 cores run 10-100x slower
    for _name, _value in (("LLMCAL_THREADS", "1"), ("OMP_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1"),
                          ("OMP_WAIT_POLICY", "PASSIVE")):
        os.environ.setdefault(_name, _value)


def shared_data_dir() -> Path | None:
    env = os.environ.get("LLMCAL_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("the public evaluation sets (../shared/data or $LLMCAL_DATA) are absent on this machine")
    return d


@pytest.fixture(scope="session")
def embedded_backend():
    """The real embedded SmolLM2-135M-Instruct in fp32, loaded once per session."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from llmcal.backends.registry import load_backend

    return load_backend("hf", dtype="float32", hidden_layers=(15, -1))
