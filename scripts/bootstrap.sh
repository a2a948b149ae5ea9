#!/usr/bin/env bash
# Create .venv beside the repository and install syncd with its test tools into it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -qq --disable-pip-version-check -e '.[test]'
