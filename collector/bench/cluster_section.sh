#!/usr/bin/env bash
# BENCHMARKS.md's cluster section (called by tests/bench/run.sh, or alone): runs
# collector/bench/cluster.sh with history in PostgreSQL and in one shared SQLite
# file, prints both tables, and appends the summary row (a cluster's throughput at
# 1, 2 and 4 site workers).
#
#   bash collector/bench/cluster_section.sh
set -euo pipefail
BENCH_NAME=cluster
# shellcheck source=../../tests/bench/lib.sh
source "$(dirname "$0")/../../tests/bench/lib.sh"
cd "$BENCH_ROOT"

N=${N:-$(pick 120000 12000)}
log "history in PostgreSQL (N=$N)"
pg=$(N=$N PG=1 bash collector/bench/cluster.sh)
log "history in SQLite (N=$N)"
lite=$(N=$N bash collector/bench/cluster.sh)

# `rate TABLE K`: the reports/s column of the row for K workers.
rate() { awk -F'|' -v k="$2" '$2 + 0 == k && $5 ~ /[0-9]/ { gsub(/ /, "", $5); print $5 }' <<<"$1"; }
p1=$(rate "$pg" 1) p2=$(rate "$pg" 2) p4=$(rate "$pg" 4)
s1=$(rate "$lite" 1) s2=$(rate "$lite" 2) s4=$(rate "$lite" 4)
grows=$(awk -v a="${p1:-0}" -v b="${p4:-0}" 'BEGIN { print (a > 0 && b > a) ? "yes" : "no" }')

md "## Cluster: throughput with 1, 2 and 4 site workers" ""
mdf '%s\n' "A three-node NATS cluster (JetStream, MQTT listeners, the shipped partition
mapping) holds a backlog of $N reports from 500 simulated sites (published over MQTT,
QoS 1); then 1, 2 or 4 site workers drain it into history, each report acknowledged
only after its window is committed and its summary is in the summary stream. The rate
is measured from the moment the workers hold all 16 partitions between them until the
last window row. No correlator runs (it reads only summaries)."
md "" "Command: \`$(bench_cmd bash collector/bench/cluster_section.sh)\` (each table: \`PG=1 bash collector/bench/cluster.sh\`, \`bash collector/bench/cluster.sh\`)." ""
md "History in PostgreSQL (its own server, fsync on; a fresh database per row):" ""
md "| site workers | reports | publish/s | reports/s | per worker |" "|---:|---:|---:|---:|---:|"
md "$(grep '^| [0-9]' <<<"$pg")" ""
md "$(grep 'cores' <<<"$pg")" ""
md "History in one SQLite file shared by the workers (one writer at a time):" ""
md "| site workers | reports | publish/s | reports/s | per worker |" "|---:|---:|---:|---:|---:|"
md "$(grep '^| [0-9]' <<<"$lite")" ""
mdf '%s\n' "What limits this machine: its 2 cores run the three nats-server nodes, the
fleet simulator's publisher, every worker and the database at once, so more workers
than cores add contention, not capacity; SQLite serializes the workers' commits.
On separate hosts each worker brings its own cores; see
collector/deploy/cluster/README.md for the arithmetic of 1,000,000 sites."
md ""
summary_row "$BUDGET_CLUSTER" \
    "PostgreSQL: ${p1:-—} / ${p2:-—} / ${p4:-—} reports/s at 1 / 2 / 4 workers; SQLite ${s1:-—} / ${s2:-—} / ${s4:-—} (2 cores shared by 3 NATS nodes, workers and database)" \
    "$grows" "$(bench_cmd bash collector/bench/cluster_section.sh)"
