#!/usr/bin/env bash
# Plugins unloaded after registering with OpenSSL (test/preload/unload):
# each crashes its host with SIGSEGV (or SIGBUS) without osslproc-run,
# and exits 0 under it: with libosslproc-audit.so (the scopes close
# before the unmapping) and without (the dlclose() fallback).  Then
# load/unload cycles, each registration repeated, must leave no scope
# open and undo the same number of registrations each time.
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
	if "$run" "$host" "$plug" >"$tmp/out" 2>&1
	then ok "$name: exit 0 under osslproc-run"
	else bad "$name: under osslproc-run: $(cat "$tmp/out")"; fi
	if OSSLPROC_AUDIT_LIB=/nonexistent "$run" "$host" "$plug" >"$tmp/out" 2>&1
	then ok "$name: exit 0 under osslproc-run without LD_AUDIT"
	else bad "$name: without LD_AUDIT: $(cat "$tmp/out")"; fi
	OSSLPROC_DISABLE=unload "$run" "$host" "$plug" >"$tmp/out" 2>&1
	rc=$?
	if died_of_segv "$rc"; then ok "$name: OSSLPROC_DISABLE=unload turns it off"
	else bad "$name: OSSLPROC_DISABLE=unload: exit $rc: $(cat "$tmp/out")"; fi
done

# cycles NAME PLUGIN: 50 load/unload rounds, each registration made 20
# times.  Every close undoes the same number of registrations, leaves no
# implicit scope open, and the resident set grows by less than 1 MiB
# from round 10 to round 50.
cycles() {
	local log=$tmp/cycles-$1 counts growth
	if ! OSSLPROC_LOG=$log OSSLPROC_LOG_LEVEL=debug "$run" "$host" "$2" \
	     50 20 >"$tmp/out" 2>&1; then
		bad "$1 cycles: $(cat "$tmp/out")"; return
	fi
	counts=$(grep -o 'closed ([0-9]* registrations undone)' "$log" |
		 sort | uniq -c)
	growth=$(sed -n 's/^rss-growth-kb //p' "$tmp/out")
	if [ "$(grep -c ', 0 implicit scopes open' "$log")" -eq 50 ] &&
	   [ "$(echo "$counts" | wc -l)" -eq 1 ] &&
	   [ "${growth:-99999}" -lt 1024 ]
	then ok "$1 cycles: 50 closes, each:$counts; 0 scopes open; rss +${growth} kB"
	else bad "$1 cycles: closes: $counts; rss +${growth} kB; $(tail -5 "$log")"; fi
}
for plug in "$@"; do
	name=$(basename "$plug" .so)
	name=${name#libunload-}
	case $name in
	info|dep|strings|exdata|servername|hello|certcb|status|sslinfo|ssl|psk)
		cycles "$name" "$plug" ;;
	esac
done
exit $failed
