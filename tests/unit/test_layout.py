"""The architecture rules that keep the project importable and layered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_no_package_shadows_the_stdlib_operator_module():
    assert not (REPO / "operator" / "__init__.py").exists()
    import operator

    assert operator.__file__ and "site-packages" not in operator.__file__ and str(REPO) not in operator.__file__


def test_import_layers_hold():
    """import-linter contracts in pyproject.toml: planning/builders and the runtime never import kopf/kubernetes."""
    res = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_console_scripts_exist():
    bindir = Path(sys.executable).parent
    for name in ("r1ctl", "r1-runtime", "r1-operator"):
        res = subprocess.run([str(bindir / name), "--help"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, (name, res.stderr)
