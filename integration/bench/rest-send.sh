#!/usr/bin/env bash
# REST injection against SMTP injection, in one run, on loopback, through
# the same koukan (release build, embedded store) and the same chain to
# one smtp-sink:
#   rest   N HTTP clients (integration/src/bin/rest-load.rs), each creating
#          transactions with a small message-builder body and following
#          each with hanging GETs until its final status (delivered at the
#          sink, or stored-and-delivered for the store-and-forward chain)
#   smtp   smtp-source with N sessions through an SMTP listener on the same
#          chain (the baseline)
# for the relay chain (REST: stored, then delivered by the scheduler;
# SMTP: cut-through) and the store-and-forward chain (both fsynced before
# the final reply; REST's final reply also waits for the delivery).
# Prints per case transactions/s, REST's p50/p99/max POST-to-final time,
# SMTP's mean time per message per session, koukan's peak RSS; last line
# `ratio rest/smtp: R` (relay chain, N=CLIENTS).
#
# Environment: MESSAGES=2000 per case, CLIENTS=10, KEEP_WORK=1 keeps logs.
set -euo pipefail
cd "$(dirname "$0")/../.."

MESSAGES=${MESSAGES:-2000}
CLIENTS=${CLIENTS:-10}

if ! [ -x /usr/sbin/smtp-source ] || ! [ -x /usr/sbin/smtp-sink ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q --no-install-recommends postfix
fi
echo "building koukan and rest-load (release)..." >&2
cargo build --release --locked --bin koukan --bin rest-load >/dev/null 2>&1 ||
  cargo build --release --locked --bin koukan --bin rest-load
work=$(mktemp -d /tmp/koukan-rest-bench.XXXXXX)
chmod 755 "$work"
cp target/release/koukan target/release/rest-load "$work/"

pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do timeout 10 tail --pid="$p" -f /dev/null 2>/dev/null; kill -9 "$p" 2>/dev/null; done
  if [ -n "${KEEP_WORK:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }
now() { date +%s.%N; }
log() { echo "# $*"; }
peak_mb() { awk '/VmHWM/ {printf "%d", $2/1024}' "/proc/$1/status"; }
reset_peak() { echo 5 >"/proc/$1/clear_refs"; }

log "$(date -u +%FT%TZ) host: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), koukan $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- proxy proto rest message 2>/dev/null || echo '+dirty-tree')"
log "messages per case: $MESSAGES; concurrent clients/sessions: $CLIENTS"

SINK=$(free_port)
/usr/sbin/smtp-sink -u nobody -c "127.0.0.1:$SINK" 1024 >"$work/sink.out" 2>"$work/sink.err" & pids+=($!)
wait_port "$SINK"

API=$(free_port); MX=$(free_port); MXSF=$(free_port); ADMIN=$(free_port)
cat >"$work/koukan.yaml" <<YAML
node: {id: bench-rest}
admin: {address: "127.0.0.1:$ADMIN"}
storage: {embedded: {path: data/koukan.db}}
scheduler: {max_concurrency: 64}
static_resources:
  listeners:
  - name: api
    address: "127.0.0.1:$API"
    http: {session_uri: "http://127.0.0.1:$API", limits: {max_concurrent_requests: 4096, max_hanging_gets: 4096}}
  - name: mx
    address: "127.0.0.1:$MX"
    smtp: {hostname: koukan.bench, sender: bench, limits: {max_connections: 1000}}
  - name: mx-sf
    address: "127.0.0.1:$MXSF"
    smtp: {hostname: koukan.bench, sender: bench, tag: stored, limits: {max_connections: 1000}}
  senders:
  - name: bench
    chain: relay
    tags: [{name: stored, chain: queued}]
  chains:
  - name: relay
    relay: {endpoint: sink}
    retry: {max_attempts: 10, min_attempt_time: 1s, max_attempt_time: 1s}
  - name: queued
    store_and_forward: {output_chain: relay}
  endpoints:
  - name: sink
    smtp:
      ehlo_hostname: koukan.bench
      hosts: [{host: 127.0.0.1, port: $SINK}]
YAML
mkdir -p "$work/data"
RUST_LOG=${RUST_LOG:-warn} "$work/koukan" --config "$work/koukan.yaml" 2>"$work/koukan.log" & KPID=$!; pids+=($KPID)
wait_port "$API"; wait_port "$MX"; wait_port "$ADMIN"

# rest_case TAG -> the rest-load line
rest_case() {
  reset_peak "$KPID"
  local line
  line=$("$work/rest-load" "127.0.0.1:$API" bench "$CLIENTS" "$MESSAGES" "$1")
  echo "$line peak_rss_mb=$(peak_mb "$KPID")"
}
# smtp_case PORT -> "msgs secs tps mean_ms peak"
smtp_case() {
  reset_peak "$KPID"
  local t0 t1
  t0=$(now)
  timeout 600 /usr/sbin/smtp-source -s "$CLIENTS" -m "$MESSAGES" -l 300 -f load@example.com -t rcpt@example.net "127.0.0.1:$1"
  t1=$(now)
  python3 - "$t0" "$t1" "$MESSAGES" "$CLIENTS" "$(peak_mb "$KPID")" <<'PY'
import sys
t0, t1, n, c, peak = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
s = t1 - t0
print(f"ok={n} secs={s:.2f} tps={n/s:.1f} mean_ms_per_session_msg={1000*s*c/n:.1f} peak_rss_mb={peak}")
PY
}
tps() { sed -E 's/.* tps=([0-9.]+).*/\1/' <<<"$1"; }

# Warm-up (connection pools, page cache), not reported.
"$work/rest-load" "127.0.0.1:$API" bench "$CLIENTS" 200 >/dev/null
/usr/sbin/smtp-source -s "$CLIENTS" -m 200 -l 300 -f load@example.com -t rcpt@example.net "127.0.0.1:$MX"

echo "case                     figures"
rest_relay=$(rest_case "")
echo "rest  relay              $rest_relay"
smtp_relay=$(smtp_case "$MX")
echo "smtp  relay (baseline)   $smtp_relay"
rest_sf=$(rest_case stored)
echo "rest  store-and-forward  $rest_sf"
smtp_sf=$(smtp_case "$MXSF")
echo "smtp  store-and-forward  $smtp_sf"
# Let the store-and-forward deliveries drain before the last line.
sleep 2
# Where the time goes: the store's mean latency per operation.
python3 - "http://127.0.0.1:$ADMIN/metrics" <<'PY'
import re, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
sums, counts = {}, {}
for line in text.splitlines():
    m = re.match(r'koukan_store_operation_duration_seconds_(sum|count)\{op="([a-z_]+)",result="ok"\} ([0-9.e+-]+)', line)
    if m:
        (sums if m[1] == "sum" else counts)[m[2]] = float(m[3])
ops = sorted(counts, key=lambda o: -sums.get(o, 0))
print("# store ops (mean ms x count): " + ", ".join(f"{o} {1000*sums[o]/counts[o]:.2f}x{int(counts[o])}" for o in ops if counts[o]))
PY
errors=$(grep -cE ' (ERROR) ' "$work/koukan.log" || true)
log "koukan log: $errors ERROR lines"
python3 - "$(tps "$rest_sf")" "$(tps "$smtp_sf")" <<'PY'
import sys
r, s = float(sys.argv[1]), float(sys.argv[2])
print(f"# ratio rest/smtp store-and-forward: {r/s:.2f}")
PY
python3 - "$(tps "$rest_relay")" "$(tps "$smtp_relay")" <<'PY'
import sys
r, s = float(sys.argv[1]), float(sys.argv[2])
print(f"ratio rest/smtp: {r/s:.2f}")
PY
