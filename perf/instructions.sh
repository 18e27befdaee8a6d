#!/usr/bin/env bash
# Instructions per packet through the real pipeline, counted by callgrind (exact and repeatable,
# unlike timings on a shared 2-core machine). Two runs with different packet counts are
# subtracted, so set-up (table build, flow creation, process start) cancels out. Packets run in
# bursts of 32 through `process_burst`, as the worker runs them (examples/pps.rs). Each figure
# is given twice: the pipeline's own (the same run without `process_burst` subtracted: the
# harness's copy standing in for a port's receive, its buffers and loop) and with the harness.
#
# Kinds (examples/pps.rs): established (packets of confirmed TCP flows, the client's side), udp
# (packets of confirmed UDP flows: for fullnat and nat both directions in turn, the zero-copy
# benchmark's traffic; the client's side for the others), new (a new flow's SYN into
# a table sized for the rate, with the worker's expiry pass), flood (a SYN flood's steady
# state: the embryonic budget full, every SYN evicts the oldest).
#
# Usage: perf/instructions.sh [fullnat|nat|ipip|gue|dr|all] [established|udp|new|flood|all]
#        (default: every mode and kind)
#        PPS_SYN=linux perf/instructions.sh fullnat new   (new and flood with a Linux client's
#                                       SYN, a 40-byte TCP header with options, instead of a
#                                       bare 20-byte one; windows: 32 bytes, macos: 44)
#        PPS_NEXT_HOPS=on_link perf/instructions.sh fullnat new   (the backends' MACs read from
#                                       the neighbor cache, as with on_link or a gateway,
#                                       instead of configured per backend; not for udp)
#        perf/instructions.sh maglev   (instructions of one Maglev build, 1000 weighted backends)
#        perf/instructions.sh dpdk     (the DPDK port's own cost per packet over net_null, with
#                                       net_null's receive and transmit: needs libdpdk-dev)
#        perf/instructions.sh dpdk-cross (the same, every frame leaving by a second net_null
#                                       device: copied, then lent without a copy)
#        perf/instructions.sh dpdk-worker (lb's whole worker per packet, the real loop
#                                       (`Worker::poll_once`) over net_null with established dr
#                                       flows, split into the pipeline, net_null and the rest:
#                                       the port's and the worker loop's own)
#        perf/instructions.sh af_xdp   (the AF_XDP port's own cost per packet in userspace, on a
#                                       veth pair in namespaces it makes: needs root)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-all}
kind=${2:-all}
if ! command -v valgrind >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
  else
    echo "valgrind is needed: apt-get install valgrind" >&2
    exit 1
  fi
fi
# The DPDK modes link DPDK statically (the dpdk-static feature, as perf/zero-copy); DPDK_FEATURE=dpdk
# for its shared libraries.
dpdk_feature=${DPDK_FEATURE:-dpdk-static}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# Extra callgrind options, arguments after the binary's first, and a string the run's output
# must hold (else a warning).
vg_extra=()
bin_args=()
expect=
total() {
  valgrind --tool=callgrind --callgrind-out-file="$out/cg" "${vg_extra[@]}" "$@" "${bin_args[@]}" >"$out/run" 2>"$out/log"
  [ -z "$expect" ] || grep -q -- "$expect" "$out/run" || echo "warning: $(cat "$out/run")" >&2
  grep -E '^summary:' "$out/cg" | awk '{print $2}'
}
# One figure from two runs of "$bin" with arguments $1 and $2, whose difference is $3 units.
per_unit() {
  local t1 t2
  t1=$(total "$bin" "$1")
  t2=$(total "$bin" "$2")
  echo $(( (t2 - t1) / $3 ))
}
if [ "$mode" = maglev ]; then
  cargo build --release -q -p dataplane --example maglev_build
  bin=target/release/examples/maglev_build
  echo "maglev build (1000 weighted backends, M = 65537): $(per_unit 1 3 2) instructions (callgrind, commit $commit)"
  exit 0
fi
if [ "$mode" = dpdk ]; then
  cargo build --release -q -p dataplane --features "$dpdk_feature" --example port_cost
  bin=target/release/examples/port_cost
  echo "dpdk port (rx_batch + flush over net_null, bursts of 32): $(per_unit 2000 12000 $((10000 * 32))) instructions per packet (callgrind, commit $commit)"
  exit 0
fi
if [ "$mode" = dpdk-cross ]; then
  cargo build --release -q -p dataplane --features "$dpdk_feature" --example port_cost
  bin=target/release/examples/port_cost
  for how in copy lend; do
    bin_args=("$how")
    echo "dpdk port, every frame out by a second device, $how (over net_null, bursts of 32): $(per_unit 2000 12000 $((10000 * 32))) instructions per packet (callgrind, commit $commit)"
  done
  exit 0
fi
if [ "$mode" = dpdk-worker ]; then
  cargo build --release -q -p dataplane --features "$dpdk_feature" --example port_cost
  bin=target/release/examples/port_cost
  bin_args=(worker)
  # The timers (expiry every ms, the counters' publication) run by the clock, so under
  # callgrind far more often per packet than at speed: not counted. Every share comes from the
  # same two runs (the pipeline's refreshes of flow deadlines follow the clock too, so its count
  # moves by a few instructions from run to run with the machine's load).
  vg_extra=(--toggle-collect='dataplane::worker::Worker::timers' --collect-atstart=yes)
  total "$bin" 2000 >/dev/null
  cp "$out/cg" "$out/cg1"
  rx1=$(sed -n 's/.* rx=\([0-9]*\).*/\1/p' "$out/run")
  total "$bin" 12000 >/dev/null
  # Packets between the two runs, whatever the worker's burst (its `rx=` count).
  packets=$(( $(sed -n 's/.* rx=\([0-9]*\).*/\1/p' "$out/run") - rx1 ))
  # Inclusive counts of the worker's turn, the burst callback (the pipeline:
  # `process_burst_with`, and a two-armed worker's egress choice) and the port's two calls;
  # exclusive counts of net_null (its code, the mempool ring, and the TLS look-ups of its
  # per-lcore cache; linked statically, DPDK's functions in the binary, the ones without line
  # information).
  # (From $out: run from the checkout, callgrind_annotate files an inlined function's counts
  # under its relative path too and splits the function's line in two.)
  share() {
    (cd "$out" && callgrind_annotate --inclusive=yes --auto=no --threshold=100 "$1" |
      awk -v f="$2" 'index($0, ":" f " [") {gsub(",", "", $1); print $1; exit}')
  }
  driver() {
    (cd "$out" && callgrind_annotate --auto=no --threshold=100 "$1" |
      awk '/librte_net_null|librte_mempool_ring|tls_get_addr|\?\?\?:[a-z_]+ \[.*port_cost\]/ {gsub(",", "", $1); s += $1} END {print s + 0}')
  }
  per() {
    local a b
    a=$("$1" "$out/cg1" "${@:2}")
    b=$("$1" "$out/cg" "${@:2}")
    echo $(( (b - a) / packets ))
  }
  all=$(per share 'dataplane::worker::Worker::poll_once')
  pipe=$(per share 'dataplane::worker::Worker::poll_once::{{closure}}')
  rx=$(per share '<dataplane::port::dpdk::DpdkPort as dataplane::port::Port>::rx_batch')
  fl=$(per share '<dataplane::port::dpdk::DpdkPort as dataplane::port::Port>::flush')
  drv=$(per driver)
  port=$((rx - pipe + fl - drv))
  echo "dpdk worker (poll_once over net_null, established dr, bursts of $((packets / 10000))): $all instructions per packet: pipeline $pipe, net_null $drv, the port's own $port, the worker loop's own $((all - pipe - drv - port)); lb's worker besides the pipeline and the driver: $((all - pipe - drv)) (callgrind, commit $commit)"
  exit 0
fi
if [ "$mode" = af_xdp ]; then
  cargo build --release -q -p dataplane --example af_xdp_cost
  bin=target/release/examples/af_xdp_cost
  # Only inside the port's two calls (the sends into the veth are not the port's); every
  # burst must be whole (a short one would be counted as if full).
  vg_extra=(--collect-atstart=no --toggle-collect='*rx_batch*' --toggle-collect='*Port>::flush')
  expect=' short_calls=0 '
  echo "af_xdp port (rx_batch + flush on veth, bursts of 32, userspace only): $(per_unit 4 24 $((20 * 512))) instructions per packet (callgrind, commit $commit)"
  exit 0
fi
cargo build --release -q -p dataplane --example pps
bin=target/release/examples/pps
modes=$mode
[ "$mode" = all ] && modes="fullnat nat ipip gue dr"
kinds=$kind
[ "$kind" = all ] && kinds="established udp new flood"
n1=20000
n2=120000
for m in $modes; do
  for k in $kinds; do
    if [ "$k" = udp ] && [ "${PPS_NEXT_HOPS:-static}" = on_link ]; then
      echo "$m $k: skipped (PPS_NEXT_HOPS=on_link is for the TCP kinds; udp's table has configured MACs)" >&2
      continue
    fi
    i1=$(total "$bin" "$m" "$k" $n1)
    i2=$(total "$bin" "$m" "$k" $n2)
    h1=$(total "$bin" "$m" "$k" $n1 harness)
    h2=$(total "$bin" "$m" "$k" $n2 harness)
    per=$(( (i2 - i1) / (n2 - n1) ))
    own=$(( (i2 - i1 - (h2 - h1)) / (n2 - n1) ))
    syn=
    case "$k/${PPS_SYN:-bare}" in
      new/linux | flood/linux) syn=", Linux SYNs (40-byte TCP header)" ;;
      new/windows | flood/windows) syn=", Windows SYNs (32-byte TCP header)" ;;
      new/macos | flood/macos) syn=", macOS SYNs (44-byte TCP header)" ;;
    esac
    [ "${PPS_NEXT_HOPS:-static}" = on_link ] && syn="$syn, MACs from the neighbor cache"
    echo "$m $k: $own instructions per packet in the pipeline, $per with the harness (callgrind, $((n2 - n1)) packets$syn, commit $commit)"
  done
done
