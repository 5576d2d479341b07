#!/bin/sh
# include/osslproc.h compiled on its own, with warnings as errors:
#   check-header.sh c99|c++11 SOURCE INCLUDE_DIR OPENSSL_INCLUDE_DIR
# with the compiler command in $CC (C) or $CXX (C++; empty: skip, 77).
set -eu
lang=$1
src=$2
inc=$3
ossl=$4
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# OpenSSL's headers are the system's: their own warnings are not ours.
flags="-pedantic -Werror -Wall -Wextra -I$inc -isystem $ossl"
case $lang in
c*+*)
	if [ -z "${CXX:-}" ]; then
		echo "no C++ compiler: the C++ check is skipped"
		exit 77
	fi
	$CXX -x c++ -std="$lang" $flags -c "$src" -o "$out/header.o"
	;;
*)
	$CC -x c -std="$lang" $flags -c "$src" -o "$out/header.o"
	;;
esac
echo "ok: osslproc.h alone as $lang"
