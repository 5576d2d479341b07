#!/usr/bin/env bash
# A callback in flight in another thread while its plugin is dlclose()d
# (test/preload/unload/mt.c, mt-host.c): without osslproc-run the
# callback runs on in the unmapped object (SIGSEGV); under it, with
# LD_AUDIT, dlclose() returns only after the callback did (exit 0).
# Without LD_AUDIT the scope closes after the unmapping: the window
# osslproc-run(1) documents, asserted so that the page stays true.
#   test-unload-mt.sh OSSLPROC-RUN PRELOAD-LIB HOST PLUGIN
set -uo pipefail
run=$1
export OSSLPROC_PRELOAD_LIB=$2
host=$3
plug=$4
ulimit -c 0
out=$(mktemp)
trap 'rm -f "$out"' EXIT
failed=0

ok() { echo "ok - $*"; }
bad() { echo "FAIL - $*"; failed=1; }
died_of_segv() { [ "$1" -eq 139 ] || [ "$1" -eq 135 ]; }

"$host" "$plug" >"$out" 2>&1
rc=$?
if died_of_segv "$rc"; then ok "mt: crashes without osslproc-run"
else bad "mt: without osslproc-run, exit $rc, not SIGSEGV: $(cat "$out")"; fi

if "$run" "$host" "$plug" >"$out" 2>&1
then ok "mt: callback in flight finished before dlclose() returned"
else bad "mt: under osslproc-run, exit $?: $(cat "$out")"; fi

OSSLPROC_AUDIT_LIB=/nonexistent "$run" "$host" "$plug" >"$out" 2>&1
rc=$?
if died_of_segv "$rc"; then ok "mt: without LD_AUDIT, the documented window (SIGSEGV)"
else bad "mt: without LD_AUDIT, exit $rc: the man page's window is stale? $(cat "$out")"; fi
exit $failed
