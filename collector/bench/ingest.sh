#!/usr/bin/env bash
# Ingest rate through Mosquitto: the collector against `mosquitto_sub` draining the
# same stream on the same broker at the same time.
#
#   bash collector/bench/ingest.sh            # N=50000 reports from SITES=50 sites
#   N=200000 SITES=100 bash collector/bench/ingest.sh
#   N=20000 SITES=10000 PAR=64 bash collector/bench/ingest.sh   # 10k sites: RSS
#
# PAR limits how many publishers run at once (default: one per site).
# Both subscribers receive every report (QoS 1, 10 probes each, ~1.7 kB of JSON)
# published by SITES parallel `mosquitto_pub -l` streams. A rate is N / (time from
# the first publish to the N-th message handled): for mosquitto_sub, when it exits
# after N messages; for the collector, when its /metrics count of handled reports
# (accepted + rejected, from /api/counters) reaches N. Prints both rates, their ratio and the
# collector's peak RSS. Needs mosquitto, mosquitto-clients, curl, awk.
set -euo pipefail
N=${N:-50000}
SITES=${SITES:-50}
PAR=${PAR:-$SITES}
PER=$(( N / SITES ))
N=$(( PER * SITES ))
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -q -p faultline-collector
BIN=$CARGO_TARGET_DIR/release/faultline-collector
MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $(( 20000 + RANDOM % 20000 )); }
MP=$(port); HP=$(port)

cat > "$tmp/mosquitto.conf" <<CONF
listener $MP 127.0.0.1
allow_anonymous true
max_queued_messages 0
max_inflight_messages 100
CONF
"$MOSQ" -c "$tmp/mosquitto.conf" >/dev/null 2>&1 & pids+=($!)
cat > "$tmp/collector.toml" <<CONF
[mqtt]
url = "mqtt://127.0.0.1:$MP"
[http]
listen = "127.0.0.1:$HP"
[storage]
path = "$tmp/history.db"
CONF
FAULTLINE_LOG=warn "$BIN" run --config "$tmp/collector.toml" 2>"$tmp/collector.log" & CPID=$!; pids+=($CPID)
for _ in $(seq 100); do curl -sf "127.0.0.1:$HP/metrics" >/dev/null && break; sleep 0.1; done

# One file of PER reports per site.
now=$(date +%s%3N)
for s in $(seq -f "site-%03g" 1 "$SITES"); do
  awk -v site="$s" -v per="$PER" -v now="$now" 'BEGIN {
    for (i = 0; i < per; i++) {
      printf "{\"v\":1,\"site\":\"%s\",\"boot\":1,\"seq\":%d,\"start_ms\":%d,\"window_ms\":10000,\"host\":{\"cpu_pct\":10.0,\"mem_pct\":40.0,\"load1\":0.2},\"probes\":[", site, i, now
      for (t = 0; t < 10; t++) {
        if (t > 0) printf ","
        layer = (t == 0) ? "lan" : (t < 3 ? "internet" : "provider")
        prov = (t >= 3) ? sprintf(",\"provider\":\"p%d\"", t % 3) : ""
        printf "{\"target\":\"t%d\",\"layer\":\"%s\"%s,\"kind\":\"stamp\",\"sent\":50,\"received\":50,\"rtt_ms\":{\"min\":10.1,\"p50\":12.2,\"avg\":12.4,\"p95\":15.3,\"max\":20.9},\"jitter_ms\":1.2,\"max_burst\":0,\"mos\":4.31}", t, layer, prov
      }
      printf "]}\n"
    }
  }' > "$tmp/$s.jsonl"
done

handled() {
  curl -sf "127.0.0.1:$HP/api/counters" | sed -E 's/.*"rejected":([0-9]+).*"reports":([0-9]+).*/\1 \2/' | awk '{ print $1 + $2 }'
}

mosquitto_sub -p "$MP" -q 1 -t 'faultline/v1/sites/+/report/json' -C "$N" > /dev/null & SUB=$!; pids+=($SUB)
sleep 1
t0=$(date +%s%N)
export MP tmp
seq -f "site-%03g" 1 "$SITES" | xargs -P "$PAR" -I{} sh -c \
  'mosquitto_pub -p "$MP" -q 1 -l -t "faultline/v1/sites/{}/report/json" < "$tmp/{}.jsonl"' & pids+=($!)
tsub=""; tcol=""
while [ -z "$tsub" ] || [ -z "$tcol" ]; do
  if [ -z "$tsub" ] && ! kill -0 "$SUB" 2>/dev/null; then tsub=$(date +%s%N); fi
  if [ -z "$tcol" ] && [ "$(handled)" -ge "$N" ]; then tcol=$(date +%s%N); fi
  if [ $(( ($(date +%s%N) - t0) / 1000000000 )) -gt 600 ]; then echo "timeout: collector handled $(handled) of $N" >&2; exit 1; fi
  sleep 0.05
done
rsub=$(awk -v n="$N" -v d=$(( tsub - t0 )) 'BEGIN { printf "%.0f", n / (d / 1e9) }')
rcol=$(awk -v n="$N" -v d=$(( tcol - t0 )) 'BEGIN { printf "%.0f", n / (d / 1e9) }')
ratio=$(awk -v a="$rcol" -v b="$rsub" 'BEGIN { printf "%.2f", a / b }')
hwm=$(awk '/VmHWM/ { printf "%.1f MB", $2 / 1024 }' /proc/$CPID/status)
# One Prometheus scrape on top (at 10k sites the probe series are the bulk of it).
curl -sf -o /dev/null "127.0.0.1:$HP/metrics"
hwm2=$(awk '/VmHWM/ { printf "%.1f MB", $2 / 1024 }' /proc/$CPID/status)
echo "| reports | sites | mosquitto_sub | collector | ratio | collector peak RSS | after a /metrics scrape |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
echo "| $N | $SITES | $rsub msg/s | $rcol msg/s | $ratio | $hwm | $hwm2 |"
