"""What a run prints besides its numbers: third-party progress bars kept quiet, a hub name with no network
refused at once with the reason (the terminal half of issue 20; the summary table is in test_report.py)."""

from __future__ import annotations

import pytest


def test_the_gguf_progress_bar_is_silenced_for_the_load_only():
    pytest.importorskip("transformers")
    gguf_utils = pytest.importorskip("transformers.modeling_gguf_pytorch_utils")
    from llmcal.backends.hf import _quiet_gguf_progress

    original = gguf_utils.tqdm
    with _quiet_gguf_progress():
        bar = gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...")
        assert bar.disable and list(bar) == [0, 1, 2]  # still iterates, draws nothing
    assert gguf_utils.tqdm is original


def test_a_hub_name_without_network_fails_at_once_saying_why(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from llmcal.backends import hf

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setattr(hf, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ValueError) as info:
        hf.HFBackend.load(pretrained="no-such-org/no-such-model-xyz")
    msg = str(info.value)
    assert "pretrained='no-such-org/no-such-model-xyz'" in msg and "cannot be reached" in msg
    assert "not in the Hugging Face cache" in msg and "huggingface.co" in msg


def test_hub_reachable_honours_hf_hub_offline(monkeypatch):
    from llmcal.backends import hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hf.hub_reachable() is False
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example.org")
    assert hf.hub_host() == "mirror.example.org"
