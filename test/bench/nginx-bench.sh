#!/usr/bin/env bash
# The handshake rate of one nginx worker without and with osslproc-run,
# side by side; a benchmark, not a test (doc/benchmarks.md, "osslproc-run
# on nginx").
#   nginx-bench.sh OSSLPROC-RUN PRELOAD TLS-CLIENT [ROUNDS SECONDS]
# Environment: CLIENT_THREADS (2), SERVER_CPU (1), CLIENT_CPU (0),
# CONFIGS ("plain run noalloc"), SERVER_KEY (ec: P-256; rsa: RSA 2048,
# whose signature makes the server, not the client, the bottleneck).
#
# Three nginx instances run at once, each with one worker on SERVER_CPU:
# plain, under osslproc-run, and under osslproc-run with
# OSSLPROC_DISABLE=allocator (the preload's interposers without the
# tracked allocator).  Only the one the client drives uses the CPU, so no
# restart separates the rounds and every round measures the three
# configurations seconds apart, in a rotating order.  The client runs on
# CLIENT_CPU: client and server never take each other's CPU, and on a
# 2-CPU machine a client that verifies certificates needs one for itself.
#
# Per configuration it prints the handshakes/s and the worker's CPU time
# per handshake (from /proc/PID/schedstat: the time the worker ran, in
# user space and in the kernel); per round the ratio of osslproc's rate
# to the plain one's of the same round, and the distribution of those
# ratios.
#
# Then INTERLEAVED rounds (as many as ROUNDS; 0 for none): the client
# takes the servers in turn, one handshake each, so that each round's
# load from elsewhere falls on every configuration alike, and the
# worker's CPU time per handshake is compared within the round.  Their
# rates are equal by construction; the CPU times are what differs.
. "$(dirname "$0")/../preload/real-common.sh"
client=$3
rounds=${4:-15}
secs=${5:-3}
threads=${CLIENT_THREADS:-2}
interleaved=${INTERLEAVED:-$rounds}
scpu=${SERVER_CPU:-1}
ccpu=${CLIENT_CPU:-0}
configs=(${CONFIGS:-plain run noalloc})
need nginx /usr/sbin/nginx
same_libssl /usr/sbin/nginx
make_pki || { echo "FAIL - openssl could not make the PKI"; exit 1; }
if [ "${SERVER_KEY:-ec}" = rsa ]; then
	ossl_cli req -newkey rsa:2048 -nodes -subj /CN=localhost \
		-keyout "$tmp/server.key" -out "$tmp/server.csr" \
		>/dev/null 2>&1 &&
	ossl_cli x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" \
		-CAkey "$tmp/ca.key" -CAcreateserial -days 2 \
		-extfile "$tmp/ext" -out "$tmp/server.pem" >/dev/null 2>&1 ||
		{ echo "FAIL - openssl could not make the RSA key"; exit 1; }
fi

declare -A port master worker
conf() { # NAME PORT
	local d=$tmp/$1
	mkdir -p "$d/logs" "$d/t"
	cat >"$d/nginx.conf" <<CONF
worker_processes 1;
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
		listen 127.0.0.1:$2 ssl;
		ssl_certificate $tmp/server.pem;
		ssl_certificate_key $tmp/server.key;
		ssl_protocols TLSv1.3;
		ssl_session_cache off;
		ssl_session_tickets off;
		location / { return 200 "ok\n"; }
	}
}
CONF
}

start() { # NAME
	local name=$1 d=$tmp/$1 pre=()

	case $name in
	plain) pre=(env) ;;
	run) pre=("$run") ;;
	noalloc) pre=(env OSSLPROC_DISABLE=allocator "$run") ;;
	*) echo "unknown configuration $name" >&2; return 1 ;;
	esac
	port[$name]=$(free_port)
	conf "$name" "${port[$name]}"
	taskset -c "$scpu" "${pre[@]}" /usr/sbin/nginx -p "$d" \
		-c "$d/nginx.conf" 2>>"$d/nginx.err" &
	master[$name]=$!
	cleanup_hooks+=("kill -TERM ${master[$name]} 2>/dev/null")
	for _ in $(seq 100); do
		worker[$name]=$(pgrep -P "${master[$name]}" | head -1)
		[ -n "${worker[$name]}" ] &&
			(exec 3<>"/dev/tcp/127.0.0.1/${port[$name]}") 2>/dev/null &&
			return 0
		sleep 0.1
	done
	echo "nginx ($name) did not start: $(cat "$d/nginx.err" "$d/logs/error.log")" >&2
	return 1
}

# The worker's time on a CPU, in ns.
cpu_ns() { awk '{ print $1 }' "/proc/$1/schedstat"; }

# drive NAME SECONDS: prints "RATE CPU-US-PER-HANDSHAKE".
drive() {
	local before after out n r

	before=$(cpu_ns "${worker[$1]}")
	out=$(taskset -c "$ccpu" "$client" "${port[$1]}" "$tmp/ca.pem" "$2" \
		"$threads")
	after=$(cpu_ns "${worker[$1]}")
	n=$(sed -n 's/^handshakes \([0-9]*\) .*/\1/p' <<<"$out")
	r=$(sed -n 's/.*rate \([0-9.]*\).*/\1/p' <<<"$out")
	awk -v r="$r" -v n="$n" -v d=$((after - before)) \
		'BEGIN { printf "%s %.1f\n", r, (n > 0 ? d / n / 1000 : 0) }'
}

for c in "${configs[@]}"; do
	start "$c" || exit 1
	drive "$c" 2 >/dev/null # warm-up: caches, the allocator's lists
done

declare -A rates cpus
for r in $(seq "$rounds"); do
	# Rotate the order, so that no configuration always follows another.
	n=${#configs[@]}
	for i in $(seq 0 $((n - 1))); do
		c=${configs[$(((i + r) % n))]}
		read -r rate cpu < <(drive "$c" "$secs")
		rates[$c]+="$rate "
		cpus[$c]+="$cpu "
	done
done

# stats VALUES...: "median min max"
stats() {
	printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
		END { printf "%s %s %s\n", a[int((NR + 1) / 2)], a[1], a[NR] }'
}
ratios() { # A B: the per-round ratios of B's rates to A's
	paste -d' ' <(tr ' ' '\n' <<<"${rates[$1]}") \
		<(tr ' ' '\n' <<<"${rates[$2]}") |
		awk 'NF == 2 && $1 > 0 { printf "%.3f\n", $2 / $1 }'
}

echo "nginx 1 worker on CPU $scpu (${SERVER_KEY:-ec} key), tls-client" \
	"$threads threads on CPU $ccpu, $rounds rounds x ${secs}s, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
for c in "${configs[@]}"; do
	read -r rm rlo rhi < <(stats ${rates[$c]})
	read -r cm clo chi < <(stats ${cpus[$c]})
	printf '%-8s handshakes/s median %7.1f (%s-%s)  worker us/handshake median %6.1f (%s-%s)\n' \
		"$c" "$rm" "$rlo" "$rhi" "$cm" "$clo" "$chi"
	echo "         rates: ${rates[$c]}"
done
base=${configs[0]}
for c in "${configs[@]:1}"; do
	read -r m lo hi < <(stats $(ratios "$base" "$c"))
	read -r pm _ _ < <(stats ${rates[$base]})
	read -r om _ _ < <(stats ${rates[$c]})
	read -r pc _ _ < <(stats ${cpus[$base]})
	read -r oc _ _ < <(stats ${cpus[$c]})
	echo "$c/$base per-round ratio: median ${m}x (min ${lo}x, max ${hi}x);" \
		"of the medians $(awk -v p="$pm" -v o="$om" 'BEGIN { printf "%.3f", o / p }')x;" \
		"worker CPU per handshake $(awk -v p="$pc" -v o="$oc" 'BEGIN { printf "%.3f", o / p }')x"
done
# Interleaved: one client over every port; per round each worker's CPU
# time per handshake.
declare -A icpus
all_ports=$(for c in "${configs[@]}"; do printf '%s,' "${port[$c]}"; done)
for r in $(seq "$interleaved"); do
	declare -A before
	for c in "${configs[@]}"; do before[$c]=$(cpu_ns "${worker[$c]}"); done
	out=$(taskset -c "$ccpu" "$client" "${all_ports%,}" "$tmp/ca.pem" \
		"$secs" "$threads")
	for c in "${configs[@]}"; do
		n=$(sed -n "s/^port ${port[$c]} handshakes \([0-9]*\) .*/\1/p" \
			<<<"$out")
		icpus[$c]+="$(awk -v n="$n" \
			-v d=$(($(cpu_ns "${worker[$c]}") - ${before[$c]})) \
			'BEGIN { printf "%.1f", (n > 0 ? d / n / 1000 : 0) }') "
	done
done
if [ "$interleaved" -gt 0 ]; then
	echo "interleaved, $interleaved rounds x ${secs}s: worker us/handshake"
	for c in "${configs[@]}"; do
		read -r m lo hi < <(stats ${icpus[$c]})
		printf '%-8s median %6.1f (%s-%s): %s\n' "$c" "$m" "$lo" "$hi" \
			"${icpus[$c]}"
	done
	for c in "${configs[@]:1}"; do
		read -r m lo hi < <(stats $(paste -d' ' \
			<(tr ' ' '\n' <<<"${icpus[$base]}") \
			<(tr ' ' '\n' <<<"${icpus[$c]}") |
			awk 'NF == 2 && $1 > 0 { printf "%.3f\n", $2 / $1 }'))
		echo "$c/$base worker CPU per handshake, per round: median" \
			"${m}x (min ${lo}x, max ${hi}x)"
	done
fi
for c in "${configs[@]}"; do
	kill -QUIT "${master[$c]}" 2>/dev/null
	wait "${master[$c]}" 2>/dev/null
done
exit 0
