#!/usr/bin/env bash
# The failed tests and tasks in the given scenarios' logs (artifacts/molecule-<name>.log),
# one line each, prefixed by the scenario: what CI's kept tail of the output must show.
set -euo pipefail
for scenario in "$@"; do
  sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^ *│ \{0,1\}//' "artifacts/molecule-$scenario.log" \
    | grep -E '^FAILED [^-]|^ERROR |^E +.*(Error|assert)|fatal: \[|^(fatal|failed): ' \
    | cut -c1-300 | head -n 20 | sed "s|^|$scenario: |" || true
done
