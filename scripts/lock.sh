#!/usr/bin/env bash
# Refresh requirements.lock: install bigseer's dependencies into a clean temporary venv exactly as
# scripts/bootstrap.sh would without a lock, then record every installed version (pip freeze) plus the
# fingerprint of pyproject.toml's dependency lists. Run after changing dependencies; commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "[lock] clean venv in $tmp" >&2
"$PY" -m venv "$tmp/venv"
pip=("$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" torch==2.14.1 torchvision==0.29.1
DS_BUILD_OPS=0 "${pip[@]}" ".[test]"
{
  echo "# Every package bigseer's README commands install, pinned: made by scripts/lock.sh from a clean venv."
  echo "# scripts/bootstrap.sh installs exactly these and refuses a lock that pyproject.toml has outgrown."
  echo "# pyproject-deps-sha256: $("$PY" scripts/lock_check.py --hash)"
  "$tmp/venv/bin/python" -m pip freeze --disable-pip-version-check --exclude bigseer | LC_ALL=C sort -f
} > requirements.lock.tmp
mv requirements.lock.tmp requirements.lock
echo "[lock] wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)" >&2
