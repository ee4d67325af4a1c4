"""Multiple-choice items from a Hugging Face ``datasets`` split, read in the generic format.

``datasets`` is an optional extra (``pip install 'llmcal[datasets]'``); it is
imported only when this loader runs.  Rows are read like generic JSON
records (see ``docs/tasks.md``): ``question``, ``choices`` (a list, or
``{"text": [...], "label": [...]}`` as in ``allenai/ai2_arc`` and
``tau/commonsense_qa``) and ``answer`` (or ``answerKey`` / ``label``), renamed
with a mapping where a dataset uses other names, e.g. PIQA:
``question=goal,choices=sol1|sol2,answer=label``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from llmcal.tasks.errors import TaskError
from llmcal.tasks.formats import parse_mapping, records_to_items
from llmcal.core.items import MCItem


def hf_source(name: str, split: str, config: str | None = None) -> str:
    """How errors name a dataset split: ``hf:name[config]:split``."""
    return f"hf:{name}{f'[{config}]' if config else ''}:{split}"


def load_hf_task(
    name: str,
    split: str = "test",
    config: str | None = None,
    mapping: str | Mapping[str, str] | None = None,
    *,
    task: str | None = None,
    data_files: Any = None,
    **load_kwargs: Any,
) -> list[MCItem]:
    """Items from ``datasets.load_dataset(name, config, split=split, ...)``, all checked first.

    ``data_files`` and other keyword arguments go to ``load_dataset`` (so
    ``load_hf_task("json", "train", data_files="my.jsonl")`` reads a local
    file through ``datasets``).  ``task`` defaults to the dataset's last name
    part (plus ``_<config>``), or for a local ``data_files`` path to its stem.  Errors name ``hf:<name>[<config>]:<split> row N``
    (1-based).
    """
    source = hf_source(name, split, config)
    parsed = parse_mapping(mapping)  # a bad mapping fails before anything is downloaded
    try:
        import datasets
    except ImportError as e:
        raise TaskError("the Hugging Face `datasets` package is not installed; "
                        "pip install 'llmcal[datasets]' (or: pip install datasets)", source=source) from e
    kwargs = dict(load_kwargs)
    if data_files is not None:
        kwargs["data_files"] = data_files
    try:
        ds = datasets.load_dataset(name, config, split=split, **kwargs)
    except Exception as e:  # network, unknown dataset or split, bad config: one clear error
        raise TaskError(f"datasets.load_dataset failed: {type(e).__name__}: {e}", source=source) from e
    if not hasattr(ds, "__iter__") or isinstance(ds, Mapping):
        raise TaskError("load_dataset returned several splits; name one", source=source)
    if task is None:
        if isinstance(data_files, (str, PurePath)) and name in ("json", "csv", "parquet", "arrow"):
            task = PurePath(data_files).stem  # a local file read through datasets
        else:
            task = name.rstrip("/").split("/")[-1] + (f"_{config}" if config else "")
    return records_to_items(((i, row) for i, row in enumerate(ds, 1)), task=task, source=source,
                            mapping=parsed, unit="row")
