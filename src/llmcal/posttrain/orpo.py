"""Preference tuning toward honest confidence: ORPO, and SFT then DPO for comparison (TRL).

ORPO (Hong, Lee & Thorne 2024, "ORPO: Monolithic Preference Optimization
without Reference Model", arXiv 2403.07691) adds to the SFT loss on the chosen
answer an odds-ratio term, ``-lambda * log sigmoid(log odds(chosen) - log
odds(rejected))`` with ``odds(y) = P(y|x) / (1 - P(y|x))`` on length-normalized
likelihoods; one stage, no reference model.  The classic pipeline it replaces
is SFT on the chosen answers, then DPO (Rafailov et al. 2023) against the SFT
model as a frozen reference.  The brief says ORPO matches it with about 30%
less compute; :func:`train` records what each costs here (wall time, model
forward passes, peak resident memory) so the claim can be checked.

Both use TRL (``trl.experimental.orpo.ORPOTrainer``; ``trl.SFTTrainer`` and
``trl.DPOTrainer``), full fine-tuning or LoRA (PEFT, merged into the saved
weights so the result is a plain checkpoint folder that ``llmcal posttrain
svd`` / ``check`` load).  Training is bounded by ``steps``; TRL's progress bar
and checkpoints (``save_steps``) come from the transformers ``Trainer``.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

METHODS = ("orpo", "sft", "dpo", "sft+dpo")


class _Meter:
    """Counts causal-LM forward calls and rows, and samples the peak resident memory."""

    def __init__(self) -> None:
        self.calls = 0
        self.rows = 0
        self.peak_rss = 0
        self.start_rss = 0

    def hook(self, module, args, kwargs, output) -> None:
        # the transformers model only (a PEFT wrapper's class name ends the same way)
        cls = type(module)
        if cls.__name__.endswith("ForCausalLM") and cls.__module__.startswith("transformers."):
            ids = kwargs.get("input_ids")
            if ids is None and args:
                ids = args[0]
            self.calls += 1
            self.rows += int(ids.shape[0]) if ids is not None and hasattr(ids, "shape") else 0

    @contextmanager
    def measure(self) -> Iterator["_Meter"]:
        import psutil
        import torch

        proc = psutil.Process(os.getpid())
        self.start_rss = self.peak_rss = proc.memory_info().rss
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                self.peak_rss = max(self.peak_rss, proc.memory_info().rss)
                stop.wait(0.05)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        handle = torch.nn.modules.module.register_module_forward_hook(self.hook, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()
            stop.set()
            th.join()
            self.peak_rss = max(self.peak_rss, proc.memory_info().rss)


def _lora_config(r: int = 16):
    if r < 1:
        raise ValueError(f"lora_rank must be at least 1, got {r}")
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def _common_args(out: Path, steps: int, batch_size: int, lr: float, save_steps: int | None,
                 seed: int, progress: bool, max_length: int, grad_accum: int = 1) -> dict[str, Any]:
    # no intermediate checkpoint unless save_steps asks for one (the final model is always saved)
    save = dict(save_strategy="steps", save_steps=int(save_steps), save_total_limit=1) if save_steps \
        else dict(save_strategy="no")
    return dict(output_dir=str(out), max_steps=int(steps), per_device_train_batch_size=int(batch_size),
                per_device_eval_batch_size=int(batch_size), gradient_accumulation_steps=int(grad_accum),
                learning_rate=float(lr), logging_steps=max(1, steps // 10), report_to=[], use_cpu=True,
                disable_tqdm=not progress, seed=seed, data_seed=seed, dataloader_num_workers=0,
                max_length=max_length, lr_scheduler_type="linear", warmup_steps=0,
                log_level="passive" if progress else "error", **save)


def preference_metrics(log_history: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """First and last logged value of each of TRL's preference metrics (``rewards/*``, ``log_odds_*``, ``nll_loss``).

    ORPO logs rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, log_odds_ratio and
    log_odds_chosen; DPO the same rewards.  A margin that stays negative or an accuracy near 0.5 says the
    preference term barely moved, whatever the loss did.
    """
    out: dict[str, dict[str, float]] = {}
    for h in log_history:
        for k, v in h.items():
            if (k.startswith(("rewards/", "log_odds", "eval_rewards/", "eval_log_odds")) or k in ("nll_loss",)) \
                    and isinstance(v, (int, float)):
                slot = out.setdefault(k, {"first": float(v)})
                slot["last"] = float(v)
    return out


def _quiet(trainer) -> None:
    """No per-step log lines: transformers' PrinterCallback prints them whenever the progress bar is off."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)


def _chat_prompts(pairs: Sequence[dict[str, Any]], tokenizer) -> list[dict[str, Any]]:
    """The pairs with each prompt rendered through the tokenizer's chat template (a user turn + generation prompt)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("--chat: the model's tokenizer has no chat template")
    return [dict(p, prompt=tokenizer.apply_chat_template([{"role": "user", "content": p["prompt"]}],
                                                         add_generation_prompt=True, tokenize=False))
            for p in pairs]


def _dataset(pairs: Sequence[dict[str, Any]], kind: str):
    from datasets import Dataset

    if kind == "sft":
        rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs]
    else:
        rows = [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    return Dataset.from_list(rows)


def _stage(method: str, model, tokenizer, pairs, out: Path, *, steps: int, batch_size: int, lr: float,
           lam: float, beta: float, lora: bool, save_steps: int | None, seed: int, progress: bool,
           max_length: int, ref_model=None, grad_accum: int = 1, lora_rank: int = 16, eval_pairs=(),
           resume: bool = False) -> tuple[Any, dict[str, Any]]:
    """Run one TRL trainer; returns (trained model with LoRA merged, its cost, losses and preference metrics)."""
    common = _common_args(out, steps, batch_size, lr, save_steps, seed, progress, max_length, grad_accum)
    peft_config = _lora_config(lora_rank) if lora else None
    kind = "sft" if method == "sft" else "pref"
    evalset = _dataset(eval_pairs, kind) if eval_pairs else None
    if evalset is not None:
        common.update(eval_strategy="no")  # evaluated once, after training (below)
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        trainer = ORPOTrainer(model=model, args=ORPOConfig(beta=lam, **common), train_dataset=_dataset(pairs, "pref"),
                              eval_dataset=evalset, processing_class=tokenizer, peft_config=peft_config)
    elif method == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=model, args=SFTConfig(completion_only_loss=True, **common),
                             train_dataset=_dataset(pairs, "sft"), eval_dataset=evalset, processing_class=tokenizer,
                             peft_config=peft_config)
    elif method == "dpo":
        from trl import DPOConfig, DPOTrainer

        if ref_model is None and not lora:
            ref_model = copy.deepcopy(model).eval()  # the frozen reference: the model DPO starts from
        trainer = DPOTrainer(model=model, ref_model=None if lora else ref_model, args=DPOConfig(beta=beta, **common),
                             train_dataset=_dataset(pairs, "pref"), eval_dataset=evalset, processing_class=tokenizer,
                             peft_config=peft_config)
    else:
        raise ValueError(f"method {method!r} is unknown; use one of {', '.join(METHODS)}")
    if not progress:
        _quiet(trainer)
    checkpoint = resume and any(out.glob("checkpoint-*"))
    meter = _Meter()
    t0 = time.perf_counter()
    with meter.measure():
        result = trainer.train(resume_from_checkpoint=True if checkpoint else None)
    wall = time.perf_counter() - t0
    evaluation = {k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, (int, float))} \
        if evalset is not None else None
    trained = trainer.model
    if lora:
        trained = trained.merge_and_unload()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    cost = {"method": method, "steps": int(trainer.state.global_step), "wall_s": round(wall, 2),
            "forward_calls": meter.calls, "forward_rows": meter.rows,
            "peak_rss_mb": round(meter.peak_rss / 2**20, 1),
            "peak_rss_increase_mb": round((meter.peak_rss - meter.start_rss) / 2**20, 1),
            "train_loss": float(result.training_loss), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "resumed": bool(checkpoint),
            "preference": preference_metrics(trainer.state.log_history)}
    if evaluation is not None:
        cost["eval"] = evaluation
    return trained.eval(), cost


def save_checkpoint(model, tokenizer, folder: Path) -> Path:
    """Write a plain transformers checkpoint (weights + tokenizer) that ``load_checkpoint`` reads."""
    from llmcal.backends.hf import _save_cache

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        import shutil

        shutil.rmtree(folder)
    _save_cache(model, tokenizer, folder)
    if not (folder / "config.json").is_file():
        raise OSError(f"{folder}: could not write the checkpoint")
    return folder


def train(method: str, model, tokenizer, pairs: Sequence[dict[str, Any]], out_dir: str | Path, *,
          steps: int = 50, batch_size: int = 4, lr: float = 5e-5, lam: float = 0.1, beta: float = 0.1,
          lora: bool = False, save_steps: int | None = None, seed: int = 0, progress: bool = True,
          max_length: int = 256, grad_accum: int = 1, lora_rank: int = 16, eval_fraction: float = 0.0,
          chat: bool = False, resume: bool = False) -> tuple[Any, dict[str, Any]]:
    """Tune ``model`` on preference ``pairs`` with ``method`` and save ``out_dir/final``.

    ``method``: ``orpo`` (lambda = ``lam``, TRL's ``beta``; default 0.1 as in
    the paper), ``sft`` (on the chosen answers), ``dpo`` (``beta``, reference =
    a frozen copy of the starting model), or ``sft+dpo`` (``steps`` of each, in
    turn, the second from the first's result).  Returns the tuned model and a
    record of the cost per stage and in total, TRL's preference metrics
    (:func:`preference_metrics`) and, with ``eval_fraction``, the metrics on
    held-out pairs (the last ``eval_fraction`` of them, never trained on).
    ``chat`` renders each prompt through the tokenizer's chat template;
    ``resume`` continues from the newest ``checkpoint-*`` of each stage
    (written every ``save_steps``; none are written without it).
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is unknown; use one of {', '.join(METHODS)}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not pairs:
        raise ValueError("no preference pairs to train on")
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if grad_accum < 1:
        raise ValueError(f"grad_accum must be at least 1, got {grad_accum}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat:
        pairs = _chat_prompts(pairs, tokenizer)
    n_eval = int(round(len(pairs) * eval_fraction))
    if eval_fraction and not 0 < n_eval < len(pairs):
        raise ValueError(f"eval_fraction {eval_fraction} of {len(pairs)} pairs leaves no train or no eval pair")
    pairs, eval_pairs = list(pairs[: len(pairs) - n_eval]), list(pairs[len(pairs) - n_eval:])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.train()
    kw = dict(steps=steps, batch_size=batch_size, lr=lr, lam=lam, beta=beta, lora=lora, save_steps=save_steps,
              seed=seed, progress=progress, max_length=max_length, grad_accum=grad_accum, lora_rank=lora_rank,
              eval_pairs=eval_pairs, resume=resume)
    stages = []
    for stage in method.split("+"):
        model, cost = _stage(stage, model, tokenizer, pairs, out / stage, **kw)
        stages.append(cost)
    total = {key: round(sum(c[key] for c in stages), 2) for key in ("wall_s", "forward_calls", "forward_rows", "steps")}
    total["peak_rss_mb"] = max(c["peak_rss_mb"] for c in stages)
    final = save_checkpoint(model, tokenizer, out / "final")
    record = {"method": method, "lora": lora, "lora_rank": lora_rank if lora else None, "n_pairs": len(pairs),
              "n_eval_pairs": len(eval_pairs), "chat": chat, "grad_accum": grad_accum, "lambda": lam, "beta": beta,
              "lr": lr, "batch_size": batch_size, "stages": stages, "total": total, "checkpoint": str(final)}
    return model, record
