"""The task-shift matrix and the learning curve of internal / external / combined confidence.

    llmcal measure --tasks arc_easy --limit 1000 --output_path /tmp/probe_runs/arc_easy   # one run a task
    ...
    python benchmarks/probe_shift.py /tmp/probe_runs/* --out /tmp/probe_shift

Same as ``llmcal probe --shift RUN_DIR...`` (the work is ``llmcal.probe.protocol``):
pools the runs (one model), splits every task into calibration / test halves
(seeded, ``split_indices``), fits on each task's calibration half and on "all
tasks but one", tests on every task's test half, and writes
``probe_shift.json`` and ``probe_shift.md`` (the tables of docs/benchmarks.md).
Then checks the issue's targets on the pairwise shift cells and the
leave-one-task-out cells and prints them; exit status 0 whatever they say
(the numbers are the result).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import json

    from llmcal.cli.probe_commands import add_parsers, cmd_probe

    import argparse

    parser = argparse.ArgumentParser(prog="probe_shift")
    add_parsers(parser.add_subparsers(dest="command"))
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in argv:
        argv += ["--out", "runs/probe_shift"]
    args = parser.parse_args(["probe", "--shift", *argv])
    cmd_probe(args)
    out = json.loads((Path(args.out) / "probe_shift.json").read_text())
    print("\nTargets (issue): combined AUROC above the best single signal; ECE at least 40% below raw option_prob")
    for group in ("pairwise_shift", "leave_one_task_out", "in_task"):
        g = out["shift"]["summary"].get(group)
        if not g:
            continue
        comb = g["mean"]["combined"]
        red = g["mean_reduction_vs_internal"]["combined"]["ece_reduction"]
        print(f"  {group:20s} cells {g['n_cells']:3d}: combined AUROC {comb['auroc']:.3f} vs mean best single "
              f"{g['mean_best_single_auroc']:.3f} (above in {g['combined_beats_best_single_auroc']} cells); "
              f"mean ECE reduction vs internal {100 * red:.0f}%")
    print(f"  total {out['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
