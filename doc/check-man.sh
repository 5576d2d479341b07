#!/bin/sh
# Check the man pages: meson installs exactly the pages of doc/man, every
# function of the version script has a page whose NAME names it, and
# man(1) renders every page, aliases included, without a single warning.
#
#     check-man.sh osslproc.sym doc/man page...
#
# man exits 0 after troff warnings, so anything on stderr is a failure.
set -eu
sym=$1
src=$2
shift 2
man=${MAN:-man}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

# 1. The pages meson installs are the pages in the directory.
for p in "$@"; do basename "$p"; done | sort >"$tmp/listed"
(cd "$src" && ls) | sort >"$tmp/present"
if ! diff -u "$tmp/listed" "$tmp/present" >"$tmp/diff"; then
	echo "doc/meson.build's man_pages and $src differ (- listed, + present):"
	cat "$tmp/diff"
	fail=1
fi

# .so requests name man3/page.3: render from a tree with that layout.
mkdir "$tmp/man3" "$tmp/man7"
for p in "$@"; do
	cp "$p" "$tmp/man${p##*.}/"
done

# 2. Every exported function has a page naming it in NAME (following an
# alias to its target).
funcs=$(sed -n 's/^[[:space:]]*\(ossl_proc_[a-z_0-9]*\);.*/\1/p' "$sym")
[ -n "$funcs" ] || { echo "no functions found in $sym"; exit 1; }
nfuncs=0
for f in $funcs; do
	nfuncs=$((nfuncs + 1))
	page="$tmp/man3/$f.3"
	if [ ! -f "$page" ]; then
		echo "$f: no man page $src/$f.3"
		fail=1
		continue
	fi
	target=$(sed -n 's/^\.so[[:space:]]\{1,\}//p' "$page")
	if [ -n "$target" ]; then
		page="$tmp/$target"
		if [ ! -f "$page" ]; then
			echo "$f.3: .so target $target does not exist"
			fail=1
			continue
		fi
	fi
	if ! sed -n '/^\.SH NAME/,/^\.SH/p' "$page" | grep -qw "$f"; then
		echo "$f: not in the NAME section of $(basename "$page")"
		fail=1
	fi
done

# 3. Each page renders, without warnings, to some text.
cd "$tmp"
npages=0
for p in man3/*.3 man7/*.7; do
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
done

[ "$fail" -eq 0 ] || exit 1
echo "ok: $npages pages render without warnings; $nfuncs functions documented"
