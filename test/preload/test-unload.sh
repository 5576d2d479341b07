#!/usr/bin/env bash
# Plugins unloaded after registering with OpenSSL (test/preload/unload):
# each crashes its host with SIGSEGV (or SIGBUS) without osslproc-run,
# and exits 0 under it.
#   test-unload.sh OSSLPROC-RUN PRELOAD-LIB HOST OPENSSL-VERSION PLUGIN...
set -uo pipefail
run=$1
export OSSLPROC_PRELOAD_LIB=$2
host=$3
version=$4
shift 4
ulimit -c 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0

ok() { echo "ok - $*"; }
bad() { echo "FAIL - $*"; failed=1; }

# died_of_segv RC: 139 (SIGSEGV) or 135 (SIGBUS).
died_of_segv() { [ "$1" -eq 139 ] || [ "$1" -eq 135 ]; }

for plug in "$@"; do
	name=$(basename "$plug" .so)
	name=${name#libunload-}
	if [ "$name" = atexit ] && [ "${version%%.*}" -ge 4 ]; then
		echo "ok - $name: skipped, OpenSSL $version has no OPENSSL_atexit"
		continue
	fi
	"$host" "$plug" >"$tmp/out" 2>&1
	rc=$?
	if died_of_segv "$rc"; then ok "$name: crashes without osslproc-run"
	else bad "$name: without osslproc-run, exit $rc, not SIGSEGV: $(cat "$tmp/out")"; fi
done
exit $failed
