#!/usr/bin/env bash
# Cut-through relay throughput: Postfix's smtp-source -> smtp-sink directly
# (the baseline) and smtp-source -> koukan -> smtp-sink, in one run, on
# loopback. Prints msg/s per case, koukan's peak RSS per case, the peak RSS
# while relaying one 100 MB message, and as its last line the ratio
# koukan/direct for 1 KB messages over 10 sessions.
#
# Usage: integration/bench/smtp-relay.sh [messages-per-case]   (default 2000)
set -euo pipefail
cd "$(dirname "$0")/../.."

MESSAGES=${1:-2000}
if ! [ -x /usr/sbin/smtp-source ] || ! [ -x /usr/sbin/smtp-sink ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q --no-install-recommends postfix
fi
cargo build --release --locked --bin koukan >/dev/null 2>&1 || cargo build --release --locked --bin koukan
KOUKAN=target/release/koukan

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }

SINK=$(free_port); RELAY=$(free_port); ADMIN=$(free_port)
/usr/sbin/smtp-sink -u nobody 127.0.0.1:$SINK 1024 & pids+=($!)
wait_port "$SINK"

cat > "$work/koukan.yaml" <<YAML
node: {id: bench}
admin: {address: "127.0.0.1:$ADMIN"}
static_resources:
  listeners:
  - name: mx
    address: "127.0.0.1:$RELAY"
    smtp:
      hostname: koukan.bench
      sender: inbound
      limits: {max_connections: 1000, max_message_size: 209715200}
  senders:
  - {name: inbound, chain: relay}
  chains:
  - name: relay
    filters:
    - received_header: {received_hostname: koukan.bench}
    - router:
        destination: {endpoint: sink, host_list: [{host: 127.0.0.1, port: $SINK}]}
  endpoints:
  - name: sink
    smtp: {ehlo_hostname: koukan.bench}
YAML
RUST_LOG=${RUST_LOG:-info} "$KOUKAN" --config "$work/koukan.yaml" 2>"$work/koukan.log" & KPID=$!; pids+=($KPID)
wait_port "$RELAY"

rss_kb() { awk '/VmHWM/ {print $2}' "/proc/$KPID/status"; }
reset_peak() { echo 5 > "/proc/$KPID/clear_refs"; }

# run PORT SIZE SESSIONS -> prints msgs/s
run() {
  local port=$1 size=$2 sessions=$3
  local start end
  start=$(date +%s.%N)
  /usr/sbin/smtp-source -s "$sessions" -m "$MESSAGES" -l "$size" \
    -f sender@example.com -t rcpt@example.net "127.0.0.1:$port" >/dev/null
  end=$(date +%s.%N)
  python3 -c "print(f'{$MESSAGES/($end-$start):.0f}')"
}

printf '%-8s %-9s %12s %12s %8s %16s\n' size sessions direct/s koukan/s ratio koukan-peak-RSS
declare -A ratio
for size in 1024 102400; do
  for sessions in 10 100; do
    direct=$(run "$SINK" "$size" "$sessions")
    reset_peak
    relay=$(run "$RELAY" "$size" "$sessions")
    peak=$(rss_kb)
    r=$(python3 -c "print(f'{$relay/$direct:.2f}')")
    ratio[$size/$sessions]=$r
    printf '%-8s %-9s %12s %12s %8s %13s MB\n' "$((size/1024))KB" "$sessions" "$direct" "$relay" "$r" "$((peak/1024))"
  done
done

reset_peak
start=$(date +%s.%N)
/usr/sbin/smtp-source -s 1 -m 1 -l 104857600 -f sender@example.com -t rcpt@example.net "127.0.0.1:$RELAY" >/dev/null
end=$(date +%s.%N)
echo "100 MB message via koukan: $(python3 -c "print(f'{$end-$start:.2f}')") s, koukan peak RSS $(( $(rss_kb) / 1024 )) MB"
total=$(grep -c 'koukan::tx' "$work/koukan.log" || true)
delivered=$(grep -c 'outcome="\?delivered' "$work/koukan.log" || true)
echo "koukan transactions: $total, delivered: $delivered"
echo "ratio koukan/direct: ${ratio[1024/10]}"
