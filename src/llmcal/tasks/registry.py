"""Task names -> loaders, and :func:`load_task`, the one entry point for both kinds of task.

A task spec is one of

* a registered name, optionally with a split or subject: ``arc_easy``,
  ``arc_easy:dev``, ``sciq:valid``, ``mmlu``, ``mmlu:anatomy:val`` (see
  :data:`TASKS` / :func:`available_tasks` / :func:`describe_tasks`);
* an open-ended task, optionally graded by another rule than its own:
  ``nq_open``, ``gsm8k``, ``nq_open@exact_match`` (``name[:split]@grader``,
  the graders of :mod:`llmcal.tasks.graders`);
* a path to a ``.jsonl``, ``.json`` or ``.csv`` file in the generic
  (multiple-choice) format;
* ``hf:<dataset>[:<split>]`` or ``hf:<dataset>:<config>:<split>``, read with
  Hugging Face ``datasets`` (multiple-choice);
* ``lmeval:<task>``: any lm-evaluation-harness task (its YAML, through its own
  ``TaskManager``; ``--include_path`` for local YAML), multiple-choice or
  ``generate_until`` (:mod:`llmcal.tasks.lmeval`).

Multiple-choice specs load as :class:`~llmcal.core.items.MCItem`, open-ended
ones as :class:`~llmcal.core.items.OpenItem`; :func:`task_kind` tells which
without reading any data.

The public sets are read from a data folder: the ``data_dir`` argument, else
``$LLMCAL_DATA``, else ``../shared/data`` relative to the working directory.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llmcal.core.items import Item, MCItem, OpenItem
from llmcal.tasks import open_tasks
from llmcal.tasks.errors import TaskError

DATA_ENV = "LLMCAL_DATA"
#: The longest item accepted, in characters (question + choices, or an open question): a longer one is
#: refused when the task loads, before any model is loaded.  ``$LLMCAL_MAX_PROMPT_CHARS`` or
#: ``load_task(max_prompt_chars=...)`` changes it.
MAX_PROMPT_CHARS = 100_000
MAX_PROMPT_ENV = "LLMCAL_MAX_PROMPT_CHARS"
DEFAULT_DATA_DIR = Path("..") / "shared" / "data"
KINDS = ("mc", "open")

# a loader gets (data folder or None, split, extra spec parts) and returns items
Loader = Callable[[Path | None, str, list[str]], Sequence[Item]]


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: how to load it and which splits it has (the first is the default).

    ``kind`` is ``"mc"`` (items are :class:`MCItem`) or ``"open"`` (:class:`OpenItem`);
    ``grader`` is an open task's own grading rule (``name@grader`` overrides it);
    ``files`` are what it reads from the data folder, for :func:`describe_tasks`.
    """

    name: str
    description: str
    loader: Loader | None
    splits: tuple[str, ...] = ()
    split_aliases: Mapping[str, str] = field(default_factory=dict)
    needs_data: bool = True
    kind: str = "mc"
    files: tuple[str, ...] = ()
    grader: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    @property
    def default_split(self) -> str:
        return self.splits[0] if self.splits else ""

    @property
    def open_ended(self) -> bool:
        return self.kind == "open"


# --------------------------------------------------------------------------- loaders


def _file(data_dir: Path, name: str, task: str) -> Path:
    path = data_dir / name
    if not path.is_file():
        raise TaskError(f"task {task!r}: {name} is not in the data folder {data_dir} "
                        f"(point {DATA_ENV} or --data_dir at the folder that holds it)", source=path)
    return path


def _no_extra(task: str, extra: list[str]) -> None:
    if extra:
        raise TaskError(f"task {task!r}: unexpected {':'.join(extra)!r} in the task spec")


def _builtin(data_dir: Path | None, split: str, extra: list[str]) -> list[MCItem]:
    _no_extra("builtin", extra)
    try:
        from llmcal.tasks.builtin import builtin_items
    except ImportError as e:
        raise TaskError(f"task 'builtin': llmcal.tasks.builtin cannot be imported ({e})") from e
    return list(builtin_items())


def _arc(task: str, stem: str) -> Loader:
    def load(data_dir: Path | None, split: str, extra: list[str]) -> list[MCItem]:
        from llmcal.tasks.formats_public import load_arc

        _no_extra(task, extra)
        assert data_dir is not None
        return load_arc(_file(data_dir, f"{stem}_{split}.jsonl", task), task=task, split=split)

    return load


def _sciq(data_dir: Path | None, split: str, extra: list[str]) -> list[MCItem]:
    from llmcal.tasks.formats_public import load_sciq

    _no_extra("sciq", extra)
    assert data_dir is not None
    return load_sciq(_file(data_dir, f"sciq_{split}.json", "sciq"), split=split)


def _piqa(data_dir: Path | None, split: str, extra: list[str]) -> list[MCItem]:
    from llmcal.tasks.formats_public import load_piqa

    _no_extra("piqa", extra)
    assert data_dir is not None
    return load_piqa(_file(data_dir, f"piqa_{split}.jsonl", "piqa"),
                     _file(data_dir, f"piqa_{split}_labels.lst", "piqa"), split=split)


def _commonsenseqa(data_dir: Path | None, split: str, extra: list[str]) -> list[MCItem]:
    from llmcal.tasks.formats_public import load_commonsenseqa

    _no_extra("commonsenseqa", extra)
    assert data_dir is not None
    return load_commonsenseqa(_file(data_dir, f"commonsenseqa_{split}.jsonl", "commonsenseqa"), split=split)


def _truthfulqa(data_dir: Path | None, split: str, extra: list[str]) -> list[MCItem]:
    from llmcal.tasks.formats_public import load_truthfulqa_mc1

    _no_extra("truthfulqa_mc1", extra)
    assert data_dir is not None
    return load_truthfulqa_mc1(_file(data_dir, "truthfulqa.csv", "truthfulqa_mc1"))


def _mmlu(data_dir: Path | None, split: str, extra: list[str]) -> list[MCItem]:
    from llmcal.tasks.formats_public import load_mmlu

    assert data_dir is not None
    if len(extra) > 1:
        raise TaskError(f"task 'mmlu': too many parts in {':'.join(extra)!r}; use mmlu[:<subject>][:<split>]")
    root = data_dir / "mmlu"
    if not root.is_dir():
        raise TaskError(f"task 'mmlu': no mmlu/ folder in the data folder {data_dir}", source=root)
    return load_mmlu(root, split=split, subjects=extra or None)


def _builtin_open(data_dir: Path | None, split: str, extra: list[str]) -> list[OpenItem]:
    _no_extra("builtin_open", extra)
    return open_tasks.load_builtin_open()


def _open_file(task: str, stem: str, read: Callable[[Path], list[OpenItem]]) -> Loader:
    """An open task read by ``read`` (a loader of :mod:`llmcal.tasks.open_tasks`) from the
    data-folder file ``stem`` (``{split}`` filled in)."""

    def load(data_dir: Path | None, split: str, extra: list[str]) -> list[OpenItem]:
        _no_extra(task, extra)
        assert data_dir is not None
        return read(_file(data_dir, stem.format(split=split), task))

    return load


_DEV = {"validation": "dev", "val": "dev"}
_VALID = {"validation": "valid", "val": "valid", "dev": "valid"}

#: Every registered task name and how to load it, multiple-choice first, then open-ended.
TASKS: dict[str, TaskSpec] = {
    "builtin": TaskSpec("builtin", "embedded questions, no data folder needed", _builtin, needs_data=False),
    "arc_easy": TaskSpec("arc_easy", "ARC-Easy (test 2376, dev 570)", _arc("arc_easy", "arc_easy"),
                         ("test", "dev"), _DEV, files=("arc_easy_test.jsonl", "arc_easy_dev.jsonl")),
    "arc_challenge": TaskSpec("arc_challenge", "ARC-Challenge (test 1172, dev 299)",
                              _arc("arc_challenge", "arc_challenge"), ("test", "dev"), _DEV,
                              files=("arc_challenge_test.jsonl", "arc_challenge_dev.jsonl")),
    "sciq": TaskSpec("sciq", "SciQ (test 1000, valid 1000)", _sciq, ("test", "valid"), _VALID,
                     files=("sciq_test.json", "sciq_valid.json")),
    "piqa": TaskSpec("piqa", "PIQA (valid 1838)", _piqa, ("valid",), _VALID,
                     files=("piqa_valid.jsonl", "piqa_valid_labels.lst")),
    "commonsenseqa": TaskSpec("commonsenseqa", "CommonsenseQA (dev 1221)", _commonsenseqa, ("dev",),
                              {"validation": "dev", "val": "dev"}, files=("commonsenseqa_dev.jsonl",)),
    "mmlu": TaskSpec("mmlu", "MMLU (test 12625 in 50 subjects; mmlu:<subject>, mmlu:<split>)", _mmlu,
                     ("test", "val", "dev"), {"validation": "val"}, files=("mmlu/",)),
    "truthfulqa_mc1": TaskSpec("truthfulqa_mc1", "TruthfulQA as MC1: best answer vs incorrect ones (817)",
                               _truthfulqa, ("test",), files=("truthfulqa.csv",)),
    "builtin_open": TaskSpec("builtin_open", "the embedded questions as open questions (every accepted "
                             "spelling), no data folder needed", _builtin_open, needs_data=False, kind="open",
                             grader="contains"),
    "nq_open": TaskSpec("nq_open", "NQ-open (dev 3610): short factual answers", _open_file(
                        "nq_open", "nq_open_{split}.jsonl", open_tasks.load_nq_open), ("dev",), _DEV, kind="open",
                        files=("nq_open_dev.jsonl",), grader="contains"),
    "gsm8k": TaskSpec("gsm8k", "GSM8K (test 1319): grade-school math, the number after ####",
                      _open_file("gsm8k", "gsm8k_{split}.jsonl", open_tasks.load_gsm8k), ("test",), kind="open",
                      files=("gsm8k_test.jsonl",), grader="numeric"),
    "truthfulqa_gen": TaskSpec("truthfulqa_gen", "TruthfulQA generation: true vs false reference answers (817)",
                               _open_file("truthfulqa_gen", "truthfulqa.csv", open_tasks.load_truthfulqa_gen),
                               ("test",), kind="open", files=("truthfulqa.csv",), grader="truthful_f1"),
}
_ALIASES = {"arc-easy": "arc_easy", "arc-challenge": "arc_challenge", "commonsense_qa": "commonsenseqa",
            "csqa": "commonsenseqa", "truthfulqa": "truthfulqa_mc1", "truthfulqa-mc1": "truthfulqa_mc1",
            "nq-open": "nq_open", "nq": "nq_open", "truthfulqa_generation": "truthfulqa_gen"}


def available_tasks(kind: str | None = None) -> list[str]:
    """The registered names :func:`load_task` loads, in registry order; only those of ``kind``
    (``"mc"`` or ``"open"``) when given."""
    _check_kind(kind)
    return [name for name, spec in TASKS.items() if kind is None or spec.kind == kind]


def describe_tasks(kind: str | None = None) -> list[dict[str, Any]]:
    """One row per registered task, for ``llmcal tasks``: ``name``, ``kind``, ``description``,
    ``source`` (the data-folder files it reads, or ``"embedded"``), ``splits``, ``grader``
    (an open task's own rule, else None) and ``aliases``."""
    rows = []
    for name in available_tasks(kind):
        t = TASKS[name]
        rows.append({
            "name": name, "kind": t.kind, "description": t.description,
            "source": ", ".join(t.files) if t.needs_data else "embedded",
            "splits": list(t.splits), "grader": t.grader,
            "aliases": sorted(a for a, n in _ALIASES.items() if n == name),
        })
    return rows


#: the task specs that are not registered names, for ``llmcal tasks``: (syntax, kind, what it reads)
OTHER_SPECS = (
    ("PATH.jsonl | PATH.json | PATH.csv", "mc", "a file in the generic format: question, choices, answer "
     "(--fields renames them; a headerless MMLU CSV is detected, header=yes|no declares it)"),
    ("PATH.jsonl | PATH.csv (no choices)", "open", "an open-ended file: question and answers (or aliases; a CSV "
     "cell joins them with '|'), graded contains"),
    ("FOLDER", "mc/open", "every .csv/.jsonl/.json file in it as one task, a subject per file (MMLU's "
     "<subject>_<split>.csv)"),
    ("mmlu:PATH | nq_open:PATH | gsm8k:PATH | truthfulqa_gen:PATH", "mc/open",
     "a registered task read from that file (mmlu: a folder or one subject CSV)"),
    ("hf:DATASET[:CONFIG]:SPLIT", "mc", "a Hugging Face dataset in the generic format (the [datasets] extra)"),
    ("lmeval:NAME[,NAME]", "mc/open", "lm-evaluation-harness tasks through its TaskManager (the [lmeval] "
     "extra; --include_path for local YAML)"),
)


def check_data_dir(data_dir: str | Path | None = None) -> tuple[Path | None, dict[str, list[str]], str | None]:
    """(the data folder, for each registered task the files it lacks there, why no folder was found).

    ``llmcal tasks --data_dir D`` prints this, so a user sees which tasks will load
    before starting a run.  Embedded tasks lack nothing.
    """
    try:
        root = resolve_data_dir(data_dir)
    except TaskError as e:
        return None, {n: list(t.files) for n, t in TASKS.items() if t.needs_data}, str(e)
    missing = {}
    for name, t in TASKS.items():
        if t.needs_data:
            missing[name] = [f for f in t.files if not (root / f.rstrip("/")).exists()
                             or (f.endswith("/") and not (root / f.rstrip("/")).is_dir())]
    return root, missing, None


def _check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)} or None, got {kind!r}")


def resolve_data_dir(data_dir: str | Path | None = None, task: str | None = None) -> Path:
    """The data folder: ``data_dir``, else ``$LLMCAL_DATA``, else ``../shared/data`` if it exists.

    Raises :class:`TaskError` saying what to set when none is found.
    """
    who = f"task {task!r}" if task else "the public tasks"
    if data_dir is not None and str(data_dir) != "":
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise TaskError(f"{who}: data folder {str(data_dir)!r} (from data_dir / --data_dir) does not exist")
        return path
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise TaskError(f"{who}: data folder {env!r} (from ${DATA_ENV}) does not exist")
        return path
    if DEFAULT_DATA_DIR.is_dir():
        return DEFAULT_DATA_DIR
    raise TaskError(f"{who} need(s) the public evaluation data, and no data folder was found: set "
                    f"{DATA_ENV}=/path/to/data or pass --data_dir (data_dir=...); "
                    f"{DEFAULT_DATA_DIR} does not exist relative to {Path.cwd()}")


def _looks_like_path(spec: str) -> bool:
    return (spec.lower().endswith((".jsonl", ".json", ".csv")) or "/" in spec or os.sep in spec
            or Path(spec).is_file())


def _unknown(name: str) -> TaskError:
    known = list(TASKS)
    close = difflib.get_close_matches(name.lower(), known + list(_ALIASES), n=1, cutoff=0.6)
    hint = f" Did you mean {_ALIASES.get(close[0], close[0])!r}?" if close else ""
    open_ended = available_tasks("open")
    return TaskError(f"unknown task {name!r}.{hint} Known tasks: {', '.join(available_tasks('mc'))} "
                     f"(open-ended, not multiple-choice: {', '.join(open_ended)}); "
                     "or a .jsonl/.json/.csv file path, or hf:<dataset>[:<split>]")


def _hf(spec: str, mapping: Mapping[str, str] | str | None) -> list[MCItem]:
    from llmcal.tasks.formats_hf import load_hf_task

    parts = spec[len("hf:"):].split(":")
    if not parts[0] or len(parts) > 3 or any(not p for p in parts):
        raise TaskError(f"task spec {spec!r}: use hf:<dataset>[:<split>] or hf:<dataset>:<config>:<split>")
    name = parts[0]
    config = parts[1] if len(parts) == 3 else None
    split = parts[-1] if len(parts) >= 2 else "test"
    return load_hf_task(name, split, config=config, mapping=mapping)


def split_fields(spec: str) -> tuple[str, str | None]:
    """``"my.csv[question=sentence,answer=label]"`` -> ``("my.csv", "question=sentence,answer=label")``:
    a file task's field mapping written after it (what ``--fields`` appends)."""
    spec = spec.strip()
    if spec.endswith("]") and "[" in spec:
        head, _, inner = spec[:-1].partition("[")
        return head.strip(), inner.strip() or None
    return spec, None


def with_fields(specs: Sequence[str], fields: str) -> tuple[str, ...]:
    """``--fields``: the mapping written after every file task (``my.csv`` -> ``my.csv[fields]``)."""
    out = tuple(f"{s}[{fields}]" if _looks_like_path(s) and not _is_registered(s) and split_fields(s)[1] is None
                else s for s in specs)
    if out == tuple(specs):
        raise TaskError(f"--fields {fields!r}: applies to data files (a .jsonl/.json/.csv path or a folder), and "
                        f"none of the tasks {', '.join(specs)} is one; a registered task has fixed fields")
    return out


#: the file each registered task reads when given a path (``nq_open:/my/nq.jsonl``)
FILE_READERS: dict[str, Callable[[Path], list[Any]]] = {
    "nq_open": open_tasks.load_nq_open, "gsm8k": open_tasks.load_gsm8k,
    "truthfulqa_gen": open_tasks.load_truthfulqa_gen,
}


def _read_given_file(key: str, path_text: str) -> list[Any]:
    """A registered task read from the file (or, for mmlu, folder or CSV) the spec names."""
    from llmcal.tasks.formats_public import load_mmlu_csv

    path = Path(path_text).expanduser()
    if not path.exists():
        raise TaskError(f"task {key!r}: the file given after the colon does not exist", source=path)
    if key == "mmlu":
        if path.is_dir():
            from llmcal.tasks.formats import load_generic

            return load_generic(path, task="mmlu")
        return load_mmlu_csv(path)
    if key not in FILE_READERS:
        raise TaskError(f"task {key!r} reads only its own data-folder files ({', '.join(TASKS[key].files) or 'embedded'}); "
                        f"give another file by its path alone (generic format, docs/tasks.md), or use one of "
                        f"{', '.join(['mmlu', *FILE_READERS])} with a path after the colon", source=path)
    if path.is_dir():
        raise TaskError(f"task {key!r}: expected a file after the colon, got a folder", source=path)
    return FILE_READERS[key](path)


def _generic(spec: str, data_dir: str | Path | None, mapping: Mapping[str, str] | str | None) -> list[MCItem]:
    from llmcal.tasks.formats import GENERIC_SUFFIXES, load_generic

    path = Path(spec).expanduser()
    if not path.is_file() and not path.is_absolute():
        # a relative name may also be meant inside the data folder
        for base in [data_dir, os.environ.get(DATA_ENV) or None]:
            if base and (Path(base) / path).is_file():
                path = Path(base) / path
                break
    if not path.exists():
        raise TaskError("task file not found", source=spec)
    if path.is_dir():  # a folder of CSV / JSONL files (MMLU's subject files): one task, a subject each
        return load_generic(path, mapping=mapping)
    if path.suffix.lower() not in GENERIC_SUFFIXES:
        raise TaskError(f"cannot read a {path.suffix or 'suffix-less'} file as a task; "
                        f"use {', '.join(GENERIC_SUFFIXES)} (see docs/tasks.md)", source=path)
    return load_generic(path, mapping=mapping)


def _split_name(spec: str) -> tuple[str, list[str], str | None]:
    """``"nq_open:dev@exact_match"`` -> ``("nq_open", ["dev"], "exact_match")``, the name lower-cased
    with aliases resolved (not checked against :data:`TASKS`)."""
    grader = None
    if "@" in spec:
        spec, grader = spec.split("@", 1)
        grader = grader.strip()
    name, *extra = [p.strip() for p in spec.split(":")]
    key = name.lower()
    return _ALIASES.get(key, key), extra, grader


def _is_registered(spec: str) -> bool:
    return _split_name(spec)[0] in TASKS


def task_name(spec: str) -> str | None:
    """The registered task a spec names (aliases resolved; ``nq@exact_match`` -> ``"nq_open"``),
    or None for a file path, an ``hf:`` dataset or an unknown name.  Reads no data."""
    spec = spec.strip()
    if not spec or spec.lower().startswith("hf:"):
        return None
    key = _split_name(spec)[0]
    return key if key in TASKS else None


def task_kind(spec: str, lmeval: Any | None = None) -> str:
    """``"mc"`` or ``"open"``: what :func:`load_task` would return for ``spec``, without reading data.

    Files and ``hf:`` datasets are multiple-choice (the generic format); an
    ``lmeval:`` task is what its YAML's ``output_type`` says (``lmeval`` = its
    :class:`~llmcal.tasks.lmeval.LmevalOptions`); an unknown name raises the same
    :class:`TaskError` as :func:`load_task`.
    """
    spec = spec.strip()
    if not spec:
        raise TaskError("empty task spec; known tasks: " + ", ".join(available_tasks()))
    if spec.lower() in TASK_GROUPS:
        return "mc"
    if spec.lower().startswith("lmeval:"):
        from llmcal.tasks.lmeval import lmeval_kind

        return lmeval_kind(spec, lmeval)
    name = task_name(spec)
    if name is not None:
        return TASKS[name].kind
    if spec.lower().startswith("hf:"):
        return "mc"
    path_spec, written = split_fields(spec)
    if _looks_like_path(path_spec):
        from llmcal.tasks.formats import generic_kind

        path = Path(path_spec).expanduser()
        return generic_kind(path, written) if path.exists() else "mc"
    raise _unknown(spec.split("@")[0].split(":")[0].strip())


def _check_graders(spec: str, items: list[Item]) -> None:
    """Every open item's grader must be one :mod:`llmcal.tasks.graders` knows (core cannot check it)."""
    from llmcal.tasks.graders import GRADERS

    for it in items:
        if isinstance(it, OpenItem) and it.grader not in GRADERS:
            raise TaskError(f"task {spec!r}: item {it.id!r} names the unknown grader {it.grader!r}; "
                            f"graders: {', '.join(GRADERS)}")


def prompt_limit(max_prompt_chars: int | None = None) -> int:
    """The item length limit in characters: the argument, else ``$LLMCAL_MAX_PROMPT_CHARS``, else
    :data:`MAX_PROMPT_CHARS`."""
    if max_prompt_chars is None:
        env = os.environ.get(MAX_PROMPT_ENV, "").strip()
        if not env:
            return MAX_PROMPT_CHARS
        if not env.isdigit() or int(env) < 1:
            raise TaskError(f"${MAX_PROMPT_ENV}={env!r}: must be a whole number of characters >= 1")
        return int(env)
    if isinstance(max_prompt_chars, bool) or not isinstance(max_prompt_chars, int) or max_prompt_chars < 1:
        raise TaskError(f"max_prompt_chars must be a whole number >= 1, got {max_prompt_chars!r}")
    return max_prompt_chars


def item_chars(item: Item) -> int:
    """What an item puts into a prompt, in characters: the question and every choice."""
    return len(item.question) + sum(len(c) for c in getattr(item, "choices", ()) or ())


def check_prompt_length(items: Sequence[Item], limit: int, spec: str) -> None:
    """:class:`TaskError` naming the first item longer than ``limit`` characters (and its file and line)."""
    for it in items:
        n = item_chars(it)
        if n > limit:
            meta = it.meta if isinstance(getattr(it, "meta", None), Mapping) else {}
            line = meta.get("line") if isinstance(meta.get("line"), int) else None
            raise TaskError(f"task {spec!r}: item {it.id!r} is {n} characters long (question and choices), over "
                            f"the limit of {limit}; set ${MAX_PROMPT_ENV} (or max_prompt_chars=) to raise it",
                            source=meta.get("source") if line is not None else None, line=line,
                            field="question")


def _wrong_kind(spec: str, key: str | None, kind: str) -> TaskError:
    if kind == "mc":
        return TaskError(f"task {key!r} is an open-ended task, not multiple-choice: `llmcal run --tasks {key}` "
                         "generates and grades answers (llmcal.tasks.registry.load_task)")
    return TaskError(f"{spec!r} is not an open-ended task; open tasks: {', '.join(available_tasks('open'))}")


#: Named task groups (``--tasks mix``): the default calibration mix, the built-in task and every public
#: multiple-choice set llmcal reads, balanced per task (docs/transfer.md, "A default calibration mix").
TASK_GROUPS: dict[str, tuple[str, ...]] = {
    "mix": ("builtin", "arc_easy", "arc_challenge", "sciq", "piqa", "commonsenseqa", "mmlu", "truthfulqa_mc1"),
}
#: Items taken from each member of a group when no limit is given.
GROUP_PER_TASK = 200


def _load_group(name: str, data_dir: str | Path | None, limit: int | None, kind: str | None,
                max_prompt_chars: int | None) -> list[Item]:
    """A task group, balanced: ``limit`` (default :data:`GROUP_PER_TASK`) items from every member,
    evenly spaced over each member's file (so MMLU's subjects all appear, not only the first ones)."""
    if kind == "open":
        raise _wrong_kind(name, None, "open")
    n = GROUP_PER_TASK if limit is None else limit
    items: list[Item] = []
    for member in TASK_GROUPS[name]:
        got = load_task(member, data_dir=data_dir, max_prompt_chars=max_prompt_chars)
        if len(got) < n:
            raise TaskError(f"task group {name!r}: {member} has {len(got)} items, fewer than the {n} taken from "
                            f"each member; lower --limit to at most {len(got)} to keep the mix balanced")
        step = len(got) / n
        items.extend(got[int(i * step)] for i in range(n))
    return items


def load_task(
    spec: str,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    mapping: Mapping[str, str] | str | None = None,
    *,
    kind: str | None = None,
    max_prompt_chars: int | None = None,
    lmeval: Any | None = None,
) -> list[MCItem] | list[OpenItem]:
    """The items of one task spec (a name, ``name:split``, ``name@grader``, a file path or ``hf:...``),
    all validated: :class:`MCItem` for a multiple-choice task, :class:`OpenItem` for an open one.

    ``limit`` keeps the first N items (after every record has been checked).
    ``mapping`` renames the fields of a generic file or ``hf:`` dataset
    (``{"question": "stem", ...}`` or ``"question=stem,..."``); a registered
    task has fixed fields and refuses one.  ``@grader`` (open tasks only)
    grades with another rule of :mod:`llmcal.tasks.graders`.  ``kind``
    (``"mc"`` or ``"open"``) refuses a spec of the other kind before reading
    anything, for callers that handle one kind only.  ``max_prompt_chars``
    (default ``$LLMCAL_MAX_PROMPT_CHARS``, else :data:`MAX_PROMPT_CHARS`) refuses
    an item whose question and choices are longer, naming it.  ``lmeval`` holds
    lm-eval's request options (:class:`~llmcal.tasks.lmeval.LmevalOptions`) for an
    ``lmeval:`` spec, whose multiple-choice tasks load here; its ``generate_until``
    tasks are answered through :func:`llmcal.tasks.lmeval.load_lmeval_tasks` instead.
    """
    _check_kind(kind)
    limit_chars = prompt_limit(max_prompt_chars)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TaskError(f"limit must be a positive whole number, got {limit!r}")
    spec = spec.strip()
    if not spec:
        raise TaskError("empty task spec; known tasks: " + ", ".join(available_tasks()))
    if spec.lower() in TASK_GROUPS:
        return _load_group(spec.lower(), data_dir, limit, kind, max_prompt_chars)
    if spec.lower().startswith("lmeval:"):
        from llmcal.tasks.lmeval import load_lmeval_tasks

        if mapping:
            raise TaskError(f"task {spec!r}: an lm-eval task maps its fields in its YAML, not with a mapping")
        items = []
        for t in load_lmeval_tasks(spec, lmeval, limit=limit):
            if kind is not None and t.kind != kind:
                raise _wrong_kind(spec, t.name, kind)
            # generate_until documents are answered by llmcal.pipeline.lmeval_generate, graded by lm-eval
            items.extend(t.mc_items() if t.kind == "mc" else t.open_items())
    elif spec.lower().startswith("hf:"):
        if kind == "open":
            raise _wrong_kind(spec, None, "open")
        items: list[Any] = _hf(spec, mapping)
    elif not _is_registered(spec) and _looks_like_path(split_fields(spec)[0]):
        path_spec, written = split_fields(spec)
        if written and mapping:
            raise TaskError(f"task {spec!r}: fields given twice (after the path and as a mapping)")
        items = _generic(path_spec, data_dir, written or mapping)
        if kind is not None and items and items[0].kind != kind:
            raise _wrong_kind(spec, path_spec, kind)
        _check_graders(spec, items)
    else:
        key, extra, grader = _split_name(spec)
        if key not in TASKS:
            raise _unknown(spec.split("@")[0].split(":")[0].strip())
        task = TASKS[key]
        if kind is not None and task.kind != kind:
            raise _wrong_kind(spec, key, kind)
        if mapping:
            raise TaskError(f"task {key!r}: a field mapping applies only to files and hf: datasets")
        if grader is not None:
            from llmcal.tasks.graders import GRADERS

            if task.kind != "open":
                raise TaskError(f"task {spec!r}: a grader (@{grader}) applies only to open-ended tasks; "
                                f"open tasks: {', '.join(available_tasks('open'))}")
            if grader not in GRADERS:
                raise TaskError(f"task {spec!r}: unknown grader {grader!r}; graders: {', '.join(GRADERS)}")
        given = next((i for i, part in enumerate(extra) if part and _looks_like_path(part)), None)
        if given is not None:
            items = _read_given_file(key, ":".join(extra[given:]))
            if grader is not None:
                items = [replace(it, grader=grader) for it in items]
            _check_graders(spec, items)
            check_prompt_length(items, limit_chars, spec)
            return items if limit is None else items[:limit]
        for part in extra:
            if part and _looks_like_path(part):
                raise TaskError(f"task {key!r}: {part!r} after the colon looks like a file path; a registered task "
                                f"reads only its own data-folder file{'s' if len(task.files) > 1 else ''} "
                                f"({', '.join(task.files) or 'embedded'}), splits: "
                                f"{', '.join(task.splits) or 'none'}. A multiple-choice file is given by its "
                                "path alone (docs/tasks.md); other open-ended files are not read")
        split = task.default_split
        if extra and task.splits:
            cand = task.split_aliases.get(extra[-1].lower(), extra[-1].lower())
            if cand in task.splits:
                split, extra = cand, extra[:-1]
            elif key != "mmlu" or len(extra) > 1:
                raise TaskError(f"task {key!r}: unknown split {extra[-1]!r}; splits: {', '.join(task.splits)}")
        data = resolve_data_dir(data_dir, key) if task.needs_data else None
        assert task.loader is not None
        items = list(task.loader(data, split, extra))
        if grader is not None:
            items = [replace(it, grader=grader) for it in items]
        _check_graders(spec, items)
    check_prompt_length(items, limit_chars, spec)
    return items if limit is None else items[:limit]
