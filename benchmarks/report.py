"""What every benchmark records around its tables: the machine's load, and the report printed and written."""

from __future__ import annotations

import os
import subprocess


def uptime() -> str:
    """``uptime``'s line (time, load averages), or the load averages alone where the command is missing."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def emit(text: str, out: str | None) -> None:
    """Print the report, and write it to ``out`` when given."""
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text)
