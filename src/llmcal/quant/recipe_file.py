"""``llmcal quantize --recipe recipe.yaml``: a quantization recipe as a file, in the spirit of llm-compressor's.

A recipe lists its stages in the order they apply to each decoder layer, and
the linears to leave in float::

    # W8A8 the way llm-compressor's SmoothQuant + GPTQ recipe does it
    stages:
      - smoothquant:            # smoothing only, because a quantizing stage follows
          alpha: 0.5
      - gptq:
          weights: {bits: 8, granularity: channel}
          activations: {bits: 8, granularity: channel, dynamic: true}
          act_order: false
          damp: 0.01
    ignore:                     # regexes matched in full against module names
      - 'model\\.layers\\.0\\..*'
      - '.*down_proj'

Rules, each checked with the file, the line and the field named in the error:

* one quantizing stage (``rtn``, ``awq``, ``gptq``, or ``smoothquant``), last;
* before it, at most one ``smoothquant`` stage, which then only smooths
  (its ``alpha``), as llm-compressor's SmoothQuantModifier does;
* ``weights`` / ``activations`` take :class:`~llmcal.quant.scheme.QuantArgs`'
  fields; each method its own options (``alpha``, ``smooth_all`` for
  smoothquant; ``grid``, ``clip``, ``clip_grid``, ``search_tokens`` for awq;
  ``block``, ``act_order``, ``damp`` for gptq; ``sequential`` for all);
* an unknown key is an error, never ignored.

:func:`load_recipe` returns the :class:`~llmcal.quant.scheme.Recipe` the
stages describe, validated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmcal.quant.errors import QuantError
from llmcal.quant.scheme import METHODS, QuantArgs, Recipe

_ARGS_FIELDS = ("bits", "granularity", "group_size", "symmetric", "observer", "percentile", "dynamic",
                "float_zero_point")
#: per method: recipe key -> Recipe field
_OPTIONS = {
    "rtn": {"sequential": "sequential"},
    "smoothquant": {"alpha": "alpha", "smooth_all": "smooth_all", "sequential": "sequential"},
    "awq": {"grid": "awq_grid", "clip": "awq_clip", "clip_grid": "awq_clip_grid", "search_tokens": "search_tokens",
            "sequential": "sequential"},
    "gptq": {"block": "gptq_block", "act_order": "gptq_act_order", "damp": "gptq_damp", "sequential": "sequential"},
}


class _Located:
    """Line numbers of the YAML nodes, by path (``("stages", 1, "gptq", "weights")``)."""

    def __init__(self, text: str) -> None:
        import yaml

        self.lines: dict[tuple, int] = {}
        root = yaml.compose(text)
        if root is not None:
            self._walk(root, ())

    def _walk(self, node, path: tuple) -> None:
        import yaml

        self.lines.setdefault(path, node.start_mark.line + 1)  # a mapping value keeps its key's line
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                self.lines[path + (k.value,)] = k.start_mark.line + 1
                self._walk(v, path + (k.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._walk(v, path + (i,))

    def line(self, path: tuple) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)


def _field(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def load_recipe(path: str | Path) -> Recipe:
    """The validated :class:`Recipe` of a recipe file; :class:`QuantError` names file, line and field."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise QuantError("recipe", f"{p} does not exist") from None
    try:
        data = yaml.safe_load(text)
        where = _Located(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise QuantError("recipe", f"{p}{line}: not valid YAML ({getattr(err, 'problem', None) or err})") from None

    def fail(at: tuple, message: str) -> QuantError:
        return QuantError("recipe", f"{p} line {where.line(at)}: field '{_field(at)}': {message}")

    if not isinstance(data, dict):
        raise fail((), "a recipe is a mapping with 'stages' (and optionally 'ignore')")
    for k in data:
        if k not in ("stages", "ignore"):
            raise fail((k,), "unknown key; a recipe has 'stages' and 'ignore'")
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages:
        raise fail(("stages",), "a non-empty list of stages, e.g. '- gptq: {weights: {bits: 4}}'")
    parsed: list[tuple[str, dict[str, Any], tuple]] = []
    for i, st in enumerate(stages):
        at = ("stages", i)
        if not isinstance(st, dict) or len(st) != 1:
            raise fail(at, f"each stage is one method name with its options ({', '.join(METHODS)})")
        (method, opts), = st.items()
        if method not in METHODS:
            raise fail(at, f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        opts = {} if opts is None else opts
        if not isinstance(opts, dict):
            raise fail(at + (method,), "the options of a stage are a mapping")
        parsed.append((method, opts, at + (method,)))
    *before, (method, opts, at) = parsed
    if len(before) > 1 or any(m != "smoothquant" for m, _, _ in before):
        bad = next((a for m, _, a in before if m != "smoothquant"), before[-1][2] if before else at)
        raise fail(bad, "only one quantizing stage, last; before it at most one smoothquant stage (smoothing only)")
    fields: dict[str, Any] = {"method": method}
    if before:
        sq_opts, sq_at = before[0][1], before[0][2]
        for k in sq_opts:
            if k not in ("alpha", "smooth_all"):
                raise fail(sq_at + (k,), "a smoothing stage takes 'alpha' and 'smooth_all'")
        fields["smooth"] = float(sq_opts.get("alpha", 0.5))
        if "smooth_all" in sq_opts:
            fields["smooth_all"] = bool(sq_opts["smooth_all"])
    allowed = _OPTIONS[method]
    for k, v in opts.items():
        if k in ("weights", "activations"):
            if v is None and k == "activations":
                continue
            if not isinstance(v, dict):
                raise fail(at + (k,), f"a mapping of {', '.join(_ARGS_FIELDS)}")
            for kk in v:
                if kk not in _ARGS_FIELDS:
                    raise fail(at + (k, kk), f"unknown; {k} take {', '.join(_ARGS_FIELDS)}")
            defaults = {"granularity": "channel", "group_size": None} if k == "activations" else {}
            try:
                fields[k] = QuantArgs(**{**defaults, **v}).validate(k)
            except (QuantError, TypeError) as err:
                raise fail(at + (k,), str(err)) from None
        elif k in allowed:
            fields[allowed[k]] = v
        else:
            raise fail(at + (k,), f"unknown option of {method}; it takes weights, activations, "
                       + ", ".join(allowed))
    if method == "smoothquant" and "activations" not in fields:
        fields["activations"] = QuantArgs(8, "channel", None, True, dynamic=True)  # W8A8, as --method smoothquant
    if method == "smoothquant" and "weights" not in fields:
        fields["weights"] = QuantArgs(8, "channel", None)
    ignore = data.get("ignore") or []
    if not isinstance(ignore, list) or not all(isinstance(x, str) for x in ignore):
        raise fail(("ignore",), "a list of regular expressions over module names")
    fields["ignore"] = tuple(ignore)
    try:
        return Recipe(**fields).validate()
    except QuantError as err:
        key = err.field.split(".")[0].split("[")[0]
        field_at = {"ignore": ("ignore",), "smooth": before[0][2] if before else at}.get(key, at)
        raise fail(field_at, str(err)) from None
    except (TypeError, ValueError) as err:  # e.g. damp: "abc"
        raise fail(at, f"a value has the wrong type ({err})") from None
