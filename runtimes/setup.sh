#!/usr/bin/env bash
# Idempotently create runtimes/.venv and install slipway-runtimes[dev] into it.
# Re-installs only when pyproject.toml changes (stamp keyed by its sha256).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.slipway-stamp"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/python" ]]; then
  echo "runtimes venv up to date"
  exit 0
fi

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
echo "$want" > "$STAMP"
echo "runtimes venv ready"
