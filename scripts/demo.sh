#!/usr/bin/env bash
# The README's first command: builds lb, then runs the default lb.toml in the namespace lab
# (`lb lab demo`): a client, the balancer on a TAP, two pod backends (fullnat, nat) and one VM
# backend (dsr-ipip, with the lab's userspace decapsulation agent). It sends a few hundred
# requests, prints which backend answered each (the spread) and the balancer's counters, and
# tears everything down, also on error or Ctrl-C. Needs root; nothing is created outside the
# lab's namespaces. Set LB_DEMO_PROFILE=debug to skip the (slow) release build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "demo.sh: needs root (network namespaces, a TAP device, raw sockets); try: sudo $0" >&2
  exit 1
fi
if ! command -v ip >/dev/null 2>&1 || ! command -v kill >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2046 # one package per word
    apt-get install -y -qq --no-install-recommends $(scripts/packages.sh) >/dev/null
  else
    echo "demo.sh: ip (iproute2) or kill (procps) is missing; see scripts/packages.txt" >&2
    exit 1
  fi
fi
profile=${LB_DEMO_PROFILE:-release}
if [ "$profile" = release ]; then
  cargo build --release -q -p controlplane --bin lb
else
  cargo build -q -p controlplane --bin lb
fi
lb=./target/$profile/lb
"$lb" check lb.toml
exec "$lb" lab demo --config lb.toml --requests "${LB_DEMO_REQUESTS:-300}"
