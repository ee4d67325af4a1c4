"""llmcal's version, importable by any stage without importing the package's public API."""

__version__ = "0.1.0"
