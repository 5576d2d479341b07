#!/bin/sh
# The library's parts call one another in one direction only: from the
# static archive's objects, every name a part uses from another part
# gives an edge, and no path may lead back.  A file directly in lib/ is
# one part; the files of a folder under lib/ (lib/alloc/) are one part
# (meson names their objects folder_file.c.o).
set -eu
nm -A "$1" | awk '
	{
		split($1, f, ":"); obj = f[2]; sub(/\.c\.o$/, "", obj)
		part = obj; sub(/_.*/, "/", part)
		if ($2 == "U") use[part, $3] = 1
		else if ($(NF-1) ~ /^[TDBRC]$/) def[$NF] = part
		parts[part] = 1
	}
	END {
		for (k in use) {
			split(k, u, SUBSEP)
			p = def[u[2]]
			if (p != "" && p != u[1]) {
				if (!((u[1], p) in edge)) names[u[1], p] = u[2]
				else names[u[1], p] = names[u[1], p] " " u[2]
				edge[u[1], p] = 1
			}
		}
		# Transitive closure: few parts, so Floyd-Warshall is fine.
		for (k in parts) for (i in parts) for (j in parts)
			if ((i, k) in edge && (k, j) in edge) reach[i, j] = 1
		for (e in edge) reach[e] = 1
		bad = 0
		for (e in edge) {
			split(e, ij, SUBSEP)
			if ((ij[2], ij[1]) in reach) {
				printf "cycle: %s -> %s (%s) and back\n", ij[1],
				       ij[2], names[e]
				bad = 1
			}
		}
		n = 0; for (p in parts) n++
		if (bad) exit 1
		printf "ok: %d parts, no cycle\n", n
	}'
