#!/usr/bin/env bash
# python3 under osslproc-run: threads doing verified TLS to a server in
# the same process, hashlib, os.fork; 0 bad frees in every report.
. "$(dirname "$0")/real-common.sh"
need python3 /usr/bin/python3
same_libssl "$(/usr/bin/python3 -c 'import _ssl; print(getattr(_ssl, "__file__", "/usr/bin/python3"))')"
make_pki || { echo "FAIL - openssl could not make the PKI"; exit 1; }
cat >"$tmp/t.py" <<'PY'
import hashlib, os, socket, ssl, sys, threading
d = sys.argv[1]
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
sctx.load_cert_chain(d + "/server.pem", d + "/server.key")
lsock = socket.create_server(("127.0.0.1", 0))
port = lsock.getsockname()[1]
def serve(conn):
    try:
        with sctx.wrap_socket(conn, server_side=True) as s:
            s.sendall(s.recv(100))
    except OSError:
        pass
def accept_loop():
    while True:
        try:
            c, _ = lsock.accept()
        except OSError:
            return
        threading.Thread(target=serve, args=(c,), daemon=True).start()
threading.Thread(target=accept_loop, daemon=True).start()
cctx = ssl.create_default_context(cafile=d + "/ca.pem")
errors = []
def client(n):
    try:
        for i in range(n):
            with socket.create_connection(("127.0.0.1", port), 10) as raw:
                with cctx.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(b"ping %d" % i)
                    assert s.recv(100) == b"ping %d" % i
            hashlib.sha256(b"x" * i).hexdigest()
            hashlib.blake2b(b"y").hexdigest()
    except Exception as e:
        errors.append(repr(e))
ts = [threading.Thread(target=client, args=(15,)) for _ in range(4)]
[t.start() for t in ts]
[t.join() for t in ts]
pids = []
for k in range(2):
    pid = os.fork()
    if pid == 0:
        client(3)
        hashlib.md5(b"child").hexdigest()
        sys.exit(1 if errors else 0)
    pids.append(pid)
bad = [p for p in pids if os.waitpid(p, 0)[1] != 0]
print("handshakes ok" if not errors and not bad else "errors %r, children %r" % (errors, bad))
sys.exit(1 if errors or bad else 0)
PY
mkdir "$tmp/rep"
if OSSLPROC_REPORT=$tmp/rep timeout 300 "$run" /usr/bin/python3 "$tmp/t.py" \
   "$tmp" >"$tmp/out" 2>"$tmp/err"; then
	if n=$(check_reports "$tmp/rep" 3); then
		ok "python3: $(cat "$tmp/out"), $n clean reports"
	else bad "python3: reports: $n"; fi
else bad "python3: $(cat "$tmp/out" "$tmp/err")"; fi
[ -s "$tmp/err" ] && { echo "stderr:"; cat "$tmp/err"; }
exit $failed
