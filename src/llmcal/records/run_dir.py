"""The records of one run: a folder, written batch by batch, that survives ``kill -9``.

Layout of ``runs/<name>/`` (lm-eval's output folder, plus what calibration needs)::

    config.json          what was asked (model, tasks, prompt style, dtype, seed)
    samples.jsonl        one line an item: prompt, choices, prediction, every signal
    hidden_states.bin    float32 rows (n_items, n_positions * n_layers_kept, hidden), row i <-> "hidden_row": i
                         (positions: the last prompt token, the mean over the predicted answer's tokens)
    hidden_states.json   the shape, dtype and positions of those rows
    results.json         metrics before/after calibration (versioned schema)
    calibration.json     the fitted calibrators, reloadable
    report.html          the self-contained report

Crash safety: each batch appends its hidden-state rows first, then its sample
lines, and fsyncs both.  On reopening, a torn last line (the process died
mid-write) is dropped and the hidden-state file is cut back to one row per
kept sample, so rerunning the same command redoes only the unfinished items
and never duplicates one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from llmcal.core.sample import Sample, SampleError

SCHEMA_VERSION = 1


class RunDirError(ValueError):
    """A run folder that cannot be resumed as asked."""


class RunDir:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    # ------------------------------------------------------------ files
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def samples_path(self) -> Path:
        return self.path / "samples.jsonl"

    @property
    def hidden_path(self) -> Path:
        return self.path / "hidden_states.bin"

    @property
    def hidden_meta_path(self) -> Path:
        return self.path / "hidden_states.json"

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    @property
    def calibration_path(self) -> Path:
        return self.path / "calibration.json"

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    # ------------------------------------------------------------ config
    def start(self, config: dict[str, Any], identity_keys: Iterable[str], overwrite: bool = False) -> bool:
        """Create the folder or check that it belongs to the same run.

        Returns True when earlier samples exist and will be resumed.  A folder
        made by a run with a different identity (model, tasks, style, ...) is
        refused, naming the field that differs, unless ``overwrite``.
        """
        if overwrite and self.config_path.exists():
            # only a folder that a run made (it has config.json) is cleared, with everything in it
            import shutil

            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        if self.config_path.exists():
            old = json.loads(self.config_path.read_text())
            for key in identity_keys:
                if old.get(key) != config.get(key):
                    raise RunDirError(
                        f"{self.config_path}: field {key!r} was {old.get(key)!r} in the earlier run, "
                        f"now {config.get(key)!r}; use another --output_path or --overwrite"
                    )
            config = {**old, **config}  # keep what the earlier run learned (e.g. the backend)
        self.write_config(config)
        return self.samples_path.exists() and self.samples_path.stat().st_size > 0

    def write_config(self, config: dict[str, Any]) -> None:
        """Replace config.json atomically (a kill at any moment leaves the old or the new file, never half)."""
        self.write_json(self.config_path, config, sort_keys=True)

    def config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            raise RunDirError(f"{self.path}: no config.json; is this a run folder made by `llmcal run`?")
        return json.loads(self.config_path.read_text())

    # ------------------------------------------------------------ samples
    def repair(self) -> list[Sample]:
        """Read and validate the samples, dropping a torn last line and extra hidden rows.

        Every complete line is checked as a :class:`~llmcal.core.sample.Sample`; a bad one
        stops the read with ``samples.jsonl line N: field 'x': ...`` and changes nothing.
        """
        samples: list[Sample] = []
        if not self.samples_path.exists():
            self._truncate_hidden(0)
            return samples
        raw = self.samples_path.read_bytes()
        good_end = 0
        lines = raw.split(b"\n")
        for i, line in enumerate(lines):
            is_last = i == len(lines) - 1
            if not line.strip():
                if not is_last:
                    good_end += len(line) + 1
                continue
            try:
                rec = json.loads(line)
                complete = not is_last  # a line without its newline was torn
            except json.JSONDecodeError:
                if is_last or all(not rest.strip() for rest in lines[i + 1:]):
                    break  # torn final write: drop it
                raise RunDirError(f"{self.samples_path} line {i + 1}: not valid JSON") from None
            if not complete:
                break
            try:
                samples.append(Sample.from_dict(rec, where=f"{self.samples_path} line {i + 1}"))
            except SampleError as err:
                raise RunDirError(str(err)) from None
            good_end += len(line) + 1
        if good_end != len(raw):
            with open(self.samples_path, "r+b") as f:
                f.truncate(good_end)
        self._truncate_hidden(len(samples))
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            raise RunDirError(f"{self.samples_path}: duplicate item ids; the folder was edited by hand")
        return samples

    def read_samples(self) -> list[Sample]:
        if not self.samples_path.exists():
            raise RunDirError(f"{self.path}: no samples.jsonl; run `llmcal measure` first")
        return self.repair()

    def append(self, samples: list[Sample], hidden: np.ndarray | None,
               positions: list[str] | None = None) -> None:
        """Append one batch: hidden rows, then sample lines, both fsynced.

        ``positions`` names the token positions a row holds, each for every kept
        layer (default: the last prompt token only).
        """
        if hidden is not None:
            hidden = np.ascontiguousarray(hidden, dtype=np.float32)
            self._write_hidden_meta(hidden.shape[1:], positions or ["last_prompt"])
            with open(self.hidden_path, "ab") as f:
                f.write(hidden.tobytes())
                f.flush()
                os.fsync(f.fileno())
        with open(self.samples_path, "a", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps(s.to_dict(), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # ------------------------------------------------------------ hidden states
    def _write_hidden_meta(self, row_shape: tuple[int, ...], positions: list[str]) -> None:
        meta = {"dtype": "float32", "row_shape": list(row_shape), "positions": list(positions)}
        if self.hidden_meta_path.exists():
            old = json.loads(self.hidden_meta_path.read_text())
            if old != meta:
                raise RunDirError(f"{self.hidden_meta_path}: row shape {old} differs from {meta}")
            return
        self.hidden_meta_path.write_text(json.dumps(meta))

    def _row_bytes(self) -> int | None:
        if not self.hidden_meta_path.exists():
            return None
        meta = json.loads(self.hidden_meta_path.read_text())
        return int(np.prod(meta["row_shape"])) * 4

    def _truncate_hidden(self, n_rows: int) -> None:
        row = self._row_bytes()
        if row is None or not self.hidden_path.exists():
            return
        size = self.hidden_path.stat().st_size
        if size < n_rows * row:
            raise RunDirError(
                f"{self.hidden_path}: holds {size // row} rows but samples.jsonl has {n_rows}"
            )
        if size > n_rows * row:
            with open(self.hidden_path, "r+b") as f:
                f.truncate(n_rows * row)

    def hidden_positions(self) -> list[str]:
        """What the hidden rows hold, in slot order (each for every kept layer)."""
        if not self.hidden_meta_path.exists():
            return []
        return list(json.loads(self.hidden_meta_path.read_text()).get("positions", ["last_prompt"]))

    def load_hidden(self) -> np.ndarray:
        """All hidden-state rows, (n_items, n_positions * n_layers_kept, hidden), memory-mapped."""
        if not self.hidden_meta_path.exists():
            raise RunDirError(f"{self.path}: this run kept no hidden states")
        meta = json.loads(self.hidden_meta_path.read_text())
        shape = tuple(meta["row_shape"])
        n = self.hidden_path.stat().st_size // (int(np.prod(shape)) * 4)
        return np.memmap(self.hidden_path, dtype=np.float32, mode="r", shape=(n, *shape))

    # ------------------------------------------------------------ results
    def write_json(self, path: Path, payload: dict[str, Any], sort_keys: bool = False) -> None:
        """Write a JSON file atomically: a temporary file, fsynced, then renamed over the old one."""
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(payload, indent=2, sort_keys=sort_keys, default=_json_default))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
