#!/bin/sh
# Check the man pages as they are installed: install the build into a
# temporary directory, then
#
#  1. the pages installed are the sources of doc/man (NAME.S.md gives
#     manS/NAME.S) and their aliases (.so pages), nothing else;
#  2. every name in a page's NAME section has an installed page, and an
#     alias is named in the NAME section of the page it points to;
#  3. every function of the version script has a page that man finds
#     under the function's name and whose NAME section names it;
#  4. man(1) renders every page, aliases included, without a warning.
#
#     check-man.sh osslproc.sym doc/man build-dir mandir
#
# NAME sections are read with lexgrog(1), as mandb indexes them for
# whatis and apropos.  man exits 0 after troff warnings, so anything on
# stderr is a failure.
set -eu
sym=$1
src=$2
build=$3
mandir=$4
man=${MAN:-man}
lexgrog=${LEXGROG:-lexgrog}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

DESTDIR="$tmp/dest" meson install -C "$build" --quiet --no-rebuild >/dev/null
root="$tmp/dest$mandir"
[ -d "$root" ] || { echo "no man pages were installed in $mandir"; exit 1; }
cd "$root"

# An alias page's target ("man3/x.3"), or nothing for a page.
so_target() {
	sed -n '1s/^\.so[[:space:]]\{1,\}//p' "$1"
}

# The names a page's NAME section gives, one a line.
names() {
	"$lexgrog" "$1" 2>/dev/null |
		sed -n 's/^[^:]*: "\(.*\) - .*"$/\1/p'
}

# 1. Installed pages and aliases against the sources.
find . -type f | sed 's|^\./||' | sort >"$tmp/installed"
: >"$tmp/pages"
for md in "$src"/*.md; do
	page=$(basename "$md" .md)
	echo "man${page##*.}/$page" >>"$tmp/pages"
done
while read -r p; do
	if [ ! -f "$p" ]; then
		echo "$p: not installed (its source is $src/${p#*/}.md)"
		fail=1
	elif [ -n "$(so_target "$p")" ]; then
		echo "$p: installed as an alias, but $src has its source"
		fail=1
	fi
done <"$tmp/pages"
while read -r p; do
	grep -qx "$p" "$tmp/pages" && continue
	target=$(so_target "$p")
	if [ -z "$target" ]; then
		echo "$p: installed, but $src has no source ${p#*/}.md"
		fail=1
	elif ! grep -qx "$target" "$tmp/pages"; then
		echo "$p: alias of $target, which is not a page"
		fail=1
	elif ! names "$target" | grep -qx "$(basename "$p" ".${p##*.}")"; then
		echo "$p: not in the NAME section of $target"
		fail=1
	fi
done <"$tmp/installed"

# 2. Every name in a NAME section has a page of its own.
while read -r p; do
	[ -f "$p" ] || continue
	names "$p" >"$tmp/names"
	if [ ! -s "$tmp/names" ]; then
		echo "$p: lexgrog finds no NAME section"
		fail=1
	fi
	while read -r n; do
		alias="${p%/*}/$n.${p##*.}"
		if [ ! -f "$alias" ]; then
			echo "$p: names $n, which has no page $alias"
			fail=1
		fi
	done <"$tmp/names"
done <"$tmp/pages"

# 3. Every exported function, as man looks it up.
funcs=$(sed -n 's/^[[:space:]]*\(ossl_proc_[a-z_0-9]*\);.*/\1/p' "$sym")
[ -n "$funcs" ] || { echo "no functions found in $sym"; exit 1; }
nfuncs=0
for f in $funcs; do
	nfuncs=$((nfuncs + 1))
	if ! found=$("$man" -M "$root" -w 3 "$f" 2>/dev/null); then
		echo "$f: man finds no page for it"
		fail=1
	elif ! names "man3/$f.3" | grep -qx "$f"; then
		echo "$f: not in the NAME section of ${found#"$root"/}"
		fail=1
	fi
done

# 4. Each page renders, without warnings, to some text.
npages=0
while read -r p; do
	npages=$((npages + 1))
	rc=0
	MANWIDTH=80 LC_ALL=C.UTF-8 "$man" --warnings -E UTF-8 -l "$p" \
		>"$tmp/out" 2>"$tmp/err" || rc=$?
	if [ "$rc" -ne 0 ] || [ -s "$tmp/err" ]; then
		echo "$p: man exited with $rc:"
		cat "$tmp/err"
		fail=1
	elif [ "$(wc -l <"$tmp/out")" -lt 5 ]; then
		echo "$p: rendered to almost nothing"
		fail=1
	fi
done <"$tmp/installed"

[ "$fail" -eq 0 ] || exit 1
echo "ok: $npages pages ($(wc -l <"$tmp/pages") sources) render without" \
     "warnings; $nfuncs functions documented"
