"""llmcal: post-training confidence calibration of large language models.

When the model says it is sure, is it right?  The pipeline, one stage a
sub-package, data flowing one way::

    tasks -> backends -> signals -> records -> calibrators -> metrics -> report

Confidence has one convention everywhere: a float in [0, 1], higher = more sure.
"""

__version__ = "0.1.0"
