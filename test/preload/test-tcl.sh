#!/usr/bin/env bash
# tclsh with tcl-tls under osslproc-run: package require tls in child
# interpreters, verified connections to a local TLS server (openssl
# s_server, not preloaded) with -cafile (tcl-tls 1.7's defaults ignore
# SSL_CERT_FILE), interp delete after each; 0 bad frees.
. "$(dirname "$0")/real-common.sh"
need tcl /usr/bin/tclsh
need tcl-tls /usr/lib/tcltk/x86_64-linux-gnu/tcltls1.7.22/tcltls.so
same_libssl /usr/lib/tcltk/x86_64-linux-gnu/tcltls1.7.22/tcltls.so
make_pki || { echo "FAIL - openssl could not make the PKI"; exit 1; }
port=$(free_port)
ossl_cli s_server -quiet -accept "127.0.0.1:$port" -cert "$tmp/server.pem" \
	-key "$tmp/server.key" -www >/dev/null 2>&1 &
srv=$!
cleanup_hooks+=("kill $srv 2>/dev/null")
for _ in $(seq 50); do
	(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
	sleep 0.1
done
cat >"$tmp/t.tcl" <<'TCL'
lassign $argv port ca
set ok 0
foreach mode {cafile cafile cafile cafile} {
	interp create c
	c eval [list set port $port]
	c eval [list set ca $ca]
	c eval [list set mode $mode]
	set r [c eval {
		package require tls
		if {$mode eq "cafile"} {
			set s [tls::socket -cafile $ca -require 1 \
				-servername localhost 127.0.0.1 $port]
		} else {
			set s [tls::socket -require 1 -servername localhost \
				127.0.0.1 $port]
		}
		tls::handshake $s
		puts -nonewline $s "GET / HTTP/1.0\r\n\r\n"
		flush $s
		set body [read $s]
		close $s
		string match "HTTP/1.0 200*" $body
	}]
	interp delete c
	if {$r} { incr ok }
}
puts "verified connections: $ok of 4"
exit [expr {$ok == 4 ? 0 : 1}]
TCL
mkdir -m 777 "$tmp/rep"
if OSSLPROC_REPORT=$tmp/rep timeout 120 \
   "$run" tclsh "$tmp/t.tcl" "$port" "$tmp/ca.pem" >"$tmp/out" 2>"$tmp/err"
then
	if n=$(check_reports "$tmp/rep" 1); then
		ok "tclsh + tcl-tls: $(cat "$tmp/out"), $n clean report"
	else bad "tclsh: reports: $n"; fi
else bad "tclsh: $(cat "$tmp/out" "$tmp/err")"; fi
exit $failed
