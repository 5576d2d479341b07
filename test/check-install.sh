#!/bin/sh
# Install into a temporary prefix and build a program against the .pc file.
set -eu
build=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
DESTDIR="$tmp" meson install -C "$build" --quiet --no-rebuild >/dev/null
pc=$(find "$tmp" -name osslproc.pc)
[ -n "$pc" ] || { echo "osslproc.pc was not installed"; exit 1; }
PKG_CONFIG_PATH="$(dirname "$pc")"
PKG_CONFIG_SYSROOT_DIR="$tmp"
export PKG_CONFIG_PATH PKG_CONFIG_SYSROOT_DIR
flags=$(pkg-config --cflags --libs osslproc)
cat >"$tmp/prog.c" <<'EOC'
#include <osslproc.h>
int
main(void)
{
	struct ossl_proc_stats st = { .size = sizeof(st) };

	if (ossl_proc_init(NULL) != 0 || ossl_proc_get_stats(&st) != 0)
		return 1;
	if (st.allocator != OSSL_PROC_ALLOC_TRACKED || !st.allocs)
		return 2;
	return ossl_proc_teardown() < 0 ? 3 : 0;
}
EOC
# shellcheck disable=SC2086
cc -o "$tmp/prog" "$tmp/prog.c" $flags
libdir=$(dirname "$(dirname "$pc")")
LD_LIBRARY_PATH="$libdir" "$tmp/prog"
# The static archive that plugins vendor is installed too.
[ -f "$libdir/libosslproc.a" ] || { echo "libosslproc.a missing"; exit 1; }
echo "ok: built and ran a program with: $flags"
