#!/usr/bin/env bash
# Type-check the runtime (strict), the exporter and the calibration package with mypy.
# The packages live in folders named by role (runtime/ is lame_runtime), which mypy cannot map,
# so a temporary folder of links gives it the import names. Extra arguments go to mypy.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
names="$(mktemp -d)"
trap 'rm -rf "$names"' EXIT
for pair in lame:lame lame_export:export lame_calibration:calibration lame_runtime:runtime; do
    ln -s "$root/${pair#*:}" "$names/${pair%%:*}"
done
cd "$names"
python -m mypy --config-file "$root/pyproject.toml" --cache-dir "$root/.mypy_cache" \
    -p lame_runtime -p lame_export -p lame_calibration "$@"
