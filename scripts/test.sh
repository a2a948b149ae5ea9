#!/usr/bin/env bash
# Install syncd into .venv, make sure PostgreSQL runs where it is installed, and run the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k detect
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh

# The store tests run on SQLite and on PostgreSQL at 127.0.0.1:5432. Start a
# Debian cluster that is installed but stopped; without a server the
# PostgreSQL half is skipped with one line in the summary.
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        for version in /etc/postgresql/*/; do
            pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start || true
        done
        for _ in $(seq 1 30); do
            pg_isready -q -h 127.0.0.1 -p 5432 && break
            sleep 1
        done
    fi
fi

# The type check runs first: it is quick, and a wrong type is a bug.
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest "$@"
