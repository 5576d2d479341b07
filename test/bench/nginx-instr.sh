#!/usr/bin/env bash
# Instructions per handshake in nginx without and with osslproc-run,
# counted by callgrind: what the preload adds to the server's own work,
# steadier than any rate on a shared machine (doc/benchmarks.md,
# "osslproc-run on nginx").  A benchmark, not a test.
#   nginx-instr.sh OSSLPROC-RUN PRELOAD TLS-CLIENT [SECONDS]
# Environment: SERVER_CPU (1), CLIENT_CPU (0), CONFIGS as nginx-bench.sh.
#
# nginx runs as one process (master_process off: its worker's code path
# without a second process under valgrind).  After a warm-up the counters
# are zeroed, the client drives SECONDS, and the dump is divided by the
# handshakes made: the marginal cost of a handshake in user space (the
# kernel's TCP work is not counted; it does not change with the preload).
# Per handshake it prints the total, OpenSSL's allocation calls
# (CRYPTO_malloc, CRYPTO_realloc and CRYPTO_free, inclusive: glibc's
# malloc, or osslproc's allocator), the osslproc allocator's own
# functions and the preload's interposers.
. "$(dirname "$0")/../preload/real-common.sh"
client=$3
secs=${4:-20}
scpu=${SERVER_CPU:-1}
ccpu=${CLIENT_CPU:-0}
configs=(${CONFIGS:-plain run noalloc})
need nginx /usr/sbin/nginx
need valgrind /usr/bin/valgrind
same_libssl /usr/sbin/nginx
make_pki || { echo "FAIL - openssl could not make the PKI"; exit 1; }

pid=
cleanup_hooks+=('[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null')

# measure NAME: prints "HANDSHAKES DUMP-FILE".
measure() {
	local name=$1 d=$tmp/$1 port pre=() out

	case $name in
	plain) pre=(env) ;;
	run) pre=("$run") ;;
	noalloc) pre=(env OSSLPROC_DISABLE=allocator "$run") ;;
	*) echo "unknown configuration $name" >&2; return 1 ;;
	esac
	port=$(free_port)
	mkdir -p "$d/logs" "$d/t"
	cat >"$d/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections 512; }
http {
	access_log off;
	client_body_temp_path $d/t/body;
	proxy_temp_path $d/t/proxy;
	fastcgi_temp_path $d/t/fastcgi;
	uwsgi_temp_path $d/t/uwsgi;
	scgi_temp_path $d/t/scgi;
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
	# Every exec keeps the pid: $! ends up as nginx under valgrind.
	taskset -c "$scpu" "${pre[@]}" valgrind --tool=callgrind \
		--callgrind-out-file="$d/cg.out" /usr/sbin/nginx -p "$d" \
		-c "$d/nginx.conf" >"$d/valgrind.log" 2>&1 &
	pid=$!
	for _ in $(seq 600); do
		(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
		sleep 0.1
	done
	taskset -c "$ccpu" "$client" "$port" "$tmp/ca.pem" 3 1 >/dev/null
	callgrind_control -z "$pid" >/dev/null 2>&1
	out=$(taskset -c "$ccpu" "$client" "$port" "$tmp/ca.pem" "$secs" 1)
	callgrind_control -d "$pid" >/dev/null 2>&1
	kill -QUIT "$pid"
	wait "$pid"
	pid=
	echo "$(sed -n 's/^handshakes \([0-9]*\) .*/\1/p' <<<"$out") $d/cg.out.1"
}

# report NAME HANDSHAKES DUMP
report() {
	local total
	total=$(sed -n 's/^summary: //p' "$3")
	callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$3" \
		2>/dev/null | awk -v h="$2" -v total="$total" -v name="$1" '
		function num(s) { gsub(",", "", s); return s + 0 }
		/:CRYPTO_(malloc|realloc|free) \[/ { a += num($1) }
		END { printf "%-8s %5d handshakes: %9.0f instructions each, " \
		      "allocation calls %7.0f", name, h, total / h, a / h }'
	callgrind_annotate --auto=no --threshold=100 "$3" 2>/dev/null |
		awk -v h="$2" '
		function num(s) { gsub(",", "", s); return s + 0 }
		# "COUNT (PERCENT) FILE:FUNCTION [OBJECT]", FILE relative to
		# the current directory when under it: the lib/ and run/ of
		# osslproc are the only such directories among the objects.
		$0 ~ /(^|[ \/])lib\/[a-z\/_-]+\.[ch]:/ { o += num($1) }
		$0 ~ /(^|[ \/])run\/[a-z_-]+\.c:/ { i += num($1) }
		END { printf ", osslproc allocator %7.0f, interposers %5.0f\n",
		      o / h, i / h }'
}

echo "nginx (one process) under callgrind on CPU $scpu, tls-client" \
	"1 thread on CPU $ccpu, ${secs}s after a 3s warm-up; per handshake:"
for c in "${configs[@]}"; do
	read -r n dump < <(measure "$c")
	[ -n "$n" ] && [ -s "$dump" ] ||
		{ echo "$c: no dump ($(tail -3 "$tmp/$c/valgrind.log"))"; exit 1; }
	report "$c" "$n" "$dump"
done
exit 0
