#!/usr/bin/env bash
# The project's test command (README): installs what the tests need on a fresh Debian 12 machine,
# then runs every unit, property, golden-fixture and integration test.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ -z "${LB_SKIP_APT:-}" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2046 # one package per word
  apt-get install -y -qq --no-install-recommends $(scripts/packages.sh) >/dev/null
fi
cargo test --workspace --all-targets
