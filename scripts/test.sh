#!/usr/bin/env bash
# The project's test command (README): installs what the tests need on a fresh Debian 12 machine
# (scripts/packages.txt), then runs every unit, property, golden-fixture and integration test.
# Tests that need root (network namespaces, TAP, AF_XDP, the lab) are #[ignore]d with the reason
# "needs root"; as root this script runs them too (--include-ignored). Without root they are listed
# as ignored, never counted as passed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=0
[ "$(id -u)" = 0 ] && root=1
if [ "$root" = 1 ] && command -v apt-get >/dev/null 2>&1 && [ -z "${LB_SKIP_APT:-}" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2046 # one package per word
  apt-get install -y -qq --no-install-recommends $(scripts/packages.sh) >/dev/null
fi
if [ "$root" = 1 ]; then
  cargo test --workspace --all-targets -- --include-ignored
else
  cargo test --workspace --all-targets
  echo "test.sh: not root: the tests marked 'ignored, needs root' did not run (sudo $0 runs them)" >&2
fi
# The DPDK port (cargo feature dpdk, off by default): lint it, then its tests against testpmd over
# memif, the port's and `lb run`'s (they need root; otherwise they say they skipped). The port's
# run twice: linked to DPDK's shared libraries (`dpdk`) and to its archives (`dpdk-static`, the
# benchmarks' build, whose drivers are the fixed set in dataplane/build.rs).
cargo clippy -p dataplane --features dpdk --all-targets -- -D warnings
cargo test -p dataplane --features dpdk --test dpdk
cargo test -p dataplane --features dpdk-static --test dpdk
if [ "$root" = 1 ]; then
  cargo test -p controlplane --features dpdk --test dpdk_run -- --include-ignored
else
  cargo test -p controlplane --features dpdk --test dpdk_run
fi
