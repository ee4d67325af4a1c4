"""The layering of docs/architecture.md holds: import-linter's contracts in pyproject.toml all pass."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    return exe


def test_import_contracts_pass():
    out = subprocess.run([_lint_imports(), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "broken" in out.stdout and " 0 broken" in out.stdout


def test_the_contracts_cover_what_the_architecture_doc_promises():
    text = (REPO / "pyproject.toml").read_text()
    doc = (REPO / "docs" / "architecture.md").read_text()
    for floor in ("llmcal.cli", "llmcal.serve", "llmcal.pipeline", "llmcal.core"):
        assert f'"{floor}' in text
    assert 'type = "independence"' in text and 'type = "layers"' in text
    # every floor of the contract appears in the doc's table
    for pkg in ("core", "tasks", "backends", "signals", "metrics", "calibrators", "records", "policy", "probe",
                "report", "pipeline", "quant", "posttrain", "serve", "cli"):
        assert f"`{pkg}/`" in doc, pkg
