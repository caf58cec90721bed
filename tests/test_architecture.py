"""The layout is a checked contract: import-linter's contracts in pyproject.toml; importing warns of nothing."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_import_contracts_hold() -> None:
    lint = shutil.which('lint-imports', path=str(Path(sys.executable).parent)) or shutil.which('lint-imports')
    assert lint, 'import-linter is a test dependency (pip install -e ".[test]")'
    result = subprocess.run([lint, '--no-cache'], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Contracts: 3 kept, 0 broken' in result.stdout, result.stdout


def test_importing_the_package_warns_of_nothing() -> None:
    code = ('import warnings; warnings.simplefilter("error", DeprecationWarning); '
            'import timm_hrnet, timm_hrnet.tools.cli')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
