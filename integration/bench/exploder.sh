#!/usr/bin/env bash
# Exploder throughput and fan-out, in one run, on loopback, against one
# smtp-sink (Postfix):
#   relay         smtp-source -> koukan relay chain -> smtp-sink (baseline:
#                 one upstream transaction per message)
#   exploder-mx   smtp-source -> koukan exploder (msa: false) -> smtp-sink
#   exploder-msa  same with msa: true
# The exploder opens one upstream transaction per recipient and spools
# every body into the embedded store while it streams, so it costs more
# than the relay; this prints by how much. For 1 KB, 100 KB and 1 MB
# messages (the last two are over the exploder's old one-chunk failure)
# with 1 and 5 recipients, over 10 sessions: msg/s per case and the ratio
# exploder/relay. Then one message to 1000 recipients through the mx
# exploder: the most upstream connections open at once (the fan-out
# bound, max_concurrent_upstreams, is 100), how the recipients were
# answered and how long it took. Finally the
# store's size (a body delivered cut-through must not stay in it) and
# koukan's peak RSS. Last line: ratio exploder-mx/relay, 100 KB, 1 rcpt.
#
# Usage: integration/bench/exploder.sh [messages-per-case]   (default 1000)
# KOUKAN_BIN=path runs that binary instead of building this tree's (to
# measure an older build in the same sitting).
set -euo pipefail
cd "$(dirname "$0")/../.."

MESSAGES=${1:-1000}
if ! [ -x /usr/sbin/smtp-source ] || ! [ -x /usr/sbin/smtp-sink ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q --no-install-recommends postfix
fi
if [ -z "${KOUKAN_BIN:-}" ]; then
  cargo build --release --locked --bin koukan >/dev/null 2>&1 || cargo build --release --locked --bin koukan
fi
work=$(mktemp -d)
# A private copy: other builds may replace target/release/koukan meanwhile.
cp "${KOUKAN_BIN:-target/release/koukan}" "$work/koukan"
KOUKAN=$work/koukan

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }

echo "# $(date -u +%FT%TZ) host: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), koukan ${KOUKAN_BIN:-$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- proxy proto filters 2>/dev/null || echo '+dirty-tree')}"

SINK=$(free_port); RELAY=$(free_port); XMX=$(free_port); XMSA=$(free_port); ADMIN=$(free_port)
/usr/sbin/smtp-sink -u nobody 127.0.0.1:$SINK 2048 & pids+=($!)
wait_port "$SINK"

listener() {
  cat <<YAML
  - name: $1
    address: "127.0.0.1:$2"
    smtp:
      hostname: koukan.bench
      sender: $1
      limits: {max_connections: 1000, max_message_size: 209715200, max_recipients: 2000}
YAML
}
{
  cat <<YAML
node: {id: bench}
admin: {address: "127.0.0.1:$ADMIN"}
storage: {embedded: {path: $work/koukan.db}}
static_resources:
  listeners:
YAML
  listener relay "$RELAY"
  listener xmx "$XMX"
  listener xmsa "$XMSA"
  cat <<YAML
  senders: [{name: relay, chain: relay}, {name: xmx, chain: xmx}, {name: xmsa, chain: xmsa}]
  chains:
  - name: relay
    filters:
    - router: {destination: {endpoint: sink, host_list: [{host: 127.0.0.1, port: $SINK}]}}
  - name: xmx
    exploder: {output_chain: out, msa: false}
  - name: xmsa
    exploder: {output_chain: out, msa: true}
  - name: out
    filters:
    - router: {destination: {endpoint: sink, host_list: [{host: 127.0.0.1, port: $SINK}]}}
  endpoints:
  - name: sink
    smtp: {ehlo_hostname: koukan.bench}
YAML
} > "$work/koukan.yaml"
RUST_LOG=${RUST_LOG:-info} "$KOUKAN" --config "$work/koukan.yaml" 2>"$work/koukan.log" & KPID=$!; pids+=($KPID)
wait_port "$RELAY"

# run PORT SIZE RCPTS SESSIONS MESSAGES -> msgs/s, or FAIL when
# smtp-source saw any reply but the expected one or a dropped connection
# (what an exploder without the one-chunk fix does above 64 KiB).
run() {
  local start end
  start=$(date +%s.%N)
  if ! timeout "${CASE_TIMEOUT:-300}" /usr/sbin/smtp-source -s "$4" -m "$5" -l "$2" -r "$3" \
    -f sender@example.com -t rcpt@example.net "127.0.0.1:$1" >/dev/null 2>&1; then
    echo FAIL
    return
  fi
  end=$(date +%s.%N)
  python3 -c "print(f'{$5/($end-$start):.0f}')"
}
ratio_of() { python3 -c "import sys; a, b = sys.argv[1:]; print('-' if 'FAIL' in (a, b) else f'{float(a)/float(b):.2f}')" "$1" "$2"; }

printf '%-7s %-6s %10s %12s %13s %9s %10s\n' size rcpts relay/s exploder-mx/s exploder-msa/s mx/relay msa/relay
declare -A ratio
for size in 1024 102400 1048576; do
  msgs=$MESSAGES
  [ "$size" -ge 1048576 ] && msgs=$((MESSAGES / 5))
  for rcpts in 1 5; do
    relay=$(run "$RELAY" "$size" "$rcpts" 10 "$msgs")
    xmx=$(run "$XMX" "$size" "$rcpts" 10 "$msgs")
    xmsa=$(run "$XMSA" "$size" "$rcpts" 10 "$msgs")
    r1=$(ratio_of "$xmx" "$relay")
    r2=$(ratio_of "$xmsa" "$relay")
    ratio[$size/$rcpts]=$r1
    printf '%-7s %-6s %10s %12s %13s %9s %10s\n' "$((size/1024))KB" "$rcpts" "$relay" "$xmx" "$xmsa" "$r1" "$r2"
  done
done

# One message to 1000 recipients (pipelined, python's smtplib) through the
# mx exploder: sample the sink's established connections while it fans
# out. The first 100 hold their slots to the end of data; the other 900
# are over the bound and get 452 (sent again in another transaction).
peak_file=$work/peak
( peak=0
  while [ ! -e "$work/fanout-done" ]; do
    n=$(ss -Htn state established "( sport = :$SINK )" | wc -l)
    [ "$n" -gt "$peak" ] && peak=$n && echo "$peak" > "$peak_file"
    sleep 0.01
  done ) & sampler=$!
pids+=("$sampler")
fanout=$(python3 - "$XMX" 2>&1 <<'PY'
import smtplib, sys, time
start = time.time()
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=120)
rcpts = [f"r{i}@example.net" for i in range(1000)]
refused = s.sendmail("sender@example.com", rcpts, b"Subject: fan-out\r\n\r\n" + b"x" * 10240 + b"\r\n")
s.quit()
codes = sorted({v[0] for v in refused.values()})
print(f"{time.time() - start:.2f} s, {1000 - len(refused)} accepted, {len(refused)} refused {codes}")
PY
) || fanout="FAIL: $(echo "$fanout" | tail -1)"
touch "$work/fanout-done"; wait "$sampler" || true
echo "1000 recipients via exploder-mx: $fanout; at most $(cat "$peak_file" 2>/dev/null || echo 0) upstream connections open at once (bound 100)"

db=$(du -k "$work/koukan.db" | cut -f1)
wal=$(du -k "$work/koukan.db-wal" 2>/dev/null | cut -f1 || echo 0)
echo "store after the run: koukan.db ${db} KB, WAL ${wal:-0} KB; koukan peak RSS $(( $(awk '/VmHWM/ {print $2}' "/proc/$KPID/status") / 1024 )) MB"
errors=$(grep -c 'internal error\|panicked' "$work/koukan.log" || true)
echo "internal errors logged: $errors"
echo "ratio exploder-mx/relay: ${ratio[102400/1]}"
