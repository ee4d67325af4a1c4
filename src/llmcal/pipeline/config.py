"""What a run is asked to do: :class:`RunConfig`, the one input of :func:`llmcal.run`.

The command line parses its arguments into a ``RunConfig`` and nothing else, so a
notebook and ``llmcal run`` do exactly the same run.  Field names follow
lm-evaluation-harness where it has one (``model``, ``model_args``, ``tasks``,
``limit``, ``output_path``).  Everything cheap to check is checked here, on
construction, before any model is loaded.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

# What makes a run folder "the same run" (resuming with another value is refused).
IDENTITY_KEYS = ("model", "model_args", "tasks", "limit", "style", "chat", "dtype", "hidden_layers")
OPEN_FAMILIES_DEFAULT = ("tokens", "ptrue_chat", "verbalized", "agreement")


def _names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    return tuple(str(v).strip() for v in value if str(v).strip())


def _lmeval_prefixed(tasks: tuple[str, ...]) -> tuple[str, ...]:
    """lm-eval's ``--tasks lmeval:a,b``: the prefix carries to the names after it."""
    out, carry = [], False
    for t in [part.strip() for t in tasks for part in (t.split(",") if t.lower().startswith("lmeval:") else [t])]:
        if t.lower().startswith("lmeval:"):
            carry = True
        elif carry and ":" not in t and "/" not in t and not t.lower().endswith((".jsonl", ".json", ".csv")):
            t = "lmeval:" + t
        out.append(t)
    return tuple(out)


@dataclass
class ProbeConfig:
    """The external probe and ``combined`` (``llmcal run --probe``); see :mod:`llmcal.probe`."""

    kind: str = "logistic"  # logistic | mlp
    layers: str = "all"  # all | none | indices, mid, last (among the layers the run kept)
    positions: str = "auto"  # auto | all | last_prompt, answer_mean
    components: str = "16"  # principal components of the hidden block, or "all"
    cheap: bool = True  # the cheap input/output features beside the hidden states
    calibrator: str = "platt"  # after the stacker

    def __post_init__(self) -> None:
        if self.kind not in ("logistic", "mlp"):
            raise ValueError(f"--probe_kind: {self.kind!r} is neither 'logistic' nor 'mlp'")


@dataclass
class RunConfig:
    """One run: which model on which tasks, how it is calibrated, and where it is written.

    ``model_args`` is lm-eval's string (``pretrained=NAME,dtype=bfloat16``) or a dict;
    empty means the embedded SmolLM2-135M-Instruct.  ``signal`` is the confidence the
    calibrators are fitted on (default ``option_prob`` for multiple choice,
    ``mean_token_prob`` for free-form tasks).
    """

    # model and data
    model: str = "hf"
    model_args: str | dict[str, Any] = ""
    tasks: Sequence[str] | str = ("builtin",)
    data_dir: str | None = None
    limit: int | None = None
    style: str = "cloze"
    chat: bool = False
    dtype: str | None = None
    max_tokens: int = 512
    hidden_layers: Sequence[str] | str = ("-1", "mid")
    # free-form tasks
    open_signals: Sequence[str] | str = OPEN_FAMILIES_DEFAULT
    k_samples: int = 5
    sample_temperature: float = 0.8
    max_new_tokens: int = 32
    open_chat: bool = True
    nli_model: str | None = None  # NLI cross-encoder (hub name or folder) for meaning; None = embeddings
    # calibration and metrics
    calibrators: Sequence[str] | str | None = None  # None: temperature (multiple choice), platt (free form)
    signal: str | None = None
    cal_fraction: float = 0.5
    seed: int = 0  # the calibration/test split's seed (CLI --split_seed; the CLI's --seed is lm-eval's, below)
    threshold: float = 0.75
    target_error: float = 0.10
    risk_delta: float = 0.05
    n_bins: int = 15
    bootstrap: int = 1000
    # the external probe (None: not fitted)
    probe: ProbeConfig | None = None
    # output
    output_path: str | Path | None = None
    overwrite: bool = False
    report: bool = True
    quiet: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    # lm-eval's flags, with lm-eval's meanings (``lmeval:`` tasks; device, batch size and seeds for every run)
    include_path: Sequence[str] | str = ()  # folders (or files) of local lm-eval YAML
    num_fewshot: int | None = None  # None: the task's own
    system_instruction: str | None = None
    fewshot_as_multiturn: bool = False
    gen_kwargs: str | None = None  # "temperature=0,max_gen_toks=64,until=\n\n" (generate_until tasks)
    device: str | None = None  # cpu, cuda, cuda:1, mps: given to the backend (model_args device=)
    batch_size: int | str | None = None  # items a forward pass at most (hf; "auto" = by --max_tokens alone)
    random_seed: int | str | None = None  # lm-eval's --seed: "R,N,T,F" or one int for all (None: 0,1234,1234,1234)
    log_samples: bool = False  # also write lm-eval's samples_<task>_<date>.jsonl and results JSON

    def __post_init__(self) -> None:
        self.tasks = _lmeval_prefixed(_names(self.tasks))
        self.include_path = _names(self.include_path)
        self.calibrators = _names(self.calibrators)
        self.open_signals = _names(self.open_signals)
        self.hidden_layers = _names(self.hidden_layers)
        if not self.tasks:
            raise ValueError("--tasks: no task named")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit: must be at least 1, got {self.limit}")
        if self.style not in ("cloze", "letters"):
            raise ValueError(f"--style: {self.style!r} is neither 'cloze' nor 'letters'")
        if self.max_tokens < 8:
            raise ValueError(f"--max_tokens: must be at least 8, got {self.max_tokens}")
        for part in self.hidden_layers:
            if part not in ("mid", "last") and not re.fullmatch(r"-?\d+", part):
                raise ValueError(f"--hidden_layers: {part!r} is not a layer index, 'mid' or 'last'")
        from llmcal.calibrators import CALIBRATORS  # light: numpy/scipy only

        for c in self.calibrators:
            if c not in CALIBRATORS:
                raise ValueError(f"--calibrators: unknown {c!r}; known: {', '.join(sorted(CALIBRATORS))}")
        if not 0.0 < self.cal_fraction < 1.0:
            raise ValueError(f"--cal_fraction must be in (0, 1), got {self.cal_fraction}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"--threshold must be in [0, 1], got {self.threshold}")
        if self.n_bins < 1:
            raise ValueError(f"--n_bins: must be at least 1, got {self.n_bins}")
        if self.bootstrap < 0:
            raise ValueError(f"--bootstrap: must be >= 0, got {self.bootstrap}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ValueError(f"--num_fewshot: must be >= 0, got {self.num_fewshot}")
        if self.batch_size is not None and str(self.batch_size) != "auto" and not (
                str(self.batch_size).isdigit() and int(self.batch_size) >= 1):
            raise ValueError(f"--batch_size: a whole number >= 1 or 'auto', got {self.batch_size!r}")
        self.seeds()  # checked now
        if self.include_path or self.fewshot_as_multiturn or self.gen_kwargs:
            self.lmeval_options()  # a missing --include_path, bad --gen_kwargs: refused before any work
        if self.log_samples and not any(t.lower().startswith("lmeval:") for t in self.tasks):
            raise ValueError("--log_samples writes lm-eval's samples and results files for lmeval: tasks; --tasks "
                             f"{','.join(self.tasks)} names none (llmcal's samples.jsonl is always written)")
        if self.device is not None and not str(self.device).strip():
            raise ValueError("--device: empty")
        if self.probe is True:
            self.probe = ProbeConfig()
        elif self.probe is False:
            self.probe = None

    def replace(self, **changes: Any) -> "RunConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["output_path"] = None if self.output_path is None else str(self.output_path)
        return d

    # ------------------------------------------------------------ derived
    def seeds(self) -> tuple[int, int, int, int]:
        """lm-eval's ``--seed``: python ``random``, numpy, torch, few-shot sampling (default 0,1234,1234,1234)."""
        value = self.random_seed
        if value is None:
            return (0, 1234, 1234, 1234)
        parts = [p.strip() for p in str(value).split(",")]
        if len(parts) == 1:
            parts *= 4
        if len(parts) != 4 or not all(re.fullmatch(r"-?\d+", p) for p in parts):
            raise ValueError(f"--seed: one whole number or four (random,numpy,torch,fewshot), got {value!r}")
        return tuple(int(p) for p in parts)  # type: ignore[return-value]

    def seed_everything(self) -> None:
        """Seed python's ``random``, numpy and (when installed) torch as ``lm_eval --seed`` does."""
        import random

        import numpy as np

        r, n, t, _ = self.seeds()
        random.seed(r)
        np.random.seed(n)
        try:
            import torch
        except ImportError:  # pragma: no cover - the hf extra brings torch
            return
        torch.manual_seed(t)

    def lmeval_options(self):
        """How ``lmeval:`` tasks build their requests (:class:`llmcal.tasks.lmeval.LmevalOptions`)."""
        from llmcal.tasks.lmeval import LmevalOptions, parse_gen_kwargs

        return LmevalOptions(include_path=tuple(self.include_path), num_fewshot=self.num_fewshot,
                             system_instruction=self.system_instruction, apply_chat_template=bool(self.chat),
                             fewshot_as_multiturn=self.fewshot_as_multiturn, fewshot_seed=self.seeds()[3],
                             gen_kwargs=parse_gen_kwargs(self.gen_kwargs))

    def backend_extra(self) -> dict[str, Any]:
        """What ``--device`` and ``--batch_size`` add to the model arguments (lm-eval passes them the same way)."""
        out: dict[str, Any] = {}
        if self.device:
            out["device"] = str(self.device)
        if self.batch_size is not None and str(self.batch_size) != "auto":
            out["batch_size"] = int(self.batch_size)
        return out

    def calibration_config(self) -> dict[str, Any]:
        """What results.json records of how the run was calibrated."""
        return {"calibrators": list(self.calibrators) or ["temperature"], "cal_fraction": self.cal_fraction, "seed": self.seed,
                "threshold": self.threshold, "n_bins": self.n_bins, "bootstrap": self.bootstrap,
                "target_error": self.target_error, "risk_delta": self.risk_delta}
