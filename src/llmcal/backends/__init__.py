"""Models behind one interface: :class:`Backend`, chosen by name with :func:`load_backend`.

``load_backend("hf", pretrained=...)`` (transformers, in this process) or
``load_backend("openai", base_url=...)`` (any OpenAI-compatible server);
plug-ins register under the entry-point group ``llmcal.backends``.  Nothing
heavy is imported until a backend is loaded.
"""

from llmcal.backends.base import CAPABILITIES, Backend, BackendCapabilityError
from llmcal.backends.registry import (BACKENDS, available_backends, backend_class, load_backend,
                                      parse_backend_args)

__all__ = ["BACKENDS", "CAPABILITIES", "Backend", "BackendCapabilityError", "available_backends",
           "backend_class", "load_backend", "parse_backend_args"]
