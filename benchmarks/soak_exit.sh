#!/usr/bin/env bash
# Soak for "no abort at exit" (docs/design.md, Teardown): run the two tests whose ranks once died
# of SIGABRT at exit N times in a row, then search every rank's output for the abort.
#   bash benchmarks/soak_exit.sh 20            (put load beside it, e.g. `make test` in a second checkout)
# Each run has its own pytest basetemp and no cache, so a second pytest beside it does not clash.
# One line per run (status, seconds, load average); the last line counts passes and aborts.
# Exit status 0 only if every run passed and no output shows an abort.
set -uo pipefail
N=${1:-20}
cd "$(dirname "$0")/.."
OUT=${SOAK_DIR:-$(mktemp -d /tmp/kmervae-soak-exit.XXXXXX)}
mkdir -p "$OUT"
export KMERVAE_CHILD_LOG="$OUT/children.log"  # every torchrun's output, as tests/test_train.py writes it
TESTS=(tests/test_step_graph.py::test_under_ddp_a_replayed_step_averages_gradients_like_ddp
       tests/test_train.py::test_two_processes_train_like_one)
passed=0
for i in $(seq 1 "$N"); do
  start=$(date +%s)
  .venv/bin/python -m pytest -q -p no:cacheprovider --basetemp="$OUT/run$i" "${TESTS[@]}" > "$OUT/run$i.log" 2>&1
  status=$?
  [[ $status -eq 0 ]] && passed=$((passed + 1))
  echo "run $i: status $status, $(( $(date +%s) - start )) s, load $(cut -d' ' -f1-3 /proc/loadavg)"
done
aborts=$(cat "$OUT"/run*.log "$KMERVAE_CHILD_LOG" | grep -c -e "terminate called" -e SIGABRT -e "exitcode  : -6")
torchruns=$(grep -c '^\$ torchrun' "$KMERVAE_CHILD_LOG")
echo "passed $passed/$N runs; $torchruns torchrun jobs, lines showing an abort: $aborts; logs in $OUT"
[[ $passed -eq $N && $aborts -eq 0 ]]
