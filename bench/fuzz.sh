#!/usr/bin/env bash
# Run every fuzz target of bench/fuzz.py for a given time (issue 17: fuzzing as a routine).
#
#   bench/fuzz.sh SECONDS [TARGET...]     # default: all six targets, SECONDS each
#   CORPUS=fuzz-corpus bench/fuzz.sh 600  # keep and grow a corpus between runs
#
# Seeds come from `python bench/fuzz.py seeds` when the corpus folder is new. A finding
# (crash-/timeout-/oom-<sha1> written by libFuzzer into $ARTIFACTS, default ./fuzz-findings)
# makes the script exit 1 after all targets ran; each finding becomes a regression test.
# Needs atheris (pip install -e ".[fuzz]"); without it the script says so and exits 0
# unless REQUIRE_ATHERIS=1.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
SECONDS_EACH=${1:?usage: bench/fuzz.sh SECONDS [TARGET...]}
shift
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(torchfile checkpoint packed mtcnn image bindings)
if ! "$PY" -c "import atheris" 2>/dev/null; then
    echo "fuzz: atheris is not installed (pip install -e \".[fuzz]\"): fuzzing skipped"
    [ "${REQUIRE_ATHERIS:-0}" = 1 ] && exit 1 || exit 0
fi
if [ -z "${CORPUS:-}" ]; then
    CORPUS=$(mktemp -d "${TMPDIR:-/tmp}/glae-fuzz.XXXXXX")
    trap 'rm -rf "$CORPUS"' EXIT
fi
ARTIFACTS=$(mkdir -p "${ARTIFACTS:-fuzz-findings}" && cd "${ARTIFACTS:-fuzz-findings}" && pwd)
[ -d "$CORPUS/packed" ] || "$PY" "$ROOT/bench/fuzz.py" seeds "$CORPUS" >/dev/null
status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "$CORPUS/$t"
    log="$ARTIFACTS/$t.log"
    "$PY" "$ROOT/bench/fuzz.py" "$t" "$CORPUS/$t" -max_total_time="$SECONDS_EACH" -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="$ARTIFACTS/$t-" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    runs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    if grep -q "^$t: skipped" "$log"; then
        echo "fuzz: $(grep -m1 "^$t: skipped" "$log")"
    elif [ $rc -ne 0 ]; then
        status=1
        echo "fuzz: $t FOUND SOMETHING (exit $rc): $(grep -m1 -E '==ERROR|Uncaught|Error|Exception' "$log"); see $log"
    else
        echo "fuzz: $t clean: ${runs:-?}s, ${cov:-cov ?}"
    fi
done
exit $status
