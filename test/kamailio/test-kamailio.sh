#!/usr/bin/env bash
# Kamailio 5.6 (issue 18): its tls module puts OpenSSL's memory in
# Kamailio's shared memory, a tcp receiver creates an SSL, idle
# connections move to other receivers and tcp main frees the SSL.  Under
# a SIP-over-TLS load (kamload: short connections, long ones idle past
# the receivers' 5 s timeout, clients without a certificate) on
# 127.0.0.1, with client certificates required and verified:
#   1. the negative control: Kamailio alone must log "freeing already
#      freed" or die within 20 s;
#   2. under osslproc-run with OSSLPROC_SHARED_OBJECTS=1, SECONDS (90) of
#      load: every process alive, nothing bad in the log, at most 1 % of
#      the clients with a certificate failing, every client without one
#      refused, shared memory back within 4 MB once the connections are
#      closed, a stop by SIGTERM within 20 s with four connections open
#      (the main process frees their SSLs at exit, after the receivers
#      that made them), one clean report per process, and SSLs handed
#      to their creator in the reports (the path under test was taken).
# Then the figures: handshakes/s of both, shared memory per connection.
#   test-kamailio.sh OSSLPROC-RUN PRELOAD KAMLOAD [SECONDS]
. "$(dirname "$0")/../preload/real-common.sh"
kamload=$3
secs=${4:-90}
mods=/usr/lib/x86_64-linux-gnu/kamailio/modules
need kamailio /usr/sbin/kamailio
need kamailio-tls-modules "$mods/tls.so"
need kamailio /usr/sbin/kamcmd
same_libssl "$mods/tls.so"
for m in sl ctl kex corex xlog; do
	[ -e "$mods/$m.so" ] || { echo "SKIP: $mods/$m.so is missing"; exit 77; }
done
make_pki || { echo "FAIL - openssl could not make the PKI"; exit 1; }
# The clients' certificate, signed by the same CA.
ossl_cli req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-subj /CN=kamload -keyout "$tmp/client.key" \
	-out "$tmp/client.csr" >/dev/null 2>&1 &&
printf 'extendedKeyUsage=clientAuth\n' >"$tmp/client.ext" &&
ossl_cli x509 -req -in "$tmp/client.csr" -CA "$tmp/ca.pem" \
	-CAkey "$tmp/ca.key" -CAcreateserial -days 2 \
	-extfile "$tmp/client.ext" -out "$tmp/client.pem" >/dev/null 2>&1 ||
	{ echo "FAIL - openssl could not make the client certificate"; exit 1; }

port=$(free_port)
ctl=$tmp/ctl.sock
mkdir -p "$tmp/rt"
cat >"$tmp/tls.cfg" <<CONF
[server:default]
method = TLSv1.2+
verify_certificate = yes
require_certificate = yes
certificate = $tmp/server.pem
private_key = $tmp/server.key
ca_list = $tmp/ca.pem

[client:default]
verify_certificate = no
require_certificate = no
CONF
# TLS on 127.0.0.1 only (no UDP or plain TCP listener), four tcp
# receivers; OPTIONS answered statelessly; the ctl socket for kamcmd.
cat >"$tmp/kamailio.cfg" <<CONF
#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=1
tcp_children=4
auto_aliases=no
disable_sctp=yes
enable_tls=yes
listen=tls:127.0.0.1:$port
mpath="$mods/"
loadmodule "tls.so"
loadmodule "sl.so"
loadmodule "ctl.so"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "xlog.so"
modparam("tls", "config", "$tmp/tls.cfg")
modparam("ctl", "binrpc", "unix:$ctl")
request_route {
	if (method == "OPTIONS") {
		sl_send_reply("200", "OK");
		exit;
	}
	sl_send_reply("405", "Method Not Allowed");
}
CONF

kam() { timeout 10 kamcmd -s "unix:$ctl" "$@" 2>/dev/null; }
# shm_used: the shared memory Kamailio has handed out, in bytes.
shm_used() { kam core.shmmem | awk '$1 == "used:" { print $2 }'; }
# tls_conns: the TLS connections Kamailio holds open.
tls_conns() { kam core.tcp_info | awk '$1 == "opened_tls_connections:" { print $2 }'; }
# procs: the pids of Kamailio's processes, main first, one a line.
# (A child that died and is not reaped yet is no longer one of them.)
procs() {
	echo "$pid"
	ps -o pid=,stat= --ppid "$pid" | awk '$2 !~ /^Z/ { print $1 }' | sort -n
}
# field NAME: NAME's value in kamload's summary ($out), 0 if it has none.
field() {
	awk -v k="$1" '{ for (i = 1; i < NF; i++) if ($i == k) v = $(i + 1) }
		END { print v == "" ? 0 : v }' <<<"$out"
}

pid=
log=
start() { # NAME [osslproc-run]: Kamailio in the foreground, ready
	# Its log is $tmp/NAME.log, its working directory (cores) $tmp/NAME.
	log=$tmp/$1.log
	mkdir -p "$tmp/$1"
	shift
	"$@" /usr/sbin/kamailio -DD -E -f "$tmp/kamailio.cfg" -m 128 -M 8 \
		-w "${log%.log}" -Y "$tmp/rt" >"$log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || return 1
		if [ -n "$(shm_used)" ] &&
		   (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}
# stop_kam SECONDS: SIGTERM, then wait at most SECONDS for the exit;
# 0 if it exited in time (its status in $status), else SIGKILL and 1.
status=
stop_kam() {
	kill -TERM "$pid" 2>/dev/null
	for _ in $(seq $(($1 * 10))); do
		if ! kill -0 "$pid" 2>/dev/null; then
			wait "$pid"
			status=$?
			pid=
			return 0
		fi
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null
	wait "$pid"
	pid=
	return 1
}
cleanup_hooks+=('[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null')
load() { # SECONDS [kamload options]
	local s=$1
	shift
	# The long connections add at most an idle period and two timeouts.
	timeout $((s + 40)) "$kamload" -p "$port" -a "$tmp/ca.pem" \
		-c "$tmp/client.pem" -k "$tmp/client.key" -t "$s" \
		-w 8 -l 8 -n 1 -i 7 -u 3 -T 5 "$@"
}
bad_log='freeing already freed|SIGSEGV|exited by a signal|core was generated|BUG:'

# ---- 1. the negative control: Kamailio alone
ctl_rate=- ctl_first=- ctl_death=-
if start plain env; then
	t0=$(date +%s.%N)
	load 20 -S >"$tmp/plain.out" 2>"$tmp/plain.err" &
	lpid=$!
	elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
	# Poll (bounded by the load's 20 s) for the first double free and
	# for the end of the main process.
	while kill -0 "$lpid" 2>/dev/null; do
		if [ "$ctl_first" = - ] &&
		   grep -q 'freeing already freed' "$tmp/plain.log"; then
			ctl_first=$(elapsed)
		fi
		if [ "$ctl_death" = - ] && ! kill -0 "$pid" 2>/dev/null; then
			ctl_death=$(elapsed)
		fi
		sleep 0.1
	done
	wait "$lpid"
	out=$(tail -1 "$tmp/plain.out")
	# The load stops when connections are refused: the main process may
	# still be shutting the rest down (at most 10 s more).
	for _ in $(seq 100); do
		[ "$ctl_first" = - ] &&
			grep -q 'freeing already freed' "$tmp/plain.log" &&
			ctl_first=$(elapsed)
		if ! kill -0 "$pid" 2>/dev/null; then
			[ "$ctl_death" = - ] && ctl_death=$(elapsed)
			break
		fi
		[ "$(field stop)" = 1 ] || break
		sleep 0.1
	done
	ctl_rate=$(field rate)
	frees=$(grep -c 'freeing already freed' "$tmp/plain.log")
	died=$(grep -o 'exited by a signal [0-9]*' "$tmp/plain.log" |
	       awk '{ n[$NF]++ } END { for (s in n) printf "%s%d of signal %s", sep, n[s], s; sep = ", " }')
	if [ "$ctl_first" != - ] || [ "$ctl_death" != - ]; then
		ok "control: Kamailio alone broke: first 'freeing already freed' at ${ctl_first} s ($frees in all), processes dead: ${died:-none}, server gone at ${ctl_death} s; $out"
	else
		bad "control: Kamailio alone survived 20 s of load without a double free: the load does not reach the bug (no connection moved between processes?); $out; $(tail -5 "$tmp/plain.err")"
	fi
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && stop_kam 20
	pid=
else
	bad "control: Kamailio did not start: $(tail -20 "$tmp/plain.log")"
fi

# ---- 2. under osslproc-run, shared objects
rep=$tmp/rep
mkdir -m 777 "$rep"
run_rate=- per_conn=-
if OSSLPROC_SHARED_OBJECTS=1 OSSLPROC_REPORT=$rep \
   OSSLPROC_LOG=$tmp/osslproc.log start run "$run"; then
	before=$(procs)
	nproc=$(wc -l <<<"$before")
	shm0=$(shm_used)
	load "$secs" -S >"$tmp/run.out" 2>"$tmp/run.err"
	lrc=$?
	out=$(tail -1 "$tmp/run.out")
	echo "load: $out"
	[ $lrc -eq 0 ] || bad "kamload exited with $lrc: $(tail -5 "$tmp/run.err")"
	if [ "$(field stop)" = 1 ]; then
		bad "the load stopped: Kamailio refused connections (the last handshake at $(field last_ok) s); its processes now: $(echo $(procs 2>/dev/null)); $(grep -E "$bad_log" "$tmp/run.log" | head -5)"
	elif kill -0 "$pid" 2>/dev/null && [ "$(procs)" = "$before" ]; then
		ok "Kamailio alive after ${secs} s of load, all $nproc processes"
	else
		bad "Kamailio lost processes: $nproc at the start ($(echo $before)), now: $(echo $(procs 2>/dev/null)); $(grep -E "$bad_log" "$tmp/run.log" | head -5)"
	fi
	hs_ok=$(field hs_ok) hs_failed=$(field hs_failed)
	attempts=$(($(field short_ok) + $(field short_failed) + $(field long_ok) + $(field long_failed)))
	failures=$(($(field short_failed) + $(field long_failed)))
	if [ "$hs_ok" -gt 0 ] && [ $((hs_failed * 100)) -le $((hs_ok + hs_failed)) ] &&
	   [ $((failures * 100)) -le "$attempts" ] && [ "$(field long_ok)" -gt 0 ]; then
		ok "clients with a certificate: $hs_ok handshakes, $hs_failed failed; $failures of $attempts exchanges failed; $(field long_ok) long connections"
	else
		bad "clients with a certificate: $hs_ok handshakes, $hs_failed failed, $failures of $attempts exchanges failed, $(field long_ok) long connections (at most 1 % may fail); $(tail -8 "$tmp/run.err")"
	fi
	if [ "$(field nocert_accepted)" -eq 0 ] && [ "$(field nocert_refused)" -gt 0 ]; then
		ok "clients without a certificate: all $(field nocert_refused) refused"
	else
		bad "clients without a certificate: $(field nocert_accepted) accepted, $(field nocert_refused) refused"
	fi
	# The clients have closed; Kamailio closes its ends when it reads
	# the EOF (polled, at most 20 s), then its memory settles.
	for _ in $(seq 200); do
		[ "$(tls_conns)" = 0 ] && break
		sleep 0.1
	done
	open=$(tls_conns)
	shm1=$(shm_used)
	conns=$((hs_ok + hs_failed + $(field nocert_refused) + $(field nocert_accepted)))
	growth=-
	if [ -n "$shm1" ] && [ -n "$shm0" ]; then
		growth=$((shm1 - shm0))
		per_conn=$(awk -v g="$growth" -v n="$conns" 'BEGIN { printf "%.1f", n ? g / n : 0 }')
	fi
	if [ "$open" = 0 ] && [ "$growth" != - ] && [ "$growth" -le $((4 << 20)) ]; then
		ok "shared memory: $shm0 bytes used before, $shm1 after ($growth over $conns connections, $per_conn bytes each)"
	else
		bad "shared memory: ${open:-?} TLS connections still open, $shm0 bytes used before, ${shm1:-?} after (growth $growth; at most 4 MB)"
	fi
	run_rate=$(field rate)
	# Stop it with four connections open, each past one OPTIONS: at
	# exit the main process frees their SSLs, which receivers created
	# and which outlive them (the receivers stop first).
	load 61 -w 0 -l 4 -n 0 -i 60 -u 2 >"$tmp/hold.out" 2>&1 &
	hold=$!
	cleanup_hooks+=('kill "$hold" 2>/dev/null')
	for _ in $(seq 100); do
		[ "$(tls_conns)" -ge 4 ] 2>/dev/null && break
		sleep 0.1
	done
	held=$(tls_conns)
	if stop_kam 20; then
		[ "$status" -eq 0 ] && ok "stopped by SIGTERM with ${held:-?} TLS connections open (status 0)" ||
			bad "stopped by SIGTERM with ${held:-?} TLS connections open, status $status"
	else
		bad "Kamailio did not stop within 20 s of SIGTERM"
	fi
	kill "$hold" 2>/dev/null
	wait "$hold" 2>/dev/null
	if grep -Eq "$bad_log" "$tmp/run.log"; then
		bad "Kamailio's log: $(grep -E "$bad_log" "$tmp/run.log" | head -5)"
	else
		ok "Kamailio's log: no double free, no crash"
	fi
	ls "$tmp"/run/core* >/dev/null 2>&1 && bad "core files: $(ls "$tmp"/run/core*)"
	if n=$(check_reports "$rep" "$nproc") && [ "$n" -eq "$nproc" ]; then
		ok "$n clean reports, one per Kamailio process"
	else
		bad "reports: $n for $nproc processes ($(echo $before)), or not all clean: $(grep -H 'bad frees' "$rep"/* | sed "s|$rep/||")"
	fi
	# The path under test: SSLs freed by a process that did not create
	# them, handed to their creator (summed over the reports).
	handoff=$(cat "$rep"/* 2>/dev/null | awk '/^shared objects:/ {
		q += $3; d += $8; x += $12; f += $14 }
		END { printf "%d %d %d %d", q, d, x, f }')
	read -r queued destroyed dropped others <<<"$handoff"
	if [ "$queued" -gt 0 ] && [ "$destroyed" -gt 0 ]; then
		ok "shared objects: $queued handed to their creator, $destroyed destroyed by it, $dropped dropped, $others blocks of other processes freed"
	else
		bad "shared objects: $queued handed to their creator, $destroyed destroyed by it: the reports show no SSL freed across processes"
	fi
	[ -s "$tmp/osslproc.log" ] && {
		echo "osslproc log: $(grep -c . "$tmp/osslproc.log") lines, the first:"
		head -5 "$tmp/osslproc.log"
	}
else
	bad "Kamailio did not start under osslproc-run: $(tail -20 "$tmp/run.log")"
fi

echo "figures: Kamailio 5.6, 4 tcp receivers, kamload 8 short + 8 long + 1 no-cert clients"
echo "figures: alone, before it broke: $ctl_rate handshakes/s (first double free at $ctl_first s, gone at $ctl_death s)"
echo "figures: under osslproc-run, ${secs} s: $run_rate handshakes/s, shared memory $per_conn bytes per connection"
exit $failed
