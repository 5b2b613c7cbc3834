#!/usr/bin/env bash
# Regenerate constraints.txt: the exact versions a fresh install of requirements-dev.txt resolves to today.
# Run on purpose (after changing a requirement), then run `make test` and commit both files together.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
"$tmp/venv/bin/python" -m pip install -q -r requirements-dev.txt
{
    echo "# Exact versions CI tested (scripts/lock.sh wrote this on $(date -u +%Y-%m-%d)); make demo and make test install"
    echo "# with -c constraints.txt. Change a requirement, then rerun scripts/lock.sh; never edit by hand."
    "$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -v '^edgecls'
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
