"""A whole run, in order: measure -> calibrate -> probe/combine -> report.

``llmcal.run(RunConfig(...))`` is the library call (lm-eval's ``simple_evaluate`` is the
model); ``llmcal run`` parses its arguments into the same :class:`RunConfig` and calls it.
Each stage also runs alone on a run folder (``llmcal measure`` / ``calibrate`` /
``combine`` / ``report``), and each reads what the one before it left in the folder, so
an interrupted run resumes where it stopped::

    measure_run(config)            items -> backend -> signals -> samples.jsonl (+ hidden rows)
    calibrate_run(run, config)     samples -> split -> calibrators -> results.json, calibration.json
    probe_run(run, config)         hidden rows -> probe + `combined` -> merged into results.json
    report_run(run)                results.json -> report.html

What cannot work is refused before any work: a backend that cannot give what the
config asks for (hidden states for ``--probe`` through an API), an unknown task or
calibrator, a run folder made by another run.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from llmcal.pipeline.config import IDENTITY_KEYS, RunConfig
from llmcal.pipeline.result import RunResult, load_run
from llmcal.records.run_dir import RunDir

__all__ = ["run", "measure_run", "calibrate_run", "probe_run", "report_run", "load_run", "RunResult"]


def _say(config: RunConfig, msg: str) -> None:
    if not config.quiet:
        print(msg, flush=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "run"


# ------------------------------------------------------------------ what the run is
def task_kind(config: RunConfig) -> str:
    """``"mc"`` or ``"open"`` for the run's tasks; a mix is refused (one kind a run folder)."""
    from llmcal.tasks.registry import task_kind as kind_of

    kinds = {kind_of(t, config.lmeval_options()) for t in config.tasks}
    if len(kinds) > 1:
        raise ValueError(f"--tasks {','.join(config.tasks)!r}: mixes open-ended and multiple-choice tasks; "
                         "run them separately")
    return kinds.pop()


def backend_args(config: RunConfig) -> dict[str, Any]:
    """The parsed, checked ``model_args`` (dtype resolved for a local model)."""
    from llmcal.backends.registry import parse_backend_args

    if isinstance(config.model_args, dict):
        margs = dict(config.model_args)
        if config.model == "hf":
            if config.dtype:
                margs["dtype"] = config.dtype
            margs.setdefault("dtype", "float32")
        return parse_backend_args(config.model, "", dtype=None, base={**config.backend_extra(), **margs})
    # --device / --batch_size go in as model args (lm-eval's way); model_args' own values win
    return parse_backend_args(config.model, config.model_args, dtype=config.dtype, base=config.backend_extra())


def check_capabilities(config: RunConfig, kind: str) -> None:
    """Refuse, before any work, a backend that cannot give what the run needs."""
    from llmcal.backends.registry import backend_class

    cls = backend_class(config.model)
    if kind == "mc":
        cls.require("score", "multiple-choice scoring")
    else:
        cls.require("generate", "free-form answers")
    if config.probe is not None:
        if kind != "mc":
            raise ValueError("--probe: the external probe reads multiple-choice runs' hidden states; "
                             "free-form runs keep none")
        cls.require("hidden_states", "--probe (the external probe reads hidden states)")


def run_identity(config: RunConfig, margs: dict[str, Any], kind: str) -> dict[str, Any]:
    """config.json of a new run folder: what makes it this run, and its default name."""
    pretrained = margs.get("pretrained") or margs.get("model") or ("server" if "base_url" in margs else "embedded")
    dtype = str(margs.get("dtype", "n/a"))
    style = "open" if kind == "open" else config.style
    name = _slug(f"{Path(str(pretrained)).name}-{'+'.join(Path(t).stem for t in config.tasks)}-{style}"
                 f"{'-chat' if config.chat else ''}-{dtype}" + (f"-n{config.limit}" if config.limit else ""))
    out: dict[str, Any] = {
        "name": name,
        "model": config.model,
        "model_args": {k: v for k, v in sorted(margs.items()) if k not in ("batch_size", "device")},
        "tasks": list(config.tasks),
        "limit": config.limit,
        "style": config.style,
        "chat": bool(config.chat),
        "dtype": dtype,
        "hidden_layers": list(config.hidden_layers),
        "max_tokens": config.max_tokens,
        "data_dir": config.data_dir,
    }
    if kind == "open":
        settings = open_settings(config)
        out.update(kind="open", chat=settings.chat, hidden_layers=[], open_settings=settings.to_dict())
    if any(t.lower().startswith("lmeval:") for t in config.tasks):
        # what lm-eval builds the prompts from is part of the run (resuming with other shots is refused)
        o = config.lmeval_options()
        out.update(chat=bool(config.chat), lmeval={
            "include_path": list(o.include_path), "num_fewshot": o.num_fewshot,
            "system_instruction": o.system_instruction, "fewshot_as_multiturn": o.fewshot_as_multiturn,
            "fewshot_seed": o.fewshot_seed, "gen_kwargs": [list(kv) for kv in o.gen_kwargs]})
    return out


def open_settings(config: RunConfig):
    from llmcal.pipeline.measure_open import OpenSettings

    return OpenSettings(families=tuple(config.open_signals), k_samples=config.k_samples,
                        sample_temperature=config.sample_temperature, max_new_tokens=config.max_new_tokens,
                        chat=config.open_chat, seed=config.seed, nli_model=config.nli_model)


def resolve_layers(spec: list[str], n_layers: int) -> list[int]:
    """``-1,mid`` -> layer indices of a model with ``n_layers`` layers."""
    out = []
    for part in spec:
        idx = n_layers // 2 if part == "mid" else -1 if part == "last" else int(part)
        if not -(n_layers + 1) <= idx <= n_layers:
            raise ValueError(f"--hidden_layers: {idx} is outside 0..{n_layers}")
        out.append(idx)
    return out


def load_items(config: RunConfig) -> list:
    """Every item of every task, checked before any model is loaded."""
    from llmcal.tasks.registry import load_task

    items = []
    for spec in config.tasks:
        items.extend(load_task(spec, data_dir=config.data_dir, limit=config.limit, lmeval=config.lmeval_options()))
    if not items:
        raise ValueError(f"--tasks {','.join(config.tasks)!r}: no items to score")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"--tasks {','.join(config.tasks)!r}: the same item appears twice (a task listed twice?)")
    return items


def check_model_path(margs: dict[str, Any]) -> None:
    """A ``pretrained=`` that is written as a path (``/x``, ``./x``, ``~/x``) must exist: found before any work."""
    for key in ("pretrained", "tokenizer"):
        value = margs.get(key)
        if not isinstance(value, str) or not value:
            continue
        if value.startswith(("/", "./", "../", "~")) and not Path(value).expanduser().exists():
            raise ValueError(f"--model_args {key}={value}: no such file or folder")


def run_folder(config: RunConfig, identity: dict[str, Any] | None = None) -> RunDir:
    """The run folder a config writes (``output_path``, or ``runs/<name derived from the config>``)."""
    if config.output_path:
        return RunDir(config.output_path)
    if identity is None:
        identity = run_identity(config, backend_args(config), task_kind(config))
    return RunDir(Path("runs") / identity["name"])


# ------------------------------------------------------------------ stages
def measure_run(config: RunConfig) -> RunDir:
    """Stage 1: score (or answer) every item not yet recorded; returns the run folder.

    Holds the folder's exclusive lock throughout.  A start that fails before any sample
    is written (a bad model path, ``--hidden_layers 99``, a refused backend argument)
    leaves no config.json behind, so the corrected command starts cleanly.
    """
    kind = task_kind(config)
    check_capabilities(config, kind)
    margs = backend_args(config)
    check_model_path(margs)
    identity = run_identity(config, margs, kind)
    items = load_items(config)  # every item validated before the model is loaded
    run = run_folder(config, identity)
    keys = IDENTITY_KEYS + (("open_settings",) if kind == "open" else ()) + (("lmeval",) if "lmeval" in identity else ())
    if config.overwrite:
        run.check_overwrite()  # a folder llmcal did not make is refused before the lock file goes in
    with run.lock():
        had_config = run.config_path.exists()
        try:
            _measure(run, config, kind, margs, identity, items, keys)
        except BaseException:
            if not had_config:
                run.discard_start()
            raise
        if config.log_samples:  # lm-eval's samples_<task>_<date>.jsonl and results JSON, beside llmcal's
            from llmcal.pipeline.lmeval_export import write_lmeval_logs

            for path in write_lmeval_logs(run, config).values():
                _say(config, f"lm-eval log: {path}")
    return run


def _measure(run: RunDir, config: RunConfig, kind: str, margs: dict[str, Any], identity: dict[str, Any],
             items: list, keys: tuple[str, ...]) -> None:
    def load():
        from llmcal.backends.registry import load_backend

        if config.model == "hf":
            _say(config, f"loading {margs.get('pretrained') or 'the embedded SmolLM2-135M-Instruct'} "
                         f"({margs['dtype']}) ...")
        kwargs = {k: v for k, v in margs.items() if k != "batch_size"}
        if config.model == "hf":
            kwargs["max_tokens"] = config.max_tokens
            kwargs["batch_size"] = margs.get("batch_size")  # --batch_size: items a forward pass at most
        backend = load_backend(config.model, **kwargs)
        if kind == "mc" and "hidden_states" in backend.capabilities:
            backend.set_hidden_layers(resolve_layers(identity["hidden_layers"], backend.n_layers))
        return backend

    # --overwrite rescores everything: the model is loaded (and its layers checked) before the
    # earlier run's files are removed, so a model that fails to load costs nothing
    preloaded = load() if config.overwrite else None
    resumed = run.start(identity, keys, overwrite=config.overwrite)

    def factory():
        backend = preloaded if preloaded is not None else load()
        meta = run.config()
        meta["model_desc"] = backend.model_name
        meta["backend"] = backend.describe()
        if kind == "mc":
            meta["backend"]["fingerprint"] = backend.fingerprint()
        run.write_config(meta)
        return backend

    if resumed:
        _say(config, f"resuming {run.path}")
    config.seed_everything()  # lm-eval's --seed: random, numpy, torch
    start = time.perf_counter()
    if kind == "open" and any(it.meta.get("lmeval_task") for it in items):
        from llmcal.pipeline.lmeval_generate import measure_lmeval_generation

        n_new = measure_lmeval_generation(run, items, factory, config, progress=not config.quiet)
        _say(config, f"answered {n_new} new items in {time.perf_counter() - start:.1f} s ({len(items)} in the run)")
    elif kind == "open":
        from llmcal.pipeline.measure_open import measure_open

        n_new = measure_open(run, items, factory, open_settings(config), progress=not config.quiet)
        _say(config, f"answered {n_new} new items in {time.perf_counter() - start:.1f} s ({len(items)} in the run)")
    else:
        from llmcal.pipeline.measure import measure

        n_new = measure(run, items, factory, style=config.style, chat=config.chat, progress=not config.quiet)
        _say(config, f"scored {n_new} new items in {time.perf_counter() - start:.1f} s ({len(items)} in the run)")


def calibrate_run(run: RunDir, config: RunConfig) -> dict[str, Any]:
    """Stage 2: split, fit the calibrators, measure before/after; writes results.json and calibration.json."""
    with run.lock():
        return _calibrate(run, config)


def _calibrate(run: RunDir, config: RunConfig) -> dict[str, Any]:
    from llmcal.pipeline.evaluate import evaluate
    from llmcal.records.results import results_payload

    run_config = run.config()
    kind = run_config.get("kind", "mc")
    samples = run.read_samples()
    results, calibrations = evaluate(
        samples, calibrators=config.calibrators or None, signal=config.signal, cal_fraction=config.cal_fraction,
        seed=config.seed, n_bins=config.n_bins, threshold=config.threshold, n_bootstrap=config.bootstrap,
        target_error=config.target_error, risk_delta=config.risk_delta)
    cal_config = config.calibration_config()
    if config.signal is not None:
        cal_config["signal"] = config.signal
    payload = results_payload(run_config, results, cal_config if kind != "open" else None)
    run.write_json(run.results_path, payload)
    save_calibrations(run, run_config, calibrations, results)
    if not config.quiet:
        from llmcal.report.terminal import print_summary

        print_summary(payload, str(run.path))
    return payload


def save_calibrations(run: RunDir, run_config: dict[str, Any], calibrations: dict[str, Any],
                      results: dict[str, Any]) -> None:
    """calibration.json: every fitted :class:`~llmcal.calibrators.calibration.Calibration`, the primary named."""
    from llmcal.calibrators.calibration import CalibrationSet

    primary = (results.get("primary") or {}).get("calibrator")
    cset = CalibrationSet.of_run(calibrations, primary, run_config, run.path)
    run.write_json(run.calibration_path, cset.to_dict(), allow_nan=False)


def probe_run(run: RunDir, config: RunConfig) -> dict[str, Any] | None:
    """Stage 3 (``--probe``): the external probe and ``combined``, merged into results.json."""
    if config.probe is None:
        return None
    from llmcal.pipeline.probe_step import combine_run

    say = (lambda m: None) if config.quiet else (lambda m: print(m, flush=True))
    with run.lock():
        run.track("probe.json", "probe.npz", "probe_results.json")
        return combine_run(run.path, config.probe, config.cal_fraction, config.seed, config.bootstrap, say=say)


def report_run(run: RunDir) -> Path:
    """Stage 4: report.html from results.json (both kinds of run, one report)."""
    from llmcal.records.results import read_results
    from llmcal.report.html import render_html

    with run.lock():
        results = read_results(run.results_path)
        try:
            html = render_html(results, results.get("config", {}))
        except (KeyError, TypeError, AttributeError, IndexError) as err:
            what = f"field {err.args[0]!r} is missing" if isinstance(err, KeyError) and err.args else str(err)
            raise ValueError(f"{run.results_path}: cannot be reported: {what} (a results.json from another "
                             f"llmcal version, or edited by hand?); rerun `llmcal calibrate {run.path}`") from None
        run.write_text(run.report_path, html)
    return run.report_path


def run(config: RunConfig) -> RunResult:
    """Do a whole run and return what it left: results, samples, the fitted calibration, paths.

    The run folder stays locked from the first stage to the last, so no other writer slips in between.
    """
    folder = run_folder(config)
    if config.overwrite:
        folder.check_overwrite()
    with folder.lock():
        folder = measure_run(config)
        calibrate_run(folder, config)
        probe_run(folder, config)
        if config.report:
            path = report_run(folder)
            _say(config, f"report: {path}")
        return load_run(folder.path)
