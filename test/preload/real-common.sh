# Sourced by the real-program tests: a throwaway PKI, package installs,
# report checks.  $1 of the test: osslproc-run; $2: the preload.
set -uo pipefail
run=$1
export OSSLPROC_PRELOAD_LIB=$2
tmp=$(mktemp -d)
chmod 755 "$tmp"
cleanup_hooks=()
cleanup() {
	for h in "${cleanup_hooks[@]}"; do eval "$h"; done
	rm -rf "$tmp"
}
trap cleanup EXIT
failed=0
# The openssl command line tool, on the system's libraries whatever the
# test's LD_LIBRARY_PATH (scripts/test-matrix points it at an OpenSSL
# build without a configuration file): it only makes the test PKI.
ossl_cli() { env -u LD_LIBRARY_PATH openssl "$@"; }
ok() { echo "ok - $*"; }
bad() { echo "FAIL - $*"; failed=1; }

# need PKG FILE: FILE must exist, installing PKG (Debian) when it does
# not; exits 77 (a skip, said so) when it cannot.
need() {
	[ -e "$2" ] && return 0
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "installing $1"
		DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y \
			--no-install-recommends "$1" >"$tmp/apt.log" 2>&1 ||
			tail -5 "$tmp/apt.log"
	fi
	[ -e "$2" ] && return 0
	echo "SKIP: $2 (package $1) is missing and could not be installed"
	exit 77
}

# same_libssl FILE: FILE (a program or the module that links OpenSSL)
# must use the libssl the preload was built for; exits 77 (a skip, said
# so) when it does not: the preload forwards to its own libssl, so a
# program with another soname would mix two OpenSSLs (a build against
# OpenSSL 4.0 run on Debian's 3.x programs).
same_libssl() {
	local want have
	want=$(ldd "$OSSLPROC_PRELOAD_LIB" | awk '/libssl\.so/ { print $1; exit }')
	have=$(ldd "$1" | awk '/libssl\.so/ { print $1; exit }')
	[ "$want" = "$have" ] && return 0
	echo "SKIP: $1 uses ${have:-no libssl}, the preload $want: build osslproc against the program's OpenSSL to test it"
	exit 77
}

# A CA and a certificate for localhost and 127.0.0.1, signed by it.
make_pki() {
	ossl_cli req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-subj /CN=osslproc-test-ca -keyout "$tmp/ca.key" \
		-out "$tmp/ca.pem" -days 2 >/dev/null 2>&1 &&
	ossl_cli req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-subj /CN=localhost -keyout "$tmp/server.key" \
		-out "$tmp/server.csr" >/dev/null 2>&1 &&
	printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$tmp/ext" &&
	ossl_cli x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" \
		-CAkey "$tmp/ca.key" -CAcreateserial -days 2 \
		-extfile "$tmp/ext" -out "$tmp/server.pem" >/dev/null 2>&1
}

# A free port on 127.0.0.1 (a race with other programs, acceptably small).
free_port() {
	/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# check_reports DIR MIN: at least MIN reports, each tracked with no bad
# free; prints the count.
check_reports() {
	local n dirty
	n=$(ls "$1" | wc -l)
	echo "$n"
	[ "$n" -ge "$2" ] || return 1
	dirty=$(grep -L 'bad frees: double 0, invalid 0, foreign 0, inherited 0' "$1"/*)
	[ -z "$dirty" ] || { cat $dirty >&2; return 1; }
	[ "$(grep -l 'allocator: tracked' "$1"/* | wc -l)" -eq "$n" ]
}
