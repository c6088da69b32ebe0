#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run of the test suite (issue 17).
#
#   bench/sanitize.sh                      # the whole suite
#   bench/sanitize.sh tests/test_packed.py -k resume   # any pytest arguments
#   bench/sanitize.sh --leaks              # LeakSanitizer on the long-running paths
#   KEEP=1 bench/sanitize.sh ...           # keep the build folder (printed)
#   REUSE=/tmp/glae-sanitize.XXXX/glae bench/sanitize.sh ...   # run again in a kept folder
#
# Copies the working tree (tracked and untracked, not ignored files) to a temporary
# folder, builds glae._C there with GLAE_SANITIZE=1 GLAE_CUDA=0 (-fsanitize=address,
# undefined, -O1 -g; no CUDA: the sanitizers check the C engine), and runs pytest in that
# copy with libasan preloaded (CPython itself is not instrumented). A report from either
# sanitizer aborts the run (halt_on_error; UBSan is built with -fno-sanitize-recover);
# leak checking is off for the test suite (LeakSanitizer would report CPython's own
# never-freed objects); --leaks runs bench/leak_check.py (the Loader over many epochs,
# training with checkpoints, packed files, MTCNN) with it on, and fails on any leak
# whose allocation stack passes through glae's C sources.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
CC=${CC:-gcc}
if [ -n "${REUSE:-}" ]; then  # a folder a KEEP=1 run left: its build, the tests copied then
    WORK=$REUSE
    cd "$WORK"
    rm -rf reports
else
    # the copy sits in a folder of its own beside a link to ../shared (the MTCNN weights
    # and data the tests find there, tests/conftest.py)
    TOP=$(mktemp -d "${TMPDIR:-/tmp}/glae-sanitize.XXXXXX")
    WORK="$TOP/glae"
    mkdir "$WORK"
    [ -d "$ROOT/../shared" ] && ln -s "$(cd "$ROOT/../shared" && pwd)" "$TOP/shared"
    if [ "${KEEP:-0}" = 1 ]; then echo "build folder: $WORK"; else trap 'rm -rf "$TOP"' EXIT; fi
    (cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$WORK")
    cd "$WORK"
    echo "sanitize: building in $WORK ($($CC --version | head -1))"
    GLAE_SANITIZE=1 GLAE_CUDA=0 "$PY" setup.py -q build_ext --inplace 2>&1 | grep -v -e '^$' -e _BetaConfiguration -e 'warnings.warn' || true
fi
test -n "$(ls glae/_C*.so 2>/dev/null)" || { echo "sanitize: the build failed"; exit 1; }
ASAN=$($CC -print-file-name=libasan.so)
test -f "$ASAN" || { echo "sanitize: libasan.so not found by $CC"; exit 1; }
# libstdc++ right after libasan: ASan's __cxa_throw interceptor must find it at start-up
# (matplotlib's C++ extension throws while importing)
STDCXX=$($CC -print-file-name=libstdc++.so)
export LD_PRELOAD="$ASAN${STDCXX:+ $STDCXX}${LD_PRELOAD:+ $LD_PRELOAD}"
# detect_leaks=0: CPython's objects alive at exit are not glae's leaks;
# allocator_may_return_null=1: tests that ask for impossible sizes expect MemoryError;
# detect_odr_violation=0: numpy / OpenBLAS symbols loaded twice are not ours
# log_path: pytest captures the test's stderr, and an aborting process takes that with it
mkdir -p "$WORK/reports"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1:detect_odr_violation=0:log_path=$WORK/reports/asan:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$WORK/reports/ubsan:${UBSAN_OPTIONS:-}"
reports() {  # errors fail the run; the allocator's warnings (a test asking for 4 TiB) do not
    if ls "$WORK"/reports/* >/dev/null 2>&1; then
        echo "sanitize: reports:"
        cat "$WORK"/reports/*
        ! grep -q -e "ERROR: " -e "runtime error" "$WORK"/reports/*
    fi
}
export GLAE_SANITIZED=1
"$PY" -c "import glae, glae._C as C; assert glae.__file__.startswith('$WORK'), glae.__file__; print('sanitize: glae', glae.__file__, C.BUILD_INFO.get('sanitize'))"
start=$(date +%s)
if [ "${1:-}" = "--leaks" ]; then
    logs="$WORK/lsan"
    mkdir -p "$logs"
    ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=1:log_path=$logs/report" LSAN_OPTIONS="report_objects=0" \
        "$PY" bench/leak_check.py || true
    "$PY" - "$logs" <<'PYEOF'
import glob, re, sys
ours, other = [], 0
for f in glob.glob(sys.argv[1] + "/report*"):
    for block in re.split(r"\n(?=(?:Direct|Indirect) leak of )", open(f).read()):
        if not re.match(r"(Direct|Indirect) leak of", block):
            continue
        if "/csrc/" in block:
            ours.append(block.strip())
        else:
            other += 1
    text = open(f).read()
    if "ERROR: AddressSanitizer" in text or "runtime error" in text:
        ours.append(text[:3000])  # not a leak: a memory or UB error while running
print(f"sanitize --leaks: {len(ours)} leak(s) through glae's C code, {other} elsewhere (CPython, NumPy: ignored)")
for b in ours[:10]:
    print(b[:3000], "\n")
sys.exit(1 if ours else 0)
PYEOF
    echo "sanitize: no leak in glae's C code ($(( $(date +%s) - start )) s) on $(date -u +%Y-%m-%dT%H:%MZ)"
    exit 0
fi
rc=0
"$PY" -m pytest -q -p no:cacheprovider "${@:-tests}" || rc=$?
reports || rc=1
[ $rc = 0 ] || { echo "sanitize: FAILED (exit $rc)"; exit $rc; }
echo "sanitize: clean ($(( $(date +%s) - start )) s of tests) on $(date -u +%Y-%m-%dT%H:%MZ)"
