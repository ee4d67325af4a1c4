"""The records of one run: a folder, written batch by batch, that survives ``kill -9``.

Layout of ``runs/<name>/`` (lm-eval's output folder, plus what calibration needs)::

    config.json           what was asked (model, tasks, prompt style, dtype, seed)
    samples.jsonl         one line an item: prompt, choices, prediction, every signal
    hidden_states.bin     float32 rows (n_items, n_positions * n_layers_kept, hidden), row i <-> "hidden_row": i
                          (positions: the last prompt token, the mean over the predicted answer's tokens)
    hidden_states.json    the shape, dtype and positions of those rows, and a CRC-32 of each row
    results.json          metrics before/after calibration (versioned schema)
    calibration.json      the fitted calibrators, reloadable
    report.html           the self-contained report
    .llmcal-manifest.json the files llmcal wrote here (``--overwrite`` removes those and nothing else)
    .llmcal.lock          the lock a writer holds (its pid inside)

Crash safety: every JSON file and the report are written atomically (a temporary file,
fsynced, renamed over the old one), so a kill at any moment leaves the old or the new
file, never half of one.  Each batch appends its hidden-state rows first, then their
checksums (hidden_states.json, atomically), then its sample lines, fsyncing each.  On
reopening, a torn last line (the process died mid-write) is dropped and the hidden-state
file is cut back to one row per kept sample, so rerunning the same command redoes only
the unfinished items and never duplicates one.  Every kept row is checked against its
checksum on resume and on load: a damaged or deleted ``hidden_states.bin`` is an error
naming the file, never NaNs in a probe.

Locking: a process that writes the folder (measure, calibrate, probe, report, import)
holds an exclusive ``fcntl.flock`` on ``.llmcal.lock`` (:meth:`RunDir.lock`); a second
writer is refused at once with the holder's pid.  Readers (:meth:`RunDir.read_samples`,
:func:`llmcal.load_run`) take a shared lock, so they are refused while a writer works
and never cut its rows.  Locks nest within a process.

Fault injection: ``LLMCAL_FAULT=<point>[:<n>]`` ends the process with ``os._exit`` the
n-th time (default the first) it reaches a named write point (:data:`FAULT_POINTS`); the
fault-injection tests (``tests/test_faults.py``) use it to stand for ``kill -9``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from llmcal.core.files import FAULT_EXIT, atomic_write_bytes, fault  # noqa: F401  (FAULT_EXIT: re-exported)
from llmcal.core.sample import Sample, SampleError

SCHEMA_VERSION = 1
MANIFEST = ".llmcal-manifest.json"
LOCK = ".llmcal.lock"
#: Names llmcal writes into a run folder; a folder of only these (with config.json) is llmcal's.
KNOWN_FILES = frozenset({
    "config.json", "samples.jsonl", "hidden_states.bin", "hidden_states.json", "results.json",
    "calibration.json", "report.html", "probe_results.json", "probe.json", "probe.npz", "pairs.jsonl",
    MANIFEST, LOCK,
})
#: The named write points of ``LLMCAL_FAULT`` (see the module docstring).
FAULT_POINTS = ("in_config_write", "in_manifest_write", "in_json_write", "after_hidden_append",
                "in_hidden_meta_write", "after_hidden_meta", "in_samples_append", "after_samples_append")


class RunDirError(ValueError):
    """A run folder that cannot be resumed as asked."""


class RunDirBusy(RunDirError):
    """The run folder is locked by another process."""


# ------------------------------------------------------------------ JSON files
def read_json_file(path: Path, what: str = "file") -> Any:
    """A JSON file, or a :class:`RunDirError` naming it (bad UTF-8, bad JSON, nested too deeply)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise RunDirError(f"{path}: cannot be read ({err.strerror})") from None
    return parse_json_bytes(raw, str(path), what)


def parse_json_bytes(raw: bytes, where: str, what: str = "file") -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RunDirError(f"{where}: not UTF-8 text (byte {err.start}); the {what} is damaged") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RunDirError(f"{where}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                          f"the {what} is damaged") from None
    except RecursionError:
        raise RunDirError(f"{where}: JSON nested too deeply to read; the {what} is damaged") from None


# ------------------------------------------------------------------ locks
class _Held:
    """One process's lock on one folder: the open lock file, its mode and how many hold it."""

    def __init__(self, fd: int, exclusive: bool, created_file: bool, created_folder: bool) -> None:
        self.fd, self.exclusive, self.count = fd, exclusive, 0
        self.created_file, self.created_folder = created_file, created_folder


_HELD: dict[str, _Held] = {}


def _holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    pid, _, cmd = text.partition(" ")
    if pid.isdigit():
        return f"pid {pid}" + (f" ({cmd})" if cmd else "")
    return "another process"


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

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK

    # ------------------------------------------------------------ locking
    def _key(self) -> str:
        return str(self.path.resolve())

    @contextlib.contextmanager
    def lock(self, exclusive: bool = True) -> Iterator["RunDir"]:
        """Hold the folder's lock (exclusive: a writer; shared: a reader) for the ``with`` block.

        A writer creates the folder when it is missing.  Another process's conflicting
        lock is refused at once (:class:`RunDirBusy`, naming its pid).  Within one
        process the lock nests (a shared holder may take it exclusively).
        """
        import fcntl

        key = self._key()
        held = _HELD.get(key)
        upgraded = False
        if held is None:
            created_folder = False
            if not self.path.exists():
                if not exclusive:
                    yield self  # nothing to read yet: the reader's own error follows
                    return
                self.path.mkdir(parents=True)
                created_folder = True
            elif not self.path.is_dir():
                raise RunDirError(f"{self.path}: exists and is not a folder")
            try:
                fd, created_file = self._acquire(exclusive)
            except BaseException:
                if created_folder:
                    with contextlib.suppress(OSError):
                        self.lock_path.unlink()
                        self.path.rmdir()
                raise
            held = _HELD[key] = _Held(fd, exclusive, created_file, created_folder)
            if exclusive:
                self._stamp(fd)
        elif exclusive and not held.exclusive:
            if held.fd < 0:
                raise RunDirError(f"{self.path}: cannot be written (a read-only folder)")
            try:
                fcntl.flock(held.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise self._busy(True) from None
            held.exclusive = upgraded = True
            self._stamp(held.fd)
        held.count += 1
        try:
            yield self
        finally:
            held.count -= 1
            if upgraded:
                fcntl.flock(held.fd, fcntl.LOCK_SH)
                held.exclusive = False
            if held.count == 0:
                self._release(key, held)

    def _acquire(self, exclusive: bool) -> tuple[int, bool]:
        """Open and flock the lock file (non-blocking); (fd, whether this call created the file)."""
        import fcntl

        for _ in range(5):
            created_file = not self.lock_path.exists()
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except PermissionError as err:
                if exclusive:
                    raise RunDirError(f"{self.path}: cannot be written ({err.strerror})") from None
                try:  # a read-only folder: lock the file where there is one, else read unlocked
                    fd = os.open(self.lock_path, os.O_RDONLY)
                except OSError:
                    return -1, False
            except OSError as err:
                if exclusive or err.errno != errno.EROFS:
                    raise RunDirError(f"{self.path}: cannot be locked ({err.strerror})") from None
                return -1, False
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise self._busy(exclusive) from None
            st = os.fstat(fd)
            try:
                cur = os.stat(self.lock_path)
            except FileNotFoundError:
                cur = None
            if cur is not None and (cur.st_ino, cur.st_dev) == (st.st_ino, st.st_dev):
                return fd, created_file
            os.close(fd)  # the holder removed the file as we opened it: take the new one
        raise RunDirBusy(f"{self.path}: its lock file keeps changing; another process is starting or ending a run")

    def _stamp(self, fd: int) -> None:
        prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
        cmd = f"llmcal {sys.argv[1]}" if prog in ("llmcal", "__main__.py") and len(sys.argv) > 1 else "llmcal"
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {cmd}\n".encode(), 0)

    def _busy(self, exclusive: bool) -> RunDirBusy:
        who = _holder(self.lock_path)
        if exclusive and self._readers_only():
            return RunDirBusy(f"{self.path} is being read by another process (load_run, serve, probe); "
                              "wait for it or use another --output_path")
        return RunDirBusy(f"{self.path} is being written by {who}; wait for it or use another --output_path")

    def _readers_only(self) -> bool:
        import fcntl

        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def _release(self, key: str, held: _Held) -> None:
        del _HELD[key]
        if held.fd < 0:
            return  # a read-only folder, read unlocked
        if not self.manifest_path.exists():
            # llmcal wrote nothing here: leave the folder as it was found
            with contextlib.suppress(OSError):
                if held.created_file:
                    self.lock_path.unlink()
                if held.created_folder:
                    self.path.rmdir()
        os.close(held.fd)

    def holds_lock(self, exclusive: bool = True) -> bool:
        held = _HELD.get(self._key())
        return held is not None and (held.exclusive or not exclusive)

    # ------------------------------------------------------------ the manifest
    def _manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        m = read_json_file(self.manifest_path, "manifest")
        if not isinstance(m, dict) or not isinstance(m.get("files"), list):
            raise RunDirError(f"{self.manifest_path}: not an llmcal manifest (expected an object with 'files')")
        return m

    def _track(self, *names: str) -> None:
        """Record in the manifest that llmcal wrote these files here."""
        m = self._manifest()
        if m is None:
            held = _HELD.get(self._key())
            m = {"llmcal_manifest": 1, "created_folder": bool(held and held.created_folder), "files": [LOCK]}
        files = set(m["files"])
        if all(n in files for n in names):
            return
        m["files"] = sorted(files | set(names))
        atomic_write_bytes(self.manifest_path, json.dumps(m, indent=1).encode(), point="in_manifest_write")

    def is_llmcal_folder(self) -> bool:
        """Whether llmcal made this folder's contents (its manifest, or a run folder from before manifests)."""
        if self.manifest_path.exists():
            return True
        if not self.config_path.exists():
            return False
        names = {p.name for p in self.path.iterdir()}
        if all(n in KNOWN_FILES or (n.endswith(".tmp") and n[:-4] in KNOWN_FILES) for n in names):
            return True
        try:
            old = read_json_file(self.config_path, "config")
        except RunDirError:
            return False
        return isinstance(old, dict) and {"name", "model", "tasks"} <= set(old)

    def check_overwrite(self) -> None:
        """Refuse ``--overwrite`` of a folder llmcal did not make (before anything is removed)."""
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise RunDirError(f"{self.path}: exists and is not a folder")
        if all(p.name == LOCK for p in self.path.iterdir()):  # empty, or only the lock this run holds
            return
        if not self.is_llmcal_folder():
            raise RunDirError(
                f"{self.path}: not a run folder written by llmcal (no {MANIFEST}, and its config.json is not "
                "llmcal's); --overwrite removes only files llmcal wrote, so nothing was removed: use another "
                "--output_path, or empty the folder yourself")

    def clear(self) -> list[str]:
        """Remove the files llmcal wrote here (``--overwrite``); anything else stays. Returns the names."""
        self.check_overwrite()
        m = self._manifest()
        names = set(m["files"]) if m else set()
        names |= KNOWN_FILES
        removed = []
        folders = set()
        for name in sorted(names):
            parts = Path(name).parts
            if name in (LOCK, MANIFEST) or not parts or Path(name).is_absolute() or ".." in parts:
                continue
            for p in (self.path / name, self.path / (name + ".tmp")):
                if p.is_file() or p.is_symlink():
                    p.unlink()
                    removed.append(p.relative_to(self.path).as_posix())
            if len(parts) > 1:
                folders.add(self.path / parts[0])
        for folder in folders:  # a subfolder llmcal made (lmeval/) goes when nothing of the user's is left in it
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if m is not None:
            m["files"] = [LOCK]
            atomic_write_bytes(self.manifest_path, json.dumps(m, indent=1).encode(), point="in_manifest_write")
        return removed

    def discard_start(self) -> None:
        """Undo a start that wrote no sample (a failed model load): config.json and the manifest go."""
        if self.samples_path.exists() and self.samples_path.stat().st_size > 0:
            return
        m = self._manifest()
        if m is None:
            return
        for name in m["files"]:
            if name in (LOCK, MANIFEST):
                continue
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        self.manifest_path.unlink()
        held = _HELD.get(self._key())
        if held is not None:  # the lock file (and a folder llmcal made) go when the lock is released
            held.created_file = True
            held.created_folder = bool(m.get("created_folder"))

    # ------------------------------------------------------------ config
    def start(self, config: dict[str, Any], identity_keys: Iterable[str], overwrite: bool = False) -> bool:
        """Create the folder or check that it belongs to the same run.

        Returns True when earlier samples exist and will be resumed.  A folder
        made by a run with a different identity (model, tasks, style, ...) is
        refused, naming the field that differs, unless ``overwrite``, which
        removes only the files llmcal wrote (and refuses a folder llmcal did not make).
        """
        if overwrite:
            self.check_overwrite()
        with self.lock():
            if overwrite:
                self.clear()
            if self.config_path.exists():
                old = self.config()
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
        self.write_json(self.config_path, config, sort_keys=True, point="in_config_write")

    def config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            raise RunDirError(f"{self.path}: no config.json; is this a run folder made by `llmcal run`?")
        d = read_json_file(self.config_path, "run's config")
        if not isinstance(d, dict):
            raise RunDirError(f"{self.config_path}: expected a JSON object, got {type(d).__name__}")
        return d

    # ------------------------------------------------------------ samples
    def repair(self) -> list[Sample]:
        """Read and validate the samples, dropping a torn last line and extra hidden rows.

        Every complete line is checked as a :class:`~llmcal.core.sample.Sample`; a bad one
        stops the read with ``samples.jsonl line N: field 'x': ...`` and changes nothing.
        Only a writer (a holder of the exclusive lock, taken here when free) cuts the
        files back; a reader leaves them as they are and reads what is complete.
        """
        if self.holds_lock(exclusive=True) or not self.path.is_dir():
            return self._read(write=True)
        if self.holds_lock(exclusive=False):
            return self._read(write=False)
        with self.lock():
            return self._read(write=True)

    def _read(self, write: bool) -> list[Sample]:
        samples: list[Sample] = []
        if not self.samples_path.exists():
            self._check_hidden(0, [], write)
            return samples
        raw = self.samples_path.read_bytes()
        good_end = 0
        lines = raw.split(b"\n")
        for i, line in enumerate(lines):
            is_last = i == len(lines) - 1
            where = f"{self.samples_path} line {i + 1}"
            if not line.strip():
                if not is_last:
                    good_end += len(line) + 1
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                if is_last:
                    break  # torn final write (cut inside a character)
                raise RunDirError(f"{where}: not UTF-8 text (byte {err.start} of the line)") from None
            try:
                rec = json.loads(text)
                complete = not is_last  # a line without its newline was torn
            except json.JSONDecodeError:
                if is_last or all(not rest.strip() for rest in lines[i + 1:]):
                    break  # torn final write: drop it
                raise RunDirError(f"{where}: not valid JSON") from None
            except RecursionError:
                raise RunDirError(f"{where}: JSON nested too deeply") from None
            if not complete:
                break
            try:
                samples.append(Sample.from_dict(rec, where=where))
            except SampleError as err:
                raise RunDirError(str(err)) from None
            except RecursionError:
                raise RunDirError(f"{where}: JSON nested too deeply") from None
            good_end += len(line) + 1
        if good_end != len(raw) and write:
            with open(self.samples_path, "r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
        seen: dict[str, int] = {}
        for n, s in enumerate(samples):
            if s.id in seen:
                raise RunDirError(f"{self.samples_path}: duplicate item id {s.id!r} (lines {seen[s.id] + 1} and "
                                  f"{n + 1}); the folder was edited by hand or written by two runs at once")
            seen[s.id] = n
        self._check_hidden(len(samples), samples, write)
        return samples

    def read_samples(self) -> list[Sample]:
        """The samples, for a reader (a shared lock: refused while another process writes)."""
        if not self.samples_path.exists():
            raise RunDirError(f"{self.path}: no samples.jsonl; run `llmcal measure` first")
        if self.holds_lock(exclusive=False):
            return self.repair()
        with self.lock(exclusive=False):
            return self.repair()

    def append(self, samples: list[Sample], hidden: np.ndarray | None,
               positions: list[str] | None = None) -> None:
        """Append one batch: hidden rows, their checksums, then sample lines, each fsynced.

        ``positions`` names the token positions a row holds, each for every kept
        layer (default: the last prompt token only).
        """
        with self.lock():
            if hidden is not None:
                hidden = np.ascontiguousarray(hidden, dtype=np.float32)
                meta = self._hidden_meta_for(hidden.shape[1:], positions or ["last_prompt"])
                row = int(np.prod(hidden.shape[1:])) * 4
                crcs = meta.get("row_crc32")
                if crcs is not None and self.hidden_path.exists() and self.hidden_path.stat().st_size > len(crcs) * row:
                    with open(self.hidden_path, "r+b") as f:  # rows of a batch that never got its checksums
                        f.truncate(len(crcs) * row)
                self._track("hidden_states.bin", "hidden_states.json")
                with open(self.hidden_path, "ab") as f:
                    f.write(hidden.tobytes())
                    f.flush()
                    os.fsync(f.fileno())
                fault("after_hidden_append")
                if crcs is not None:
                    meta["row_crc32"] = list(crcs) + [zlib.crc32(r.tobytes()) for r in hidden]
                    self._write_hidden_meta(meta)
                fault("after_hidden_meta")
            self._track("samples.jsonl")
            data = "".join(json.dumps(s.to_dict(), ensure_ascii=False) + "\n" for s in samples).encode("utf-8")
            with open(self.samples_path, "ab") as f:
                if os.environ.get("LLMCAL_FAULT", "").startswith("in_samples_append"):
                    f.write(data[: len(data) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                    fault("in_samples_append")
                    data = data[len(data) // 2:]
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            fault("after_samples_append")

    # ------------------------------------------------------------ hidden states
    def _hidden_meta(self) -> dict[str, Any] | None:
        if not self.hidden_meta_path.exists():
            return None
        meta = read_json_file(self.hidden_meta_path, "hidden-state index")
        shape = meta.get("row_shape") if isinstance(meta, dict) else None
        if not (isinstance(shape, list) and shape and all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                                          for x in shape)):
            raise RunDirError(f"{self.hidden_meta_path}: field 'row_shape': expected a list of positive integers")
        crcs = meta.get("row_crc32")
        if crcs is not None and not (isinstance(crcs, list) and all(isinstance(c, int) for c in crcs)):
            raise RunDirError(f"{self.hidden_meta_path}: field 'row_crc32': expected a list of integers")
        pos = meta.get("positions", ["last_prompt"])
        if not (isinstance(pos, list) and all(isinstance(p, str) for p in pos)):
            raise RunDirError(f"{self.hidden_meta_path}: field 'positions': expected a list of names")
        return meta

    def _hidden_meta_for(self, row_shape: tuple[int, ...], positions: list[str]) -> dict[str, Any]:
        want = {"dtype": "float32", "row_shape": list(row_shape), "positions": list(positions)}
        old = self._hidden_meta()
        if old is None:
            meta = {**want, "row_crc32": []}
            self._track("hidden_states.json")
            self._write_hidden_meta(meta)
            return meta
        if {k: old.get(k) for k in want} != want:
            raise RunDirError(f"{self.hidden_meta_path}: row shape {({k: old.get(k) for k in want})} "
                              f"differs from {want}")
        return old

    def _write_hidden_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_bytes(self.hidden_meta_path, json.dumps(meta).encode(), point="in_hidden_meta_write")

    def _check_hidden(self, n_rows: int, samples: list[Sample], write: bool) -> None:
        """Cut hidden_states.bin back to ``n_rows`` rows (a writer) and check each kept row's checksum."""
        meta = self._hidden_meta()
        if meta is None:
            return
        row = int(np.prod(meta["row_shape"])) * 4
        uses = any(s.hidden_row is not None for s in samples)
        if samples and not uses:
            return  # these samples keep no hidden rows
        for i, s in enumerate(samples):
            if s.hidden_row != i:
                raise RunDirError(f"{self.samples_path}: item {s.id!r} is sample {i} but names hidden_row "
                                  f"{s.hidden_row!r}; the folder was edited by hand")
        if not self.hidden_path.exists():
            if uses:
                raise RunDirError(f"{self.hidden_path}: missing, but {self.hidden_meta_path.name} and "
                                  f"{n_rows} samples refer to its rows; rerun with --overwrite")
            return
        size = self.hidden_path.stat().st_size
        if size < n_rows * row:
            raise RunDirError(
                f"{self.hidden_path}: holds {size // row} rows but samples.jsonl has {n_rows} "
                "(the file was cut or damaged); rerun with --overwrite"
            )
        crcs = meta.get("row_crc32")
        if crcs is not None and len(crcs) < n_rows:
            raise RunDirError(f"{self.hidden_meta_path}: records checksums of {len(crcs)} rows but samples.jsonl "
                              f"has {n_rows} (the file was replaced or damaged); rerun with --overwrite")
        if write and size > n_rows * row:
            with open(self.hidden_path, "r+b") as f:
                f.truncate(n_rows * row)
                os.fsync(f.fileno())
        if write and crcs is not None and len(crcs) > n_rows:
            meta["row_crc32"] = crcs[:n_rows]
            self._write_hidden_meta(meta)
        if crcs is not None:
            self._verify_rows(crcs[:n_rows], row)

    def _verify_rows(self, crcs: list[int], row: int) -> None:
        with open(self.hidden_path, "rb") as f:
            for i, want in enumerate(crcs):
                got = zlib.crc32(f.read(row))
                if got != want:
                    raise RunDirError(f"{self.hidden_path}: row {i} does not match its checksum in "
                                      f"{self.hidden_meta_path.name} (the file was damaged); "
                                      "rerun with --overwrite")

    def hidden_positions(self) -> list[str]:
        """What the hidden rows hold, in slot order (each for every kept layer)."""
        meta = self._hidden_meta()
        return [] if meta is None else list(meta.get("positions", ["last_prompt"]))

    def load_hidden(self) -> np.ndarray:
        """All hidden-state rows, (n_items, n_positions * n_layers_kept, hidden), memory-mapped, checksums checked."""
        meta = self._hidden_meta()
        if meta is None:
            raise RunDirError(f"{self.path}: this run kept no hidden states")
        if not self.hidden_path.exists():
            raise RunDirError(f"{self.hidden_path}: missing, but {self.hidden_meta_path.name} describes its rows; "
                              "rerun with --overwrite")
        shape = tuple(meta["row_shape"])
        row = int(np.prod(shape)) * 4
        n = self.hidden_path.stat().st_size // row
        crcs = meta.get("row_crc32")
        if crcs is not None:
            if len(crcs) > n:
                raise RunDirError(f"{self.hidden_path}: holds {n} rows but {self.hidden_meta_path.name} "
                                  f"records {len(crcs)} (the file was cut or damaged); rerun with --overwrite")
            n = len(crcs)  # rows past the checksums belong to a batch still being written
            self._verify_rows(crcs, row)
        if n == 0:
            return np.zeros((0, *shape), dtype=np.float32)
        return np.memmap(self.hidden_path, dtype=np.float32, mode="r", shape=(n, *shape))

    # ------------------------------------------------------------ results
    def write_json(self, path: Path, payload: dict[str, Any], sort_keys: bool = False,
                   point: str = "in_json_write", allow_nan: bool = True) -> None:
        """Write a JSON file atomically: a temporary file, fsynced, then renamed over the old one."""
        text = json.dumps(payload, indent=2, sort_keys=sort_keys, default=_json_default, allow_nan=allow_nan)
        self.write_bytes(Path(path), text.encode("utf-8"), point=point)

    def write_text(self, path: Path, text: str) -> None:
        """Write a text file (the report) atomically."""
        self.write_bytes(Path(path), text.encode("utf-8"))

    def write_bytes(self, path: Path, data: bytes, point: str = "in_json_write") -> None:
        with self.lock():
            rel = self._inside(path)
            if rel is not None:
                self._track(rel)
            atomic_write_bytes(path, data, point=point)

    def _inside(self, path: Path) -> str | None:
        """``path`` relative to the run folder (``results.json``, ``lmeval/results_<date>.json``), or None
        for a file outside it, which the manifest does not hold."""
        try:
            rel = Path(path).resolve().relative_to(self.path.resolve())
        except ValueError:
            return None
        return rel.as_posix() if rel.parts else None

    def track(self, *names: str) -> None:
        """Record files written here by another writer (calibration.json, the probe artifact)."""
        with self.lock():
            self._track(*names)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
