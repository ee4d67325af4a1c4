"""The OpenAI-compatible backend, by concern.

* :mod:`.wire` -- the response shapes servers send, read into one (logprob parsing);
* :mod:`.scoring` -- multiple-choice scores by forced tokens or echo, and the probe choosing;
* :mod:`.generation` -- free-form answers from the chat or completions endpoint;
* :mod:`.client` -- the HTTP client: URLs, concurrency bound, sync bridge;
* :mod:`.retry` -- timeouts, bounded retries with backoff, and the errors;
* :mod:`.tokenizers` -- token ids (local tokenizer or the server's);
* :mod:`.backend` -- :class:`OpenAIBackend`, the :class:`~llmcal.backends.base.Backend` over them.
"""

from llmcal.backends.openai.backend import OPENAI_KEYS, OpenAIBackend, parse_openai_args
from llmcal.backends.openai.retry import APIError, RetryPolicy, ServerError, ServerUnavailable

__all__ = ["OPENAI_KEYS", "APIError", "OpenAIBackend", "RetryPolicy", "ServerError", "ServerUnavailable",
           "parse_openai_args"]
