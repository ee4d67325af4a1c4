"""ORPO / SFT+DPO with TRL on a tiny random model, the before/after check, and the CLI steps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from llmcal.posttrain.check import HACKING_MARGIN, flags, verbal_eval  # noqa: E402
from llmcal.posttrain.tiny import tiny_llama, tiny_tokenizer  # noqa: E402
from llmcal.core.items import MCItem  # noqa: E402

PAIRS = [{"prompt": f"Question: what is {i} + 1?\nAnswer:", "chosen": f" {i + 1}. I'm very sure about this.",
          "rejected": f" {i + 1}. I can't answer this safely."} for i in range(6)]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    monkeypatch.setenv("LLMCAL_THREADS", "1")


@pytest.mark.parametrize("method, lora, calls", [("orpo", False, 2), ("sft+dpo", True, 2 + 2 * 2)])
def test_train_runs_bounded_steps_counts_passes_and_saves(tmp_path, method, lora, calls):
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    from llmcal.posttrain.orpo import train
    from llmcal.posttrain.weights import load_checkpoint

    model, tok = tiny_llama(0), tiny_tokenizer()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tuned, rec = train(method, model, tok, PAIRS, tmp_path / "out", steps=2, batch_size=2, progress=False, lora=lora)
    assert [s["steps"] for s in rec["stages"]] == [2] * len(method.split("+"))
    # ORPO: one forward over chosen+rejected a step; DPO adds the reference model's pass
    assert rec["total"]["forward_calls"] == calls
    assert rec["total"]["peak_rss_mb"] > 0 and rec["total"]["wall_s"] > 0
    assert all(math.isfinite(s["train_loss"]) for s in rec["stages"])
    changed = [n for n, p in tuned.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed and all("lora" not in n for n, _ in tuned.named_parameters())  # LoRA merged away
    # the saved checkpoint is a plain folder that reloads to the same weights
    back = load_checkpoint(rec["checkpoint"]).model
    for (n, p), (_, q) in zip(tuned.named_parameters(), back.named_parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), msg=n)


def test_train_refuses_bad_requests(tmp_path):
    from llmcal.posttrain.orpo import train

    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="method 'ppo' is unknown"):
        train("ppo", tiny_llama(0), tok, PAIRS, tmp_path)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        train("orpo", tiny_llama(0), tok, PAIRS, tmp_path, steps=0)
    with pytest.raises(ValueError, match="no preference pairs"):
        train("orpo", tiny_llama(0), tok, [], tmp_path)


def test_verbal_eval_on_tiny_model():
    from llmcal.backends.hf import HFBackend

    items = [MCItem(f"q{i}", "t", f"What is {i} + 1?", (str(i + 1), str(i + 5), "zero"), 0) for i in range(8)]
    res = verbal_eval(HFBackend(tiny_llama(0), tiny_tokenizer(), hidden_layers=()), items)
    assert res["n_items"] == 8
    assert sum(res["level_share"].values()) == pytest.approx(1.0)
    assert 0.375 <= res["mean_stated"] <= 0.95  # an average of the three level values
    assert 0.0 <= res["verbal_ece"] <= 1.0 and 0.0 <= res["accuracy"] <= 1.0
    # length-normalized: on a random model every level sentence keeps a real share (summed log-likelihoods gave
    # the longest one ~0 on every item, so the measure was high-or-low)
    assert min(res["level_share"].values()) > 0.1
    lo, hi = res["verbal_ece_ci"]
    assert lo <= res["verbal_ece"] <= hi


def _table(acc: float, stated: float, ece: float, n: int = 400, std: float = 0.2) -> dict:
    return {"accuracy": acc, "mean_stated": stated, "verbal_ece": ece, "n_items": n, "std_stated": std}


def test_flags_catch_forgetting_hacking_and_overfitted_calibration():
    before = {"train": _table(0.50, 0.50, 0.20), "other": _table(0.60, 0.50, 0.10)}
    after = {"train": _table(0.50, 0.50 + 3 * HACKING_MARGIN, 0.05), "other": _table(0.45, 0.50, 0.15)}
    f = flags(before, after, ["train"])
    assert f["reward_hacking"] == ["train"]  # sounds surer, is not more right
    assert f["forgetting"] == ["other"]  # 15 points lost on a task not trained on
    assert f["calibration_not_generalized"] is True  # ECE better on train, worse elsewhere
    assert f["verbal_ece_gain"]["train"] == pytest.approx(0.15)
    honest = flags(before, {"train": _table(0.60, 0.58, 0.1), "other": _table(0.59, 0.5, 0.05)}, ["train"])
    assert honest["reward_hacking"] == [] and honest["forgetting"] == []
    assert honest["calibration_not_generalized"] is False and honest["collapsed"] == []
    constant = flags(before, {"train": _table(0.5, 0.375, 0.12, std=0.001), "other": _table(0.6, 0.5, 0.1)}, ["train"])
    assert constant["collapsed"] == ["train"]


def test_generalization_verdict_needs_auroc_above_chance_not_just_ece():
    before = {"train": _table(0.50, 0.50, 0.20), "other": _table(0.60, 0.50, 0.10)}
    chance = {"train": _table(0.5, 0.5, 0.1), "other": dict(_table(0.6, 0.5, 0.05), verbal_auroc=0.5,
                                                            verbal_auroc_ci=[0.42, 0.58], n_items=60)}
    v = flags(before, chance, ["train"])["generalization"]
    assert v == "cannot tell: the stated confidence does not separate right from wrong on other AUROC 0.50 [0.42, 0.58], n = 60"
    good = {"train": chance["train"], "other": dict(chance["other"], verbal_auroc=0.7, verbal_auroc_ci=[0.61, 0.79])}
    assert flags(before, good, ["train"])["generalization"].startswith("generalized")
    worse = {"train": chance["train"], "other": dict(good["other"], verbal_ece=0.15)}
    assert flags(before, worse, ["train"])["generalization"] == (
        "not generalized: stated-confidence ECE improved on train only (other +0.050 elsewhere)")


def test_cli_svd_check_pairs_on_tiny_checkpoints(tmp_path, capsys):
    """`llmcal posttrain svd/check/ablate` on two saved tiny checkpoints (through the CLI's own main)."""
    from llmcal.cli.main import main as llmcal_main

    def main(argv):  # `llmcal posttrain STEP ...`
        return llmcal_main(["posttrain", *argv])
    from llmcal.posttrain.orpo import save_checkpoint

    tok = tiny_tokenizer()
    base = save_checkpoint(tiny_llama(0), tok, tmp_path / "base")
    post_model = tiny_llama(0)
    with torch.no_grad():
        for name, p in post_model.named_parameters():
            if ".layers." in name and p.ndim == 2:
                p.mul_(1.25)  # a planted uniform scaling of every block matrix
    post = save_checkpoint(post_model, tok, tmp_path / "post")
    assert main(["svd", str(base), str(post), "--k", "8", "--out", str(tmp_path / "svd")]) == 0
    res = json.loads((tmp_path / "svd" / "svd.json").read_text())
    assert res["summary"]["all"]["median_ratio_mean"] == pytest.approx(1.25, rel=1e-5)
    assert "data:image/png;base64," in (tmp_path / "svd" / "svd.html").read_text()

    quiz = tmp_path / "quiz.jsonl"
    quiz.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "choices": [str(i + 1), str(i + 3)],
                                        "answer": 0}) + "\n" for i in range(6)))
    assert main(["check", str(base), str(base), "--tasks", str(quiz), "--train_tasks", "quiz", "--limit", "6",
                 "--out", str(tmp_path / "chk")]) == 0
    chk = json.loads((tmp_path / "chk" / "check.json").read_text())
    b, a = chk["before"]["quiz"], chk["after"]["quiz"]
    assert b["accuracy"] == a["accuracy"] and np.isclose(b["mean_stated"], a["mean_stated"])  # same model
    assert chk["flags"]["reward_hacking"] == [] and chk["flags"]["forgetting"] == []

    assert main(["ablate", str(base), str(post), "--modes", "post,base_vectors_post_values", "--task", str(quiz),
                 "--limit", "6", "--texts", "0", "--out", str(tmp_path / "abl")]) == 0
    abl = json.loads((tmp_path / "abl" / "ablate.json").read_text())["results"]
    # base vectors + post values is exactly post here (the plant changed only the values)
    assert abl["base_vectors_post_values"]["accuracy"] == abl["post"]["accuracy"]
    assert abl["base_vectors_post_values"]["ece"] == pytest.approx(abl["post"]["ece"], abs=1e-6)

    assert main(["ablate", str(base), str(post), "--modes", "sideways"]) == 2
    assert "unknown sideways" in capsys.readouterr().err
    assert main(["svd", str(tmp_path / "nowhere"), str(post)]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err


def test_posttrain_is_registered_in_llmcal_and_help_stays_light():
    import subprocess
    import sys

    code = ("import sys; from llmcal.cli.main import build_parser; p = build_parser(); "
            "a = p.parse_args(['posttrain', 'svd', 'embedded', 'x']); "
            "print(a.func.__name__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["cmd_svd", "False"]


@pytest.mark.slow
def test_embedded_model_verbal_confidence_and_one_layer_svd(embedded_backend):
    """The real model: stated confidence on a few built-in items; a planted 1.1x scale on one layer is recovered."""
    from llmcal.posttrain.svd import compare_matrices
    from llmcal.tasks.registry import load_task

    res = verbal_eval(embedded_backend, load_task("builtin", limit=6))
    assert res["n_items"] == 6 and sum(res["level_share"].values()) == pytest.approx(1.0)
    w = embedded_backend.model.model.layers[0].self_attn.q_proj.weight  # (576, 576)
    svd = compare_matrices(w, 1.1 * w, k=64)
    assert svd["ratio_mean"] == pytest.approx(1.1, rel=1e-5) and svd["ratio_cv"] < 1e-5
    assert svd["lr_similarity"] > 0.999


def test_orpo_reports_preference_metrics_on_held_out_pairs_quietly(tmp_path, capsys):
    """--quiet prints nothing per step, no checkpoint-* is written without save_steps, and TRL's
    preference metrics (rewards/margins, accuracies) come back for training and for the held-out pairs."""
    pytest.importorskip("trl")
    from llmcal.posttrain.orpo import train

    _, rec = train("orpo", tiny_llama(0), tiny_tokenizer(), PAIRS, tmp_path / "out", steps=2, batch_size=2,
                   progress=False, eval_fraction=0.34, grad_accum=2)
    out = capsys.readouterr()
    assert "'loss'" not in out.out and "'loss'" not in out.err  # no per-step log dicts
    assert rec["n_pairs"] == 4 and rec["n_eval_pairs"] == 2 and rec["grad_accum"] == 2
    stage = rec["stages"][0]
    assert {"rewards/margins", "rewards/accuracies"} <= set(stage["preference"])
    assert all(math.isfinite(v["last"]) for v in stage["preference"].values())
    assert "eval_loss" in stage["eval"] and "eval_rewards/margins" in stage["eval"]
    assert not list((tmp_path / "out").rglob("checkpoint-*"))
    with pytest.raises(ValueError, match="eval_fraction must be in"):
        train("orpo", tiny_llama(0), tiny_tokenizer(), PAIRS, tmp_path / "x", eval_fraction=1.0)
    with pytest.raises(ValueError, match="has no chat template"):
        train("orpo", tiny_llama(0), tiny_tokenizer(), PAIRS, tmp_path / "x", chat=True)
