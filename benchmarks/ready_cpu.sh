#!/bin/bash
# Start to ready of the REST service, and where the CPU went: wall seconds from process
# start to /ready 200, machine-wide busy CPU-seconds over that time (/proc/stat), each
# process's CPU-seconds at /ready (the service, its JVM, the Python workers) and the
# JVM's by thread kind (C2 and C1 compilers, GC, ...). Needs a champion (`make run`).
#
#   benchmarks/ready_cpu.sh LABEL [--set section.key=value ...]
#   PYTHONPATH=<checkout>/lib benchmarks/ready_cpu.sh LABEL ...   (another checkout)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
label="${1:?usage: ready_cpu.sh LABEL [--set ...]}"
shift
port=$((20000 + RANDOM % 20000))
log="$(mktemp /tmp/ready_cpu.XXXXXX.log)"
busy() { awk '/^cpu /{print ($2+$3+$4+$7+$8)/100}' /proc/stat; }
b0=$(busy)
t0=$(date +%s.%N)
GX_ANALYTICS_ENABLED=false "$here/.venv/bin/python" -m poimatch.apps.service --env local \
  --port "$port" "$@" >"$log" 2>&1 &
pid=$!
# the service goes down with this script, however it ends (piped into `head`, a SIGPIPE
# ends it before its last line: the service then ran on, beside the next measurement)
trap 'kill "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
until curl -sf "localhost:$port/ready" >/dev/null 2>&1; do
  kill -0 "$pid" 2>/dev/null || { echo "the service exited; its log:"; tail -20 "$log"; exit 1; }
  sleep 0.2
done
t1=$(date +%s.%N)
b1=$(busy)
echo "$label ready_wall_s $(echo "$t1 - $t0" | bc) busy_cpu_s $(echo "$b1 - $b0" | bc)" \
  "service: $(curl -s "localhost:$port/ready")"
cpu() { awk '{print ($14+$15+$16+$17)/100}' "/proc/$1/stat"; }
for child in $(pgrep -P "$pid"); do
  echo "  $(tr '\0' ' ' <"/proc/$child/cmdline" | cut -c1-50) cpu_s $(cpu "$child")"
  for worker in $(pgrep -P "$child"); do
    echo "    $(tr '\0' ' ' <"/proc/$worker/cmdline" | cut -c1-50) cpu_s $(cpu "$worker")"
    for forked in $(pgrep -P "$worker"); do
      echo "      $(tr '\0' ' ' <"/proc/$forked/cmdline" | cut -c1-50) cpu_s $(cpu "$forked")"
    done
  done
  if [[ "$(cat "/proc/$child/comm")" == java ]]; then
    for t in /proc/"$child"/task/*; do
      echo "$(tr ' ' '_' <"$t/comm") $(awk '{print ($14+$15)/100}' "$t/stat")"
    done | awk '{n=$1; gsub(/[0-9]+$/, "", n); a[n]+=$2} END {for (k in a) if (a[k] >= 0.2) print "      jvm thread", k, a[k]}' | sort -k4 -n -r
  fi
done
echo "  service (python) cpu_s $(cpu "$pid")"
kill "$pid"
wait "$pid" 2>/dev/null || true
