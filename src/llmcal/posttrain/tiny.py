"""A tiny random-weight Llama with a byte-level tokenizer: for tests and smoke runs, fully offline.

No hub is reachable here, so the trainers and the SVD/ablation code are
exercised on a model built in memory (``LlamaConfig`` with random weights)
and a tokenizer with one token per byte (no merges), both saveable with
``save_pretrained`` like a real checkpoint.
"""

from __future__ import annotations


def tiny_tokenizer():
    """A byte-level fast tokenizer: 256 byte tokens plus ``<eos>`` and ``<pad>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["<eos>"], vocab["<pad>"] = len(vocab), len(vocab) + 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def tiny_llama(seed: int = 0, vocab_size: int = 258, hidden_size: int = 32, layers: int = 2):
    """A random Llama (hidden 32, 2 layers, 4 query / 2 key-value heads) in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=True,
                      eos_token_id=256, pad_token_id=257, bos_token_id=None)
    return LlamaForCausalLM(cfg).eval()
