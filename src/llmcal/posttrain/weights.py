"""Checkpoints and their linear layers, for comparing two models of one architecture.

A checkpoint is named on the command line as ``embedded`` (the embedded
SmolLM2-135M-Instruct, through ``load_backend("hf")``) or a folder holding a
transformers checkpoint (what ``llmcal posttrain orpo`` writes).  The linear
layers compared are the ``nn.Linear`` modules inside the decoder blocks
(``model.layers.<i>.<...>.<kind>``): attention q/k/v/o and the MLP's
gate/up/down.  Embeddings and the (tied) ``lm_head`` are left out, as in
He & Cao 2025 (arXiv 2509.17866), which studies the blocks' "principal linear
layers".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

EMBEDDED = "embedded"
_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class LinearRef:
    """One linear layer: its full module name, block index and kind (``q_proj``...)."""

    name: str
    layer: int
    kind: str


def load_checkpoint(spec: str, dtype: str = "float32"):
    """An ``hf`` backend for ``embedded`` or a checkpoint folder (clear error otherwise)."""
    from llmcal.backends.registry import load_backend

    if spec.strip().lower() == EMBEDDED:
        return load_backend("hf", dtype=dtype)
    path = Path(spec)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{spec}: not a checkpoint folder (no config.json there); give a folder written by "
            f"save_pretrained (e.g. by `llmcal posttrain orpo`) or `{EMBEDDED}`"
        )
    return load_backend("hf", pretrained=str(path), dtype=dtype)


def linear_layers(model) -> list[LinearRef]:
    """The decoder blocks' ``nn.Linear`` layers, in module order."""
    import torch

    out = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        m = _BLOCK.search(name)
        if m is None:
            continue
        out.append(LinearRef(name=name, layer=int(m.group(1)), kind=m.group(2).split(".")[-1]))
    return out


def paired_linears(base, post) -> list[LinearRef]:
    """The linear layers of ``base``, checked to exist with the same shape in ``post``."""
    b_refs = linear_layers(base)
    if not b_refs:
        raise ValueError("base: no linear layers inside decoder blocks (model.layers.<i>...) were found")
    post_modules = dict(post.named_modules())
    base_modules = dict(base.named_modules())
    for ref in b_refs:
        other = post_modules.get(ref.name)
        if other is None:
            raise ValueError(f"post: has no layer {ref.name!r}; the checkpoints are not of one architecture")
        bs, ps = tuple(base_modules[ref.name].weight.shape), tuple(other.weight.shape)
        if bs != ps:
            raise ValueError(f"{ref.name}: shape {bs} in base but {ps} in post; not one architecture")
    return b_refs


def weight(model, name: str):
    """The weight tensor (out_features, in_features) of the named linear layer."""
    return dict(model.named_modules())[name].weight
