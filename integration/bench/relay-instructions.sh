#!/usr/bin/env bash
# Instructions per relayed message, counted by valgrind's callgrind: the
# same cut-through relay workload (smtp-source -> koukan -> smtp-sink on
# loopback) through a baseline koukan binary and through this tree's
# release build, one after the other. Unlike messages per second, the
# counts repeat exactly whatever else the machine is doing, so a change
# of a few percent in the per-message cost shows.
#
# Usage: integration/bench/relay-instructions.sh BASELINE_BIN [messages]
#   (messages per size, default 200; sizes 1 KB and 100 KB, 10 sessions)
# Last line: ratio this/baseline of the instructions per 100 KB message.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${1:?usage: relay-instructions.sh BASELINE_BIN [messages]}
MESSAGES=${2:-200}
command -v valgrind >/dev/null || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q --no-install-recommends valgrind
}
if ! [ -x /usr/sbin/smtp-source ] || ! [ -x /usr/sbin/smtp-sink ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q --no-install-recommends postfix
fi
cargo build --release --locked --bin koukan >/dev/null 2>&1 || cargo build --release --locked --bin koukan
work=$(mktemp -d)
cp "$BASE" "$work/base"
cp target/release/koukan "$work/this"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; exit 1; }

SINK=$(free_port)
/usr/sbin/smtp-sink -u nobody 127.0.0.1:$SINK 1024 & pids+=($!)
wait_port "$SINK"

# instructions BIN SIZE -> total instructions of one koukan process that
# relays MESSAGES messages of SIZE octets (start-up included, measured
# once with no message and subtracted).
instructions() {
  local bin=$1 size=$2 relay admin out pid
  relay=$(free_port); admin=$(free_port); out=$work/cg.$RANDOM
  cat > "$work/koukan.yaml" <<YAML
node: {id: bench}
admin: {address: "127.0.0.1:$admin"}
static_resources:
  listeners:
  - name: mx
    address: "127.0.0.1:$relay"
    smtp: {hostname: koukan.bench, sender: inbound, limits: {max_message_size: 209715200}}
  senders: [{name: inbound, chain: relay}]
  chains:
  - name: relay
    filters:
    - received_header: {received_hostname: koukan.bench}
    - router: {destination: {endpoint: sink, host_list: [{host: 127.0.0.1, port: $SINK}]}}
  endpoints:
  - name: sink
    smtp: {ehlo_hostname: koukan.bench}
YAML
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --config "$work/koukan.yaml" 2>/dev/null &
  pid=$!
  wait_port "$relay"
  if [ "$size" -gt 0 ]; then
    /usr/sbin/smtp-source -s 10 -m "$MESSAGES" -l "$size" -f sender@example.com -t rcpt@example.net "127.0.0.1:$relay" >/dev/null
  fi
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  awk '/^summary:/ {print $2}' "$out"
}

printf '%-7s %16s %16s %8s\n' size baseline/msg this/msg ratio
declare -A ratio
base0=$(instructions "$work/base" 0)
this0=$(instructions "$work/this" 0)
for size in 1024 102400; do
  b=$(instructions "$work/base" "$size")
  t=$(instructions "$work/this" "$size")
  read -r bpm tpm r < <(python3 -c "b=($b-$base0)/$MESSAGES; t=($t-$this0)/$MESSAGES; print(f'{b:.0f} {t:.0f} {t/b:.3f}')")
  ratio[$size]=$r
  printf '%-7s %16s %16s %8s\n' "$((size/1024))KB" "$bpm" "$tpm" "$r"
done
echo "ratio this/baseline (100 KB): ${ratio[102400]}"
