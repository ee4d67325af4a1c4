"""Every free-form estimator on the same generations: AUROC, PRR and ECE after calibration, and cost.

Two steps, so the expensive one runs once and every estimator is computed from what it stored:

    # 1. generate (resumable): greedy answer + k samples with token log-probs and top-5 alternatives,
    #    the token texts, the PMI pass (the answer scored after the prompt without its question) and,
    #    for conditional PMI, the answer's own token ids scored one by one after that bare prompt
    LLMCAL_THREADS=1 OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/estimators.py generate \\
        --task builtin_open --limit 200 --out /tmp/E/gens
    # 2. compute every estimator, calibrate on the calibration part, report on the test part
    .venv/bin/python benchmarks/estimators.py table --dir /tmp/E/gens [--limit N] [--only TASK ...]
    # 3. LM-Polygraph 0.7's estimator classes on the same stored inputs (values and throughput)
    PYTHONPATH=src .bench-venv-polygraph/bin/python benchmarks/estimators.py polygraph --dir /tmp/E/gens

Step 2 computes each estimator with ``llmcal.signals.*`` (embeddings from the run's embedder),
splits each task with ``core.split`` (cal_fraction 0.5), fits Platt on the calibration part,
and prints AUROC, PRR (prediction-rejection ratio, LM-Polygraph's headline metric) and ECE on
the test part, each with a 95% bootstrap interval, and the extra model calls and wall time
against greedy (``--only``: compute and cache some tasks only, to split the work into short runs).
``polygraph`` (run under ``.bench-venv-polygraph``) recomputes the estimators both tools have
with LM-Polygraph 0.7's estimator classes on the same stored statistics (CCP on llmcal's
alternatives and judgments, PMI and CPMI on its per-token values, semantic density on its
similarity matrices, TokenSAR / SAR on its token relevances re-embedded for ``--sar_limit`` items)
and prints the largest difference and both sides' throughput; where a convention differs, a
second row with it aligned.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np


def _generate(args: argparse.Namespace) -> int:
    from llmcal.backends.registry import load_backend
    from llmcal.core.requests import MCRequest
    from llmcal.pipeline.measure_open import answer_prompt, chat_prompt
    from llmcal.tasks.prompts import user_message
    from llmcal.tasks.graders import grade
    from llmcal.tasks.registry import load_task

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.task}.jsonl"
    done = set()
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                done.add(json.loads(line)["id"])
            except (ValueError, KeyError):
                pass
    items = [it for it in load_task(args.task, data_dir=args.data_dir, limit=args.limit) if it.id not in done]
    if not items:
        return 0
    backend = load_backend("hf")
    tok = backend.tokenizer
    with path.open("a") as f:
        for start in range(0, len(items), args.batch):
            batch = items[start: start + args.batch]
            numeric = [it.grader == "numeric" for it in batch]
            prompts = [answer_prompt(backend, it, True) for it in batch]
            stop = () if any(numeric) else ("\n",)
            max_new = 192 if any(numeric) else 32
            t0 = time.perf_counter()
            greedy = backend.generate(prompts, max_new_tokens=max_new, temperature=0.0, stop=stop)
            t_greedy = (time.perf_counter() - t0) / len(batch)
            t0 = time.perf_counter()
            sampled = backend.generate(prompts, max_new_tokens=max_new, temperature=args.temperature,
                                       n=args.k, seed=args.seed + start, stop=stop)
            t_samples = (time.perf_counter() - t0) / len(batch)
            # PMI: the same answer after the prompt with the question removed (one scoring pass)
            bare = [chat_prompt(backend, [{"role": "user", "content": user_message(it).replace(it.question.strip(), "")}],
                                True) for it in batch]
            t0 = time.perf_counter()
            reqs = []
            for p, b, g in zip(prompts, bare, greedy):
                text = g[0].text or " "
                reqs += [MCRequest(p, (text,)), MCRequest(b, (text,))]
            scores = backend.score_mc(reqs)
            t_pmi = (time.perf_counter() - t0) / len(batch)
            # conditional PMI: the greedy answer's own token ids scored after the bare prompt, per token
            t0 = time.perf_counter()
            bare_lps = [backend.score_tokens(b, g[0].token_ids) if g[0].token_ids else [] for b, g in zip(bare, greedy)]
            t_cpmi = (time.perf_counter() - t0) / len(batch)
            for i, it in enumerate(batch):
                g = greedy[i][0]
                f.write(json.dumps({
                    "id": it.id, "task": it.task, "question": it.question, "answers": list(it.answers),
                    "correct": bool(grade(it.grader, g.text, it.answers, it.incorrect)),
                    "greedy": g.to_dict(), "token_texts": [tok.decode([t]) for t in g.token_ids],
                    "samples": [s.to_dict() for s in sampled[i]],
                    "pmi_cond": float(scores[2 * i].logprobs[0]), "pmi_uncond": float(scores[2 * i + 1].logprobs[0]),
                    "pmi_ntokens": int(scores[2 * i].n_tokens[0]),  # the scored text's tokens, as the run divides by
                    "bare_token_logprobs": [float(x) for x in bare_lps[i]],
                    "bare_prompt": bare[i], "seconds": {"greedy": t_greedy, "samples": t_samples, "pmi": t_pmi,
                                                        "cpmi": t_cpmi},
                }) + "\n")
            f.flush()
            print(f"{args.task}: {start + len(batch)}/{len(items)}", flush=True)
    return 0


# ------------------------------------------------------------------ step 2: every estimator, calibrated

BASELINES = ("seq_prob", "mean_token_prob", "min_token_prob", "entropy_conf", "agreement", "semantic_entropy")
FAMILY_OF = {"pmi": "pmi", "token_sar": "sar", "sar": "sar"}  # the rest: "sampled"; baselines: tokens/agreement


def prr(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Prediction-rejection ratio (Malinin et al. 2017; LM-Polygraph's headline metric): the area between
    the random and the confidence-ordered rejection curves of mean correctness of the kept answers, over
    the same area for the oracle order.  1 = oracle, 0 = random, < 0 worse than random."""
    c = np.asarray(correct, dtype=np.float64)
    n = len(c)

    def area(order: np.ndarray) -> float:
        kept = np.cumsum(c[order])[::-1] / np.arange(n, 0, -1)  # mean correctness keeping the top n - r
        return float(np.mean(kept))

    rand = float(c.mean())
    oracle = area(np.argsort(-c, kind="stable"))
    if oracle - rand <= 1e-12:
        return float("nan")
    return (area(np.argsort(-np.asarray(confidence), kind="stable")) - rand) / (oracle - rand)


def _signals_of_task(rows: list[dict], embedder, tok, dump: list | None = None
                     ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every estimator's stored value per item (NaN = missing) and the seconds each family took here."""
    from llmcal.core.requests import Generation
    from llmcal.signals.agreement import cluster_agreement, cluster_answers, semantic_entropy_conf
    from llmcal.signals.generation import token_signals
    from llmcal.signals.ccp import alternatives_of, ccp_signal, lexical_judge
    from llmcal.signals.pmi import cpmi_signal, pmi_signal
    from llmcal.signals.sampled import sampled_signals, sar_for_answer
    from llmcal.signals.sar import token_texts
    from llmcal.signals.similarity import from_embeddings

    out: dict[str, list[float]] = {}
    secs = {"embed": 0.0, "sampled": 0.0, "sar": 0.0, "ccp": 0.0, "cpmi_formula": 0.0}
    for k, r in enumerate(rows):
        g = Generation.from_dict(r["greedy"])
        samples = [Generation.from_dict(x) for x in r["samples"]]
        texts = [g.text] + [x.text for x in samples]
        t0 = time.perf_counter()
        emb = embedder.encode([t or "(no answer)" for t in texts])
        secs["embed"] += time.perf_counter() - t0
        vals = dict(token_signals(g, 49152))
        ids = cluster_answers(texts, emb)
        vals["agreement"], vals["semantic_entropy"] = cluster_agreement(ids), semantic_entropy_conf(ids)
        t0 = time.perf_counter()
        vals.update(sampled_signals(g.token_logprobs, texts[1:], [x.token_logprobs for x in samples],
                                    from_embeddings(emb), emb))
        secs["sampled"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        vals.update(sar_for_answer(g, samples, embedder.encode, lambda x: [tok.decode([t]) for t in x.token_ids]
                                   if len(x.token_ids) == len(x.token_logprobs) else None))
        secs["sar"] += time.perf_counter() - t0
        # the run's pmi divides the scored sums by the scored text's token count; generations stored before
        # that count was kept fall back to the generated one (they differ where the text re-tokenizes, ~2%)
        n_tok = int(r.get("pmi_ntokens") or max(len(g.token_ids), 1))
        vals.update(pmi_signal(r["pmi_cond"], r["pmi_uncond"], n_tok))
        t0 = time.perf_counter()
        if "bare_token_logprobs" in r:  # generations stored before CPMI lack it
            vals.update(cpmi_signal(g.token_logprobs, r["bare_token_logprobs"], g.entropies))
        secs["cpmi_formula"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        g_texts = token_texts(g.token_logprobs, g.top_logprobs)  # the chosen tokens' texts, as in the top-k
        if g_texts is not None:
            vals["ccp"] = ccp_signal(g_texts, g.token_logprobs, g.top_logprobs)["ccp"]
        secs["ccp"] += time.perf_counter() - t0
        for name, v in vals.items():
            out.setdefault(name, [np.nan] * len(rows))[k] = v
        if dump is not None:  # the inputs, for the side-by-side with LM-Polygraph's estimator classes
            sims = from_embeddings(emb)
            dump.append({"sample_texts": texts[1:], "sample_lps": [x.token_logprobs for x in samples],
                         "greedy_lps": g.token_logprobs, "entail": sims.entail, "contra": sims.contra,
                         "emb": np.asarray(emb), "vals": vals,
                         "greedy_entropies": g.entropies, "bare_lps": r.get("bare_token_logprobs"),
                         "ccp_alts": None if g_texts is None else [
                             alternatives_of(w, lp, top) for w, lp, top in zip(g_texts, g.token_logprobs,
                                                                               g.top_logprobs)],
                         "ccp_labels": None if g_texts is None else [
                             lexical_judge("", w, [a for a, _ in alternatives_of(w, lp, top)[1:]])
                             for w, lp, top in zip(g_texts, g.token_logprobs, g.top_logprobs)]})
    return {n: np.array(v, dtype=np.float64) for n, v in out.items()}, secs


def _metrics(conf, correct, cal, test, n_boot: int, seed: int) -> dict:
    """AUROC and PRR of the stored value on the test part (rank metrics: no calibration needed) and
    ECE after Platt fitted on the calibration part (or why Platt refused), with bootstrap intervals."""
    from llmcal import metrics as M
    from llmcal.calibrators.platt import PlattScaling

    have = ~np.isnan(conf)
    c_idx, t_idx = cal[have[cal]], test[have[test]]
    y = correct[t_idx]
    out: dict = {"n_test": int(len(t_idx))}
    if y.all() or not y.any():
        out["error"] = f"the {len(t_idx)} test answers are all {'right' if y.all() else 'wrong'}"
        return out
    try:
        cal_conf = PlattScaling().fit(conf[c_idx], correct[c_idx]).predict(conf[t_idx])
    except ValueError as err:
        cal_conf = None
        out["calibration_error"] = str(err).split(";")[0].split(" on these")[0]
    point = {"auroc": M.auroc(conf[t_idx], y), "prr": prr(conf[t_idx], y)}
    if cal_conf is not None:
        point["ece"] = M.ece(cal_conf, y)
    rng = np.random.default_rng(seed)
    boot: dict = {k: [] for k in point}
    for _ in range(n_boot):
        b = rng.integers(0, len(t_idx), len(t_idx))
        if y[b].all() or not y[b].any():
            continue
        boot["auroc"].append(M.auroc(conf[t_idx][b], y[b]))
        boot["prr"].append(prr(conf[t_idx][b], y[b]))
        if cal_conf is not None:
            boot["ece"].append(M.ece(cal_conf[b], y[b]))
    out.update({k: [float(point[k]), float(np.nanpercentile(boot[k], 2.5)), float(np.nanpercentile(boot[k], 97.5))]
                for k in point})
    return out


def _task_signals(path: Path, rows: list[dict], embedder, tok, cache_dir: Path):
    """The estimators of one task's stored generations, cached beside the table's JSON (keyed by n)."""
    cache = cache_dir / f"{path.stem}.signals.pkl"
    if cache.exists():
        got = pickle.load(open(cache, "rb"))
        if got["n"] == len(rows):
            return got["conf"], got["secs"]
    dump: list = []
    conf, secs = _signals_of_task(rows, embedder, tok, dump)
    with open(cache_dir / f"{path.stem}.pkl", "wb") as f:
        pickle.dump(dump, f)
    with open(cache, "wb") as f:
        pickle.dump({"n": len(rows), "conf": conf, "secs": secs}, f)
    return conf, secs


def _section(conf: dict, correct, tasks, rows, secs: dict, args) -> dict:
    """One table (a task, or all pooled): every estimator + the tuned ensemble on the test part."""
    from llmcal.core.split import split_indices
    from llmcal.probe.ensemble import TunedEnsemble

    cal, test = split_indices(list(tasks), 0.5, args.seed)
    names = list(conf)
    x = np.stack([conf[n] for n in names], axis=1)
    conf = dict(conf)
    try:
        ens = TunedEnsemble(names).fit(x[cal], correct[cal])
        conf["tuned_ensemble"] = ens.confidence(x)
        ens_w = {k: round(v, 3) for k, v in ens.weights().items() if v > 0.01}
    except ValueError as err:
        ens_w = {"error": str(err)[:200]}
    seconds = {k: float(np.mean([r["seconds"].get(k, np.nan) for r in rows])) for k in ("greedy", "samples", "pmi", "cpmi")}
    per = {k: v / len(rows) for k, v in secs.items()}
    return {"n": len(rows), "accuracy": float(np.mean(correct)), "seconds_per_item": {**seconds, **per},
            "ensemble_weights": ens_w,
            "signals": {n: _metrics(conf[n], correct, cal, test, args.bootstrap, args.seed) for n in conf}}


def _table(args: argparse.Namespace) -> int:
    import warnings

    from transformers import AutoTokenizer

    from llmcal.backends.embedder import Embedder
    from llmcal.backends.model_args import EMBEDDED_GGUF, embedded_model_dir

    warnings.simplefilter("ignore")
    embedder = Embedder()
    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir()), gguf_file=EMBEDDED_GGUF)
    report: dict = {"tasks": {}}
    pooled: dict = {"conf": {}, "correct": [], "tasks": [], "rows": [], "secs": {}}
    for path in sorted(Path(args.dir).glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if args.limit:
            rows = rows[: args.limit]
        task = path.stem
        if args.only and task not in args.only:
            continue
        correct = np.array([r["correct"] for r in rows])
        conf, secs = _task_signals(path, rows, embedder, tok, Path(args.json).parent)
        report["tasks"][task] = _section(conf, correct, [task] * len(rows), rows, secs, args)
        for n, v in conf.items():
            pooled["conf"].setdefault(n, []).append(v)
        pooled["correct"].append(correct)
        pooled["tasks"] += [task] * len(rows)
        pooled["rows"] += rows
        for k, v in secs.items():
            pooled["secs"][k] = pooled["secs"].get(k, 0.0) + v
        print(f"{task}: n={len(rows)} accuracy={correct.mean():.3f}", flush=True)
    if len(report["tasks"]) > 1:
        common = [n for n, v in pooled["conf"].items() if len(v) == len(report["tasks"])]
        report["tasks"]["pooled"] = _section({n: np.concatenate(pooled["conf"][n]) for n in common},
                                             np.concatenate(pooled["correct"]), pooled["tasks"], pooled["rows"],
                                             pooled["secs"], args)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(markdown(report))
    return 0


def _cost(name: str, sec: dict) -> tuple[str, float]:
    """Extra model calls and wall time over greedy of one estimator (from the stored timings)."""
    g = sec["greedy"]
    if name in ("seq_prob", "mean_token_prob", "min_token_prob", "entropy_conf", "first_token_margin"):
        return "none", 0.0
    if name == "pmi":
        return "1 scoring pass (2 sequences)", sec["pmi"] / g
    if name == "cpmi":
        return "1 scoring pass (the answer's tokens after the bare prompt)", (sec.get("cpmi", float("nan"))
                                                                              + sec.get("cpmi_formula", 0.0)) / g
    if name == "ccp":
        return "none (lexical judge; NLI pairs per token with --nli_model)", sec.get("ccp", 0.0) / g
    if name in ("token_sar", "sar"):
        return "k samples + embeddings per token", (sec["samples"] + sec["embed"] + sec["sar"]) / g
    return "k samples + embeddings", (sec["samples"] + sec["embed"] + sec["sampled"]) / g


def markdown(report: dict) -> str:
    lines = []
    for task, t in report["tasks"].items():
        lines += [f"\n**{task}** (n = {t['n']}, accuracy {t['accuracy']:.3f}; greedy "
                  f"{t['seconds_per_item']['greedy']:.2f} s/item)\n",
                  "| estimator | AUROC [95% CI] | PRR [95% CI] | ECE calibrated [95% CI] | extra model calls | time / greedy |",
                  "|---|---|---|---|---|---|"]
        for name, m in t["signals"].items():
            calls, ratio = _cost(name, t["seconds_per_item"]) if name != "tuned_ensemble" else ("all of the above", float("nan"))
            cost = f"{ratio:.1f}x" if ratio == ratio else "-"
            if "error" in m:
                lines.append(f"| {name} | {m['error']} | | | {calls} | {cost} |")
                continue
            fmt = lambda v: f"{v[0]:.3f} [{v[1]:.2f}, {v[2]:.2f}]"  # noqa: E731
            ece = fmt(m["ece"]) if "ece" in m else f"not calibrated: {m.get('calibration_error', '')}"
            lines.append(f"| {name} | {fmt(m['auroc'])} | {fmt(m['prr'])} | {ece} | {calls} | {cost} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ step 3: LM-Polygraph 0.7 side by side

def _polygraph(args: argparse.Namespace) -> int:
    """Each estimator both tools have, computed by LM-Polygraph 0.7's class on the inputs llmcal used
    (same samples, same log-probabilities, same similarity matrices and embeddings), against
    llmcal's raw value (its stored value decoded).  Prints the largest difference per estimator."""
    from lm_polygraph import estimators as E

    from llmcal.signals import eigenscore as ES
    from llmcal.signals import graph as G
    from llmcal.signals import kle as KL
    from llmcal.signals import sequence_entropy as SE
    from llmcal.signals.cocoa import cocoa
    from llmcal.signals.lexical import bleu, mean_pairwise, rouge_l

    items = []
    for p in sorted(Path(args.dir).glob("*.pkl")):
        if not p.name.endswith(".signals.pkl"):  # the table's cache of stored values, not inputs
            dump = pickle.load(open(p, "rb"))
            rows = [json.loads(x) for x in (p.with_suffix(".jsonl")).read_text().splitlines() if x.strip()]
            for d, r in zip(dump, rows):  # the dump holds the task's first rows, in order
                if d["sample_texts"] != [x["text"] for x in r["samples"]]:
                    raise SystemExit(f"{p}: the dump does not match {p.with_suffix('.jsonl')} (rerun `table`)")
                d["row"] = r
            items += dump
    items = [d for d in items if len(d["sample_texts"]) >= 2][: args.limit or None]
    stats = {
        "sample_texts": [d["sample_texts"] for d in items],
        "sample_log_probs": [[float(np.sum(lp)) for lp in d["sample_lps"]] for d in items],
        "sample_tokens": [[list(range(len(lp))) for lp in d["sample_lps"]] for d in items],
        "semantic_matrix_entail": np.stack([d["entail"][1:, 1:] for d in items]),
        "semantic_matrix_contra": np.stack([d["contra"][1:, 1:] for d in items]),
        "sample_embeddings": [d["emb"][1:] for d in items],
        "greedy_log_likelihoods": [d["greedy_lps"] for d in items],
        "greedy_sentence_similarity": [d["entail"][0, 1:] for d in items],
    }
    from llmcal.signals.ccp import token_ccp
    from llmcal.signals.pmi import cpmi

    # CCP: the same alternatives (the chosen token first) and the same judgments llmcal used (its lexical
    # judge; an NLI judge's labels would be fed the same way), as LM-Polygraph's label matrices
    def _nli_matrix(labels: list[str]) -> list[list[str]]:
        m = [["" for _ in range(len(labels) + 1)] for _ in range(len(labels) + 1)]
        m[0][0] = "entail"
        for i, lab in enumerate(labels, start=1):
            m[0][i] = m[i][0] = lab
        return m

    has_ccp = [d.get("ccp_alts") is not None for d in items]
    stats["greedy_tokens"] = [list(range(len(d["ccp_alts"]))) if h else [0] for d, h in zip(items, has_ccp)]
    stats["greedy_tokens_alternatives"] = [d["ccp_alts"] if h else [[("x", 0.0)]] for d, h in zip(items, has_ccp)]
    stats["greedy_tokens_alternatives_nli"] = [[_nli_matrix(lab) for lab in d["ccp_labels"]] if h else [[["entail"]]]
                                               for d, h in zip(items, has_ccp)]
    has_cpmi = [d.get("bare_lps") is not None for d in items]
    stats["greedy_lm_log_likelihoods"] = [(list(d["bare_lps"]) or [0.0]) if h else [0.0] * len(d["greedy_lps"])
                                          for d, h in zip(items, has_cpmi)]
    stats["entropy"] = [d["greedy_entropies"] for d in items]
    nan = float("nan")
    ours = {  # each llmcal's raw score in LM-Polygraph's sign (uncertainty: higher = less sure)
        "MonteCarloSequenceEntropy": lambda: [SE.mc_entropies(d["sample_lps"])["mc_sequence_entropy"] for d in items],
        "MonteCarloNormalizedSequenceEntropy": lambda: [SE.mc_entropies(d["sample_lps"])["mc_normalized_entropy"]
                                                        for d in items],
        "LexicalSimilarity_rougeL": lambda: [-mean_pairwise(d["sample_texts"], rouge_l) for d in items],
        "LexicalSimilarity_BLEU": lambda: [-mean_pairwise(d["sample_texts"], bleu) for d in items],
        "EigValLaplacian": lambda: [G.eigval_laplacian((d["entail"][1:, 1:] + d["entail"][1:, 1:].T) / 2)
                                    for d in items],
        "DegMat": lambda: [G.degree_matrix(d["entail"][1:, 1:]) for d in items],
        "Eccentricity": lambda: [G.eccentricity(d["entail"][1:, 1:]) for d in items],
        "NumSemSets": lambda: [G.num_semantic_sets(d["entail"][1:, 1:], d["contra"][1:, 1:]) for d in items],
        "KernelLanguageEntropy": lambda: [KL.von_neumann_entropy(KL.heat_kernel(KL.kle_weights(
            d["entail"][1:, 1:], d["contra"][1:, 1:]))) for d in items],
        "EigenScore": lambda: [ES.eigenscore(d["emb"][1:]) for d in items],
        "CocoaMSP": lambda: [cocoa(d["greedy_lps"], d["entail"][0, 1:])["cocoa_msp"] for d in items],
        "CocoaPPL": lambda: [cocoa(d["greedy_lps"], d["entail"][0, 1:])["cocoa_ppl"] for d in items],
        # LM-Polygraph 0.7 symmetrizes W by E + E^T (twice llmcal's average): its t = 0.3 is llmcal's t = 0.6
        "KernelLanguageEntropy_t0.6": lambda: [KL.von_neumann_entropy(KL.heat_kernel(KL.kle_weights(
            d["entail"][1:, 1:], d["contra"][1:, 1:]), 2 * KL.T_HEAT)) for d in items],
        "ClaimConditionedProbability": lambda: [
            -float(np.prod([token_ccp([lp for _, lp in alts], lab) for alts, lab in zip(d["ccp_alts"], d["ccp_labels"])]))
            if h else nan for d, h in zip(items, has_ccp)],
        "MeanConditionalPointwiseMutualInformation": lambda: [
            -cpmi(d["greedy_lps"], d["bare_lps"], d["greedy_entropies"]) if h else nan
            for d, h in zip(items, has_cpmi)],
    }
    theirs = {
        "MonteCarloSequenceEntropy": E.MonteCarloSequenceEntropy(),
        "MonteCarloNormalizedSequenceEntropy": E.MonteCarloNormalizedSequenceEntropy(),
        "LexicalSimilarity_rougeL": E.LexicalSimilarity("rougeL"), "LexicalSimilarity_BLEU": E.LexicalSimilarity("BLEU"),
        "EigValLaplacian": E.EigValLaplacian(), "DegMat": E.DegMat(), "Eccentricity": E.Eccentricity(),
        "NumSemSets": E.NumSemSets(), "KernelLanguageEntropy": E.KernelLanguageEntropy(),
        "EigenScore": E.EigenScore(), "CocoaMSP": E.CocoaMSP(), "CocoaPPL": E.CocoaPPL(),
        "ClaimConditionedProbability": E.ClaimConditionedProbability(),
        "MeanConditionalPointwiseMutualInformation": E.MeanConditionalPointwiseMutualInformation(),
    }
    theirs["KernelLanguageEntropy_t0.6"] = theirs["KernelLanguageEntropy"]
    # LM-Polygraph's ROUGE-L stems (Porter); the same rouge_score package without the stemmer is llmcal's
    from rouge_score import rouge_scorer

    plain = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

    class _NoStem:
        def __call__(self, st):
            return [-mean_pairwise(t, lambda a, b: plain.score(a, b)["rougeL"].fmeasure) for t in st["sample_texts"]]

    ours["rouge_score_rougeL_without_stemmer"] = ours["LexicalSimilarity_rougeL"]
    theirs["rouge_score_rougeL_without_stemmer"] = _NoStem()
    _more_comparisons(items, stats, ours, theirs, args)
    print(f"{len(items)} items; max |llmcal - LM-Polygraph 0.7| per estimator (same inputs); "
          "throughput of each side's estimator code alone on those inputs (items/s)")
    worst, speed = {}, {}
    for name, est in theirs.items():
        t0 = time.perf_counter()
        mine = np.asarray(ours[name](), dtype=np.float64)
        t_ours = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            ref = np.asarray(est(stats), dtype=np.float64)
            t_theirs = time.perf_counter() - t0
        except Exception as err:  # noqa: BLE001 - report, do not stop the comparison
            print(f"  {name:<42} LM-Polygraph failed: {type(err).__name__}: {err}")
            continue
        diff = np.abs(ref - mine)
        worst[name] = float(np.nanmax(diff))
        speed[name] = {"llmcal_items_per_s": len(items) / max(t_ours, 1e-9),
                       "polygraph_items_per_s": len(items) / max(t_theirs, 1e-9)}
        print(f"  {name:<42} max diff {worst[name]:.2e}  (items compared {int((~np.isnan(diff)).sum())}, "
              f"differing > 1e-6: {int((diff > 1e-6).sum())})  items/s llmcal {speed[name]['llmcal_items_per_s']:.0f}"
              f" / LM-Polygraph {speed[name]['polygraph_items_per_s']:.0f}")
    Path(args.json).write_text(json.dumps({"n": len(items), "max_abs_diff": worst, "items_per_s": speed}, indent=1))
    return 0


class _Fed:
    """An LM-Polygraph estimator called with some statistics replaced, its answer optionally
    scattered into a NaN array of ``n`` (for comparisons made on a subset of the items)."""

    def __init__(self, est, n: int | None = None, at=None, **stats) -> None:
        self.est, self.n, self.at, self.stats = est, n, at, stats

    def __call__(self, st):
        got = np.asarray(self.est({**st, **self.stats}), dtype=np.float64)
        if self.n is None:
            return got
        out = np.full(self.n, np.nan)
        out[self.at] = got
        return out


def _more_comparisons(items: list[dict], stats: dict, ours: dict, theirs: dict, args: argparse.Namespace) -> None:
    """PMI, semantic density, TokenSAR and SAR (added to ``ours`` / ``theirs``), each also with the
    one convention that differs aligned, to show the rest of the formula agrees."""
    from lm_polygraph import estimators as E

    from llmcal.signals import sar as SAR
    from llmcal.signals.kle import kle_weights
    from llmcal.signals.pmi import pmi
    from llmcal.signals.semantic_density import semantic_density

    nan, n = float("nan"), len(items)
    # PMI: llmcal's stored pmi is (log p(answer | prompt) - log p(answer | bare prompt)) / n from the PMI
    # scoring pass; LM-Polygraph's MeanPointwiseMutualInformation is mean_t(lp_t - [t > 0] lm_lp_t):
    # it leaves out step 0's unconditional term.  Fed the per-token bare log-probs (the same bare prompt)
    has = [d.get("bare_lps") is not None for d in items]
    ours["MeanPointwiseMutualInformation"] = lambda: [
        -pmi(d["row"]["pmi_cond"], d["row"]["pmi_uncond"], max(len(d["row"]["greedy"]["token_ids"]), 1))
        for d in items]
    ours["MeanPointwiseMutualInformation_per_token_sums"] = lambda: [  # the same formula on the per-token values
        -pmi(np.sum(d["greedy_lps"]), np.sum(d["bare_lps"]), len(d["greedy_lps"])) if h else nan
        for d, h in zip(items, has)]
    ours["MeanPointwiseMutualInformation_without_step0_term"] = lambda: [
        -pmi(np.sum(d["greedy_lps"]), np.sum(d["bare_lps"][1:]), len(d["greedy_lps"])) if h else nan
        for d, h in zip(items, has)]
    for k in ("", "_per_token_sums", "_without_step0_term"):
        theirs["MeanPointwiseMutualInformation" + k] = E.MeanPointwiseMutualInformation()

    # semantic density: llmcal's kernel averages both directions and the greedy answer is not one of the
    # samples; LM-Polygraph's uses the answer -> sample direction and adds the greedy answer itself (kernel 1,
    # its own length-normalized probability) to both sums
    def _kern(d, sym: bool):
        w = kle_weights(d["entail"], d["contra"])
        return (w[0, 1:] + w[1:, 0]) / 2.0 if sym else w[0, 1:]

    def _neutral(d):
        return np.clip(1.0 - d["entail"] - d["contra"], 0.0, 1.0)

    def _sd_with_greedy(d):
        keep = [i for i, t in enumerate(d["sample_texts"]) if t not in d["sample_texts"][:i]]
        kern = _kern(d, True)
        return semantic_density([kern[i] for i in keep] + [1.0], [d["sample_lps"][i] for i in keep] + [d["greedy_lps"]])

    ours["SemanticDensity"] = lambda: [-semantic_density(_kern(d, True), d["sample_lps"], d["sample_texts"])
                                       for d in items]
    theirs["SemanticDensity"] = _Fed(
        E.SemanticDensity(), concat_greedy_semantic_matrix_contra_forward=[d["contra"][0, 1:] for d in items],
        concat_greedy_semantic_matrix_neutral_forward=[_neutral(d)[0, 1:] for d in items])
    ours["SemanticDensity_greedy_counted_both_directions"] = lambda: [-_sd_with_greedy(d) for d in items]
    theirs["SemanticDensity_greedy_counted_both_directions"] = _Fed(
        E.SemanticDensity(),
        concat_greedy_semantic_matrix_contra_forward=[(d["contra"][0, 1:] + d["contra"][1:, 0]) / 2 for d in items],
        concat_greedy_semantic_matrix_neutral_forward=[(_neutral(d)[0, 1:] + _neutral(d)[1:, 0]) / 2 for d in items])

    # TokenSAR and SAR: llmcal's own token relevances (the answer vs the answer without each token, from the
    # run's embedder, tokens decoded as `table` did) and sample similarities, recomputed on a spread subset
    if args.sar_limit == 0:
        return
    import warnings

    from transformers import AutoTokenizer

    from llmcal.backends.embedder import Embedder
    from llmcal.backends.model_args import EMBEDDED_GGUF, embedded_model_dir
    from llmcal.signals.spec import decode

    warnings.simplefilter("ignore")
    embedder = Embedder()
    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir()), gguf_file=EMBEDDED_GGUF)
    at = sorted(set(np.linspace(0, n - 1, min(args.sar_limit, n)).astype(int).tolist()))
    per = []  # per item: (log-probs, token similarities) of the greedy answer then each sample, sample sims
    for i in at:
        r = items[i]["row"]
        gens = [r["greedy"]] + r["samples"]
        if any(len(g["token_ids"]) != len(g["token_logprobs"]) or not g["token_ids"] for g in gens):
            per.append(None)
            continue
        texts, spans = [], []
        for g in gens:
            start = len(texts)
            texts += [g["text"] or "(no answer)"] + [t or "(no answer)" for t in
                                                     SAR.without_each_token([tok.decode([x]) for x in g["token_ids"]])]
            spans.append((start, len(texts)))
        emb = np.asarray(embedder.encode(texts), dtype=np.float64)  # (sum(1 + n_i), d)
        heads = np.stack([emb[a] for a, _ in spans[1:]])  # (k, d)
        per.append(([np.asarray(g["token_logprobs"], dtype=np.float64) for g in gens],
                    [emb[a + 1: b] @ emb[a] for a, b in spans], np.clip(heads @ heads.T, 0.0, 1.0)))
    ok = [j for j, p in enumerate(per) if p is not None]
    sub = [at[j] for j in ok]
    ts = {j: [SAR.token_sar(lp, s) for lp, s in zip(per[j][0], per[j][1])] for j in ok}
    # the recomputed inputs reproduce what `table` stored (decoded), else the comparison would be moot
    stored_t = [decode(items[at[j]]["vals"]["token_sar"], "uncertainty") - ts[j][0] for j in ok]
    stored_s = [-decode(items[at[j]]["vals"]["sar"], "log_odds") - SAR.sar(ts[j][1:], per[j][2]) for j in ok]
    print(f"TokenSAR / SAR on {len(ok)} of {n} items: the recomputed relevances reproduce table's stored values "
          f"to {np.nanmax(np.abs(stored_t)):.1e} / {np.nanmax(np.abs(stored_s)):.1e}")

    def _scatter(vals):
        out = np.full(n, np.nan)
        out[sub] = vals
        return out

    ours["TokenSAR"] = lambda: _scatter([SAR.token_sar(per[j][0][0], per[j][1][0]) for j in ok])
    ours["SAR"] = lambda: _scatter([SAR.sar([SAR.token_sar(lp, s) for lp, s in zip(per[j][0][1:], per[j][1][1:])],
                                            per[j][2]) for j in ok])
    # llmcal clips the cosines to [0, 1] (float32 embeddings of equal texts reach 1 + 1e-7, a relevance
    # of -1e-7); LM-Polygraph does not: fed the clipped similarities the two agree to rounding
    for clip in (False, True):
        sims = [[np.clip(x, 0.0, 1.0) if clip else x for x in per[j][1]] for j in ok]
        k = "_similarity_clipped" if clip else ""
        ours["TokenSAR" + k], ours["SAR" + k] = ours["TokenSAR"], ours["SAR"]
        theirs["TokenSAR" + k] = _Fed(E.TokenSAR(), n, sub, greedy_log_likelihoods=[per[j][0][0] for j in ok],
                                      token_similarity=[x[0] for x in sims])
        theirs["SAR" + k] = _Fed(E.SAR(), n, sub, sample_log_likelihoods=[per[j][0][1:] for j in ok],
                                 sample_token_similarity=[x[1:] for x in sims],
                                 sample_sentence_similarity=[per[j][2] for j in ok])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--task", required=True)
    g.add_argument("--limit", type=int, default=200)
    g.add_argument("--data_dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    g.add_argument("--out", required=True)
    g.add_argument("--k", type=int, default=5)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch", type=int, default=8)
    t = sub.add_parser("table")
    t.add_argument("--dir", required=True)
    t.add_argument("--json", default="/tmp/estimators.json")
    t.add_argument("--limit", type=int, default=None)
    t.add_argument("--bootstrap", type=int, default=300)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--only", nargs="+", default=None,
                   help="compute (and cache) only these tasks' estimators, to split the work into short runs")
    c = sub.add_parser("polygraph")
    c.add_argument("--dir", required=True, help="the folder of the .pkl inputs that `table` wrote")
    c.add_argument("--json", default="/tmp/estimators_polygraph.json")
    c.add_argument("--limit", type=int, default=None)
    c.add_argument("--sar_limit", type=int, default=60,
                   help="TokenSAR / SAR on this many items spread over the set (their relevances are re-embedded "
                        "here: one embedding per answer token); 0 skips them")
    args = ap.parse_args(argv)
    if args.cmd == "generate":
        return _generate(args)
    if args.cmd == "polygraph":
        return _polygraph(args)
    return _table(args)


if __name__ == "__main__":
    sys.exit(main())
