#!/usr/bin/env bash
# Issue 9 case 9: run the two-process torchrun test N times in a row (default 20) while other
# test files run beside it, and stop at the first failure or hang. Prints the count that passed.
#   bash tests/soak_ddp.sh [N]
set -u
cd "$(dirname "$0")/.."
N=${1:-20}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
set -m  # the load loop gets its own process group, so the trap ends it and its pytest together
( while true; do $PY -m pytest tests/test_data.py tests/test_caches.py -q -p no:cacheprovider >/dev/null 2>&1; done ) &
LOAD=$!
trap 'kill -- -$LOAD 2>/dev/null' EXIT
passed=0
for i in $(seq 1 "$N"); do
  start=$(date +%s)
  if timeout 400 $PY -m pytest tests/test_train.py -q -p no:cacheprovider \
       -k test_torchrun_gloo_two_processes_match_one >/tmp/soak_ddp_last.log 2>&1; then
    passed=$((passed + 1))
    echo "run $i: passed in $(( $(date +%s) - start )) s"
  else
    echo "run $i: FAILED or hung after $(( $(date +%s) - start )) s (log: /tmp/soak_ddp_last.log)"
    break
  fi
done
echo "passed $passed of $N consecutive runs with tests/test_data.py + tests/test_caches.py running beside"
