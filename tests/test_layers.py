"""The package's layering (docs/architecture.md): config/ is the ground floor, the pure formulas import nothing of
the package, and the named choices validation accepts are the ones the implementing modules provide."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "internvl_exp"
# The stdlib-only leaves that config/ may use besides itself: its error types and the secret scrubber its error
# messages go through.
CONFIG_MAY_IMPORT = ("internvl_exp.config", "internvl_exp.errors", "internvl_exp.redact")


def _package_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of the package in a file, at any depth (function-local ones included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("internvl_exp"):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("internvl_exp")]
    return found


def test_config_imports_nothing_of_the_package_but_itself_and_its_leaves():
    wrong = [f"{p.relative_to(ROOT)}:{line}: {module}" for p in sorted((PACKAGE / "config").glob("*.py"))
             for line, module in _package_imports(p)
             if not any(module == m or module.startswith(m + ".") for m in CONFIG_MAY_IMPORT)]
    assert not wrong, "config/ must not import the rest of the package:\n" + "\n".join(wrong)


def test_the_leaves_import_nothing_of_the_package():
    for leaf in ("config/geometry.py", "config/choices.py", "errors.py", "redact.py"):
        assert _package_imports(PACKAGE / leaf) == [], leaf


def test_config_loads_without_torch_or_the_rest_of_the_package():
    # Every config module, imported alone in a fresh interpreter, pulls in neither torch nor another package.
    modules = [f"internvl_exp.config.{p.stem}" for p in sorted((PACKAGE / "config").glob("*.py"))
               if p.stem != "__init__"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'deepspeed') or\n"
            "             (m.startswith('internvl_exp.') and m.split('.')[1] not in ('config', 'errors', 'redact')))\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_named_choices_match_what_implements_them():
    from internvl_exp.config.choices import PARTS, TEMPLATE_NAMES
    from internvl_exp.data.templates import TEMPLATES
    from internvl_exp.models.registry import FAMILIES

    assert tuple(TEMPLATES) == TEMPLATE_NAMES
    for family in FAMILIES.values():
        assert set(family.parts) == set(PARTS), family.name
