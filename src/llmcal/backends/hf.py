"""The transformers backend: any causal LM (hub name, local folder, GGUF, compressed-tensors export).

Multiple-choice scoring reproduces lm-evaluation-harness's ``loglikelihood``
exactly (same tokenization of context and continuation, no BOS unless the
tokenizer adds one by itself, trailing context whitespace moved into the
continuation) but computes it faster:

* the question prefix is computed once and every option continues from its
  keys/values in the same pass (:mod:`llmcal.backends.packing`);
* items are sorted by length and packed into batches under a token budget,
  so little padding is computed;
* the vocabulary projection (``lm_head``, 576 x 49152 for the embedded model)
  runs only on the rows whose logits are needed, not on every position;
* the hidden states of the last context token and their mean over each
  option's tokens (kept for the external probe) come from the same forward
  pass.

Free-form generation is :mod:`llmcal.backends.hf_generation`.  A folder that
``llmcal quantize --export`` wrote loads back with its packed weights
decompressed once (:func:`decompress_now`), so every llmcal command runs on it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from llmcal.backends.base import DEFAULT_STOP, Backend, BackendCapabilityError, Messages, as_messages
from llmcal.backends.model_args import EMBEDDED_GGUF, EMBEDDED_NAME, embedded_model_dir, resolve_alias
from llmcal.backends.packing import PackedItem, pack_item, tree_mask
from llmcal.core.requests import Generation, MCRequest, MCScore

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "auto": "auto"}


def resolve_dtype(name: str):
    import torch

    key = _DTYPES.get(str(name).lower())
    if key is None:
        raise ValueError(f"dtype: unknown {name!r}; use one of float32, bfloat16, float16")
    return "auto" if key == "auto" else getattr(torch, key)


def is_compressed_tensors(folder: str | Path) -> bool:
    """Whether ``folder`` holds a compressed-tensors checkpoint (``llmcal quantize --export``, llm-compressor)."""
    import json

    try:
        qcfg = json.loads((Path(folder) / "config.json").read_text()).get("quantization_config") or {}
    except (OSError, ValueError):
        return False
    return qcfg.get("quant_method") == "compressed-tensors"


def decompress_now(model, device: str = "cpu") -> None:
    """Run the decompression compressed-tensors defers to the model's first ``forward``.

    transformers loads such a folder with packed integer weights and a forward
    pre-hook on the *top-level* model that unpacks them on the first call.
    This backend calls the decoder (``model.model``) and ``lm_head`` itself,
    which would skip the hook and meet Linear layers without ``weight``; one
    one-token forward here fires it.  The layers keep their quantization
    scheme (W8A8 still quantizes activations per token), so the numbers are
    the export's.  ``no_grad``, not ``inference_mode``: the unpacked weights
    must stay trainable for ``posttrain``.
    """
    import torch

    with torch.no_grad():
        model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), use_cache=False)


def hub_host() -> str:
    """The host of the Hugging Face hub (``$HF_ENDPOINT`` or huggingface.co)."""
    from urllib.parse import urlparse

    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` s (False when ``HF_HUB_OFFLINE`` is set).

    Without it, a hub name on a machine with no network spends about a minute in
    huggingface_hub's retries before the error; with it, the load goes straight to the
    local cache and fails at once, saying why.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    import socket

    try:
        socket.create_connection((hub_host(), 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _quiet_gguf_progress() -> Iterator[None]:
    """transformers' GGUF reader draws a tqdm bar of its own on every load: silence it for this load only."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # an older transformers without GGUF support: nothing to quiet
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def gguf_cache_dir(gguf_path: Path) -> Path | None:
    """Where the dequantized copy of a GGUF file is kept (None: caching is off).

    Keyed by the file's absolute path, size and modification time, under
    ``$LLMCAL_CACHE_DIR`` (default ``~/.cache/llmcal``); ``LLMCAL_CACHE_DIR=off``
    turns it off.
    """
    import hashlib

    root = os.environ.get("LLMCAL_CACHE_DIR", str(Path.home() / ".cache" / "llmcal"))
    if root.lower() in ("off", "0", "none", ""):
        return None
    try:
        st = gguf_path.stat()
    except OSError:
        return None
    key = hashlib.sha256(f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return Path(root) / "gguf" / f"{gguf_path.stem}-{key}"


def _save_cache(model, tokenizer, target: Path) -> None:
    """Write model + tokenizer to ``target`` atomically (a temp folder, then rename)."""
    import shutil
    import tempfile

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        # The weights are already dequantized floats; the GGUF "quantizer" marker
        # only blocks saving them.
        quantizer = getattr(model, "hf_quantizer", None)
        qconfig = getattr(model.config, "quantization_config", None)
        model.hf_quantizer = None
        if qconfig is not None:
            del model.config.quantization_config
        try:
            model.save_pretrained(tmp)
        finally:
            model.hf_quantizer = quantizer
            if qconfig is not None:
                model.config.quantization_config = qconfig
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:  # a read-only home or a race with another process: caching is optional
        shutil.rmtree(locals().get("tmp", target.parent / ".none"), ignore_errors=True)


class HFBackend(Backend):
    """Score requests with a transformers causal LM on the CPU (or a GPU).

    Build it with :meth:`load` (``load_backend("hf", ...)``), whose parameters
    follow lm-eval's ``--model_args`` for ``hf``: ``pretrained`` (hub name or
    folder; empty = the embedded model), ``gguf_file``, ``dtype``,
    ``revision``, ``trust_remote_code``, ``device``; or wrap a model and
    tokenizer already in memory with the constructor.  ``max_tokens`` is the
    token budget of one forward pass (items are packed up to it).
    ``hidden_layers`` are the hidden-state indices kept (0 = embeddings,
    -1 = the final, normalized layer; none by default: the probe asks for
    them with :meth:`set_hidden_layers`).
    """

    name = "hf"
    # "chat_template" only where the tokenizer has one (narrowed per instance)
    capabilities = frozenset({"score", "generate", "hidden_states", "chat_template", "score_tokens", "next_token"})

    def __init__(
        self,
        model,
        tokenizer,
        model_name: str = "model",
        max_tokens: int = 512,
        hidden_layers: Sequence[int] = (),
        device: str = "cpu",
        load_args: dict | None = None,
        answer_hidden: bool = True,
        max_batch: int | None = None,
        decode_rows: int | None = None,
    ) -> None:
        from llmcal.backends.lean_decode import DECODE_ROWS

        self.model = model.eval()
        # rows the lean decoder runs together at most; more prompts join as rows finish (lean_decode.decode)
        self.decode_rows = DECODE_ROWS if decode_rows in (None, "auto") else max(1, int(decode_rows))
        # lm-eval's --batch_size: at most this many items a forward pass (None: --max_tokens alone decides)
        self.max_batch = None if max_batch in (None, "auto") else max(1, int(max_batch))
        # also keep the mean hidden state over each option's tokens (costs one
        # more position per option; only when hidden layers are kept)
        self.answer_hidden = bool(answer_hidden)
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_tokens = int(max_tokens)
        self.hidden_layers = tuple(int(i) for i in hidden_layers)
        self.device = device
        self.load_args = dict(load_args or {})
        self.n_layers = int(model.config.num_hidden_layers)
        self.hidden_size = int(model.config.hidden_size)
        self.vocab_size = int(getattr(model.config, "vocab_size", 0) or 0) or None
        # lm-eval's HFLM sets add_bos_token for Gemma models (they are trained with <bos> first and
        # score near chance without it); every other model is encoded without special tokens
        self.add_bos = "gemma" in str(getattr(model.config, "model_type", "")).lower()
        caps = set(type(self).capabilities)
        if not getattr(tokenizer, "chat_template", None):
            caps.discard("chat_template")
        self.capabilities = frozenset(caps)

    @classmethod
    def load(
        cls,
        pretrained: str | None = None,
        gguf_file: str | None = None,
        dtype: str = "float32",
        revision: str | None = None,
        trust_remote_code: bool = False,
        device: str = "cpu",
        max_tokens: int = 512,
        hidden_layers: Sequence[int] = (),
        tokenizer: str | None = None,
        attn_implementation: str = "sdpa",
        batch_size: int | str | None = None,  # lm-eval's: items a scoring pass at most ("auto": max_tokens only)
        matmul: str | None = None,  # fp32 linear kernel: auto (probe), onednn, mkl, default (backends/fast_linear)
        decode_rows: int | None = None,  # rows decoded together at most (continuous batching, lean_decode)
    ) -> "HFBackend":
        """Load a model like lm-eval's ``--model hf --model_args ...`` (empty = embedded)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not pretrained:
            pretrained, gguf_file = str(embedded_model_dir()), EMBEDDED_GGUF
            name = EMBEDDED_NAME
        elif (alias := resolve_alias(str(pretrained))) is not None:  # e.g. gemma3-270m
            pretrained, gguf_file, name = alias
        else:
            name = str(pretrained) + (f" ({gguf_file})" if gguf_file else "")
        import transformers

        torch.set_num_threads(max(1, int(os.environ.get("LLMCAL_THREADS", os.cpu_count() or 1))))
        transformers.logging.set_verbosity_error()  # llmcal shows its own progress
        transformers.utils.logging.disable_progress_bar()
        kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
        offline = not Path(str(pretrained)).expanduser().exists() and not hub_reachable()
        if offline:  # a hub name with no hub: the cache only, at once, not a minute of retries
            kwargs["local_files_only"] = True
        source, cached = str(pretrained), None
        if gguf_file:
            cached = gguf_cache_dir(Path(pretrained) / gguf_file)
            if cached is not None and (cached / "config.json").is_file():
                source = str(cached)  # dequantized once before; loads in seconds
            else:
                kwargs["gguf_file"] = gguf_file
        try:
            with _quiet_gguf_progress():  # transformers' GGUF dequantization bar, printed on every load
                tok = AutoTokenizer.from_pretrained(tokenizer or source, **kwargs)
                if "gguf_file" in kwargs and cached is not None:
                    # Dequantizing a GGUF takes ~20 s: do it once, in fp32, and keep the result.
                    model = AutoModelForCausalLM.from_pretrained(
                        source, dtype=torch.float32, attn_implementation=attn_implementation, **kwargs)
                    _save_cache(model, tok, cached)
                    if resolve_dtype(dtype) not in ("auto", torch.float32):
                        model = model.to(resolve_dtype(dtype))
                    model = model.to(device)
                else:
                    model = AutoModelForCausalLM.from_pretrained(
                        source, dtype=resolve_dtype(dtype), attn_implementation=attn_implementation, **kwargs
                    ).to(device)
                    if not gguf_file and is_compressed_tensors(source):
                        decompress_now(model, device)
        except OSError as err:
            if offline:
                raise ValueError(
                    f"--model_args pretrained={pretrained!r}: not a local folder, the hub ({hub_host()}) cannot "
                    "be reached from here, and the model is not in the Hugging Face cache. Give a local "
                    "folder (pretrained=/path/to/model), or download it on a machine with network first."
                ) from None
            raise ValueError(
                f"--model_args pretrained={pretrained!r}"
                + (f",gguf_file={gguf_file!r}" if gguf_file else "")
                + f": cannot load it ({str(err).splitlines()[0]}). Give a local folder, or a hub "
                "name on a machine that can reach the hub."
            ) from err
        load_args = {"pretrained": str(pretrained), "gguf_file": gguf_file, "revision": revision,
                     "dtype": str(dtype)}
        from llmcal.backends.fast_linear import choose_matmul, requested_mode

        if device == "cpu" and model.dtype == torch.float32:
            load_args["matmul"] = choose_matmul(model, matmul)  # a ~1 s probe; describe() reports it
        else:
            load_args["matmul"] = {"matmul": "default", "requested": requested_mode(matmul),
                                   "reason": "the packed linear kernels are for fp32 on the CPU"}
        return cls(model, tok, name, max_tokens=max_tokens, hidden_layers=hidden_layers, device=device,
                   load_args=load_args, max_batch=None if batch_size in (None, "auto") else int(batch_size),
                   decode_rows=decode_rows)

    @classmethod
    def parse_model_args(cls, text: str | None, dtype: str | None = None, base: dict | None = None) -> dict:
        """``--model_args`` for ``hf``: lm-eval's keys, ``dtype`` from ``--dtype`` or float32, checked."""
        from llmcal.backends.model_args import parse_model_args

        margs = parse_model_args(text, base=base)
        if dtype:
            margs["dtype"] = dtype
        margs.setdefault("dtype", "float32")
        if str(margs["dtype"]).lower() not in _DTYPES:
            raise ValueError(f"dtype: unknown {margs['dtype']!r}; use float32 or bfloat16")
        return margs

    # ------------------------------------------------------------------ info
    def describe(self) -> dict:
        import torch
        import transformers

        return {
            "backend": "hf",
            "model": self.model_name,
            **self.load_args,
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "device": self.device,
            "n_layers": self.n_layers,
            "hidden_size": self.hidden_size,
            "hidden_layers": list(self.hidden_layers),
            "decode_rows": self.decode_rows,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }

    def fingerprint(self) -> str:
        """A short hash naming the weights (for probes that belong to one model)."""
        import hashlib

        import torch

        h = hashlib.sha256()
        h.update(self.model_name.encode())
        with torch.no_grad():
            for name, p in list(self.model.named_parameters())[:4]:
                h.update(name.encode())
                h.update(p.detach().float().flatten()[:4096].numpy().tobytes())
        return h.hexdigest()[:16]

    def apply_chat_template(self, messages: str | Messages) -> str:
        """The tokenizer's chat template over ``messages`` (a string = one user message), ready to answer."""
        if "chat_template" not in self.capabilities:
            raise BackendCapabilityError(f"{self.model_name}: the tokenizer has no chat template (--chat needs one)")
        return self.tokenizer.apply_chat_template(as_messages(messages), tokenize=False,
                                                  add_generation_prompt=True)

    def set_hidden_layers(self, layers: Sequence[int]) -> None:
        """Keep these hidden-state indices (0 = embeddings, -1 = the final, normalized layer)."""
        kept = tuple(int(i) for i in layers)
        for i in kept:
            if not -(self.n_layers + 1) <= i <= self.n_layers:
                raise ValueError(f"hidden layer {i} is outside -{self.n_layers + 1}..{self.n_layers}")
        self.hidden_layers = kept

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    # ------------------------------------------------------------ generating
    def generate(
        self,
        prompts: Sequence[str | Messages],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        n: int = 1,
        seed: int = 0,
        top_k: int = 5,
        stop: Sequence[str] | None = DEFAULT_STOP,
    ) -> list[list[Generation]]:
        """``n`` answers per prompt string, greedy at temperature 0 (:mod:`llmcal.backends.hf_generation`).

        Prompts are text: a conversation is templated first with
        :meth:`apply_chat_template` (this backend does not declare ``messages``).
        """
        from llmcal.backends.hf_generation import generate_hf

        if any(not isinstance(p, str) for p in prompts):
            self.require("messages", "a conversation as the prompt (template it with apply_chat_template)")
        return generate_hf(self, list(prompts), max_new_tokens=max_new_tokens, temperature=temperature, n=n, seed=seed,
                           top_k=top_k, stop=stop)

    # ------------------------------------------------------------ tokenizing
    def _encode(self, text: str) -> list[int]:
        bos = self.add_bos and not text.startswith(self.tokenizer.bos_token or "\0")  # a template may hold it
        return self.tokenizer(text, add_special_tokens=bos).input_ids

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's ``_encode_pair``: trailing context spaces go to the continuation,
        and the continuation tokens are what ``context + continuation`` adds."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self._encode(context + continuation)
        ctx = self._encode(context)
        return ctx, whole[len(ctx):]

    def pack(self, request: MCRequest) -> PackedItem:
        """One request as a tree; per-option contexts (partial scoring) share their common token prefix."""
        pairs = [self.encode_pair(request.context_of(o), cont) for o, cont in enumerate(request.continuations)]
        ctxs, conts = [p[0] for p in pairs], [p[1] for p in pairs]
        if not request.contexts:
            return pack_item(ctxs[0], conts, full_options=self._want_answer_hidden)
        shared = 0
        while all(len(c) > shared for c in ctxs) and len({c[shared] for c in ctxs}) == 1:
            shared += 1
        if shared == 0 and not all(ctxs):
            raise ValueError("partial scoring: an option's context tokenized to zero tokens")
        return pack_item(ctxs[0][:shared], conts, full_options=self._want_answer_hidden,
                         option_context_ids=[c[shared:] for c in ctxs])

    @property
    def _want_answer_hidden(self) -> bool:
        return self.answer_hidden and bool(self.hidden_layers)

    # --------------------------------------------------------------- scoring
    def score_mc(
        self,
        requests: Sequence[MCRequest],
        progress: Callable[[int], None] | None = None,
    ) -> list[MCScore]:
        """Score every request; results come back in request order."""
        return self.score_packed([self.pack(r) for r in requests], progress)

    def score_tokens(self, context: str, token_ids: Sequence[int]) -> np.ndarray:
        """Per-token ``log p(token_t | context, token_<t)`` of the given token ids, in one forward pass.

        The ids are scored as given (not re-tokenized from text), so the values line up with a
        generation's own ``token_logprobs`` and ``entropies``: what conditional PMI (van der Poel
        et al. 2022) needs for the answer scored after another prompt.  Returns (len(token_ids),) float64.
        """
        import torch

        ctx, cont = self._encode(context), [int(t) for t in token_ids]
        if not ctx or not cont:
            raise ValueError("score_tokens: the context and the continuation need at least one token each")
        ids = torch.tensor([ctx + cont], dtype=torch.long, device=self.device)  # (1, t)
        with torch.inference_mode():
            h = self.model.model(input_ids=ids, use_cache=False).last_hidden_state[0]  # (t, hidden)
            rows = h[len(ctx) - 1: len(ctx) - 1 + len(cont)]  # (n, hidden): the rows predicting each token
            logp = torch.log_softmax(self.model.lm_head(rows).float(), dim=-1)  # (n, vocab)
            lp = logp.gather(1, torch.tensor(cont, device=logp.device)[:, None]).squeeze(1)  # (n,)
        return lp.double().cpu().numpy()

    def next_token_logprobs(self, prompts: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        """``log p(candidate | prompt)`` (len(prompts), len(candidates)) float64 for one-token candidates.

        Each prompt's keys/values come from the lean decoder's prompt cache as far as it has them
        (:func:`llmcal.backends.lean_decode.next_token_logprobs`): a follow-up that quotes the
        greedy answer just generated prefills only what follows the answer.  A candidate that is
        not one token (or two that share their token) is refused: :meth:`score_mc` scores those.
        """
        from llmcal.backends.hf_generation import end_token_ids
        from llmcal.backends.lean_decode import next_token_logprobs

        ids = []
        for c in candidates:
            toks = self.tokenizer(c, add_special_tokens=False).input_ids
            if len(toks) != 1:
                raise ValueError(f"next_token_logprobs: candidate {c!r} is {len(toks)} tokens, not one")
            ids.append(toks[0])
        if len(set(ids)) != len(ids):
            raise ValueError(f"next_token_logprobs: candidates {list(candidates)} share a token")
        if not prompts:
            return np.zeros((0, len(ids)))
        eos = end_token_ids(self)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
        logp = next_token_logprobs(self, [self._encode(p) for p in prompts], pad)  # (b, vocab)
        return logp[:, ids].double().cpu().numpy()

    def score_packed(
        self,
        packed: Sequence[PackedItem],
        progress: Callable[[int], None] | None = None,
    ) -> list[MCScore]:
        """Score already tokenized items, longest first under the token budget."""
        order = sorted(range(len(packed)), key=lambda i: -len(packed[i].input_ids))
        results: list[MCScore | None] = [None] * len(packed)
        batch: list[int] = []
        longest = 0
        for i in order:
            n = len(packed[i].input_ids)
            full = self.max_batch is not None and len(batch) >= self.max_batch
            if batch and (full or max(longest, n) * (len(batch) + 1) > self.max_tokens):
                self._run_batch([packed[j] for j in batch], batch, results)
                if progress:
                    progress(len(batch))
                batch, longest = [], 0
            batch.append(i)
            longest = max(longest, n)
        if batch:
            self._run_batch([packed[j] for j in batch], batch, results)
            if progress:
                progress(len(batch))
        return results  # type: ignore[return-value]

    def _run_batch(self, items: list[PackedItem], idx: list[int], results: list) -> None:
        import torch

        dtype = self.model.dtype
        b, t = len(items), max(len(p.input_ids) for p in items)
        input_ids = np.zeros((b, t), dtype=np.int64)
        position_ids = np.zeros((b, t), dtype=np.int64)
        allowed = np.zeros((b, 1, t, t), dtype=bool)
        for r, p in enumerate(items):
            n = len(p.input_ids)
            input_ids[r, :n] = p.input_ids
            position_ids[r, :n] = p.position_ids
            position_ids[r, n:] = np.arange(n, t)
            allowed[r, 0] = tree_mask(p.branch, t)
        mask = torch.zeros((b, 1, t, t), dtype=dtype)
        mask.masked_fill_(~torch.from_numpy(allowed), torch.finfo(dtype).min)
        want_hidden = bool(self.hidden_layers)
        with torch.inference_mode():
            out = self.model.model(
                input_ids=torch.from_numpy(input_ids).to(self.device),
                position_ids=torch.from_numpy(position_ids).to(self.device),
                attention_mask=mask.to(self.device),
                output_hidden_states=want_hidden,
                use_cache=False,
            )
            last = out.last_hidden_state  # (b, t, hidden)
            # gather only the rows whose logits are needed
            rows = [np.concatenate(p.target_rows) for p in items]
            flat_b = np.concatenate([np.full(len(r), k) for k, r in enumerate(rows)])
            flat_t = np.concatenate(rows)
            h = last[torch.from_numpy(flat_b), torch.from_numpy(flat_t)]  # (n_rows, hidden)
            logits = self.model.lm_head(h).float()  # (n_rows, vocab)
            logp = torch.log_softmax(logits, dim=-1)
            targets = torch.from_numpy(np.concatenate([np.concatenate(p.target_ids) for p in items]))
            tok_lp = logp.gather(1, targets[:, None]).squeeze(1).double().cpu().numpy()  # (n_rows,)
            greedy = (logits.argmax(dim=-1).cpu() == targets).numpy()
            if want_hidden:
                hs = out.hidden_states  # tuple of (b, t, hidden), n_layers + 1
                last_rows = torch.tensor([p.prefix_last for p in items])
                kept = torch.stack(
                    [hs[layer][torch.arange(b), last_rows] for layer in self.hidden_layers], dim=1
                ).float().cpu().numpy()  # (b, n_kept, hidden)
                means = None
                if all(p.answer_rows for p in items):
                    # mean over each option's token rows, every kept layer
                    stacked = torch.stack([hs[layer] for layer in self.hidden_layers], dim=2)  # (b, t, n_kept, h)
                    means = [
                        torch.stack([stacked[k, torch.from_numpy(r)].mean(dim=0) for r in p.answer_rows])
                        .float().cpu().numpy()  # (k_options, n_kept, hidden)
                        for k, p in enumerate(items)
                    ]
        offset = 0
        for k, (p, i) in enumerate(zip(items, idx)):
            lengths = [len(t_) for t_ in p.target_ids]
            lp = np.empty(len(lengths))
            gr = np.empty(len(lengths), dtype=bool)
            for o, n in enumerate(lengths):
                lp[o] = tok_lp[offset: offset + n].sum()
                gr[o] = bool(greedy[offset: offset + n].all())
                offset += n
            results[i] = MCScore(
                logprobs=lp,
                n_tokens=np.asarray(lengths),
                is_greedy=gr,
                hidden=kept[k] if want_hidden else None,
                answer_hidden=means[k] if want_hidden and means is not None else None,
            )
