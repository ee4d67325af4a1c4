"""Post-training: ORPO toward honest confidence, and what post-training does to the weights.

* :mod:`~llmcal.posttrain.svd` -- the SVD comparison of two checkpoints of one
  architecture (He & Cao 2025, arXiv 2509.17866): singular-value scaling,
  rotations of the singular vectors, principal angles, heatmaps.
* :mod:`~llmcal.posttrain.ablate` -- models rebuilt from mixed SVD factors
  (post vectors + base values, base vectors + post values, one-sided
  rotation) and their perplexity, accuracy and ECE.
* :mod:`~llmcal.posttrain.pairs` -- confidence-aware preference pairs from a
  measured run folder, or a prompt/chosen/rejected JSONL file.
* :mod:`~llmcal.posttrain.orpo` -- ORPO (Hong et al. 2024) with TRL, and SFT
  then DPO on the same pairs for comparison.
* :mod:`~llmcal.posttrain.check` -- before/after: verbalized-confidence ECE
  and AUROC, accuracy on other tasks (forgetting), reward hacking.

Everything heavy (torch, transformers, trl, peft, matplotlib) is imported
inside the functions that need it; the optional extra is ``[posttrain]``.
"""
