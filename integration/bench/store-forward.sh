#!/usr/bin/env bash
# Store-and-forward throughput, in one run, on loopback, against one
# smtp-sink:
#   koukan-embedded   smtp-source -> koukan (SQLite store) -> smtp-sink
#   koukan-redis      same, Redis store (appendonly yes, appendfsync always)
#   koukan-redis-es   same, Redis with appendfsync everysec
#   postfix           smtp-source -> a private Postfix instance -> smtp-sink
# Every one answers 250 only once the message is fsynced. For 1 KB and
# 100 KB messages over 10 and 100 sessions it prints the accept rate
# (messages / time until the last 250) and the end-to-end rate (messages /
# time until the sink has received all of them), in msg/s, and koukan's
# peak RSS per case. Then, per koukan store, the retry drain: messages are
# stored while the upstream is down (each attempt fails with connection
# refused and is rescheduled 1 s later), the upstream comes up, and the
# drain is timed with koukan's queue and RSS printed every few seconds.
# Last line: the koukan-embedded/postfix accept-rate ratio, 1 KB, 10
# sessions.
#
# Must run as root (the private Postfix instance). Environment:
#   MESSAGES=2000            messages per throughput case
#   RETRY_MESSAGES=100000    messages queued for the drain test
#   RETRY_INJECT_SECS=180    stop injecting (whole batches) after this long
#   SCHED_CONCURRENCY=50     koukan scheduler.max_concurrency (= Postfix's
#                            default_destination_concurrency_limit here)
#   CASE_TIMEOUT=600         seconds allowed per throughput case
#   DRAIN_TIMEOUT=900        seconds allowed for a retry drain
#   SKIP_EVERYSEC=1          skip the appendfsync everysec cases
#   SKIP_RETRY=1             skip the retry drain tests
#   KEEP_WORK=1              keep the temporary directory (logs) on exit
set -euo pipefail
cd "$(dirname "$0")/../.."

MESSAGES=${MESSAGES:-2000}
RETRY_MESSAGES=${RETRY_MESSAGES:-100000}
RETRY_INJECT_SECS=${RETRY_INJECT_SECS:-180}
SCHED_CONCURRENCY=${SCHED_CONCURRENCY:-50}
CASE_TIMEOUT=${CASE_TIMEOUT:-600}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-900}

[ "$(id -u)" = 0 ] || { echo "run as root (private Postfix instance)" >&2; exit 1; }
if ! [ -x /usr/sbin/smtp-source ] || ! [ -x /usr/sbin/smtp-sink ] || ! [ -x /usr/sbin/postfix ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q --no-install-recommends postfix
fi
command -v redis-server >/dev/null || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q --no-install-recommends redis-server
}
echo "building koukan (release)..." >&2
cargo build --release --locked --bin koukan >/dev/null 2>&1 || cargo build --release --locked --bin koukan
work=$(mktemp -d /tmp/koukan-sf-bench.XXXXXX)
chmod 755 "$work" # Postfix daemons (user postfix) reach into it
# A private copy: other builds may replace target/release/koukan meanwhile.
cp target/release/koukan "$work/koukan"
KOUKAN=$work/koukan

pids=()
PFCONF=
cleanup() {
  set +e
  if [ -n "$PFCONF" ]; then timeout 30 postfix -c "$PFCONF" stop >/dev/null 2>&1 || timeout 10 postfix -c "$PFCONF" abort >/dev/null 2>&1; fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do timeout 10 tail --pid="$p" -f /dev/null 2>/dev/null; kill -9 "$p" 2>/dev/null; done
  if [ -n "${KEEP_WORK:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }
cpu_snap() { awk '/^cpu / { print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9, $3; exit }' /proc/stat; } # busy total niced
now() { date +%s.%N; }
log() { echo "# $*"; }

log "$(date -u +%FT%TZ) host: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), koukan $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- proxy proto filters 2>/dev/null || echo '+dirty-tree')"
log "messages per case: $MESSAGES; koukan scheduler.max_concurrency: $SCHED_CONCURRENCY; Postfix $(postconf -d -h mail_version), redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')"

# ---------------------------------------------------------------- the sink
SINK=$(free_port)
/usr/sbin/smtp-sink -u nobody -c "127.0.0.1:$SINK" 1024 >"$work/sink.out" 2>"$work/sink.err" & pids+=($!)
wait_port "$SINK"

# ---------------------------------------------------------------- koukan
KPID= KSMTP= KADMIN= KLOG= KNAME=
# start_koukan NAME STORAGE_YAML UPSTREAM_PORT
start_koukan() {
  local name=$1 storage=$2 upstream=$3
  KSMTP=$(free_port); KADMIN=$(free_port); KNAME=$name
  mkdir -p "$work/$name"
  cat >"$work/$name/koukan.yaml" <<YAML
node: {id: bench-$name}
admin: {address: "127.0.0.1:$KADMIN"}
storage: $storage
scheduler: {max_concurrency: $SCHED_CONCURRENCY, lease_ttl: 60s, poll_interval: 1s}
static_resources:
  listeners:
  - name: mx
    address: "127.0.0.1:$KSMTP"
    smtp:
      hostname: koukan.bench
      sender: inbound
      limits: {max_connections: 1000, max_message_size: 209715200}
  senders: [{name: inbound, chain: inbound}]
  chains:
  - name: inbound
    filters:
    - received_header: {received_hostname: koukan.bench}
    store_and_forward: {output_chain: out}
  - name: out
    filters:
    - router:
        destination: {endpoint: sink, host_list: [{host: 127.0.0.1, port: $upstream}]}
    retry: {max_attempts: 1000, min_attempt_time: 1s, max_attempt_time: 1s}
  endpoints:
  - name: sink
    smtp: {ehlo_hostname: koukan.bench, connect_timeout: 5s}
YAML
  KLOG=$work/$name/koukan.log
  RUST_LOG=${RUST_LOG:-info} "$KOUKAN" --config "$work/$name/koukan.yaml" 2>"$KLOG" & KPID=$!; pids+=($KPID)
  if ! wait_port "$KSMTP" || ! wait_port "$KADMIN"; then tail -20 "$KLOG" >&2; exit 1; fi
}
stop_koukan() {
  kill -TERM "$KPID" 2>/dev/null || true
  timeout 30 tail --pid="$KPID" -f /dev/null || kill -9 "$KPID" 2>/dev/null || true
}
queue() { python3 -c 'import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "http://127.0.0.1:$KADMIN/queue" 2>&1 | tail -1; }
rss_mb() { awk '/VmRSS/ {printf "%d", $2/1024}' "/proc/$1/status"; }
peak_mb() { awk '/VmHWM/ {printf "%d", $2/1024}' "/proc/$1/status"; }
reset_peak() { echo 5 >"/proc/$1/clear_refs"; }
# Errors and failed deliveries in a koukan log.
log_summary() {
  local f=$1 attempts ok warn
  attempts=$(grep -c 'delivery attempt' "$f" || true)
  ok=$(grep -c 'upstream response success' "$f" || true)
  warn=$(grep -cE ' (WARN|ERROR) ' "$f" || true)
  log "  koukan log: $attempts delivery attempts, $ok successful, $warn WARN/ERROR lines"
  if [ "$warn" -gt 0 ]; then
    grep -E ' (WARN|ERROR) ' "$f" | sed -E 's/^[^ ]+ +//; s/tx=[^ ]+/tx=…/g; s/[0-9a-f]{16,}/…/g' | sort | uniq -c | sort -rn | head -5 | sed 's/^/#     /'
  fi
}

# ---------------------------------------------------------------- one case
# case_run PORT SIZE SESSIONS [KOUKAN_PID]
#   -> "accept/s e2e/s busy%/niced% koukan-cpu-ms/msg sink-connections" or "FAIL ..."
# Accept: until smtp-source exits (after the last 250 and its QUIT); it
# exits non-zero on any reply other than the expected one (no -A), which
# fails the case. End to end: until the sink's message counter has grown
# by MESSAGES.
case_run() {
  local port=$1 size=$2 sessions=$3 pid=${4:-}
  [ -n "$pid" ] && reset_peak "$pid"
  python3 - "$port" "$size" "$sessions" "$MESSAGES" "$work/sink.out" "$CASE_TIMEOUT" "$pid" <<'PY'
import os, re, subprocess, sys, time
port, size, sessions, n, sinkout, limit, pid = sys.argv[1:8]
n, limit = int(n), float(limit)
pat = re.compile(rb"sess=(\d+) quit=\d+ mesg=(\d+)\r")
def sink():  # (sessions, messages) the sink has seen
    with open(sinkout, "rb") as f:
        f.seek(0, 2); f.seek(max(0, f.tell() - 400))
        m = pat.findall(f.read())
    return (int(m[-1][0]), int(m[-1][1])) if m else (0, 0)
def machine():  # (busy, total, niced) jiffies of the whole machine
    v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v), v[1]
def proc_cpu():  # utime + stime of the system under test, in seconds
    if not pid:
        return 0.0
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
base_sess, base = sink()
m0, c0 = machine(), proc_cpu()
start = time.monotonic()
src = subprocess.Popen(["timeout", str(int(limit)), "/usr/sbin/smtp-source", "-s", sessions,
                        "-m", str(n), "-l", size, "-f", "sender@example.com",
                        "-t", "rcpt@example.net", f"127.0.0.1:{port}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
accept = e2e = None
while time.monotonic() - start < limit + 5:
    t = time.monotonic()
    if accept is None and src.poll() is not None:
        accept = t - start
        if src.returncode != 0:
            err = src.stderr.read().decode(errors="replace").strip().splitlines()
            print(f"FAIL smtp-source exit {src.returncode}: {err[-1] if err else ''}")
            sys.exit(0)
    if e2e is None and sink()[1] - base >= n:
        e2e = t - start
    if accept is not None and e2e is not None:
        break
    time.sleep(0.01)
if accept is None or e2e is None:
    src.kill()
    print(f"FAIL timeout: accepted={'yes' if accept else 'no'} sink got {sink()[1]-base}/{n}")
    sys.exit(0)
m1, c1 = machine(), proc_cpu()
busy = 100 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
niced = 100 * (m1[2] - m0[2]) / max(1, m1[1] - m0[1])
cpu_ms = f"{1000 * (c1 - c0) / n:.2f}" if pid else "-"
print(f"{n/accept:.0f} {n/e2e:.0f} {busy:.0f}%/{niced:.0f}% {cpu_ms} {sink()[0] - base_sess}")
PY
}

declare -A ACC E2E PEAK
SIZES=(1024 102400)
SESSIONS=(10 100)
row_header() {
  printf '%-16s %-5s %-8s %8s %8s %8s %10s %9s %10s\n' system size sessions accept/s e2e/s peak-RSS cpu-ms/msg sink-conn "cpu%/nice%"
}
# run_system NAME PORT [KOUKAN_PID]
run_system() {
  local name=$1 port=$2 pid=${3:-} out size sessions peak k acc e2e busy cpu conns
  for size in "${SIZES[@]}"; do
    for sessions in "${SESSIONS[@]}"; do
      k=$name/$size/$sessions
      out=$(case_run "$port" "$size" "$sessions" "$pid")
      peak=-
      [ -n "$pid" ] && peak="$(peak_mb "$pid")MB"
      if [[ $out == FAIL* ]]; then
        acc=FAIL e2e=FAIL busy=- cpu=- conns=-
        log "$name $((size/1024))KB x$sessions: $out"
      else
        read -r acc e2e busy cpu conns <<<"$out"
      fi
      ACC[$k]=$acc; E2E[$k]=$e2e; PEAK[$k]=$peak
      printf '%-16s %-5s %-8s %8s %8s %8s %10s %9s %10s\n' "$name" "$((size/1024))KB" "$sessions" \
        "$acc" "$e2e" "$peak" "$cpu" "$conns" "$busy"
    done
  done
}
# After a koukan system: the queue must be empty and every attempt a success.
check_koukan() {
  local q
  for _ in $(seq 1 100); do
    q=$(queue)
    [[ $q == *'"waiting":0'* && $q == *'"inflight":0'* ]] && break
    sleep 0.1
  done
  log "  queue after the cases: $q (expected final_ $((MESSAGES * ${#SIZES[@]} * ${#SESSIONS[@]})))"
  log_summary "$KLOG"
  store_report
}
# Size of the store koukan runs on: the SQLite files, or Redis memory and AOF.
store_report() {
  if [[ $(cat "$work/$KNAME/koukan.yaml") == *embedded:* ]]; then
    log "  store: $(du -sh "$work/$KNAME/data" | cut -f1) on disk (finished transactions are kept for scheduler.gc_ttl, default 1 day; a delivered body is deleted at once and its pages reused, SQLite does not shrink the file)"
  else
    log "  store: redis used_memory $(redis-cli -p "$REDIS_PORT" info memory | tr -d '\r' | awk -F: '/^used_memory_human/ {print $2}'), AOF $(du -sh "$REDIS_DIR" | cut -f1) (finished transactions are kept for scheduler.gc_ttl, default 1 day; a delivered body is deleted at once)"
  fi
}

REDIS_PID= REDIS_PORT= REDIS_DIR= REDIS_N=0
start_redis() { # start_redis FSYNC: a fresh, empty redis-server
  local dir=$work/redis-server-$((++REDIS_N))-$1
  REDIS_PORT=$(free_port); REDIS_DIR=$dir
  mkdir -p "$dir"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly yes \
    --appendfsync "$1" --dir "$dir" --logfile "$dir/redis.log" & REDIS_PID=$!; pids+=($REDIS_PID)
  wait_port "$REDIS_PORT"
}
stop_redis() { kill "$REDIS_PID" 2>/dev/null || true; timeout 30 tail --pid="$REDIS_PID" -f /dev/null || true; }

echo
echo "== throughput, $MESSAGES messages per case (msg/s; accept = until the last 250, e2e = until the sink"
echo "   has them all; cpu-ms/msg = koukan's CPU time per message; sink-conn = connections the sink"
echo "   accepted; cpu%/nice% = whole machine busy during the case, both cores, and the part used by"
echo "   niced processes, i.e. other jobs on the machine, not this benchmark)"
row_header

# (a) embedded
start_koukan embedded "{embedded: {path: $work/embedded/data/koukan.db}}" "$SINK"
run_system koukan-embedded "$KSMTP" "$KPID"
check_koukan
stop_koukan

# (b) redis, appendfsync always (and everysec)
start_redis always
start_koukan redis "{redis: {url: \"redis://127.0.0.1:$REDIS_PORT/\"}}" "$SINK"
run_system koukan-redis "$KSMTP" "$KPID"
check_koukan
stop_koukan; stop_redis
if [ -z "${SKIP_EVERYSEC:-}" ]; then
  start_redis everysec
  start_koukan redis-es "{redis: {url: \"redis://127.0.0.1:$REDIS_PORT/\"}}" "$SINK"
  run_system koukan-redis-es "$KSMTP" "$KPID"
  check_koukan
  stop_koukan; stop_redis
fi

# (c) Postfix, a private instance: its own config, queue and data directories.
PF=$work/postfix; mkdir -p "$PF/conf" "$PF/queue" "$PF/data"
cp /etc/postfix/main.cf /etc/postfix/master.cf "$PF/conf/"
PFPORT=$(free_port)
postconf -c "$PF/conf" -e \
  "queue_directory=$PF/queue" "data_directory=$PF/data" \
  "inet_interfaces=loopback-only" "inet_protocols=ipv4" "mydestination=" \
  "relayhost=[127.0.0.1]:$SINK" "mynetworks=127.0.0.0/8" \
  "smtpd_relay_restrictions=permit_mynetworks, reject" \
  "maillog_file_prefixes=$PF" "maillog_file=$PF/maillog" \
  "smtp_tls_security_level=none" "smtpd_tls_security_level=none" \
  "alias_maps=" "alias_database=" "default_destination_concurrency_limit=50"
postconf -c "$PF/conf" -F '*/*/chroot = n' # no chroot jail to populate
postconf -c "$PF/conf" -MX smtp/inet
postconf -c "$PF/conf" -Me "127.0.0.1:$PFPORT/inet=127.0.0.1:$PFPORT inet n - n - - smtpd"
chown postfix "$PF/data"
PFCONF=$PF/conf # stopped on exit from here on
# postfix(1) reports errors only to a terminal or the log: show the log.
if ! postfix -c "$PF/conf" check || ! postfix -c "$PF/conf" start; then
  echo "private Postfix failed to start:" >&2; cat "$PF/maillog" >&2 2>/dev/null
  command -v script >/dev/null && script -qec "postfix -c $PF/conf check" /dev/null >&2
  exit 1
fi
wait_port "$PFPORT"
run_system postfix "$PFPORT"
deferred=$(find "$PF/queue/deferred" "$PF/queue/active" "$PF/queue/incoming" -type f | wc -l)
log "  postfix: $(grep -c 'status=sent' "$PF/maillog" || true) sent, $(grep -cE 'status=(deferred|bounced)' "$PF/maillog" || true) deferred/bounced, $deferred left in queue; $(grep -cE 'warning|error|fatal|panic' "$PF/maillog" || true) warning/error lines"
timeout 30 postfix -c "$PF/conf" stop >/dev/null 2>&1 || true
PFCONF=

# ---------------------------------------------------------------- retry drain
declare -A DRAIN
# retry_drain NAME STORAGE_YAML
retry_drain() {
  local name=$1 storage=$2 rsink batch=5000 stored=0 t0 t1 c0 c1 spid out inject_s
  rsink=$(free_port) # nobody listens: connection refused until the sink starts
  start_koukan "$name" "$storage" "$rsink"
  echo
  echo "== retry drain, koukan-$name: storing up to $RETRY_MESSAGES messages (1 KB, 20 sessions) with the upstream down"
  t0=$(now); c0=$(cpu_snap)
  while [ "$stored" -lt "$RETRY_MESSAGES" ]; do
    local m=$(( RETRY_MESSAGES - stored < batch ? RETRY_MESSAGES - stored : batch ))
    if ! out=$(timeout 300 /usr/sbin/smtp-source -s 20 -m "$m" -l 1024 -f sender@example.com \
          -t rcpt@example.net "127.0.0.1:$KSMTP" 2>&1 >/dev/null); then
      log "injection batch failed: $(echo "$out" | tail -1)"; break
    fi
    stored=$((stored + m))
    t1=$(now)
    c1=$(cpu_snap)
    awk -v n="$stored" -v t="$t1" -v t0="$t0" -v rss="$(rss_mb "$KPID")" -v c="$c0 $c1" \
      'BEGIN { split(c, v, " "); tot = v[5] - v[2]; if (tot < 1) tot = 1
               printf "  stored %6d in %4.0f s  (%4.0f msg/s)  koukan RSS %4d MB  cpu%%/nice%% %3.0f%%/%.0f%%\n",
                 n, t-t0, n/(t-t0), rss, 100*(v[4]-v[1])/tot, 100*(v[6]-v[3])/tot }'
    c0=$c1
    if awk -v t="$t1" -v t0="$t0" -v l="$RETRY_INJECT_SECS" 'BEGIN { exit !(t - t0 > l) }' && [ "$stored" -lt "$RETRY_MESSAGES" ]; then
      log "stopped injecting after ${RETRY_INJECT_SECS}s: $stored of $RETRY_MESSAGES messages queued"
      break
    fi
  done
  inject_s=$(awk -v t="$(now)" -v t0="$t0" 'BEGIN { printf "%.0f", t - t0 }')
  log "  queue before the upstream comes up: $(queue); koukan peak RSS while storing: $(peak_mb "$KPID") MB"
  log_summary "$KLOG"
  echo "  upstream up; draining (every 5 s: sink count, rate, koukan queue, koukan RSS):"
  reset_peak "$KPID"
  /usr/sbin/smtp-sink -u nobody -c "127.0.0.1:$rsink" 1024 >"$work/$name/sink.out" 2>&1 & spid=$!; pids+=($spid)
  python3 - "$stored" "$work/$name/sink.out" "http://127.0.0.1:$KADMIN/queue" "$KPID" "$DRAIN_TIMEOUT" "$work/$name/drain.result" <<'PY'
import json, re, sys, time, urllib.request
n, sinkout, url, pid, limit, result = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6]
pat = re.compile(rb"sess=\d+ quit=\d+ mesg=(\d+)\r")
def sink_count():
    try:
        with open(sinkout, "rb") as f:
            f.seek(0, 2); f.seek(max(0, f.tell() - 400))
            m = pat.findall(f.read())
        return int(m[-1]) if m else 0
    except OSError:
        return 0
def status(key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) // 1024
def machine():  # (busy, total, niced) jiffies of the whole machine
    v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v), v[1]
m_last = machine()
start = time.monotonic()
last_t, last_n, next_print, done, q, last_q = start, 0, start + 5, None, {}, 0.0
print(f"  {'t/s':>5} {'delivered':>9} {'tx/s':>6} {'waiting':>8} {'due':>8} {'inflight':>8} {'final':>8} {'RSS/MB':>7} {'cpu%/nice%':>10}", flush=True)
while time.monotonic() - start < limit:
    time.sleep(0.05)
    got, t = sink_count(), time.monotonic()
    if got >= n and done is None:
        done = t - start
    if t >= next_print or (done is not None and t - last_q >= 0.2):
        last_q = t
        try:
            q = json.loads(urllib.request.urlopen(url, timeout=10).read())
        except Exception as e:
            q = {"waiting": "?", "due": "?", "inflight": "?", "final_": f"{e}"}
        m = machine(); tot = max(1, m[1] - m_last[1])
        cpu = f"{100*(m[0]-m_last[0])/tot:.0f}%/{100*(m[2]-m_last[2])/tot:.0f}%"
        finished = done is not None and q.get("waiting") == 0 and q.get("inflight") == 0
        if done is not None and not finished and t - start > done + 30:
            break  # the sink has them all but the queue does not empty
        if t < next_print and not finished:
            continue
        print(f"  {t-start:5.0f} {got:9d} {(got-last_n)/(t-last_t):6.0f} {q['waiting']:>8} {q['due']:>8} "
              f"{q['inflight']:>8} {q['final_']:>8} {status('VmRSS'):7d} {cpu:>10}", flush=True)
        last_t, last_n, next_print, m_last = t, got, t + 5, m
        if finished:
            open(result, "w").write(f"{n/done:.0f} {done:.1f} {status('VmHWM')} {got-n}\n")
            sys.exit(0)
open(result, "w").write(f"FAIL sink got {sink_count()}/{n} after {time.monotonic()-start:.0f}s; queue {q}\n")
PY
  out=$(cat "$work/$name/drain.result" 2>/dev/null || echo "FAIL no result")
  if [[ $out == FAIL* ]]; then
    log "$out"; DRAIN[$name]="$out"
  else
    read -r rate secs peak dup <<<"$out"
    log "  drained $stored transactions in $secs s: $rate tx/s; koukan peak RSS while draining $peak MB; duplicates at the sink: $dup"
    DRAIN[$name]="$stored tx queued in $inject_s s, drained in $secs s = $rate tx/s, peak RSS $peak MB"
  fi
  log "  queue after the drain: $(queue)"
  log_summary "$KLOG"
  store_report
  stop_koukan
  kill "$spid" 2>/dev/null || true
}

if [ -z "${SKIP_RETRY:-}" ]; then
  retry_drain retry-embedded "{embedded: {path: $work/retry-embedded/data/koukan.db}}"
  start_redis always
  retry_drain retry-redis "{redis: {url: \"redis://127.0.0.1:$REDIS_PORT/\"}}"
  stop_redis
fi

# ---------------------------------------------------------------- summary
echo
echo "== summary (msg/s: accept / end-to-end; koukan peak RSS)"
systems=(koukan-embedded koukan-redis)
[ -z "${SKIP_EVERYSEC:-}" ] && systems+=(koukan-redis-es)
systems+=(postfix)
printf '%-10s' case; for s in "${systems[@]}"; do printf ' %24s' "$s"; done; echo
for size in "${SIZES[@]}"; do
  for sessions in "${SESSIONS[@]}"; do
    printf '%-10s' "$((size/1024))KB x$sessions"
    for s in "${systems[@]}"; do
      k=$s/$size/$sessions
      cell="${ACC[$k]} / ${E2E[$k]}"
      [ "${PEAK[$k]}" != - ] && cell="$cell (${PEAK[$k]// /})"
      printf ' %24s' "$cell"
    done
    echo
  done
done
if [ -z "${SKIP_RETRY:-}" ]; then
  echo "retry drain, embedded: ${DRAIN[retry-embedded]:-n/a}"
  echo "retry drain, redis:    ${DRAIN[retry-redis]:-n/a}"
fi
log "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
a=${ACC[koukan-embedded/1024/10]} b=${ACC[postfix/1024/10]}
if [[ $a =~ ^[0-9]+$ && $b =~ ^[0-9]+$ && $b -gt 0 ]]; then
  echo "ratio koukan-embedded/postfix: $(python3 -c "print(f'{$a/$b:.2f}')")"
else
  echo "ratio koukan-embedded/postfix: n/a"
fi
