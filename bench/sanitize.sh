#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run of the test suite (issue 17).
#
#   bench/sanitize.sh                      # the whole suite
#   bench/sanitize.sh tests/test_packed.py -k resume   # any pytest arguments
#   KEEP=1 bench/sanitize.sh ...           # keep the build folder (printed)
#
# Copies the working tree (tracked and untracked, not ignored files) to a temporary
# folder, builds glae._C there with GLAE_SANITIZE=1 GLAE_CUDA=0 (-fsanitize=address,
# undefined, -O1 -g; no CUDA: the sanitizers check the C engine), and runs pytest in that
# copy with libasan preloaded (CPython itself is not instrumented). A report from either
# sanitizer aborts the run (halt_on_error; UBSan is built with -fno-sanitize-recover);
# leak checking is off for the interpreter (LeakSanitizer would report CPython's own
# never-freed objects).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
CC=${CC:-gcc}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/glae-sanitize.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then echo "build folder: $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi
(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$WORK")
cd "$WORK"
echo "sanitize: building in $WORK ($($CC --version | head -1))"
GLAE_SANITIZE=1 GLAE_CUDA=0 "$PY" setup.py -q build_ext --inplace 2>&1 | grep -v -e '^$' -e _BetaConfiguration -e 'warnings.warn' || true
test -n "$(ls glae/_C*.so 2>/dev/null)" || { echo "sanitize: the build failed"; exit 1; }
ASAN=$($CC -print-file-name=libasan.so)
test -f "$ASAN" || { echo "sanitize: libasan.so not found by $CC"; exit 1; }
export LD_PRELOAD="$ASAN${LD_PRELOAD:+ $LD_PRELOAD}"
# detect_leaks=0: CPython's objects alive at exit are not glae's leaks;
# allocator_may_return_null=1: tests that ask for impossible sizes expect MemoryError;
# detect_odr_violation=0: numpy / OpenBLAS symbols loaded twice are not ours
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1:detect_odr_violation=0:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
export GLAE_SANITIZED=1
"$PY" -c "import glae, glae._C as C; assert glae.__file__.startswith('$WORK'), glae.__file__; print('sanitize: glae', glae.__file__, C.BUILD_INFO.get('sanitize'))"
start=$(date +%s)
"$PY" -m pytest -q -p no:cacheprovider "${@:-tests}"
echo "sanitize: clean ($(( $(date +%s) - start )) s of tests) on $(date -u +%Y-%m-%dT%H:%MZ)"
