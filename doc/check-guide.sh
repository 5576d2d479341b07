#!/bin/sh
# Check that the integration guide shows the code the build compiles: every
# code block that follows a <!-- file: guide/X.c --> line equals doc/guide/X.c,
# every file in doc/guide/ is shown, and every block names a file that exists.
#
#     check-guide.sh doc/integrating.md doc/guide
set -eu
md=$1
guide=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

# Write each marked block to $tmp/blocks/X.c; list the names in order.
mkdir "$tmp/blocks"
awk -v dir="$tmp/blocks" '
	function bad(msg) { print FILENAME ":" FNR ": " msg; err = 1 }
	state == 2 && /^```/ { close(out); state = 0; next }
	state == 2 { print > out; next }
	state == 1 && !/^```/ {
		bad("no code block after the file marker"); state = 0
	}
	state == 1 {
		print name > (dir "/.names")
		out = dir "/" name; printf "" > out
		state = 2; next
	}
	/^<!-- file: guide\/[A-Za-z0-9._-]+ -->$/ {
		name = $3; sub(/^guide\//, "", name)
		if (name in seen) bad("guide/" name " is shown twice")
		seen[name] = 1
		state = 1; next
	}
	/<!-- file:/ { bad("malformed file marker: " $0) }
	END {
		if (state) bad("the last code block is not closed")
		exit err
	}' "$md" || fail=1

touch "$tmp/blocks/.names"
while read -r name; do
	if [ ! -f "$guide/$name" ]; then
		echo "$md shows guide/$name, which does not exist"
		fail=1
	elif ! diff -u "$tmp/blocks/$name" "$guide/$name" >"$tmp/diff"; then
		echo "the guide/$name block of $md differs from the file" \
		     "(- the guide's block, + the file):"
		cat "$tmp/diff"
		fail=1
	fi
done <"$tmp/blocks/.names"

n=0
for f in "$guide"/*.c; do
	[ -e "$f" ] || continue
	n=$((n + 1))
	name=$(basename "$f")
	if [ ! -f "$tmp/blocks/$name" ]; then
		echo "guide/$name is not shown in $md"
		fail=1
	fi
done

[ "$fail" -eq 0 ] || exit 1
echo "ok: $md shows the $n files of $guide as they are"
