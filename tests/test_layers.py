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


def _package_imports_of(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import of the package in a syntax tree, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("internvl_exp"):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("internvl_exp")]
    return found


def _package_imports(path: Path) -> list[tuple[int, str]]:
    return _package_imports_of(ast.parse(path.read_text()))


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


# The package's only function-local imports of itself, each keeping a light entry point light: importing the
# module named on the right costs what the reason says (measured with `python -c "import X"` on the 2-core
# machine: torch 1.3 s, transformers 0.5 s, wandb 0.4 s, timm 3.3 s; numpy, PIL, tqdm < 0.1 s each). Every other
# import of the package sits at the top of its module.
_TRAINING = "torch + transformers + peft (~2 s): loaded only once training starts"
_TOOL = "torch (1.3 s): the tool's --help, argument and config errors come first"
LAZY_IMPORTS: dict[tuple[str, str], str] = {
    ("launch/job.py", "internvl_exp.train.recipe.run"):
        f"{_TRAINING}; the job answers a bad config, --cfg job and a locked run directory before",
    ("launch/job.py", "internvl_exp.train.reporting.loggers"): _TRAINING,
    ("launch/worker.py", "internvl_exp.train.recipe.run"):
        f"{_TRAINING}; a worker catches preemption signals from its first instruction, before torch loads",
    ("launch/worker.py", "internvl_exp.train.reporting.loggers"): _TRAINING,
    ("launch/worker.py", "internvl_exp.train.recipe.args"): "torch, for the CPU process group only",
    ("tools/predict.py", "internvl_exp.data.from_config"): _TOOL,
    ("train/planning/memory_plan.py", "internvl_exp.train.tuning.trainable"):
        "torch: the planner's arithmetic is light; only a plan that builds the model in-process needs it",
    ("train/tuning/trainable.py", "internvl_exp.train.tuning.drop_path"):
        "timm (3.3 s, with wandb): only when model.drop_path_rate > 0",
    ("tools/data_check.py", "internvl_exp.data.dataset"): _TOOL,
    ("tools/data_check.py", "internvl_exp.data.from_config"): _TOOL,
    ("tools/data_check.py", "internvl_exp.data.preference_data"): _TOOL,
    ("tools/data_check_pairs.py", "internvl_exp.data.preference_data"): _TOOL,
    ("tools/data_check_pairs.py", "internvl_exp.data.preference"): _TOOL,
    ("tools/score_pairs.py", "internvl_exp.data.preference_data"): _TOOL,
    ("data/preference_scan.py", "internvl_exp.data.preference"):
        "torch (the pair dataset is a torch Dataset): finding a cached pair scan stays light",
    ("objectives/reference_logps.py", "internvl_exp.data.preference"):
        "torch: the store's key and look-ups stay light; only scoring needs it (and a model)",
    ("objectives/reference_logps.py", "internvl_exp.objectives.sequence_logps"): "torch: as above",
    ("models/convert/tokenizer.py", "internvl_exp.models.convert.sentencepiece"):
        "guards an optional dependency: only a sentencepiece checkpoint needs the protobuf converter",
}


def _function_local_imports() -> set[tuple[str, str]]:
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                rel = str(path.relative_to(PACKAGE))
                found |= {(rel, module) for _, module in _package_imports_of(fn)}
    return found


def test_function_local_imports_of_the_package_are_the_listed_ones():
    found = _function_local_imports()
    unlisted = sorted(found - set(LAZY_IMPORTS))
    stale = sorted(set(LAZY_IMPORTS) - found)
    assert not unlisted, ("import these at the top of the module, or list them in LAZY_IMPORTS with the cost "
                          f"they avoid: {unlisted}")
    assert not stale, f"LAZY_IMPORTS lists imports that are gone: {stale}"
