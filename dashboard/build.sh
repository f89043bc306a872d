#!/usr/bin/env bash
# Builds the dashboard's libraries: installs the versions package-lock.json
# pins (npm ci), then copies their built files into
# crates/controller/assets/vendor/, which are committed so that
# `cargo build` alone makes a working dashboard.
#   dashboard/build.sh           rebuild the vendored files
#   dashboard/build.sh --check   fail if the committed files differ
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --silent
out=../crates/controller/assets/vendor
if [ "${1:-}" = "--check" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"
cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css "$out/"
cp node_modules/@dagrejs/dagre/dist/dagre.min.js "$out/"
cp node_modules/uplot/LICENSE "$out/uPlot.LICENSE"
cp node_modules/@dagrejs/dagre/LICENSE "$out/dagre.LICENSE"
if [ "${1:-}" = "--check" ]; then
  diff -r "$out" ../crates/controller/assets/vendor
  echo "dashboard/build.sh: the committed vendor files match package-lock.json"
fi
