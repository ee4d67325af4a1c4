"""Calibration and evaluation text: where the 128-512 calibration samples come from.

A source is one of

* ``sciq_support[:valid|test]``: the support paragraphs of SciQ (real
  science text; the issue's default: calibrate on ``sciq_valid.json``,
  measure perplexity on ``sciq_test.json``);
* a ``.txt`` file (one sample a non-empty line) or ``.jsonl`` file (one
  object a line, its ``text`` or ``prompt`` field);
* any task spec of :func:`llmcal.tasks.registry.load_task` (``arc_easy``,
  ``builtin``, a generic task file, ...): each item's cloze prompt followed by
  its right answer, i.e. examples from the use case the model will serve.

Asking for more samples than the source holds is an error, raised before
anything is computed.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmcal.quant.errors import QuantError


def _sciq_support(split: str, data_dir) -> list[str]:
    from llmcal.tasks.registry import resolve_data_dir

    path = resolve_data_dir(data_dir, "sciq") / f"sciq_{split}.json"
    if not path.is_file():
        raise QuantError("calibration", f"{path} not found (point --data_dir or $LLMCAL_DATA at the data)")
    rows = json.loads(path.read_text())
    return [r["support"].strip() for r in rows if str(r.get("support", "")).strip()]


def _file_texts(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise QuantError("calibration", f"{path}:{n} is not JSON ({err})") from err
            text = obj.get("text", obj.get("prompt")) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise QuantError("calibration", f"{path}:{n} has no 'text' or 'prompt' string")
            out.append(text)
        return out
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def load_texts(source: str, n: int | None = None, data_dir=None) -> list[str]:
    """The first ``n`` texts of ``source`` (all when ``n`` is None)."""
    if source.startswith("sciq_support"):
        split = source.split(":", 1)[1] if ":" in source else "valid"
        if split not in ("valid", "test"):
            raise QuantError("calibration", f"sciq_support split must be valid or test, got {split!r}")
        texts = _sciq_support(split, data_dir)
    elif Path(source).suffix in (".txt", ".jsonl") and Path(source).is_file():
        texts = _file_texts(Path(source))
    else:
        from llmcal.tasks.prompts import build_request
        from llmcal.tasks.registry import load_task

        try:
            items = load_task(source, data_dir=data_dir)
        except Exception as err:  # TaskError and friends: report under the field name
            raise QuantError("calibration", f"cannot read {source!r} ({err})") from err
        texts = []
        for it in items:
            req = build_request(it, "cloze")
            texts.append(req.context + req.continuations[it.answer])
    if n is not None:
        if n < 1:
            raise QuantError("n_samples", f"must be at least 1, got {n}")
        if len(texts) < n:
            raise QuantError("n_samples", f"calibration set {source!r} has {len(texts)} samples, fewer "
                             f"than the {n} requested")
        texts = texts[:n]
    return texts


def tokenize(tokenizer, texts: list[str], seq_len: int = 512) -> list:
    """One (1, T) LongTensor a text, truncated to ``seq_len`` tokens (empty texts dropped).

    The tokens the tokenizer puts *before* a text by itself are kept (Gemma's ``<bos>``: without
    it Gemma 3 270M's perplexity on SciQ paragraphs is several times higher and its first-position
    activations, which calibration sees, are not the ones it meets in use; lm-eval's scoring
    keeps them too); anything it appends (an end token) is not.  SmolLM2's tokenizer adds
    nothing, so its samples are unchanged.
    """
    import torch

    out = []
    for t in texts:
        plain = tokenizer(t, add_special_tokens=False).input_ids
        full = tokenizer(t).input_ids
        k = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
        ids = (full[:k] + plain)[:seq_len]  # what the tokenizer prepends, then the text
        if len(ids) >= 2:
            out.append(torch.tensor([ids], dtype=torch.long))
    return out
