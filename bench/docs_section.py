"""Writing one benchmark's section of docs/benchmarks.md, leaving every other section alone."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"

HEADER = "# Benchmarks\n\nEach section: what was measured, the numbers, and the exact command.\n"


def write_section(path: Path, section: str) -> None:
    """Replace the `## ...` section whose heading is `section`'s first line, or append it."""
    head = section.splitlines()[0]
    text = path.read_text() if path.exists() else HEADER
    section = section.rstrip("\n") + "\n"
    if head in text:
        start = text.index(head)
        nxt = text.find("\n## ", start + len(head))
        text = text[:start] + section + ("\n" + text[nxt + 1 :] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def publish(section: str, write_docs: bool, command: str) -> None:
    """Print a benchmark's section, ending with the command that made it, and, with --write-docs, put it into
    docs/benchmarks.md."""
    section = f"{section.rstrip()}\n\nCommand:\n\n```bash\n{command}\n```\n"
    print()
    print(section)
    if write_docs:
        write_section(DOC, section)
        print(f"wrote {DOC}")
