#!/usr/bin/env bash
# Instructions per packet through the real pipeline, counted by callgrind (exact and repeatable,
# unlike timings on a shared 2-core machine). Two runs with different packet counts are
# subtracted, so set-up (table build, flow creation, process start) cancels out.
#
# Usage: perf/instructions.sh [fullnat|ipip] [established|new]   (default: fullnat established)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-fullnat}
kind=${2:-established}
if ! command -v valgrind >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
  else
    echo "valgrind is needed: apt-get install valgrind" >&2
    exit 1
  fi
fi
cargo build --release -q -p dataplane --example pps
bin=target/release/examples/pps
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
count() {
  valgrind --tool=callgrind --callgrind-out-file="$out/cg.$1" "$bin" "$mode" "$kind" "$1" >/dev/null 2>"$out/log.$1"
  grep -E '^summary:' "$out/cg.$1" | awk '{print $2}'
}
n1=20000
n2=120000
i1=$(count $n1)
i2=$(count $n2)
per=$(( (i2 - i1) / (n2 - n1) ))
echo "$mode $kind: $per instructions per packet (callgrind, $((n2 - n1)) packets, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
