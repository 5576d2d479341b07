#!/bin/sh
# Another meson project uses osslproc as a subproject, through the
# dependency that meson.override_dependency() provides.
set -eu
src=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/subprojects"
# A copy without build directories, as a wrap or a vendored tree would be.
tar -C "$src" --exclude='./build*' --exclude=./.git -cf - . |
	(mkdir "$tmp/subprojects/osslproc" && tar -C "$tmp/subprojects/osslproc" -xf -)
cat >"$tmp/meson.build" <<'EOM'
project('consumer', 'c', meson_version: '>= 1.0')
subproject('osslproc', default_options: ['tests=disabled', 'docs=disabled'])
executable('consumer', 'consumer.c', dependencies: dependency('osslproc'))
EOM
cat >"$tmp/consumer.c" <<'EOC'
#include <osslproc.h>
int
main(void)
{
	struct ossl_proc_stats st = { .size = sizeof(st) };

	if (ossl_proc_init(NULL) != 0 || ossl_proc_get_stats(&st) != 0)
		return 1;
	return st.allocator == OSSL_PROC_ALLOC_TRACKED ? 0 : 2;
}
EOC
meson setup "$tmp/build" "$tmp" >"$tmp/setup.log" 2>&1 || {
	cat "$tmp/setup.log"; exit 1; }
meson compile -C "$tmp/build" >/dev/null
"$tmp/build/consumer"
echo "ok: a meson project built and ran against osslproc as a subproject"
