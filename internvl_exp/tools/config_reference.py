"""Write docs/config-reference.md from conf/ and the schema, so the reference cannot drift from the code.

    python -m internvl_exp.tools.config_reference            # (re)write docs/config-reference.md
    python -m internvl_exp.tools.config_reference --check    # exit 1 when the file is out of date

Every config group gets its options (each option's header comment) and a table of its keys: type, the default
(the value in the group's default option of conf/config.yaml, else the schema's), and the meaning (the comment
above or beside the field in internvl_exp/config/schema.py, else the one in the default option's YAML).
Comments are read with `ast`/`tokenize` from the source: no import of the schema's dependencies, no torch.
"""

from __future__ import annotations

import argparse
import ast
import io
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "internvl_exp" / "config" / "schema.py"
OUT = ROOT / "docs" / "config-reference.md"


NAME_MEANING = "The option's name (each option file of the group sets it)."


@dataclass
class FieldDoc:
    name: str
    type: str
    default: str
    meaning: str


@dataclass
class ClassDoc:
    name: str
    doc: str
    fields: list[FieldDoc]


def _comments(source: str) -> dict[int, str]:
    """Line number -> comment text (without '#')."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _default_of(node: ast.expr | None, source: str) -> str:
    if node is None:
        return "required"
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "field":
        for kw in node.keywords:
            if kw.arg == "default_factory":
                value = kw.value
                if isinstance(value, ast.Lambda):
                    return ast.get_source_segment(source, value.body) or ""
                return "{}" if getattr(value, "id", "") == "dict" else "[]" if getattr(value, "id", "") == "list" else "(see below)"
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value or '""'
    text = ast.get_source_segment(source, node) or ""
    return {"MISSING": "required", "None": "null", "True": "true", "False": "false"}.get(text, text)


def schema_classes(path: Path = SCHEMA) -> dict[str, ClassDoc]:
    """Every dataclass of the schema: its docstring and, per field, type, default and comment."""
    source = path.read_text()
    comments = _comments(source)
    lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields, block = [], ""
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above, line = [], stmt.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):
                above.insert(0, comments.get(line, ""))
                line -= 1
            inline = comments.get(stmt.end_lineno) if stmt.end_lineno not in (stmt.lineno - 1,) else None
            if inline and lines[stmt.end_lineno - 1].strip().startswith("#"):
                inline = None
            meaning = " ".join([*above, *([inline] if inline else [])])
            if not meaning and block and lines[stmt.lineno - 2].strip() and not lines[stmt.lineno - 2].strip().startswith("#"):
                meaning = block  # a field right below another without its own comment: the block's comment above
            block = " ".join(above) if above else (block if not meaning or meaning == block else "")
            if not meaning and "transformers'" in (ast.get_docstring(node) or ""):
                meaning = f"the `{stmt.target.id}` of transformers' config ({node.name})"
            fields.append(FieldDoc(stmt.target.id, ast.get_source_segment(source, stmt.annotation) or "",
                                   _default_of(stmt.value, source), meaning))
        out[node.name] = ClassDoc(node.name, ast.get_docstring(node) or "", fields)
    return out


def _header_comment(path: Path) -> str:
    """The first sentence of a YAML file's leading comment block (`@package` lines left out)."""
    parts = []
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s.startswith("#"):
            break
        text = s.lstrip("#").strip()
        if not text.startswith("@package"):
            parts.append(text)
    text = " ".join(parts)
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def _yaml_key_comments(path: Path) -> dict[str, str]:
    """Top-level key -> the comment lines right above it (and beside it) in a YAML file."""
    out, pending = {}, []
    for line in path.read_text().splitlines():
        s = line.strip()
        if s.startswith("#"):
            pending.append(s.lstrip("#").strip())
            continue
        if line and not line[0].isspace() and ":" in line and not s.startswith("-"):
            key, rest = line.split(":", 1)
            inline = rest.split(" #", 1)[1].strip() if " #" in rest else ""
            text = " ".join([*pending, *([inline] if inline else [])])
            if text:
                out[key.strip()] = text
        pending = [] if s else pending
    return out


def _defaults_list(conf: Path) -> dict[str, str | None]:
    raw = yaml.safe_load((conf / "config.yaml").read_text())
    out: dict[str, str | None] = {}
    for item in raw.get("defaults", []):
        if isinstance(item, dict):
            (group, option), = item.items()
            out[group] = option
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return value if value else '""'
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type_name(t: str) -> str:
    return t[len("Optional["):-1] + "?" if t.startswith("Optional[") else t


def _rows(prefix: str, cls: ClassDoc, classes: dict[str, ClassDoc], values: dict[str, Any] | None,
          yaml_comments: dict[str, str]) -> list[str]:
    rows = []
    for f in cls.fields:
        key = f"{prefix}{f.name}"
        nested = _type_name(f.type).rstrip("?")
        value = (values or {}).get(f.name, None) if values is not None and f.name in (values or {}) else None
        if nested in classes and not nested.startswith("dict"):
            sub = value if isinstance(value, dict) else None
            meaning = f.meaning or classes[nested].doc.split("\n\n")[0].replace("\n", " ")
            rows.append(f"| `{key}` | group of keys | | {_cell(meaning)} |")
            rows += _rows(key + ".", classes[nested], classes, sub if sub is not None else {}, {})
            continue
        default = _fmt(value) if values is not None and f.name in values else f.default
        meaning = f.meaning or (NAME_MEANING if f.name == "name" and not prefix.count(".") - 1 else yaml_comments.get(f.name, ""))
        rows.append(f"| `{key}` | `{_cell(_type_name(f.type))}` | `{_cell(default)}` | {_cell(meaning)} |")
    return rows


def render(conf: Path = ROOT / "conf", schema: Path = SCHEMA) -> str:
    classes = schema_classes(schema)
    top = classes["Config"]
    chosen = _defaults_list(conf)
    out = [
        "# Config reference",
        "",
        "<!-- Generated by `python -m internvl_exp.tools.config_reference` from conf/ and",
        "internvl_exp/config/schema.py; tests/test_config_reference.py fails when it is out of date. Do not edit. -->",
        "",
        "Every group of `conf/`, its options, and every key with its type, default and meaning. Pick an option with",
        "`group=option`, set a key with `group.key=value` (`python launch.py freeze=lora_llm optimizer.lr=2e-5`).",
        "The default is the value in the group's default option (conf/config.yaml's `defaults`), else the schema's;",
        "`?` marks a key that may be null. `${...}` are interpolations, resolved at run time.",
        "",
    ]
    groups = [f for f in top.fields if _type_name(f.type).rstrip("?") in classes]
    out += ["## Top-level keys", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    root_values = yaml.safe_load((conf / "config.yaml").read_text())
    root_comments = _yaml_key_comments(conf / "config.yaml")
    for f in top.fields:
        if f in groups:
            continue
        default = _fmt(root_values[f.name]) if f.name in root_values else f.default
        out.append(f"| `{f.name}` | `{_cell(_type_name(f.type))}` | `{_cell(default)}` | "
                   f"{_cell(f.meaning or root_comments.get(f.name, ''))} |")
    out.append("")
    for f in groups:
        group_dir = conf / f.name
        default_option = chosen.get(f.name)
        out += [f"## `{f.name}`", ""]
        cls = classes[_type_name(f.type).rstrip("?")]
        if cls.doc:
            out += [cls.doc.replace("\n", " "), ""]
        options = sorted(group_dir.glob("*.yaml")) if group_dir.is_dir() else []
        if options:
            out += ["| option | |", "|---|---|"]
            for p in options:
                mark = " (default)" if p.stem == default_option else ""
                out.append(f"| `{f.name}={p.stem}`{mark} | {_cell(_header_comment(p))} |")
            out.append("")
        values = None
        yaml_comments: dict[str, str] = {}
        if default_option and (group_dir / f"{default_option}.yaml").is_file():
            path = group_dir / f"{default_option}.yaml"
            values = yaml.safe_load(path.read_text()) or {}
            values.pop("defaults", None)
            yaml_comments = _yaml_key_comments(path)
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        out += _rows(f"{f.name}.", cls, classes, values, yaml_comments)
        out.append("")
    extra = sorted(p.name for p in conf.iterdir() if p.is_dir() and p.name not in {g.name for g in groups})
    for name in extra:
        chosen_opt = chosen.get(name)
        out += [f"## `{name}`", "", "Options that set keys across groups (or Hydra's own settings).", "",
                "| option | |", "|---|---|"]
        for p in sorted((conf / name).glob("*.yaml")):
            mark = " (default)" if p.stem == chosen_opt else ""
            out.append(f"| `{name}={p.stem}`{mark} | {_cell(_header_comment(p))} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m internvl_exp.tools.config_reference", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 when docs/config-reference.md is out of date")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is out of date: run python -m internvl_exp.tools.config_reference", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
