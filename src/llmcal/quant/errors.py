"""The one error type of :mod:`llmcal.quant`: bad input, named by the field it comes from.

Every check runs before any calibration work starts (loading a calibration set,
resolving the layer mapping, checking bit widths and group sizes against every
layer), so a wrong ``--group_size`` fails in milliseconds, not after minutes of
forward passes.  It is a :class:`ValueError`, which ``llmcal``'s CLI prints as
``llmcal quantize: error: ...`` with exit status 2.
"""

from __future__ import annotations


class QuantError(ValueError):
    """Invalid quantization input; ``field`` names the argument or setting at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
