"""The NLI cross-encoder backend, on a tiny random BERT built in the test (no hub, no download)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from llmcal.backends.nli import NLIModel, label_order  # noqa: E402
from llmcal.signals.similarity import SemanticMatrices, cluster_by_entailment, from_nli  # noqa: E402

WORDS = "paris lyon is the capital of france city a".split()


def build_tiny_nli(folder, words, seed: int = 0):
    """A random 1-layer BERT cross-encoder with NLI labels, saved in ``folder`` (no hub)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(words)) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=5 + len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=3,
                        id2label={0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"},
                        label2id={"CONTRADICTION": 0, "NEUTRAL": 1, "ENTAILMENT": 2})
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_nli(tmp_path_factory):
    return build_tiny_nli(tmp_path_factory.mktemp("tiny-nli"), WORDS, seed=0)


def test_probabilities_follow_the_label_names(tiny_nli):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    nli = NLIModel(str(tiny_nli), batch_size=2)
    assert nli.order == [2, 1, 0]  # deberta-mnli's order: contradiction, neutral, entailment
    pre, hyp = ["paris is the capital", "lyon", "a city"], ["the capital of france", "paris", "lyon"]
    p = nli.probs(pre, hyp)
    assert p.shape == (3, 3) and np.allclose(p.sum(axis=1), 1.0)
    tok = AutoTokenizer.from_pretrained(str(tiny_nli))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_nli)).eval()
    with torch.inference_mode():
        ref = torch.softmax(model(**tok(pre, hyp, padding=True, return_tensors="pt")).logits, -1).double().numpy()
    assert p == pytest.approx(ref[:, [2, 1, 0]], abs=1e-6)  # batches of 2 = one batch of 3


def test_pair_matrix_scores_each_distinct_pair_once(tiny_nli):
    nli = NLIModel(str(tiny_nli))
    calls = []
    real = nli.probs
    nli.probs = lambda a, b: calls.append(len(a)) or real(a, b)
    probs = nli.pair_probs(["paris", "paris", "lyon", ""])
    assert probs.shape == (4, 4, 3) and calls == [6]  # 3 distinct texts: 6 ordered pairs
    assert probs[0, 1] == pytest.approx([1, 0, 0]) and probs[0, 2] == pytest.approx(probs[1, 2])
    m = from_nli(probs)
    assert isinstance(m, SemanticMatrices) and m.source == "nli"


def test_bidirectional_entailment_clusters():
    e = np.array([[1, .9, .1], [.8, 1, .1], [.2, .1, 1]])
    c = np.array([[0, .05, .8], [.1, 0, .8], [.7, .8, 0]])
    assert cluster_by_entailment(SemanticMatrices(e, c, "nli")).tolist() == [0, 0, 1]
    one_way = e.copy()
    one_way[1, 0] = 0.1  # 1 does not entail 0: a meaning of its own
    assert cluster_by_entailment(SemanticMatrices(one_way, c, "nli")).tolist() == [0, 1, 2]


def test_bad_models_are_named(tmp_path, tiny_nli):
    with pytest.raises(OSError, match="no such folder"):
        NLIModel(str(tmp_path / "absent"))
    with pytest.raises(OSError, match="cannot load a cross-encoder"):
        NLIModel(str(tmp_path))  # a folder without a model
    with pytest.raises(ValueError, match=r"do not name one 'neutral' class"):
        label_order({0: "entailment", 1: "not_entailment"})
