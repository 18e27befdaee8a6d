#!/usr/bin/env bash
# Runs the default lb.toml over a capture of client traffic with `lb sim` and shows what the
# balancer would do with each frame. (The namespace lab with real ports replaces this demo once
# `lb run` exists.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p controlplane --bin lb
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
./target/release/lb check lb.toml
./target/release/lb sim --config lb.toml --in fixtures/demo/clients.pcap --out "$out/out.pcap"
