"""Check (or, with --hash, print) the dependency fingerprint that ties requirements.lock to pyproject.toml.

The lock's first lines record ``# pyproject-deps-sha256: <hash>`` of the dependency lists in
pyproject.toml (``[project] dependencies`` and the ``test`` extra, the ones scripts/bootstrap.sh installs).
Stdlib only: it runs before any package is installed.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = "# pyproject-deps-sha256: "


def deps_hash() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    spec = {"dependencies": sorted(project.get("dependencies", [])),
            "test": sorted(project.get("optional-dependencies", {}).get("test", []))}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def main() -> int:
    if sys.argv[1:] == ["--hash"]:
        print(deps_hash())
        return 0
    lock = ROOT / "requirements.lock"
    if not lock.is_file():
        print("bootstrap: requirements.lock is missing; create it with: bash scripts/lock.sh", file=sys.stderr)
        return 1
    recorded = next((ln[len(KEY):].strip() for ln in lock.read_text().splitlines() if ln.startswith(KEY)), None)
    if recorded != deps_hash():
        print("bootstrap: requirements.lock does not match the dependencies in pyproject.toml "
              "(they changed since the lock was made); refresh it with: bash scripts/lock.sh", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
