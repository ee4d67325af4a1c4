"""Layer groups as data: which modules feed which linears, per architecture.

SmoothQuant and AWQ both rescale an input channel j of some linears by s_j and
undo it in the module that produces that input (a norm's weight or the rows of
a previous linear), so the float function is unchanged.  Which modules pair up
is a fact about the architecture, written here as data (as llm-compressor's
regex mappings do), not as one subclass per model: another Llama-like model
needs a :class:`LayerMapping` (or a JSON file with the same fields), not code.

Paths are relative to one decoder layer.  Each :class:`Group` names

* ``prev``: the module whose output is the linears' input (a norm or a linear);
* ``linears``: the linears that read it (scaled together);
* ``inspect``: the module whose output AWQ compares before / after quantizing
  (the attention block for q,k,v; the MLP for gate,up; the linear itself
  otherwise).

A group whose ``prev`` is a linear applies only when its output width equals
the linears' input width (v -> o is skipped under grouped-query attention,
where v_proj is narrower than o_proj's input).

A norm ``prev`` computes ``y = (offset + w) * x_hat``: ``offset`` is 0 for
Llama's RMSNorm and 1 for Gemma's (``Gemma3RMSNorm`` stores ``w`` around 0 and
multiplies by ``1 + w``), so folding ``1 / s`` into it sets
``w' = (offset + w) / s - offset`` -- a field of the group, not a subclass.

Gemma 3 (Team Gemma 2025) has four norms a layer: ``input_layernorm`` feeds
q, k, v; ``post_attention_layernorm`` normalizes the attention *output* before
the residual add (it feeds no linear, so nothing folds into it, unlike Llama's
norm of the same name); ``pre_feedforward_layernorm`` feeds gate and up;
``post_feedforward_layernorm`` normalizes the MLP output.  ``q_norm`` /
``k_norm`` act on q_proj's / k_proj's outputs per head, after the linears,
so an input scaling folded into q_proj's columns leaves them unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmcal.quant.errors import QuantError


@dataclass(frozen=True)
class Group:
    prev: str
    linears: tuple[str, ...]
    inspect: str
    smooth: bool = True  # SmoothQuant uses this group (AWQ uses all)
    offset: float = 0.0  # a norm prev computes (offset + w) * x_hat: 0 Llama, 1 Gemma


@dataclass(frozen=True)
class LayerMapping:
    name: str
    layers: str  # path of the decoder-layer list in the model, e.g. "model.layers"
    linears: tuple[str, ...]  # every linear quantized in a layer
    groups: tuple[Group, ...] = ()
    model_types: tuple[str, ...] = field(default=())
    no_clip: tuple[str, ...] = ()  # linears AWQ does not clip (q, k: attention scores are sensitive)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerMapping":
        try:
            offset = float(d.get("norm_offset", 0.0))  # the default of every group's norm
            groups = tuple(Group(g["prev"], tuple(g["linears"]), g.get("inspect", g["linears"][0]),
                                 bool(g.get("smooth", True)), float(g.get("offset", offset)))
                           for g in d.get("groups", []))
            return cls(str(d["name"]), str(d["layers"]), tuple(d["linears"]), groups,
                       tuple(d.get("model_types", ())), tuple(d.get("no_clip", ())))
        except (KeyError, TypeError, IndexError, ValueError) as err:
            raise QuantError("mapping", f"a mapping needs name, layers, linears and groups of "
                             f"{{prev, linears, inspect}} ({err!r})") from err

    @classmethod
    def from_json(cls, path: str | Path) -> "LayerMapping":
        p = Path(path)
        if not p.is_file():
            raise QuantError("mapping", f"no such file {p}")
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except json.JSONDecodeError as err:
            raise QuantError("mapping", f"{p} is not JSON ({err})") from err

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "layers": self.layers, "linears": list(self.linears),
                "model_types": list(self.model_types), "no_clip": list(self.no_clip),
                "groups": [{"prev": g.prev, "linears": list(g.linears), "inspect": g.inspect,
                            "smooth": g.smooth, "offset": g.offset} for g in self.groups]}


_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_MLP = ("mlp.gate_proj", "mlp.up_proj")

#: Llama and the models that share its module names (Mistral, Qwen2/3, SmolLM2, ...).
LLAMA = LayerMapping(
    name="llama",
    layers="model.layers",
    linears=_ATTN + ("self_attn.o_proj",) + _MLP + ("mlp.down_proj",),
    groups=(
        Group("input_layernorm", _ATTN, "self_attn"),
        Group("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj", smooth=False),
        Group("post_attention_layernorm", _MLP, "mlp"),
        Group("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj", smooth=False),
    ),
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    no_clip=("self_attn.q_proj", "self_attn.k_proj"),
)

#: Gemma 3 (text; the 270M model is ``gemma3_text``): the MLP reads pre_feedforward_layernorm,
#: and every norm multiplies by (1 + w).  v -> o applies only without grouped-query attention
#: (the 270M model has 4 query heads and 1 key-value head, so it is skipped there).
GEMMA3 = LayerMapping(
    name="gemma3",
    layers="model.layers",
    linears=_ATTN + ("self_attn.o_proj",) + _MLP + ("mlp.down_proj",),
    groups=(
        Group("input_layernorm", _ATTN, "self_attn", offset=1.0),
        Group("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj", smooth=False),
        Group("pre_feedforward_layernorm", _MLP, "mlp", offset=1.0),
        Group("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj", smooth=False),
    ),
    model_types=("gemma3_text",),
    no_clip=("self_attn.q_proj", "self_attn.k_proj"),
)

MAPPINGS: dict[str, LayerMapping] = {t: m for m in (LLAMA, GEMMA3) for t in m.model_types}


def get_module(root, path: str):
    """``root.a.b.0.c`` by a dotted path; QuantError naming the path when absent."""
    mod = root
    for part in path.split("."):
        if not hasattr(mod, part):
            raise QuantError("mapping", f"module {path!r} not found (no {part!r} in "
                             f"{type(mod).__name__})")
        mod = getattr(mod, part)
    return mod


def resolve_mapping(model, mapping: LayerMapping | str | Path | None = None) -> LayerMapping:
    """The mapping for ``model``: given, from a JSON file, or by ``config.model_type``.

    Checks that every path exists in the first decoder layer, before any work.
    """
    if isinstance(mapping, (str, Path)):
        mapping = LayerMapping.from_json(mapping)
    if mapping is None:
        mtype = getattr(getattr(model, "config", None), "model_type", None)
        mapping = MAPPINGS.get(str(mtype))
        if mapping is None:
            raise QuantError("mapping", f"model type {mtype!r} has no known layer mapping (known: "
                             f"{', '.join(sorted(MAPPINGS))}); give one as JSON with --mapping "
                             "(see docs/quant.md)")
    layers = get_module(model, mapping.layers)
    if len(layers) == 0:
        raise QuantError("mapping", f"{mapping.layers!r} holds no layers")
    first = layers[0]
    for path in mapping.linears:
        get_module(first, path)
    for g in mapping.groups:
        get_module(first, g.prev)
        get_module(first, g.inspect)
        for path in g.linears:
            get_module(first, path)
    return mapping


def group_applies(layer, group: Group) -> bool:
    """A linear ``prev`` must produce exactly the linears' input width."""
    import torch

    prev = get_module(layer, group.prev)
    width = get_module(layer, group.linears[0]).in_features
    if isinstance(prev, torch.nn.Linear):
        return prev.out_features == width
    w = getattr(prev, "weight", None)
    return w is not None and w.ndim == 1 and w.shape[0] == width


def input_keys(mapping: LayerMapping) -> dict[str, str]:
    """{linear path: key of its input}: linears of one group read the same tensor."""
    keys = {p: p for p in mapping.linears}
    for g in mapping.groups:
        for p in g.linears:
            keys[p] = g.linears[0]
    return keys


def fold_scales(prev, linears, s, offset: float = 0.0) -> None:
    """Divide ``prev``'s output channel j by s_j and multiply the linears' input column j by it.

    The float function is unchanged: ``W (x / s) * s = W x`` (Xiao et al. 2023,
    eq. 3; Lin et al. 2024, sec. 3.2).  ``prev`` is a norm (weight (C,)) or a
    linear (weight (C, in), bias (C,)).  ``s`` is (C,).  A norm that computes
    ``(offset + w) * x_hat`` (Gemma: offset 1) gets ``w' = (offset + w) / s - offset``.
    """
    import torch

    with torch.no_grad():
        if isinstance(prev, torch.nn.Linear):
            prev.weight.div_(s[:, None].to(prev.weight.dtype))  # (C, in)
            if prev.bias is not None:
                prev.bias.div_(s.to(prev.bias.dtype))
        elif offset:
            w = prev.weight.data.double()  # (C,); in float64 so that w' + offset rounds once
            prev.weight.copy_(((w + offset) / s.double() - offset).to(prev.weight.dtype))
            if getattr(prev, "bias", None) is not None:
                prev.bias.div_(s.to(prev.bias.dtype))
        else:
            prev.weight.div_(s.to(prev.weight.dtype))  # (C,)
            if getattr(prev, "bias", None) is not None:
                prev.bias.div_(s.to(prev.bias.dtype))
        for lin in linears:
            lin.weight.mul_(s[None, :].to(lin.weight.dtype))  # (out, C)
