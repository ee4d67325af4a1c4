"""Backends by name: ``load_backend("hf", pretrained=...)``, lazily imported, open to plug-ins.

The built-in backends are named by ``"module:Class"`` strings, as
lm-evaluation-harness names its models, so that asking for ``openai`` never
imports torch and listing backends imports nothing.  A third-party package
adds one without touching llmcal through the entry-point group
``llmcal.backends``::

    # the plug-in's pyproject.toml
    [project.entry-points."llmcal.backends"]
    vllm = "llmcal_vllm:VLLMBackend"

after which ``llmcal run --model vllm --model_args ...`` finds it.  A plug-in
cannot replace a built-in name.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from typing import Any

from llmcal.backends.base import Backend

#: The built-in backends: ``--model`` value -> ``"module:Class"``.
BACKENDS: dict[str, str] = {
    "hf": "llmcal.backends.hf:HFBackend",
    "openai": "llmcal.backends.openai:OpenAIBackend",
}
#: The entry-point group third-party backends register under.
ENTRY_POINT_GROUP = "llmcal.backends"


def _plugins() -> dict[str, importlib.metadata.EntryPoint]:
    """Installed plug-in backends by name (built-in names are never overridden)."""
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return {ep.name: ep for ep in eps if ep.name not in BACKENDS}


def available_backends() -> list[str]:
    """Every ``--model`` value: the built-in ones first, then installed plug-ins (sorted)."""
    return list(BACKENDS) + sorted(_plugins())


def _import_target(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def backend_class(name: str) -> type[Backend]:
    """The backend class for ``--model NAME``, importing only its module.

    Raises ``ValueError`` listing the known backends for an unknown name, and
    ``TypeError`` for a plug-in whose target is not a :class:`Backend` subclass.
    """
    key = str(name).strip()
    if key in BACKENDS:
        cls, where = _import_target(BACKENDS[key]), BACKENDS[key]
    else:
        plugins = _plugins()
        if key not in plugins:
            raise ValueError(f"--model {name!r}: unknown backend; known: {', '.join(available_backends())} "
                             f"(plug-ins register under the entry-point group {ENTRY_POINT_GROUP!r})")
        cls, where = plugins[key].load(), plugins[key].value
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"--model {name!r}: {where} is not a subclass of llmcal.backends.base.Backend")
    return cls


def _check_args(name: str, cls: type[Backend], model_args: dict[str, Any]) -> None:
    """Unknown or missing ``--model_args`` keys, named, before anything loads."""
    params = inspect.signature(cls.load).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return  # the backend checks its own keys
    known = [k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(model_args) - set(known))
    if unknown:
        raise ValueError(f"--model {name} --model_args: unknown key(s) {', '.join(map(repr, unknown))}; "
                         f"known keys: {', '.join(sorted(known))}")
    missing = [k for k in known if params[k].default is params[k].empty and k not in model_args]
    if missing:
        raise ValueError(f"--model {name} --model_args: needs {', '.join(missing)}")


def load_backend(name: str = "hf", **model_args: Any) -> Backend:
    """Build the ``name`` backend from ``model_args`` (as :func:`parse_backend_args` returns them).

    ``hf``: ``pretrained`` (hub name or folder; empty = the embedded model),
    ``gguf_file``, ``dtype``, ``revision``, ``trust_remote_code``, ``device``,
    ``max_tokens``, ``hidden_layers``, ...; ``openai``: ``base_url``,
    ``model``, ``concurrency``, ``scoring``, ``tokenizer``, ... (each
    backend's ``load`` documents its keys).
    """
    cls = backend_class(name)
    _check_args(name, cls, model_args)
    return cls.load(**model_args)


def parse_backend_args(name: str, model_args: str | None = None, dtype: str | None = None,
                       base: dict[str, Any] | None = None) -> dict[str, Any]:
    """lm-eval's ``--model_args`` string for ``--model NAME``, parsed and checked.

    ``dtype`` is ``--dtype`` where given (``hf`` defaults to float32; a server
    decides its own and records ``"server"``).  ``base`` holds model args
    already in a dict (``RunConfig(model_args={...})``), checked by the same
    rules; the string's values override its.
    """
    return backend_class(name).parse_model_args(model_args, dtype=dtype, base=base)


__all__ = ["BACKENDS", "ENTRY_POINT_GROUP", "available_backends", "backend_class", "load_backend",
           "parse_backend_args"]
