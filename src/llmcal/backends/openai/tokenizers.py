"""Token ids for forced scoring and chat templates for ``--chat``: a local tokenizer or the server's.

``scoring=forced`` needs the token ids of every option (module docstring of
:mod:`llmcal.backends.openai.scoring`).  They come from a transformers
tokenizer on this machine (``tokenizer=PATH_OR_NAME``, or ``embedded``),
which also carries the chat template, or else from the server's own
tokenize endpoint.  Both answer ``await encode(http, text)`` and
``await decode(http, ids)``.
"""

from __future__ import annotations

from llmcal.backends.openai.client import Client
from llmcal.backends.openai.retry import ServerError


class LocalTokenizer:
    """A transformers tokenizer on this machine (``tokenizer=PATH``; ``embedded`` = the embedded model's)."""

    def __init__(self, spec: str) -> None:
        from transformers import AutoTokenizer

        if spec == "embedded":
            from llmcal.backends.model_args import EMBEDDED_GGUF, embedded_model_dir

            self.tok = AutoTokenizer.from_pretrained(str(embedded_model_dir()), gguf_file=EMBEDDED_GGUF)
        else:
            self.tok = AutoTokenizer.from_pretrained(spec)

    async def encode(self, http, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False).input_ids)

    async def decode(self, http, ids: list[int]) -> str:
        return self.tok.decode(ids, clean_up_tokenization_spaces=False)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class ServerTokenizer:
    """The server's own tokenizer, through whichever endpoint it has.

    llama-cpp-python: ``/extras/tokenize`` and ``/extras/detokenize``; vLLM and
    llama.cpp's server: ``/tokenize`` and ``/detokenize`` at the root (their
    field names differ: both are sent).  A BOS the server adds by itself
    (seen as the tokens of the empty string) is dropped, as lm-eval scores
    without it.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.style: str | None = None
        self.prefix: list[int] | None = None

    async def _tok(self, http, text: str) -> list[int]:
        c = self.client
        styles = [self.style] if self.style else ["extras", "root"]
        last: Exception | None = None
        for style in styles:
            try:
                if style == "extras":
                    data = await c.post(http, f"{c.root_url}/extras/tokenize", {"input": text, "model": c.model})
                else:
                    data = await c.post(http, f"{c.root_url}/tokenize",
                                        {"model": c.model, "prompt": text, "content": text,
                                         "add_special_tokens": False, "add_special": False})
                ids = [int(t) for t in data["tokens"]]
            except (ServerError, KeyError, TypeError, ValueError) as err:
                last = err
                continue
            self.style = style
            return ids
        raise ServerError(c.base_url, getattr(last, "status", 0) or 0,
                          f"scoring=forced needs token ids, but the server has no tokenize endpoint "
                          f"(/extras/tokenize or /tokenize: {last}); pass tokenizer=PATH_OR_NAME")

    async def encode(self, http, text: str) -> list[int]:
        if self.prefix is None:
            self.prefix = await self._tok(http, "")
        ids = await self._tok(http, text)
        return ids[len(self.prefix):] if self.prefix and ids[: len(self.prefix)] == self.prefix else ids

    async def decode(self, http, ids: list[int]) -> str:
        c = self.client
        if self.style == "extras":
            data = await c.post(http, f"{c.root_url}/extras/detokenize", {"tokens": ids, "model": c.model})
            return str(data["text"])
        data = await c.post(http, f"{c.root_url}/detokenize", {"model": c.model, "tokens": ids})
        return str(data.get("prompt", data.get("content", "")))
