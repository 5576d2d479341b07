#!/usr/bin/env bash
# nginx (master + 2 workers on 127.0.0.1) under osslproc-run: verified
# TLS 1.3 handshakes from tls-client, a graceful stop, a report per
# process (3) with 0 bad frees.  Then the benchmark: handshakes/s of the
# same nginx without and with osslproc-run, rounds alternating, printed
# (not a pass/fail criterion: load on a CI machine swings it).
#   test-nginx.sh OSSLPROC-RUN PRELOAD TLS-CLIENT [ROUNDS SECONDS]
. "$(dirname "$0")/real-common.sh"
client=$3
rounds=${4:-3}
secs=${5:-3}
need nginx /usr/sbin/nginx
same_libssl /usr/sbin/nginx
make_pki || { echo "FAIL - openssl could not make the PKI"; exit 1; }
port=$(free_port)
mkdir -p "$tmp/logs" "$tmp/t"
cat >"$tmp/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/logs/error.log warn;
events { worker_connections 512; }
http {
	access_log off;
	client_body_temp_path $tmp/t/body;
	proxy_temp_path $tmp/t/proxy;
	fastcgi_temp_path $tmp/t/fastcgi;
	uwsgi_temp_path $tmp/t/uwsgi;
	scgi_temp_path $tmp/t/scgi;
	server {
		listen 127.0.0.1:$port ssl;
		ssl_certificate $tmp/server.pem;
		ssl_certificate_key $tmp/server.key;
		ssl_protocols TLSv1.3;
		ssl_session_cache off;
		ssl_session_tickets off;
		location / { return 200 "ok\n"; }
	}
}
CONF

pid=
start() { # [osslproc-run]
	"$@" /usr/sbin/nginx -p "$tmp" -c "$tmp/nginx.conf" 2>>"$tmp/nginx.err" &
	pid=$!
	for _ in $(seq 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}
stop() {
	kill -QUIT "$pid" 2>/dev/null
	wait "$pid"
}
cleanup_hooks+=('[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null')

rep=$tmp/rep
mkdir -m 777 "$rep"
if OSSLPROC_REPORT=$rep start "$run"; then
	out=$("$client" "$port" "$tmp/ca.pem" 2 2)
	rc=$?
	stop
	if [ $rc -eq 0 ] && n=$(check_reports "$rep" 3) && [ "$n" -eq 3 ]
	then ok "nginx: $out; $n clean reports (master, 2 workers)"
	else bad "nginx: client rc $rc ($out), reports: $n; $(cat "$tmp/nginx.err")"; fi
else
	bad "nginx did not start: $(cat "$tmp/nginx.err" "$tmp/logs/error.log")"
fi

# Benchmark, alternating rounds.
rate() { sed -n 's/.*rate \([0-9.]*\).*/\1/p'; }
plain_rates=() run_rates=()
for r in $(seq "$rounds"); do
	start env && plain_rates+=("$("$client" "$port" "$tmp/ca.pem" "$secs" 2 | rate)")
	stop
	start "$run" && run_rates+=("$("$client" "$port" "$tmp/ca.pem" "$secs" 2 | rate)")
	stop
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
p=$(median "${plain_rates[@]}")
o=$(median "${run_rates[@]}")
echo "bench: nginx 2 workers, tls-client 2 threads, $rounds x ${secs}s rounds"
echo "bench: without osslproc-run ${plain_rates[*]} handshakes/s (median $p)"
echo "bench: with osslproc-run    ${run_rates[*]} handshakes/s (median $o)"
awk -v p="$p" -v o="$o" 'BEGIN { if (p > 0) printf "bench: ratio %.3fx (target >= 0.98x)\n", o / p }'
exit $failed
