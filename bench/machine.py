"""The machine line of a benchmark section: CPU, cores, load average, library versions, date."""

from __future__ import annotations

import datetime
import os
import platform


def load_average() -> str:
    """`3.7/3.9`: the 1- and 5-minute load averages."""
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def machine_line(note: str = "") -> str:
    from importlib.metadata import version

    libs = ", ".join(f"{n} {version(n)}" for n in ("torch", "transformers"))
    extra = f", {note}" if note else ""
    return (f"**Machine**: {platform.machine()}, {os.cpu_count()} CPU cores{extra}; Python {platform.python_version()}, "
            f"{libs}; {datetime.date.today().isoformat()}.")
