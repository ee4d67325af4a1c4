"""One side of the paired A/B of the full default free-form signal set (issue #17).

    LLMCAL_THREADS=1 OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/signals_ab.py SRC N OUT.json [CHUNK]

``SRC`` is the ``src`` folder of the llmcal to time (a worktree of main for the baseline, this
checkout's ``src`` for the change); run the two sides one after the other, alternating, under
the same pinning. Loads the embedded model (fp32), answers 4 warm-up ``builtin_open`` questions,
then times ``pipeline.measure_open.answer_batch`` (greedy, token family, P(True), verbalized,
k = 5 agreement + semantic entropy) over the next ``N`` in chunks of ``CHUNK`` (the checkout's own ``measure_open.CHUNK``, as ``llmcal run`` does),
and writes the seconds, the load average, the backend's matmul choice and every answer, reply
and signal to ``OUT.json``, so two sides can be compared item by item.
"""

import json
import sys
import time

src, n, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.path.insert(0, src)
import llmcal  # noqa: E402

if not llmcal.__file__.startswith(src):
    raise SystemExit(f"llmcal imported from {llmcal.__file__}, not from {src}")
from llmcal.backends.embedder import Embedder  # noqa: E402
from llmcal.backends.hf import HFBackend  # noqa: E402
from llmcal.pipeline.measure_open import OpenSettings, answer_batch  # noqa: E402
from llmcal.tasks.registry import load_task  # noqa: E402

try:  # the chunk llmcal run uses in that checkout (16 before continuous batching)
    from llmcal.pipeline.measure_open import CHUNK  # noqa: E402
except ImportError:
    CHUNK = 16
chunk = int(sys.argv[4]) if len(sys.argv) > 4 else CHUNK

start = time.perf_counter()
backend = HFBackend.load()
load_s = time.perf_counter() - start
items = load_task("builtin_open", limit=n + 4)
warm, items = items[:4], items[4:]
settings = OpenSettings()
embedder = Embedder(None)
answer_batch(backend, warm, settings, embedder, seed=999)  # warm-up, not timed
start, cpu = time.perf_counter(), time.process_time()
records = []
for lo in range(0, len(items), chunk):
    records += answer_batch(backend, items[lo: lo + chunk], settings, embedder, seed=settings.seed + lo)
seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
result = {"src": src, "chunk": chunk, "load_s": load_s, "seconds": seconds, "cpu_seconds": cpu_s, "items": len(items),
          "items_per_s": len(items) / seconds, "matmul": backend.describe().get("matmul"),
          "loadavg": open("/proc/loadavg").read().split()[:3],
          "predictions": [r.prediction_text for r in records],
          "signals": [r.signals for r in records], "replies": [getattr(r, "replies", None) for r in records]}
with open(out_path, "w") as f:
    json.dump(result, f, default=str)
print(json.dumps({k: result[k] for k in ("src", "seconds", "cpu_seconds", "items_per_s", "loadavg", "matmul")},
                 default=str))
