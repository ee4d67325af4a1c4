"""Free-form confidence signals: what each costs, and llmcal against LM-Polygraph 0.7 on the same questions.

    taskset -c 0 .bench-venv-polygraph/bin/python benchmarks/signals.py --tasks builtin_open,nq_open --limit 24 \
        --threads 1
    (the venv from benchmarks/setup_polygraph_env.sh; in the project's .venv the side-by-side is skipped;
    both tools run in this one process, so they are pinned the same way; the load average is printed)

Part 1, **cost of each signal** (llmcal alone): the questions are answered greedily as
``llmcal run`` does (chat template, stop at a newline), then every signal family is computed
on the same answers (``pipeline.measure_open.answer_batch``, which records each family's
seconds, extra model calls and extra generated tokens per item). Printed against plain
greedy generation: extra forward passes (prefill passes; a generated token is one more
decoding step), extra generated tokens, and the wall-time ratio.

Part 2, **side by side with LM-Polygraph 0.7** (where ``lm_polygraph`` imports), on the same
questions and prompts (the user message under the model's chat template, LM-Polygraph's
``WhiteboxModel(instruct=True)``), greedy, at most ``--max_new_tokens`` tokens, both stopping
only at the end-of-turn token (LM-Polygraph's default stopping), batch ``--batch_size``:

* the estimators both have: maximum sequence probability, mean token entropy, P(True);
* LM-Polygraph through ``UEManager`` with its default statistic calculators, as its
  ``estimate_uncertainty`` builds them (its greedy statistics keep attention maps, which
  need ``attn_implementation="eager"`` under transformers 5), and again with attentions and
  hidden states off ("lean"), the fastest it offers;
* llmcal: ``HFBackend.generate`` + ``signals.generation.token_signals`` + P(True), sdpa
  attention, twice: with its default ``ptrue_chat`` (the question asked as the next chat turn,
  the answers' keys/values reused: only the follow-up turn is prefilled) and with the paper's
  standalone prompt (``--signals ptrue``, one scoring pass over a new prompt, as LM-Polygraph's);
* values compared item by item on the same tokens, with the conventions stated (LM-Polygraph
  counts the end-of-turn token in the sequence probability and the entropy; llmcal scores the
  answer's own tokens; LM-Polygraph's P(True) is log p("True") after its own prompt, which llmcal
  computes here with its scorer for the comparison, while llmcal's signal renormalizes over
  True/False after the paper's prompt);
* throughput, items per second, model loading excluded, one warm-up batch each.

``--sweep 8,16,32,48`` instead times both tools at each batch size (interleaved) and prints
the ratio of each tool at its best size beside the ratio at each size.

Exits non-zero when values disagree beyond the stated tolerance.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

FAMILIES = ("tokens", "ptrue", "ptrue_chat", "verbalized", "verbalized_percent", "agreement")
TOL_LOGPROB = 1e-3  # nats, per token and for log p("True"); both run the same fp32 weights on the CPU
TOL_ENTROPY = 1e-3


def load_items(tasks: str, data_dir: str | None, limit: int):
    from llmcal.tasks.registry import load_task

    items = []
    for spec in tasks.split(","):
        items.extend(load_task(spec.strip(), data_dir=data_dir, limit=limit))
    return items


# ----------------------------------------------------------------------------- part 1
def cost_table(backend, items, batch: int, k: int) -> tuple[list[dict], float]:
    """Each family's cost per item against plain greedy generation (``answer_batch``'s records)."""
    from llmcal.pipeline.measure_open import OpenSettings, answer_batch

    s = OpenSettings(families=FAMILIES, k_samples=k)
    answer_batch(backend, items[:min(4, len(items))], s, embedder=_embedder(), seed=0)  # warm-up
    records = []
    t0 = time.perf_counter()
    for start in range(0, len(items), batch):
        records += answer_batch(backend, items[start:start + batch], s, embedder=_embedder(), seed=start)
    total = time.perf_counter() - t0
    n = len(records)
    greedy_s = sum(r["cost"]["greedy"]["seconds"] for r in records) / n
    greedy_tok = sum(r["cost"]["greedy"]["answer_tokens"] for r in records) / n
    rows = [{"signal": f"greedy answer (the baseline: {greedy_tok:.1f} tokens)", "extra_passes": 0.0,
             "extra_tokens": 0.0, "seconds": greedy_s, "ratio": 1.0}]
    names = {"tokens": "token family (5 signals)", "ptrue": "P(True), the paper's prompt",
             "ptrue_chat": "P(True) in the chat (the default)", "verbalized": "verbalized 1-10",
             "verbalized_percent": "verbalized 0-100%", "agreement": f"agreement + semantic entropy (k={k})"}
    for fam in FAMILIES:
        c = [r["cost"][fam] for r in records if fam in r["cost"]]
        sec = sum(x["seconds"] for x in c) / n
        passes = sum(x["forward_passes"] for x in c) / n
        if fam.startswith("verbalized"):
            passes = 1.0  # one prefill of the follow-up conversation
        if fam == "agreement":
            passes = float(k)  # k prefills (num_return_sequences expands the prompt)
        rows.append({"signal": names[fam], "extra_passes": passes,
                     "extra_tokens": sum(x["gen_tokens"] for x in c) / n, "seconds": sec,
                     "ratio": sec / greedy_s})
    return rows, total


_EMB = None


def _embedder():
    global _EMB
    if _EMB is None:
        from llmcal.backends.embedder import Embedder

        _EMB = Embedder(None)
    return _EMB


# ----------------------------------------------------------------------------- part 2
def user_messages(items) -> list[str]:
    from llmcal.tasks.prompts import user_message

    return [user_message(it) for it in items]


def run_llmcal(backend, messages: list[str], batch: int, max_new: int, items=None,
               ptrue: str = "chat", continuous: bool = True) -> tuple[list[dict], float]:
    """Greedy answers + token signals + llmcal's P(True), batched; seconds exclude loading.

    ``continuous``: every question in one ``generate`` call, at most ``batch`` rows decoded at a
    time (``decode_rows``; questions join as rows finish, ``lean_decode.decode``); else one call
    per ``batch`` questions (static batches, as LM-Polygraph runs).

    ``ptrue="chat"``: llmcal's default, P(True) asked as the next chat turn right after the greedy
    call (``measure_open.ptrue_chat``: the answers' keys/values reused); ``"paper"``: the
    standalone prompt of Kadavath et al. (``--signals ptrue``), one full scoring pass.
    """
    from llmcal.pipeline.measure_open import OpenSettings, ptrue_chat
    from llmcal.signals.generation import token_signals
    from llmcal.signals.ptrue import ptrue_from_logprobs, ptrue_request

    prompts = [backend.apply_chat_template(m) for m in messages]
    vocab = backend.vocab_size
    backend.decode_rows = batch
    settings = OpenSettings()

    def one_batch(lo: int, hi: int) -> list[dict]:
        gens = [g[0] for g in backend.generate(prompts[lo:hi], max_new_tokens=max_new, temperature=0.0,
                                       stop=(), top_k=2)]
        if ptrue == "chat":
            got = ptrue_chat(backend, items[lo:hi], list(range(hi - lo)), gens, settings)
            pt = [got[j] for j in range(hi - lo)]
        else:
            scores = backend.score_mc([ptrue_request(m, g.text) for m, g in zip(messages[lo:hi], gens)])
            pt = [ptrue_from_logprobs(sc.logprobs[0], sc.logprobs[1]) for sc in scores]
        out = []
        for g, p in zip(gens, pt):
            sig = token_signals(g, vocab)
            out.append({"text": g.text, "token_ids": list(g.token_ids),  # the end token is already cut
                        "token_logprobs": g.token_logprobs.tolist(), "entropies": g.entropies.tolist(),
                        "finish": g.finish_reason, "seq_prob": sig["seq_prob"], "entropy_conf": sig["entropy_conf"],
                        "ptrue": p})
        return out

    one_batch(0, min(batch, len(prompts)))  # warm-up
    # the timed run begins with the warm-up's prompts: forget them, so that their prefill is timed
    # (the chat template's shared start stays stored, as in any run past its first batch)
    from llmcal.backends.lean_decode import prompt_cache

    prompt_cache(backend).forget_prompts()
    t0 = time.perf_counter()
    rows = []
    chunk = len(prompts) if continuous else batch
    for lo in range(0, len(prompts), chunk):
        rows += one_batch(lo, min(lo + chunk, len(prompts)))
    return rows, time.perf_counter() - t0


def run_polygraph(model, tokenizer, messages: list[str], batch: int, max_new: int, lean: bool):
    """LM-Polygraph's UEManager with MSP, mean token entropy and P(True); returns stats and seconds."""
    from lm_polygraph.defaults.register_default_stat_calculators import register_default_stat_calculators
    from lm_polygraph.estimators import MaximumSequenceProbability, MeanTokenEntropy, PTrue
    from lm_polygraph.utils.builder_enviroment_stat_calculator import BuilderEnvironmentStatCalculator
    from lm_polygraph.utils.dataset import Dataset
    from lm_polygraph.utils.generation_parameters import GenerationParameters
    from lm_polygraph.utils.manager import UEManager
    from lm_polygraph.utils.model import WhiteboxModel

    wb = WhiteboxModel(model, tokenizer, model_path="SmolLM2-135M-Instruct (embedded)", instruct=True,
                       generation_parameters=GenerationParameters(max_new_tokens=max_new))
    calcs = (register_default_stat_calculators("Whitebox", output_attentions=False, output_hidden_states=False)
             if lean else register_default_stat_calculators("Whitebox"))

    def manager(texts):
        return UEManager(Dataset(texts, [""] * len(texts), batch_size=batch), wb,
                         [MaximumSequenceProbability(), MeanTokenEntropy(), PTrue()],
                         available_stat_calculators=calcs, builder_env_stat_calc=BuilderEnvironmentStatCalculator(wb),
                         generation_metrics=[], ue_metrics=[], processors=[], ignore_exceptions=False,
                         verbose=False, max_new_tokens=max_new,
                         save_stats=["greedy_log_likelihoods", "entropy"])  # kept to compare item by item

    manager(messages[:min(batch, len(messages))])()  # warm-up
    man = manager(messages)
    t0 = time.perf_counter()
    man()
    seconds = time.perf_counter() - t0
    est = man.estimations
    return {
        "texts": list(man.stats["greedy_texts"]),
        "tokens": [list(map(int, t)) for t in man.stats["greedy_tokens"]],
        "ll": [np.asarray(x, dtype=np.float64) for x in man.stats["greedy_log_likelihoods"]],
        "entropy": [np.asarray(x, dtype=np.float64) for x in man.stats["entropy"]],
        "msp": np.asarray(est[("sequence", "MaximumSequenceProbability")], dtype=np.float64),
        "mte": np.asarray(est[("sequence", "MeanTokenEntropy")], dtype=np.float64),
        "ptrue": np.asarray(est[("sequence", "PTrue")], dtype=np.float64),
    }, seconds


def polygraph_ptrue_reference(backend, messages: list[str], answers: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """log p("True") after LM-Polygraph's P(True) prompt (chat-templated as its instruct model does),
    one forward pass of llmcal's model each: as is, and with the end token masked out of the
    softmax, as LM-Polygraph's ``min_new_tokens=1`` generation does before it records scores."""
    import torch

    template = ("Question: {q}\n Possible answer:{a}\n "
                "Is the possible answer:\n (A) True\n (B) False\n The possible answer is:")
    tok = backend.tokenizer
    true_id = [t for t in tok(["True"])["input_ids"][0] if t not in (tok.eos_token_id, tok.bos_token_id)][0]
    plain, masked = [], []
    for m, a in zip(messages, answers):
        text = backend.apply_chat_template(template.format(q=m, a=a))
        ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])  # (1, t)
        with torch.inference_mode():
            logits = backend.model(ids).logits[0, -1].float()  # (vocab,)
            plain.append(torch.log_softmax(logits, -1)[true_id].item())
            logits = logits.index_fill(0, torch.tensor([tok.eos_token_id]), float("-inf"))
            masked.append(torch.log_softmax(logits, -1)[true_id].item())
    return np.array(plain), np.array(masked)


def compare(ours: list[dict], theirs: dict, eos_ids: set[int]) -> dict:
    """Item-by-item agreement on the tokens both generated (see the module docstring)."""
    d_ll = d_ent = d_msp = d_mte = 0.0
    n_same = same_text = 0
    for i, o in enumerate(ours):
        t_tokens, ll, ent = theirs["tokens"][i], theirs["ll"][i], theirs["entropy"][i]
        ended = bool(t_tokens) and t_tokens[-1] in eos_ids
        body = len(t_tokens) - 1 if ended else len(t_tokens)  # LM-Polygraph keeps the end token
        if o["token_ids"] == t_tokens[:body]:
            n_same += 1
            m = len(o["token_logprobs"])
            d_ll = max(d_ll, float(np.abs(np.asarray(o["token_logprobs"]) - ll[:m]).max()))
            d_ent = max(d_ent, float(np.abs(np.asarray(o["entropies"]) - ent[:m]).max()))
            # the same sequence probability once the end token's term is taken out of theirs
            msp_body = -float(ll[:body].sum())
            d_msp = max(d_msp, abs(-math.log(max(o["seq_prob"], 1e-300)) - msp_body))
            d_mte = max(d_mte, abs(float(np.mean(o["entropies"])) - float(np.mean(ent[:body]))))
        same_text += int(o["text"].strip() == str(theirs["texts"][i]).strip())
    return {"n": len(ours), "same_tokens": n_same, "same_text": same_text, "max_d_token_logprob": d_ll,
            "max_d_token_entropy": d_ent, "max_d_msp_answer_tokens": d_msp, "max_d_mean_entropy": d_mte}


def auroc(score, correct) -> float:
    """AUROC of any real-valued score (LM-Polygraph's are unbounded); nan with one class only."""
    from sklearn.metrics import roc_auc_score

    correct = np.asarray(correct, dtype=bool)
    if correct.all() or not correct.any():
        return float("nan")
    return float(roc_auc_score(correct, np.asarray(score, dtype=float)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="builtin_open,nq_open")
    ap.add_argument("--limit", type=int, default=32, help="questions per task")
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--k_samples", type=int, default=5)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("LLMCAL_THREADS", "2")))
    ap.add_argument("--skip", default="", help="comma list of parts to skip: cost, peer, lean, bf16")
    ap.add_argument("--json", default=None, help="write every number here")
    ap.add_argument("--sweep", default="", help="comma list of batch sizes: time both tools at each (llmcal's "
                    "default P(True) and LM-Polygraph's default calculators only) and compare each at its best")
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    os.environ["LLMCAL_THREADS"] = str(args.threads)  # loading an hf backend sets torch's threads from it
    import torch

    torch.set_num_threads(args.threads)
    from llmcal.backends.hf_generation import end_token_ids
    from llmcal.backends.registry import load_backend

    items = load_items(args.tasks, args.data_dir, args.limit)
    print(f"{len(items)} questions ({args.tasks}, {args.limit} each); {args.threads} threads; "
          f"torch {torch.__version__}; load average {_loadavg()}", flush=True)
    backend = load_backend("hf", dtype="float32")
    out: dict = {"n": len(items), "tasks": args.tasks, "threads": args.threads, "loadavg_start": _loadavg(),
                 "matmul": backend.describe().get("matmul")}
    print(f"llmcal fp32 matmul: {out['matmul']}", flush=True)

    if "cost" not in skip:
        rows, total = cost_table(backend, items, args.batch_size, args.k_samples)
        out["cost"] = rows
        print(f"\n## Cost of each signal ({len(items)} questions, {total:.1f} s in all)\n")
        print("| signal | extra forward passes / item | extra generated tokens / item | s / item | "
              "wall time vs greedy |")
        print("|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['signal']} | {r['extra_passes']:.1f} | {r['extra_tokens']:.1f} | {r['seconds']:.3f} | "
                  f"{r['ratio']:.2f}x |")

    if "peer" in skip:
        return _finish(out, args, 0)
    try:
        import lm_polygraph
        from importlib.metadata import version
        pg_version = version("lm-polygraph")
    except ImportError as e:
        print(f"\nLM-Polygraph side by side skipped: lm_polygraph does not import ({e}); "
              "run this script with the venv of benchmarks/setup_polygraph_env.sh", flush=True)
        return _finish(out, args, 0)
    del lm_polygraph

    messages = user_messages(items)
    if args.sweep:
        return _finish(out, args, sweep(backend, messages, items, args, pg_version, out))
    correct_grader = [(it.grader, it.answers, it.incorrect) for it in items]
    paper, t_paper = run_llmcal(backend, messages, args.batch_size, args.max_new_tokens, items, ptrue="paper")
    ours, t_ours = run_llmcal(backend, messages, args.batch_size, args.max_new_tokens, items, ptrue="chat")
    assert [o["text"] for o in ours] == [o["text"] for o in paper]  # the same greedy answers either way
    bf16 = None
    if "bf16" not in skip:  # the same pipeline in bfloat16 (``--model_args dtype=bfloat16``)
        b16 = load_backend("hf", dtype="bfloat16")
        rows16, t16 = run_llmcal(b16, messages, args.batch_size, args.max_new_tokens, items)
        del b16
        bf16 = {"seconds": t16, "same_text": sum(a["text"] == b["text"] for a, b in zip(ours, rows16)),
                "max_d_log_seq_prob": max(abs(math.log(max(a["seq_prob"], 1e-300)) - math.log(max(b["seq_prob"], 1e-300)))
                                          for a, b in zip(ours, rows16) if a["text"] == b["text"]),
                "max_d_ptrue": max(abs(a["ptrue"] - b["ptrue"]) for a, b in zip(ours, rows16) if a["text"] == b["text"]),
                "rows": rows16}
    # the peer runs torch's default fp32 matmul: oneDNN linear layers are llmcal's (backends/fast_linear)
    eager = load_backend("hf", dtype="float32", attn_implementation="eager", matmul="default")
    eager.tokenizer.padding_side = "left"
    eos = set(end_token_ids(backend))
    variants = [("default", False)] + ([] if "lean" in skip else [("lean", True)])
    peer = {}
    for name, lean in variants:
        stats, secs = run_polygraph(eager.model, eager.tokenizer, messages, args.batch_size, args.max_new_tokens, lean)
        peer[name] = (stats, secs)
    stats = peer["default"][0]
    cmp = compare(ours, stats, eos)
    plain, masked = polygraph_ptrue_reference(backend, messages, [str(t) for t in stats["texts"]])
    cmp["max_d_log_p_true"] = float(np.abs(masked - (-stats["ptrue"])).max())
    cmp["max_d_log_p_true_unmasked"] = float(np.abs(plain - (-stats["ptrue"])).max())
    out["compare"] = cmp
    from llmcal.tasks.graders import grade

    correct = np.array([grade(g, o["text"], a, inc) for (g, a, inc), o in zip(correct_grader, ours)], dtype=bool)
    out["accuracy"] = float(correct.mean())
    au = {"llmcal seq_prob": auroc([o["seq_prob"] for o in ours], correct),
          "llmcal entropy_conf": auroc([o["entropy_conf"] for o in ours], correct),
          "llmcal ptrue_chat (the default: True vs False as the next chat turn)": auroc([o["ptrue"] for o in ours],
                                                                                          correct),
          "llmcal ptrue (True vs False, paper's prompt)": auroc([o["ptrue"] for o in paper], correct),
          "LM-Polygraph MSP (negated)": auroc(-stats["msp"], correct),
          "LM-Polygraph MeanTokenEntropy (negated)": auroc(-stats["mte"], correct),
          "LM-Polygraph PTrue (negated)": auroc(-stats["ptrue"], correct)}
    if bf16 is not None:
        c16 = np.array([grade(g, o["text"], a, inc) for (g, a, inc), o in zip(correct_grader, bf16["rows"])], dtype=bool)
        au["llmcal bf16 seq_prob"] = auroc([o["seq_prob"] for o in bf16["rows"]], c16)
        au["llmcal bf16 ptrue"] = auroc([o["ptrue"] for o in bf16["rows"]], c16)
        bf16["accuracy"] = float(c16.mean())
        out["bf16"] = {k: v for k, v in bf16.items() if k != "rows"}
    out["auroc"] = au
    out["throughput"] = {"llmcal": len(items) / t_ours, **{f"LM-Polygraph {pg_version} {k}": len(items) / v[1]
                                                           for k, v in peer.items()}}
    print(f"\n## Side by side with LM-Polygraph {pg_version} ({len(items)} questions, greedy, "
          f"<= {args.max_new_tokens} tokens, batch {args.batch_size}, fp32)\n")
    print(f"same answer tokens: {cmp['same_tokens']}/{cmp['n']}; same text: {cmp['same_text']}/{cmp['n']}")
    print("| quantity (on the same tokens) | max abs difference | tolerance |")
    print("|---|---:|---:|")
    ok = True
    for key, tol in (("max_d_token_logprob", TOL_LOGPROB), ("max_d_msp_answer_tokens", TOL_LOGPROB * args.max_new_tokens),
                     ("max_d_token_entropy", TOL_ENTROPY), ("max_d_mean_entropy", TOL_ENTROPY),
                     ("max_d_log_p_true", TOL_LOGPROB)):
        good = cmp[key] <= tol
        ok &= good
        print(f"| {key} | {cmp[key]:.2e} | {tol:.0e} {'ok' if good else 'EXCEEDED'} |")
    print(f"(log p(True) without masking the end token: max difference {cmp['max_d_log_p_true_unmasked']:.2e}, "
          "LM-Polygraph's min_new_tokens=1 takes the end token out of its softmax)")
    print(f"\naccuracy {out['accuracy']:.3f}; AUROC on these questions:")
    for k, v in au.items():
        print(f"  {k}: {v:.3f}")
    print("\n| tool | seconds | items / s | llmcal's throughput ratio |")
    print("|---|---:|---:|---:|")
    base = peer["default"][1]
    print(f"| llmcal fp32 (generate + token signals + P(True) in the chat, the default) | {t_ours:.1f} | "
          f"{len(items) / t_ours:.2f} | **{base / t_ours:.2f}x** |")
    print(f"| llmcal fp32 (generate + token signals + the paper's P(True) prompt, `--signals ptrue`) | "
          f"{t_paper:.1f} | {len(items) / t_paper:.2f} | **{base / t_paper:.2f}x** |")
    if bf16 is not None:
        print(f"| llmcal bf16 (the same) | {bf16['seconds']:.1f} | {len(items) / bf16['seconds']:.2f} | "
              f"**{base / bf16['seconds']:.2f}x** |")
    for k, (_, secs) in peer.items():
        print(f"| LM-Polygraph {pg_version} fp32, {k} (MSP + MeanTokenEntropy + PTrue) | {secs:.1f} | "
              f"{len(items) / secs:.2f} | {base / secs:.2f}x |")
    print("(ratio: LM-Polygraph default's seconds / the row's seconds)")
    if bf16 is not None:
        print(f"bf16 against fp32 (llmcal): same answers {bf16['same_text']}/{len(items)}, accuracy "
              f"{bf16['accuracy']:.3f} vs {out['accuracy']:.3f}; on the same answers max |d log seq prob| "
              f"{bf16['max_d_log_seq_prob']:.3f}, max |d P(True)| {bf16['max_d_ptrue']:.3f}")
    out["ratio"] = {"fp32": base / t_ours, "fp32 paper ptrue": base / t_paper, **({"bf16": base / bf16["seconds"]} if bf16 else {}),
                    **{f"peer {k}": base / v[1] for k, v in peer.items()}}
    if cmp["same_tokens"] < cmp["n"] * 0.9:
        ok = False
        print("fewer than 90% of the answers are token-identical")
    return _finish(out, args, 0 if ok else 1)


def sweep(backend, messages: list[str], items, args, pg_version: str, out: dict) -> int:
    """Both tools at each batch size of ``--sweep``, interleaved (llmcal, then the peer, a size at a time).

    A user runs each tool at the batch size that suits it: LM-Polygraph decodes a static batch
    until its longest answer ends (its padded rows keep computing), llmcal drops finished rows and
    admits waiting ones.  The table gives both at every size and the ratio of each tool's best.
    Exits 1 when an llmcal run's answers differ from the peer's at the same size on more than 10%.
    """
    from llmcal.backends.hf_generation import end_token_ids
    from llmcal.backends.registry import load_backend

    sizes = [int(x) for x in args.sweep.split(",") if x.strip()]
    eager = load_backend("hf", dtype="float32", attn_implementation="eager", matmul="default")
    eager.tokenizer.padding_side = "left"
    eos = set(end_token_ids(backend))
    rows, ok = [], True
    for b in sizes:
        ours, t_ours = run_llmcal(backend, messages, b, args.max_new_tokens, items, ptrue="chat")
        stats, t_peer = run_polygraph(eager.model, eager.tokenizer, messages, b, args.max_new_tokens, False)
        same = compare(ours, stats, eos)["same_tokens"]
        ok &= same >= 0.9 * len(items)
        rows.append({"batch": b, "llmcal_s": t_ours, "peer_s": t_peer, "same_tokens": same, "load": _loadavg()})
        print(f"batch {b}: llmcal {t_ours:.1f} s, LM-Polygraph {t_peer:.1f} s, same answer tokens {same}/{len(items)}, "
              f"load {rows[-1]['load']}", flush=True)
    print(f"\n## Each tool at each batch size ({len(items)} questions, greedy, <= {args.max_new_tokens} tokens, fp32, "
          f"LM-Polygraph {pg_version} default calculators, llmcal's default P(True) in the chat)\n")
    print("| batch (both) | llmcal s | LM-Polygraph s | ratio at this size | same answer tokens | load |")
    print("|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['llmcal_s']:.1f} | {r['peer_s']:.1f} | {r['peer_s'] / r['llmcal_s']:.2f}x | "
              f"{r['same_tokens']}/{len(items)} | {r['load']} |")
    best_ours = min(rows, key=lambda r: r["llmcal_s"])
    best_peer = min(rows, key=lambda r: r["peer_s"])
    ratio = best_peer["peer_s"] / best_ours["llmcal_s"]
    print(f"\neach at its best: llmcal {best_ours['llmcal_s']:.1f} s (batch {best_ours['batch']}) against "
          f"LM-Polygraph {best_peer['peer_s']:.1f} s (batch {best_peer['batch']}): **{ratio:.2f}x**")
    out["sweep"] = {"rows": rows, "best_vs_best": ratio}
    return 0 if ok else 1


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _finish(out: dict, args, code: int) -> int:
    out["loadavg_end"] = _loadavg()
    print(f"load average at the end: {out['loadavg_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))
    return code


if __name__ == "__main__":
    sys.exit(main())
