"""``python -m llmcal ...`` is the ``llmcal`` console script."""

import sys

from llmcal.cli.main import main

sys.exit(main())
