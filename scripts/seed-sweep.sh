#!/usr/bin/env bash
# Run every test file that trains a model under several TRACEMARK_TEST_SEED values and
# print a pass/fail table. A model trained during the tests is another model on another
# CPU (other float kernels); a test that passes for one seed only is tuned to one model.
#
#   bash scripts/seed-sweep.sh            # seeds 1 2 3
#   bash scripts/seed-sweep.sh 1 2 3 4 5
#
# Each seed trains the session's models again (about 5 minutes a seed on 2 cores).
# Logs: .seed-sweep/seed-N.log. Exit status 1 if any file failed under any seed.
set -uo pipefail
cd "$(dirname "$0")/.."

FILES=(
  tests/test_tracker_audit.py
  tests/test_isotope_audit.py
  tests/test_cli.py
  tests/test_http_audit.py
  tests/test_serve.py
  tests/test_ubw_cli.py
  tests/test_training.py
  tests/test_mlserver.py
  tests/test_evaluate.py
  tests/test_demos.py
  tests/test_size.py
  tests/test_answer_book.py
  tests/test_countermeasures.py
)
SEEDS=("$@")
[ ${#SEEDS[@]} -gt 0 ] || SEEDS=(1 2 3)
PYTHON=.venv/bin/python
[ -x "$PYTHON" ] || { echo "run bash scripts/setup.sh first" >&2; exit 2; }
mkdir -p .seed-sweep

declare -A RESULT
failed=0
for seed in "${SEEDS[@]}"; do
  log=.seed-sweep/seed-$seed.log
  echo "seed $seed: ${#FILES[@]} files (log: $log)"
  start=$SECONDS
  # One pytest run per seed: the trained session models are shared by every file; the
  # `long` tests (size tests, demos) are part of the sweep.
  TRACEMARK_TEST_SEED=$seed "$PYTHON" -m pytest -q -p no:cacheprovider -rA \
    -m "long or not long" "${FILES[@]}" \
    > "$log" 2>&1
  for f in "${FILES[@]}"; do
    if grep -qE "^(FAILED|ERROR) $f" "$log"; then
      RESULT[$seed,$f]="FAIL"
      failed=1
    elif grep -qE "^PASSED $f" "$log"; then
      RESULT[$seed,$f]="pass"
    else
      RESULT[$seed,$f]="none"  # no test of the file ran: also a failure
      failed=1
    fi
  done
  echo "  $(tail -n 1 "$log") ($((SECONDS - start)) s)"
done

printf '\n| test file |'
for seed in "${SEEDS[@]}"; do printf ' seed %s |' "$seed"; done
printf '\n|---|'
for _ in "${SEEDS[@]}"; do printf -- '---|'; done
printf '\n'
for f in "${FILES[@]}"; do
  printf '| %s |' "$f"
  for seed in "${SEEDS[@]}"; do printf ' %s |' "${RESULT[$seed,$f]}"; done
  printf '\n'
done
if [ "$failed" -ne 0 ]; then
  echo; echo "failures: see the FAILED lines in .seed-sweep/seed-*.log"
fi
exit "$failed"
