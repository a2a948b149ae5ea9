#!/usr/bin/env bash
# Install syncd, file the sample mails into a fresh SQLite CRM under ./demo, and show what went where.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh

demo="$PWD/demo"
rm -rf "$demo"
mkdir -p "$demo/drop"
cp samples/mail/*.eml "$demo/drop/"

# The demo gets its own copy of the settings, private to its owner as
# syncd expects of a settings file.
install -m 600 settings.toml "$demo/settings.toml"
export SYNCD_DATA_DIR="$demo"
export SYNCD_CONFIG="$demo/settings.toml"
export PATH="$PWD/.venv/bin:$PATH"
# Per-mail log lines would bury the summary; `syncd status` and the lists below show the outcome.
export SYNCD_LOG_LEVEL=WARNING

syncd db upgrade
syncd crm load samples/crm.json
syncd mailbox enroll ingrid.berg@salg.example --backend folder --path "$demo/drop" --post-action move
echo
syncd sync --once
echo
echo "== Filed correspondence"
syncd correspondence list
echo
echo "== Unmatched queue"
syncd unmatched list
echo
echo "The CRM database is $demo/syncd.db. Every recorded mail file, filed or not, moved to $demo/drop/processed/."
