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
OPEN_FAMILIES_DEFAULT = ("tokens", "ptrue", "verbalized", "agreement")


def _names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    return tuple(str(v).strip() for v in value if str(v).strip())


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
    # calibration and metrics
    calibrators: Sequence[str] | str | None = None  # None: temperature (multiple choice), platt (free form)
    signal: str | None = None
    cal_fraction: float = 0.5
    seed: int = 0
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

    def __post_init__(self) -> None:
        self.tasks = _names(self.tasks)
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
    def calibration_config(self) -> dict[str, Any]:
        """What results.json records of how the run was calibrated."""
        return {"calibrators": list(self.calibrators) or ["temperature"], "cal_fraction": self.cal_fraction, "seed": self.seed,
                "threshold": self.threshold, "n_bins": self.n_bins, "bootstrap": self.bootstrap,
                "target_error": self.target_error, "risk_delta": self.risk_delta}
