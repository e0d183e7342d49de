#!/usr/bin/env bash
# Copy each report's claims table (written by `semiflow report`, docs/results/NAME/report.md) into
# README.md between `<!-- claims:NAME -->` and `<!-- /claims:NAME -->`, so the README's claim
# verdicts are the report's, never edited by hand.
#
#   scripts/readme-claims.sh            # after regenerating the reports
set -euo pipefail
cd "$(dirname "$0")/.."
readme=README.md
for report in docs/results/*/report.md; do
  name=$(basename "$(dirname "$report")")
  grep -q "<!-- claims:$name -->" "$readme" || continue
  table=$(awk '/^## Claims/{on=1; next} on && /^\|/{print; seen=1; next} on && seen && !/^\|/{exit}' "$report")
  if [ -z "$table" ]; then
    echo "$report has no claims table" >&2
    exit 1
  fi
  tmp=$(mktemp)
  awk -v name="$name" -v table="$table" '
    $0 == "<!-- claims:" name " -->" { print; print table; skip=1; next }
    $0 == "<!-- /claims:" name " -->" { skip=0 }
    !skip { print }
  ' "$readme" > "$tmp"
  mv "$tmp" "$readme"
  echo "README.md: claims of $name from $report"
done
