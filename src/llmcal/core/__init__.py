"""The types the stages pass to each other, and nothing else: the floor every stage stands on.

``items``     what a task yields: :class:`MCItem` (options, one right) and :class:`OpenItem`
              (accepted answers, a grader), told apart by ``kind``;
``requests``  what a backend is asked and answers: :class:`MCRequest` -> :class:`MCScore`,
              and a free-form :class:`Generation` with its per-token evidence;
``sample``    :class:`Sample`, the typed, versioned record of one answered item, validated
              on read with the file, line and field in every error;
``validation``, ``split``, ``bins``, ``text``, ``files``: what several stages share and none may
              import from another (array checks, the calibration/test split, bin edges, answer
              normalization, atomic writes with the fault-injection hook).

Nothing here imports another llmcal package, or anything heavier than numpy.
"""

from llmcal.core.items import Item, MCItem, OpenItem
from llmcal.core.requests import Generation, MCRequest, MCScore
from llmcal.core.sample import SAMPLE_VERSION, Sample, SampleError

__all__ = ["Item", "MCItem", "OpenItem", "MCRequest", "MCScore", "Generation", "Sample", "SampleError",
           "SAMPLE_VERSION"]
