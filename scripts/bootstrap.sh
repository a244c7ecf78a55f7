#!/usr/bin/env bash
# Create .venv in the repo root and install bigseer with the exact versions in requirements.lock
# (idempotent). Needs only Python 3.11 on PATH (override with PYTHON=...). Re-installs when pyproject.toml,
# the lock or this script change; refuses a lock that no longer matches pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PY" scripts/lock_check.py
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $PY" >&2
  "$PY" -m venv .venv
fi
want="$(sha256sum pyproject.toml requirements.lock scripts/bootstrap.sh | sha256sum | cut -c1-16)"
stamp=.venv/.bigseer-installed
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[bootstrap] installing the locked dependencies (torch 2.14.1, torchvision 0.29.1, deepspeed, ...) into .venv (a few minutes the first time)" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
  DS_BUILD_OPS=0 .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
