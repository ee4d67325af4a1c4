"""lm-evaluation-harness's tasks in llmcal: ``--tasks lmeval:NAME[,...]`` through lm-eval's own ``TaskManager``.

lm-eval (Gao et al. 2024, "The Language Model Evaluation Harness") describes a task
as YAML: where its documents come from, how a document becomes a prompt
(``doc_to_text``, few-shot examples, a system instruction, the chat template), the
choices and the target, the filters and metrics.  This module lets lm-eval build
every request itself, exactly as ``lm_eval`` would (its ``TaskManager``, its
``build_all_requests``), and hands llmcal the result:

* ``multiple_choice`` tasks become :class:`~llmcal.core.items.MCItem` with fixed
  requests (``contexts``/``continuations``, or ``messages`` under the chat
  template), scored by llmcal's packed scorer.  Partial scoring (WinoGrande:
  several contexts, one continuation) is the same item with one context per option.
  ``choices`` are lm-eval's ``doc_to_choice``, so llmcal's ``acc_norm``
  (log-likelihood over the choice's length in characters) is lm-eval's.
* ``generate_until`` tasks become :class:`LmevalGeneration` requests (the prompt and
  lm-eval's generation kwargs), answered by llmcal's generation and graded by the
  task's own filters and metrics (:meth:`LmevalTask.generation_metrics`).

Only this module imports ``lm_eval`` (the optional extra ``llmcal[lmeval]``).
Datasets are read offline (``HF_DATASETS_OFFLINE``): local YAML with ``dataset_path:
json`` and ``data_files`` works anywhere; a hub dataset needs it cached.

Under ``apply_chat_template`` lm-eval asks a chat-template callable to render each
conversation.  Here the callable records the conversation instead
(:data:`_CHAT_MARK`), and the item carries it as ``messages``; the backend that
scores the item renders it with its own template, so tasks load before any model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

from llmcal.core.items import MCItem, OpenItem
from llmcal.tasks.errors import TaskError

PREFIX = "lmeval:"
#: lm-eval's default few-shot sampling seed (``--seed``'s fourth value).
FEWSHOT_SEED = 1234
_CHAT_MARK = "\x00llmcal-chat\x00"


def is_lmeval_spec(spec: str) -> bool:
    return spec.strip().lower().startswith(PREFIX)


def lmeval_name(spec: str) -> str:
    """``"lmeval:arc_easy"`` -> ``"arc_easy"`` (refuses an empty name)."""
    name = spec.strip()[len(PREFIX):].strip()
    if not name:
        raise TaskError(f"task spec {spec!r}: name the lm-eval task after 'lmeval:' (e.g. lmeval:arc_easy)")
    return name


@dataclass(frozen=True)
class LmevalOptions:
    """How lm-eval builds the requests: its own flags, by its own names."""

    include_path: tuple[str, ...] = ()
    num_fewshot: int | None = None
    system_instruction: str | None = None
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    fewshot_seed: int = FEWSHOT_SEED
    gen_kwargs: tuple[tuple[str, Any], ...] = ()  # parsed --gen_kwargs, overriding the task's

    def __post_init__(self) -> None:
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ValueError(f"--num_fewshot: must be >= 0, got {self.num_fewshot}")
        for p in self.include_path:
            if not os.path.isdir(p) and not (os.path.isfile(p) and p.endswith((".yaml", ".yml"))):
                raise ValueError(f"--include_path: {p!r} is neither a folder nor a .yaml file")
        if self.fewshot_as_multiturn and not self.apply_chat_template:
            raise ValueError("--fewshot_as_multiturn needs --apply_chat_template (lm-eval's rule)")


def parse_gen_kwargs(text: str | None) -> tuple[tuple[str, Any], ...]:
    """lm-eval's ``--gen_kwargs``: ``temperature=0,max_gen_toks=64,until=\\n\\n`` (values as Python literals
    where they read as one; ``until`` may list stops separated by ``|``)."""
    import ast

    if not text or not text.strip():
        return ()
    out: list[tuple[str, Any]] = []
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"--gen_kwargs: {part.strip()!r} is not key=value")
        key, value = (x.strip() for x in part.split("=", 1))
        if not key:
            raise ValueError(f"--gen_kwargs: {part.strip()!r} has no key")
        value = value.encode().decode("unicode_escape") if "\\" in value else value
        if key == "until":
            parsed: Any = [s for s in value.split("|") if s]
        else:
            try:
                parsed = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                parsed = {"true": True, "false": False}.get(value.lower(), value)
        out.append((key, parsed))
    return tuple(out)


def _record_chat(history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """lm-eval's chat-template callable, recording the conversation for the backend to render later."""
    return _CHAT_MARK + json.dumps([[m["role"], m["content"]] for m in history])


def is_recorded_chat(context: Any) -> bool:
    """Whether a request context is a recorded conversation (rendered by the backend), not text."""
    return isinstance(context, str) and context.startswith(_CHAT_MARK)


def _messages(context: Any) -> tuple[tuple[str, str], ...] | None:
    if isinstance(context, str) and context.startswith(_CHAT_MARK):
        return tuple((r, c) for r, c in json.loads(context[len(_CHAT_MARK):]))
    return None


_MANAGERS: dict[tuple[str, ...], Any] = {}


def _lm_eval():
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:  # pragma: no cover - the extra is installed in the venv
        raise TaskError("lmeval: tasks need lm-evaluation-harness: pip install 'llmcal[lmeval]'")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # no hub: local files, or what the cache holds
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from lm_eval.tasks import TaskManager

    return TaskManager


def task_manager(include_path: Sequence[str] = (), defaults: bool = True):
    """lm-eval's ``TaskManager`` over its own tasks (``defaults``) and ``include_path`` (cached per process)."""
    key = tuple(str(p) for p in include_path) + (("<defaults>",) if defaults else ())
    if key not in _MANAGERS:
        manager = _lm_eval()
        _MANAGERS[key] = manager(include_path=list(include_path) or None, include_defaults=defaults)
    return _MANAGERS[key]


def _manager_for(name: str, options: LmevalOptions):
    """The local YAML alone when it holds the task (indexing lm-eval's hundreds of tasks takes seconds)."""
    if options.include_path:
        local = task_manager(options.include_path, defaults=False)
        if name in local.all_tasks:
            return local
    manager = task_manager(options.include_path, defaults=True)
    if name not in manager.all_tasks:
        import difflib

        close = difflib.get_close_matches(name, manager.all_tasks, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        where = f" (nor --include_path {', '.join(options.include_path)})" if options.include_path else ""
        raise TaskError(f"lmeval:{name}: no such task among lm-eval's own{where}.{hint}")
    return manager


def doc_keys(docs: list[Any], doc_ids: list[Any]) -> list[str]:
    """The id part of each document: its own ``id`` field where every document has a distinct one
    (ARC's ``Mercury_7175875``, as llmcal's own loaders use), else lm-eval's ``doc_id``."""
    own = [str(d["id"]).strip() if isinstance(d, dict) and isinstance(d.get("id"), (str, int)) else "" for d in docs]
    if all(own) and len(set(own)) == len(own):
        return own
    return [str(i) for i in doc_ids]


@dataclass(frozen=True)
class LmevalGeneration:
    """One ``generate_until`` request: lm-eval's prompt (or conversation) and how to generate."""

    id: str
    task: str
    doc_id: int
    context: str
    messages: tuple[tuple[str, str], ...]
    until: tuple[str, ...]
    max_gen_toks: int
    temperature: float
    target: Any


class LmevalTask:
    """One lm-eval task with its requests built (``build_all_requests``), and its metrics."""

    def __init__(self, name: str, task: Any, options: LmevalOptions) -> None:
        self.name = name
        self.task = task
        self.options = options
        self.output_type = task.OUTPUT_TYPE
        self.docs: dict[int, Any] = {}
        self.instances: dict[int, list[Any]] = {}
        for inst in task.instances:
            self.docs[inst.doc_id] = inst.doc
            self.instances.setdefault(inst.doc_id, []).append(inst)
        for group in self.instances.values():
            group.sort(key=lambda i: i.idx)
        self._keys = dict(zip(self.docs, doc_keys(list(self.docs.values()), list(self.docs))))

    @property
    def kind(self) -> str:
        return "open" if self.output_type == "generate_until" else "mc"

    def item_id(self, doc_id: int) -> str:
        """``<task>-<doc id>`` (the document's ``id`` field, else lm-eval's ``doc_id``): the id ``import-lmeval``
        gives the same document, and llmcal's own loaders where they read the same field, so runs join."""
        return f"{self.name}-{self._keys[doc_id]}"

    # ------------------------------------------------------------ multiple choice
    def gold(self, doc: Any, choices: list[str]) -> int:
        t = self.task
        gold = t.doc_to_text(doc) if t.multiple_input else t.doc_to_target(doc)
        if isinstance(gold, list):
            if not gold:
                raise TaskError(f"lmeval:{self.name}: a document has no target")
            gold = gold[0]  # several right answers: llmcal grades against the first
        if isinstance(gold, str) and not gold.strip().isdigit():
            if gold not in choices:
                raise TaskError(f"lmeval:{self.name}: target {gold!r} is not among the choices {choices!r}")
            gold = choices.index(gold)
        return int(gold)

    def mc_items(self) -> list[MCItem]:
        if self.output_type != "multiple_choice":
            raise TaskError(f"lmeval:{self.name}: output_type {self.output_type!r} is not multiple_choice")
        items = []
        for doc_id, insts in self.instances.items():
            doc = self.docs[doc_id]
            choices = [str(c) for c in self.task.doc_to_choice(doc)]
            if len(insts) != len(choices):
                raise TaskError(f"lmeval:{self.name}: document {doc_id} has {len(insts)} requests for "
                                f"{len(choices)} choices (acc_mutual_info's extra requests are not supported)")
            ctxs = [i.arguments[0] for i in insts]
            conts = tuple(i.arguments[1] for i in insts)
            msgs = [_messages(c) for c in ctxs]
            chat = all(m is not None for m in msgs)
            question = (msgs[0][-1][1] if chat else ctxs[0]).strip() or "(empty context)"
            meta = {"lmeval_task": self.name, "doc_id": doc_id,
                    "partial_scoring": bool(self.task.multiple_input)}
            items.append(MCItem(
                id=self.item_id(doc_id), task=self.name, question=question, choices=tuple(choices),
                answer=self.gold(doc, choices), meta=meta, continuations=conts,
                contexts=() if chat else tuple(ctxs), messages=tuple(msgs) if chat else ()))
        return items

    def mc_metrics(self, doc_id: int, logprobs: Sequence[float], is_greedy: Sequence[bool]) -> dict[str, Any]:
        """lm-eval's own per-document metrics (``process_results``) from llmcal's scores."""
        results = [(float(lp), bool(g)) for lp, g in zip(logprobs, is_greedy)]
        return self.task.process_results(self.docs[doc_id], results)

    # ------------------------------------------------------------ generation
    def generations(self) -> list[LmevalGeneration]:
        if self.output_type != "generate_until":
            raise TaskError(f"lmeval:{self.name}: output_type {self.output_type!r} is not generate_until")
        out = []
        for doc_id, (inst, *_) in self.instances.items():
            ctx, kwargs = inst.arguments[0], dict(inst.arguments[1] or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kwargs.get("temperature", 0.0) or 0.0)
            if not kwargs.get("do_sample", temperature > 0):
                temperature = 0.0
            msgs = _messages(ctx)
            out.append(LmevalGeneration(
                id=self.item_id(doc_id), task=self.name, doc_id=doc_id, context="" if msgs else ctx,
                messages=msgs or (), until=tuple(until), max_gen_toks=int(kwargs.get("max_gen_toks", 256)),
                temperature=temperature, target=self.task.doc_to_target(self.docs[doc_id])))
        return out

    def primary_metric(self) -> tuple[str, str]:
        """(filter, metric) that decides an answer's ``correct``: the task's first of each."""
        filters = [f.name for f in getattr(self.task, "_filters", [])] or ["none"]
        metrics = list(self.task._metric_fn_list)  # noqa: SLF001 - lm-eval keeps the configured metrics here
        if not metrics:
            raise TaskError(f"lmeval:{self.name}: the task defines no metric")
        return filters[0], metrics[0]

    def open_items(self) -> list[OpenItem]:
        """One :class:`OpenItem` a document (what resuming and hashing see; graded by lm-eval, not llmcal)."""
        flt, metric = self.primary_metric()
        items = []
        for g in self.generations():
            target = g.target if isinstance(g.target, list) else [g.target]
            answers = tuple(str(a) for a in target if str(a).strip()) or ("(none)",)
            question = (g.messages[-1][1] if g.messages else g.context).strip() or "(empty prompt)"
            items.append(OpenItem(id=g.id, task=self.name, question=question, answers=answers,
                                  grader=f"lmeval:{metric}",
                                  meta={"lmeval_task": self.name, "doc_id": g.doc_id, "filter": flt}))
        return items

    def generation_metrics(self, texts: dict[int, str]) -> dict[int, dict[str, Any]]:
        """Per document: ``{filter name: lm-eval's metrics}`` after the task's own filters."""
        insts = [self.instances[d][0] for d in texts]
        for inst in insts:
            inst.resps = [texts[inst.doc_id]]
        self.task.apply_filters()
        out: dict[int, dict[str, Any]] = {}
        for inst in insts:
            out[inst.doc_id] = {key: self.task.process_results(inst.doc, [resp])
                                for key, resp in inst.filtered_resps.items()}
        return out

    def filtered(self, doc_id: int) -> dict[str, Any]:
        """The filtered responses of a document (after :meth:`generation_metrics`)."""
        return dict(self.instances[doc_id][0].filtered_resps)

    # ------------------------------------------------------------ what lm-eval writes
    def config_dict(self) -> dict[str, Any]:
        try:
            return self.task.dump_config()
        except Exception:  # pragma: no cover - older lm-eval
            return {"task": self.name}

    def higher_is_better(self) -> dict[str, Any]:
        return self.task.higher_is_better()

    def aggregate(self, per_filter: dict[str, list[dict[str, Any]]], bootstrap_iters: int = 1000) -> dict[str, Any]:
        """lm-eval's ``results[task]``: each metric's aggregate and standard error, keyed ``metric,filter``
        (its own aggregation functions and ``stderr_for_metric``; a mean's stderr is the sample one)."""
        from lm_eval.api.metrics import stderr_for_metric

        aggs = self.task.aggregation()
        out: dict[str, Any] = {"alias": self.name}
        for flt, rows in per_filter.items():
            for metric in (rows[0] if rows else {}):
                values = [r[metric] for r in rows]
                out[f"{metric},{flt}"] = aggs[metric](values)
                se = stderr_for_metric(metric=aggs[metric], bootstrap_iters=bootstrap_iters)
                out[f"{metric}_stderr,{flt}"] = se(values) if se is not None and len(values) > 1 else "N/A"
        return out

    def hashes(self, doc_id: int, prompt: str, target: Any) -> dict[str, str]:
        """lm-eval's ``doc_hash``, ``prompt_hash`` and ``target_hash`` of a logged sample."""
        from lm_eval.utils import handle_non_serializable, hash_string

        doc = json.dumps(self.docs[doc_id], indent=2, default=handle_non_serializable, ensure_ascii=False)
        return {"doc_hash": hash_string(doc), "prompt_hash": hash_string(prompt), "target_hash": hash_string(str(target))}

    def target(self, doc_id: int) -> Any:
        """What lm-eval logs as a sample's ``target``: ``doc_to_target`` (for partial scoring the shared
        continuation, not the gold index), before ``str``."""
        return self.task.doc_to_target(self.docs[doc_id])

    def version(self) -> Any:
        return (self.task.config.metadata or {}).get("version", None) if hasattr(self.task, "config") else None

    def n_shot(self) -> int:
        return int(self.task.config.num_fewshot or 0)


def lmeval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def load_lmeval_tasks(spec: str, options: LmevalOptions | None = None, limit: int | None = None) -> list[LmevalTask]:
    """The lm-eval task(s) ``spec`` names (``lmeval:NAME``; a group gives its leaf tasks), requests built."""
    options = options or LmevalOptions()
    name = lmeval_name(spec)
    manager = _manager_for(name, options)
    try:
        loaded = manager.load([name])
    except Exception as err:  # lm-eval raises whatever its YAML or dataset loader raised
        raise TaskError(f"lmeval:{name}: lm-eval could not load the task ({type(err).__name__}: {err})") from err
    tasks = loaded["tasks"] if isinstance(loaded, dict) and "tasks" in loaded else loaded
    out = []
    for leaf, task in tasks.items():
        if task.OUTPUT_TYPE not in ("multiple_choice", "generate_until"):
            raise TaskError(f"lmeval:{leaf}: output_type {task.OUTPUT_TYPE!r} is not supported "
                            "(multiple_choice and generate_until are)")
        if options.num_fewshot is not None:
            task.set_config(key="num_fewshot", value=options.num_fewshot)
        task.set_fewshot_seed(seed=options.fewshot_seed)
        if options.gen_kwargs and task.OUTPUT_TYPE == "generate_until":
            task.set_config(key="generation_kwargs", value=dict(options.gen_kwargs), update=True)
        try:
            task.build_all_requests(
                limit=limit, rank=0, world_size=1, system_instruction=options.system_instruction,
                apply_chat_template=options.apply_chat_template, fewshot_as_multiturn=options.fewshot_as_multiturn,
                chat_template=_record_chat if options.apply_chat_template else None)
        except Exception as err:
            raise TaskError(f"lmeval:{leaf}: lm-eval could not build the requests "
                            f"({type(err).__name__}: {err})") from err
        out.append(LmevalTask(str(leaf), task, options))
    if not out:
        raise TaskError(f"lmeval:{name}: the task holds no subtasks")
    return out


def lmeval_kind(spec: str, options: LmevalOptions | None = None) -> str:
    """``"mc"`` or ``"open"`` from the task's YAML (its ``output_type``), without reading documents."""
    options = options or LmevalOptions()
    name = lmeval_name(spec)
    manager = _manager_for(name, options)
    try:
        cfg = manager._index[name].yaml_path  # noqa: SLF001 - lm-eval has no public accessor
        from lm_eval.tasks._yaml_loader import load_yaml  # type: ignore[attr-defined]

        output_type = load_yaml(cfg, resolve_func=False).get("output_type")
    except Exception:
        output_type = None
    if output_type is None:  # a group, an include chain: load it (the documents too)
        kinds = {t.kind for t in load_lmeval_tasks(spec, options, limit=1)}
        if len(kinds) > 1:
            raise TaskError(f"{spec}: the group mixes multiple-choice and generation tasks; run them separately")
        return kinds.pop()
    return "open" if output_type == "generate_until" else "mc"
