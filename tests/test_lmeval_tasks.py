"""lm-eval's tasks through ``--tasks lmeval:``: the same numbers as ``lm_eval`` itself, offline.

One tiny model (a byte-level BPE tokenizer trained on the test's own text, and a 2-layer
Llama) is written to a folder that both tools load.  Three local YAML tasks read local
JSONL files: a multiple-choice task (acc, acc_norm), a partial-scoring task (WinoGrande's
shape: several contexts, one continuation) and a generate_until task graded by lm-eval's
filters and exact_match.  The model's MLP and attention outputs are zeroed and its
embeddings tied, so its greedy answer repeats the prompt's last token: the generated
answers are then right for half the documents and wrong for the others, and the
exact_match comparison can fail either way.  The parts without a model (packing with
per-option contexts, the flags) are checked beside.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

WORDS = ["cat", "dog", "sun", "tree", "milk", "rain", "salt", "bird"]

MC_YAML = """\
task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""

PARTIAL_YAML = """\
task: tiny_partial
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: !function partial_utils.doc_to_text
doc_to_target: !function partial_utils.doc_to_target
doc_to_choice: !function partial_utils.doc_to_choice
metric_list:
  - metric: acc
  - metric: acc_norm
"""

# lm-eval's WinoGrande functions, written for this test's fields
PARTIAL_UTILS = '''\
def doc_to_text(doc):
    return int(doc["answer"]) - 1


def doc_to_target(doc):
    return doc["sentence"][doc["sentence"].index("_") + 1:].strip()


def doc_to_choice(doc):
    cut = doc["sentence"].index("_")
    return [doc["sentence"][:cut] + doc["option1"], doc["sentence"][:cut] + doc["option2"]]
'''

GEN_YAML = """\
task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Say it twice: {{{{word}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
filter_list:
  - name: first_word
    filter:
      - function: regex
        regex_pattern: "(\\\\w+)"
      - function: take_first
metric_list:
  - metric: exact_match
    ignore_case: true
"""


def _docs() -> dict[str, list[dict]]:
    rng = np.random.default_rng(3)
    mc, partial, gen = [], [], []
    for i in range(10):
        a, b, c = rng.choice(len(WORDS), 3, replace=False)
        mc.append({"question": f"Which word is number {i}?", "choices": [WORDS[a], WORDS[b] * 2, WORDS[c] + " pie"],
                   "answer": int(i % 3)})
    for i in range(8):
        a, b = rng.choice(len(WORDS), 2, replace=False)
        partial.append({"sentence": f"The {WORDS[a]} ate the {WORDS[b]} because _ was hungry on day {i}.",
                        "option1": f"the {WORDS[a]}", "option2": f"the {WORDS[b]}", "answer": str(1 + i % 2)})
    for i in range(8):
        w = WORDS[i]
        gen.append({"word": w, "target": w if i % 2 == 0 else WORDS[(i + 3) % len(WORDS)]})
    return {"mc": mc, "partial": partial, "gen": gen}


def _tiny_model(folder: Path, texts: list[str]) -> None:
    """A tokenizer trained on ``texts`` and a tiny Llama that echoes the last token (see the module doc)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    eos = fast.eos_token_id
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, eos_token_id=eos, bos_token_id=eos, pad_token_id=eos)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:  # keep a little of each block so scoring is not trivial
            layer.self_attn.o_proj.weight.mul_(0.05)
            layer.mlp.down_proj.weight.mul_(0.05)
    model.save_pretrained(folder)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    docs = _docs()
    yaml_dir = root / "yaml"
    yaml_dir.mkdir()
    texts = []
    for key, template in (("mc", MC_YAML), ("partial", PARTIAL_YAML), ("gen", GEN_YAML)):
        data = root / f"{key}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs[key]))
        (yaml_dir / f"tiny_{key}.yaml").write_text(template.format(data=data))
        texts += [json.dumps(d) for d in docs[key]]
    (yaml_dir / "partial_utils.py").write_text(PARTIAL_UTILS)
    model = root / "model"
    _tiny_model(model, texts + ["Question: Answer: Say it twice:"] * 3)
    return {"root": root, "yaml": yaml_dir, "model": model}


@pytest.fixture(scope="module")
def lm_eval_out(setup):
    """``lm_eval`` itself on the three tasks (its python API, the same model folder)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={setup['model']},dtype=float32", tasks=["tiny_mc", "tiny_partial", "tiny_gen"],
        task_manager=TaskManager(include_path=str(setup["yaml"]), include_defaults=False), log_samples=True,
        batch_size=4, device="cpu", gen_kwargs="max_gen_toks=4")


@pytest.fixture(scope="module")
def llmcal_runs(setup):
    """``llmcal run --tasks lmeval:...``: one multiple-choice run, one generate_until run (one kind a run)."""
    from llmcal.cli.main import main

    out = {}
    for name, tasks in (("mc", "lmeval:tiny_mc,tiny_partial"), ("gen", "lmeval:tiny_gen")):
        folder = setup["root"] / f"run_{name}"
        argv = ["run", "--model_args", f"pretrained={setup['model']}", "--tasks", tasks, "--include_path",
                str(setup["yaml"]), "--output_path", str(folder), "--quiet", "--bootstrap", "0", "--no_report",
                "--hidden_layers", "-1", "--batch_size", "3", "--device", "cpu", "--log_samples",
                "--gen_kwargs", "max_gen_toks=4"]
        assert main(argv) == 0
        out[name] = folder
    return out


def _samples(folder: Path) -> dict[str, dict]:
    rows = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines() if x.strip()]
    return {r["id"]: r for r in rows}


def test_same_acc_and_acc_norm_as_lm_eval(lm_eval_out, llmcal_runs):
    ours = _samples(llmcal_runs["mc"])
    for task in ("tiny_mc", "tiny_partial"):
        theirs = lm_eval_out["samples"][task]
        assert len(theirs) == sum(1 for r in ours.values() if r["task"] == task) > 0
        for s in theirs:
            r = ours[f"{task}-{s['doc_id']}"]
            lls = [float(x[0]) for x in s["filtered_resps"]]
            assert r["option_logprobs"] == pytest.approx(lls, abs=1e-4)
            assert float(r["correct"]) == s["acc"] and float(r["correct_norm"]) == s["acc_norm"]
        res = lm_eval_out["results"][task]
        mine = [r for r in ours.values() if r["task"] == task]
        assert np.mean([r["correct"] for r in mine]) == pytest.approx(res["acc,none"])
        assert np.mean([r["correct_norm"] for r in mine]) == pytest.approx(res["acc_norm,none"])


def test_partial_scoring_has_several_contexts_one_continuation(llmcal_runs):
    rows = [r for r in _samples(llmcal_runs["mc"]).values() if r["task"] == "tiny_partial"]
    assert rows and all(r["meta"]["partial_scoring"] for r in rows)
    # the two options differ in the context, and their log-likelihoods differ
    assert all(r["option_logprobs"][0] != r["option_logprobs"][1] for r in rows)


def test_generate_until_matches_lm_eval_filters_and_exact_match(lm_eval_out, llmcal_runs):
    ours = _samples(llmcal_runs["gen"])
    theirs = lm_eval_out["samples"]["tiny_gen"]
    assert len(theirs) == len(ours) == 8
    for s in theirs:
        r = ours[f"tiny_gen-{s['doc_id']}"]
        assert r["meta"]["lmeval"]["filtered"]["first_word"] == s["filtered_resps"][0]
        assert r["meta"]["lmeval"]["metrics"]["first_word"]["exact_match"] == s["exact_match"]
        assert r["correct"] == bool(s["exact_match"])
    em = np.mean([s["exact_match"] for s in theirs])
    assert em == pytest.approx(lm_eval_out["results"]["tiny_gen"]["exact_match,first_word"])
    assert 0 < em < 1  # the comparison is not all-right or all-wrong


def test_log_samples_and_results_in_lm_eval_shape(lm_eval_out, llmcal_runs):
    from llmcal.pipeline.lmeval_import import read_lmeval_samples

    for name in ("mc", "gen"):
        folder = llmcal_runs[name]
        results = json.loads(next(folder.glob("lmeval/results_*.json")).read_text())
        for task, theirs in lm_eval_out["results"].items():
            if task not in results["results"]:
                continue
            for key, value in theirs.items():
                if key.split(",")[0] in ("acc", "acc_norm", "exact_match", "acc_stderr", "acc_norm_stderr",
                                         "exact_match_stderr"):
                    assert results["results"][task][key] == pytest.approx(value), (task, key)
        assert set(results) >= {"results", "configs", "versions", "n-shot", "n-samples", "config"}
    # the MC samples files read back through import-lmeval give the run's own records
    files = sorted(llmcal_runs["mc"].glob("lmeval/samples_*.jsonl"))
    assert {f.name.split("_2")[0] for f in files} == {"samples_tiny_mc", "samples_tiny_partial"}
    back = {r.id: r for r in read_lmeval_samples(files)}
    ours = _samples(llmcal_runs["mc"])
    assert set(back) == set(ours)
    for i, r in back.items():
        assert r.option_logprobs == pytest.approx(ours[i]["option_logprobs"])
        assert r.correct == ours[i]["correct"] and r.correct_norm == ours[i]["correct_norm"]


def test_a_real_lm_eval_log_imports_equal_to_the_native_run(setup, lm_eval_out, llmcal_runs):
    """lm-eval's own files (its EvaluationTracker) -> import-lmeval == the native `--tasks lmeval:` run."""
    import copy

    from lm_eval.loggers import EvaluationTracker

    from llmcal.cli.main import main

    logs = setup["root"] / "lm_eval_logs"
    tracker = EvaluationTracker(output_path=str(logs))
    tracker.general_config_tracker.model_name_sanitized = "tiny"
    out = copy.deepcopy(lm_eval_out)
    samples = out.pop("samples")
    tracker.save_results_aggregated(results=out, samples=samples)
    for task in ("tiny_mc", "tiny_partial"):
        tracker.save_results_samples(task_name=task, samples=samples[task])
    files = sorted(str(f) for f in logs.rglob("samples_*.jsonl"))
    assert len(files) == 2 and list(logs.rglob("results_*.json"))
    folder = setup["root"] / "imported"
    assert main(["import-lmeval", *files, "--output_path", str(folder), "--quiet", "--bootstrap", "0",
                 "--no_report"]) == 0
    native, imported = (json.loads((f / "results.json").read_text()) for f in (llmcal_runs["mc"], folder))
    assert imported["overall"]["accuracy"] == pytest.approx(native["overall"]["accuracy"])
    ours, back = _samples(llmcal_runs["mc"]), _samples(folder)
    assert set(ours) == set(back)
    assert all(back[i]["correct_norm"] == ours[i]["correct_norm"] for i in ours)
    t_native, t_imported = (json.loads((f / "calibration.json").read_text()) for f in (llmcal_runs["mc"], folder))
    temps = [t["calibrations"]["temperature"]["state"]["temperature_"] for t in (t_native, t_imported)]
    assert temps[1] == pytest.approx(temps[0], rel=1e-3)
    split = [json.loads((f / "results.json").read_text())["split"] for f in (llmcal_runs["mc"], folder)]
    assert split[0] == split[1]  # the same items on each side of the split
    assert json.loads((folder / "config.json").read_text())["model_args"]["pretrained"] == str(setup["model"])


def test_resuming_with_other_lm_eval_options_is_refused(setup, llmcal_runs, capsys):
    from llmcal.cli.main import main

    argv = ["run", "--model_args", f"pretrained={setup['model']}", "--tasks", "lmeval:tiny_mc,tiny_partial",
            "--include_path", str(setup["yaml"]), "--output_path", str(llmcal_runs["mc"]), "--quiet",
            "--bootstrap", "0", "--no_report", "--hidden_layers", "-1", "--num_fewshot", "1"]
    assert main(argv) == 2
    assert "field 'lmeval' was" in capsys.readouterr().err


# ------------------------------------------------------------------ no model needed


def test_packing_per_option_contexts_equals_separate_sequences():
    from llmcal.backends.packing import pack_item, tree_mask

    shared, tails, cont = [5, 6, 7], [[8, 9], [10]], [11, 12]
    p = pack_item(shared, [cont, cont], option_context_ids=tails)
    mask = tree_mask(p.branch, len(p.input_ids))
    for o, tail in enumerate(tails):
        # what option o's rows see is exactly shared + tail + cont, at positions 0..n-1
        seq = shared + tail + cont
        rows = [int(r) for r in p.target_rows[o]]
        for j, row in enumerate(rows):
            visible = [int(p.input_ids[k]) for k in range(len(p.input_ids)) if mask[row, k]]
            assert visible == seq[: len(shared) + len(tail) + j]
            assert int(p.position_ids[row]) == len(shared) + len(tail) + j - 1
        assert list(p.target_ids[o]) == cont


def test_flags_parse_with_lm_eval_meanings():
    from llmcal.cli.commands import run_config
    from llmcal.cli.main import build_parser
    from llmcal.tasks.lmeval import parse_gen_kwargs

    args = build_parser().parse_args(
        ["run", "--tasks", "arc_easy,lmeval:a,b", "--num_fewshot", "2", "--apply_chat_template", "--seed", "1,2,3,4",
         "--split_seed", "7", "--gen_kwargs", "temperature=0,max_gen_toks=64,until=\\n\\n|Q:", "--device", "cuda:1",
         "--batch_size", "8", "--system_instruction", "Be brief.", "--log_samples"])
    cfg = run_config(args)
    assert cfg.tasks == ("arc_easy", "lmeval:a", "lmeval:b")
    assert cfg.chat is True and cfg.seed == 7 and cfg.seeds() == (1, 2, 3, 4)
    assert cfg.backend_extra() == {"device": "cuda:1", "batch_size": 8} and cfg.log_samples
    opts = cfg.lmeval_options()
    assert (opts.num_fewshot, opts.apply_chat_template, opts.system_instruction, opts.fewshot_seed) == \
        (2, True, "Be brief.", 4)
    assert dict(parse_gen_kwargs("temperature=0,max_gen_toks=64,until=\\n\\n|Q:")) == \
        {"temperature": 0, "max_gen_toks": 64, "until": ["\n\n", "Q:"]}
    with pytest.raises(ValueError, match="--seed: one whole number or four"):
        run_config(build_parser().parse_args(["run", "--seed", "1,2"]))
    with pytest.raises(ValueError, match="--gen_kwargs: 'oops' is not key=value"):
        parse_gen_kwargs("oops")
    with pytest.raises(ValueError, match="--log_samples writes lm-eval's samples .* --tasks builtin names none"):
        run_config(build_parser().parse_args(["run", "--log_samples"]))


def test_unsupported_output_type_and_bad_include_path_are_clear(tmp_path):
    from llmcal.tasks.errors import TaskError
    from llmcal.tasks.lmeval import LmevalOptions, load_lmeval_tasks

    data = tmp_path / "ppl.jsonl"
    data.write_text(json.dumps({"text": "some words"}) + "\n")
    (tmp_path / "ppl.yaml").write_text(f"task: tiny_ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                       f"    test: {data}\ntest_split: test\noutput_type: loglikelihood_rolling\n"
                                       "doc_to_text: ''\ndoc_to_target: '{{text}}'\nmetric_list:\n"
                                       "  - metric: word_perplexity\n")
    with pytest.raises(TaskError, match="lmeval:tiny_ppl: output_type 'loglikelihood_rolling' is not supported"):
        load_lmeval_tasks("lmeval:tiny_ppl", LmevalOptions(include_path=(str(tmp_path),)))
    with pytest.raises(ValueError, match="--include_path: .* is neither a folder nor a .yaml file"):
        LmevalOptions(include_path=(str(tmp_path / "missing"),))
    with pytest.raises(ValueError, match="--fewshot_as_multiturn needs --apply_chat_template"):
        LmevalOptions(fewshot_as_multiturn=True)


def _render(history, add_generation_prompt=True):
    """A stand-in chat template: what any template does, join the turns and open the answer."""
    return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in history) + ("<assistant>" if
                                                                                     add_generation_prompt else "")


def test_chat_template_and_system_instruction_render_as_lm_eval_does(tmp_path):
    from llmcal.tasks.lmeval import LmevalOptions, load_lmeval_tasks
    from llmcal.tasks.prompts import build_request

    docs = _docs()["mc"]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "tiny_mc.yaml").write_text(MC_YAML.format(data=data))
    opts = LmevalOptions(include_path=(str(tmp_path),), apply_chat_template=True, system_instruction="Be brief.")
    (task,) = load_lmeval_tasks("lmeval:tiny_mc", opts, limit=4)
    items = task.mc_items()
    assert items[0].messages[0][0] == ("system", "Be brief.") and items[0].continuations[0] == docs[0]["choices"][0]
    # lm-eval itself, handed the same template, builds the same contexts
    task.task.build_all_requests(limit=4, apply_chat_template=True, system_instruction="Be brief.",
                                 chat_template=_render)
    theirs = {}
    for inst in task.task.instances:
        theirs.setdefault(inst.doc_id, []).append(inst.arguments)
    for doc_id, it in enumerate(items):
        req = build_request(it, "cloze", _render)
        assert [(req.context_of(o), c) for o, c in enumerate(req.continuations)] == \
            [tuple(a) for a in theirs[doc_id]]
    with pytest.raises(ValueError, match="built for the chat template; score it with --chat"):
        build_request(items[0], "cloze", None)


def test_batch_size_caps_the_items_of_a_forward_pass(setup):
    from llmcal.backends.hf import HFBackend
    from llmcal.core.requests import MCRequest

    base = HFBackend.load(pretrained=str(setup["model"]))
    capped = HFBackend.load(pretrained=str(setup["model"]), batch_size=2)
    reqs = [MCRequest(f"Question: {w}?\nAnswer:", (" yes", " no", " maybe")) for w in WORDS]
    sizes: list[int] = []
    got = capped.score_mc(reqs, progress=sizes.append)
    assert sum(sizes) == len(reqs) and max(sizes) <= 2
    whole: list[int] = []
    ref = base.score_mc(reqs, progress=whole.append)
    assert max(whole) > 2  # without the cap the token budget alone packs more
    for a, b in zip(got, ref):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
