"""Task names -> loaders, and :func:`load_task`, the one entry point the pipeline uses.

A task spec is one of

* a registered name, optionally with a split or subject: ``arc_easy``,
  ``arc_easy:dev``, ``sciq:valid``, ``mmlu``, ``mmlu:anatomy:val`` (see
  :data:`TASKS` / :func:`available_tasks`);
* a path to a ``.jsonl``, ``.json`` or ``.csv`` file in the generic format;
* ``hf:<dataset>[:<split>]`` or ``hf:<dataset>:<config>:<split>``, read with
  Hugging Face ``datasets``.

The public sets are read from a data folder: the ``data_dir`` argument, else
``$LLMCAL_DATA``, else ``../shared/data`` relative to the working directory.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llmcal.tasks.errors import TaskError
from llmcal.tasks.item import MCItem

DATA_ENV = "LLMCAL_DATA"
DEFAULT_DATA_DIR = Path("..") / "shared" / "data"

# a loader gets (data folder or None, split, extra spec parts) and returns items
Loader = Callable[[Path | None, str, list[str]], list[MCItem]]


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: how to load it and which splits it has (the first is the default)."""

    name: str
    description: str
    loader: Loader | None
    splits: tuple[str, ...] = ()
    split_aliases: Mapping[str, str] = field(default_factory=dict)
    needs_data: bool = True
    open_ended: bool = False
    files: tuple[str, ...] = ()

    @property
    def default_split(self) -> str:
        return self.splits[0] if self.splits else ""


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


def _open_ended(task: str) -> Loader:
    def load(data_dir: Path | None, split: str, extra: list[str]) -> list[MCItem]:
        raise TaskError(f"task {task!r} is an open-ended task, not multiple-choice: `llmcal run --tasks {task}` "
                        "generates and grades answers (llmcal.tasks.open_tasks.load_open_task)")

    return load


_DEV = {"validation": "dev", "val": "dev"}
_VALID = {"validation": "valid", "val": "valid", "dev": "valid"}

#: Every registered task name and how to load it.
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
    "gsm8k": TaskSpec("gsm8k", "GSM8K (open-ended, not multiple-choice)", _open_ended("gsm8k"),
                      ("test",), open_ended=True, files=("gsm8k_test.jsonl",)),
    "nq_open": TaskSpec("nq_open", "NQ-open (open-ended, not multiple-choice)", _open_ended("nq_open"),
                        ("dev",), open_ended=True, files=("nq_open_dev.jsonl",)),
}
_ALIASES = {"arc-easy": "arc_easy", "arc-challenge": "arc_challenge", "commonsense_qa": "commonsenseqa",
            "csqa": "commonsenseqa", "truthfulqa": "truthfulqa_mc1", "truthfulqa-mc1": "truthfulqa_mc1",
            "nq-open": "nq_open", "nq": "nq_open"}


def available_tasks() -> list[str]:
    """The names :func:`load_task` loads (multiple-choice tasks), in registry order."""
    return [name for name, spec in TASKS.items() if not spec.open_ended]


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
    open_ended = [n for n, t in TASKS.items() if t.open_ended]
    return TaskError(f"unknown task {name!r}.{hint} Known tasks: {', '.join(available_tasks())} "
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
    if path.suffix.lower() not in GENERIC_SUFFIXES:
        raise TaskError(f"cannot read a {path.suffix or 'suffix-less'} file as a task; "
                        f"use {', '.join(GENERIC_SUFFIXES)} (see docs/tasks.md)", source=path)
    return load_generic(path, mapping=mapping)


def load_task(
    spec: str,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    mapping: Mapping[str, str] | str | None = None,
) -> list[MCItem]:
    """The items of one task spec (a name, ``name:split``, a file path or ``hf:...``), all validated.

    ``limit`` keeps the first N items (after every record has been checked).
    ``mapping`` renames the fields of a generic file or ``hf:`` dataset
    (``{"question": "stem", ...}`` or ``"question=stem,..."``); a registered
    task has fixed fields and refuses one.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TaskError(f"limit must be a positive whole number, got {limit!r}")
    spec = spec.strip()
    if not spec:
        raise TaskError("empty task spec; known tasks: " + ", ".join(available_tasks()))
    if spec.lower().startswith("hf:"):
        items = _hf(spec, mapping)
    elif spec.split(":")[0].lower() not in TASKS and spec.split(":")[0].lower() not in _ALIASES \
            and _looks_like_path(spec):
        items = _generic(spec, data_dir, mapping)
    else:
        name, *extra = [p.strip() for p in spec.split(":")]
        key = name.lower()
        key = _ALIASES.get(key, key)
        if key not in TASKS:
            raise _unknown(name)
        task = TASKS[key]
        if mapping:
            raise TaskError(f"task {key!r}: a field mapping applies only to files and hf: datasets")
        split = task.default_split
        if extra and task.splits:
            cand = task.split_aliases.get(extra[-1].lower(), extra[-1].lower())
            if cand in task.splits:
                split, extra = cand, extra[:-1]
            elif key != "mmlu" or len(extra) > 1:
                raise TaskError(f"task {key!r}: unknown split {extra[-1]!r}; splits: {', '.join(task.splits)}")
        data = resolve_data_dir(data_dir, key) if task.needs_data and not task.open_ended else None
        assert task.loader is not None
        items = task.loader(data, split, extra)
    return items if limit is None else items[:limit]
