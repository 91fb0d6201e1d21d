"""The repository stands alone: no file names the team's notes folder beside the checkout or a path on one
machine, so a fresh clone runs every test (the fixtures they need are in tests/fixtures/)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from conftest import ROOT

# Built from pieces so that this file does not match itself.
_NOTES = "shared"
FORBIDDEN = {
    "the notes folder beside the checkout": re.escape("../" + _NOTES),
    "the golden data folder": re.escape(_NOTES + "/golden"),
    "the reference notes folder": re.escape(_NOTES + "/reference"),
    # An absolute path on the build machine (not the tail of a URL or of a longer path: those have a word
    # character or a dot before the slash).
    "a machine path": r"(?<![\w.~-])/" + "work" + r"(?=[/\s\"'`)]|$)",
}
# Where a checkout without git keeps things that are not part of the repository (.gitignore's entries).
_NOT_SOURCES = {".git", ".venv", "outputs", ".cache", "__pycache__", ".pytest_cache", "wandb", "build", "models"}


def _repository_files(root: Path) -> list[str]:
    """The files git tracks or would add (untracked, not ignored); without git, the tree minus ignored folders."""
    r = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                       capture_output=True)
    if r.returncode == 0:
        return sorted({p for p in r.stdout.decode().split("\0") if p})
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _NOT_SOURCES and not d.endswith(".egg-info")]
        out += [str((Path(dirpath) / f).relative_to(root)) for f in filenames]
    return sorted(out)


def offending_lines(root: Path) -> list[str]:
    """`path:line: text (what it names)` for every line of a text file that names a forbidden path."""
    found = []
    patterns = {what: re.compile(p) for what, p in FORBIDDEN.items()}
    for rel in _repository_files(root):
        path = root / rel
        if not path.is_file():  # deleted in the work tree, not yet in the index
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary (weights, tensors)
            continue
        for no, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            found += [f"{rel}:{no}: {line.strip()} ({what})" for what, rx in patterns.items() if rx.search(line)]
    return found


def test_no_file_names_a_path_outside_the_repository():
    found = offending_lines(ROOT)
    assert not found, ("these lines name a path outside the repository; copy what a test needs into tests/fixtures/ "
                       "and cite public sources in prose:\n" + "\n".join(found))


def test_the_check_finds_each_kind_of_path(tmp_path):
    """The scan itself can fail: each forbidden form in a file of a throwaway tree is reported, the allowed
    look-alikes are not, in text files (conf/model/ included) but not binaries."""
    (tmp_path / "conf" / "model").mkdir(parents=True)
    bad = ["see ../" + _NOTES + "/notes.md", "data in " + _NOTES + "/golden/x", "from " + _NOTES + "/reference/y.md",
           'GOLDEN = Path("/' + 'work/data/x")', "cd /" + "work", "ls /" + "work/ -la"]
    good = ["https://example.com/" + "work/x", "/home/me/net" + "work/a", "a " + _NOTES + " file system", "framework/x"]
    (tmp_path / "notes.md").write_text("\n".join(bad + good) + "\n")
    (tmp_path / "conf" / "model" / "m.yaml").write_text("# " + bad[0] + "\n")
    (tmp_path / "weights.bin").write_bytes(b"\0" + bad[1].encode())
    found = offending_lines(tmp_path)
    assert found[0].startswith("conf/model/m.yaml:1:")
    assert [f.split(":")[1] for f in found[1:]] == [str(i) for i in range(1, len(bad) + 1)]
    assert all(f.startswith("notes.md:") for f in found[1:])
