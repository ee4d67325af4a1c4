"""llmcal: post-training confidence calibration of large language models.

When the model says it is sure, is it right?  The pipeline, one stage a
sub-package, data flowing one way::

    tasks -> backends -> signals -> records -> calibrators/probe -> metrics -> report / policy / serve

The library call does a whole run, as ``llmcal run`` does::

    import llmcal
    r = llmcal.run(llmcal.RunConfig(tasks=["builtin"], limit=40, output_path="runs/x"))
    r.results["calibrated_test"]["temperature"]["ece"], r.calibration.confidence(r.samples[0])
    r = llmcal.load_run("runs/x")
    t = llmcal.transfer("runs/x", "runs/y", adapt="unlabeled")   # x's calibration on y's test part

Confidence has one convention everywhere: a float in [0, 1], higher = more sure.
Nothing heavy is imported until it is used (``import llmcal`` does not import torch).
"""

from llmcal._version import __version__

_LAZY = {
    "RunConfig": "llmcal.pipeline.config",
    "ProbeConfig": "llmcal.pipeline.config",
    "run": "llmcal.pipeline.run",
    "RunResult": "llmcal.pipeline.result",
    "load_run": "llmcal.pipeline.result",
    "transfer": "llmcal.pipeline.transfer",
    "TransferResult": "llmcal.pipeline.transfer",
    "load_backend": "llmcal.backends.registry",
    "load_task": "llmcal.tasks.registry",
    "Calibration": "llmcal.calibrators.calibration",
    "Sample": "llmcal.core.sample",
    "MCItem": "llmcal.core.items",
    "OpenItem": "llmcal.core.items",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llmcal' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
