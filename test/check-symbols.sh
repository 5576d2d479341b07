#!/bin/sh
# The shared library exports exactly the symbols of the version script.
set -eu
lib=$1
sym=$2
exported=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVW]$/ { print $3 }' |
	sed 's/@.*//' | grep -v '^OSSL_PROC_' | sort -u)
listed=$(sed -n 's/^[[:space:]]*\(ossl_proc_[a-z_0-9]*\);.*/\1/p' "$sym" | sort -u)
if [ "$exported" != "$listed" ]; then
	echo "exported symbols differ from $sym:"
	diff -u /dev/fd/3 /dev/fd/4 3<<EOF3 4<<EOF4 || true
$listed
EOF3
$exported
EOF4
	exit 1
fi
# Every symbol carries the release node's version.
if nm -D --defined-only "$lib" | grep ' ossl_proc_' | grep -qv '@@OSSL_PROC_'; then
	echo "unversioned export in $lib"
	exit 1
fi
echo "ok: $(echo "$exported" | wc -l) symbols, all in $sym"
