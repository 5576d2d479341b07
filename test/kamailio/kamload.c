/*
 * A SIP-over-TLS load for Kamailio (test/kamailio/test-kamailio.sh).  For
 * a number of seconds, against 127.0.0.1:PORT:
 *   - short workers: connect, verified handshake with a client
 *     certificate, one OPTIONS, read the 200, close; again;
 *   - long workers: the same first exchange, then the connection stays
 *     idle past Kamailio's receiver timeout (5 s: the connection goes back
 *     to tcp main and on to whichever receiver reads next), another
 *     OPTIONS, idle again, ..., close;
 *   - no-certificate workers: a handshake without a client certificate
 *     and an OPTIONS, which Kamailio must refuse (a failed handshake, or
 *     the connection closed without a SIP reply).
 * Every socket has send and receive timeouts, so nothing waits longer
 * than -T seconds; the run ends after -t seconds plus a few timeouts at
 * worst (a long connection starts only if its idle periods end before
 * the deadline), or at -m short connections.  The last line on stdout
 * is the summary the test parses:
 *
 *   kamload hs_ok N hs_failed N short_ok N short_failed N long_ok N
 *     long_failed N nocert_refused N nocert_accepted N elapsed S
 *     last_ok S rate R stop 0|1
 *
 * (hs_*: handshakes of the clients with certificates, short and long;
 * last_ok: seconds from the start to the last successful handshake;
 * rate: handshakes (hs_ok) per second over the run, or up to last_ok
 * with -S, which stops the run as soon as connections are refused: the
 * server is gone; stop: 1 when it did.)  Failures are described on
 * stderr, the first few in full, then counted by stage.
 *
 *   kamload -p PORT -a CA -c CERT -k KEY [-t SECONDS] [-w SHORT]
 *           [-l LONG] [-n NOCERT] [-i IDLE] [-u USES] [-m MAX] [-T TIMEOUT]
 *           [-S]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define MAX_THREADS 64

static struct {
	int port;
	double seconds, idle, timeout;
	int shorts, longs, nocerts, uses;
	unsigned long max_short;
	int stop_on_refused;
} opt = {
	.seconds = 10, .idle = 7, .timeout = 5,
	.shorts = 8, .longs = 8, .nocerts = 1, .uses = 3,
	.max_short = 1000000,
};

static SSL_CTX *cert_ctx, *nocert_ctx;
static double t_start, t_end;
static atomic_int stop;
static atomic_ulong seq;
static atomic_ulong hs_ok, hs_failed, short_ok, short_failed, short_started;
static atomic_ulong long_ok, long_failed, nocert_refused, nocert_accepted;
static _Atomic double last_ok;

/* Failures by stage; the first few are told in full. */
enum stage { ST_CONNECT, ST_HANDSHAKE, ST_VERIFY, ST_WRITE, ST_READ,
	     ST_REPLY, ST_COUNT };
static const char *const stage_name[ST_COUNT] = {
	"connect", "handshake", "verify", "write", "read", "reply" };
static atomic_ulong stage_fails[ST_COUNT];
static atomic_int told;

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
note_ok(void)
{
	double t = now() - t_start, prev = atomic_load(&last_ok);

	while (t > prev && !atomic_compare_exchange_weak(&last_ok, &prev, t))
		;
}

/* Count a failure; describe it while few have been told.  @what is the
 * kind of client; @err is errno for a connect, else SSL_get_error(). */
static void
fail(enum stage st, const char *what, SSL *ssl, int err)
{
	char buf[256] = "-";
	unsigned long e;
	int sys = errno;

	atomic_fetch_add(&stage_fails[st], 1);
	if (atomic_fetch_add(&told, 1) >= 5) {
		ERR_clear_error();
		return;
	}
	if (st == ST_CONNECT) {
		fprintf(stderr, "kamload: %s client, connect failed at %.2f s: "
			"%s\n", what, now() - t_start, strerror(err));
		return;
	}
	e = ERR_peek_last_error();
	if (e)
		ERR_error_string_n(e, buf, sizeof(buf));
	fprintf(stderr, "kamload: %s client, %s failed at %.2f s: "
		"SSL_get_error %d (errno: %s), %s\n", what, stage_name[st],
		now() - t_start, err, strerror(sys), buf);
	if (ssl && st == ST_VERIFY)
		fprintf(stderr, "kamload: verify result: %s\n",
			X509_verify_cert_error_string(
				SSL_get_verify_result(ssl)));
	ERR_clear_error();
}

/* A TCP connection to the server with both timeouts set; -1 with errno. */
static int
dial(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons((uint16_t)opt.port) };
	struct timeval tv = { .tv_sec = (time_t)opt.timeout,
			      .tv_usec = (suseconds_t)((opt.timeout -
				(double)(time_t)opt.timeout) * 1e6) };
	int fd, e;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return -1;
	/* SO_SNDTIMEO also bounds connect() on Linux. */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) ||
	    connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		e = errno;
		close(fd);
		if (e == ECONNREFUSED && opt.stop_on_refused)
			atomic_store(&stop, 1);
		errno = e;
		return -1;
	}
	return fd;
}

/* Connect and handshake; the SSL, or NULL with the failure counted. */
static SSL *
open_tls(SSL_CTX *ctx, const char *what, int *fdp)
{
	SSL *ssl;
	int fd = dial(), r;

	*fdp = fd;
	if (fd < 0) {
		fail(ST_CONNECT, what, NULL, errno);
		return NULL;
	}
	ssl = SSL_new(ctx);
	if (!ssl || !SSL_set_fd(ssl, fd) ||
	    /* The server's certificate must name the address we dialled. */
	    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl),
					  "127.0.0.1") != 1) {
		fail(ST_HANDSHAKE, what, ssl, 0);
		goto err;
	}
	r = SSL_connect(ssl);
	if (r != 1) {
		fail(ST_HANDSHAKE, what, ssl, SSL_get_error(ssl, r));
		goto err;
	}
	if (SSL_get_verify_result(ssl) != X509_V_OK) {
		fail(ST_VERIFY, what, ssl, 0);
		goto err;
	}
	return ssl;
err:
	SSL_free(ssl);
	close(fd);
	*fdp = -1;
	return NULL;
}

/* Send one OPTIONS on @ssl.  With @quiet (the refused clients) nothing
 * is counted.  0 or -1. */
static int
send_options(SSL *ssl, int fd, const char *what, int quiet)
{
	struct sockaddr_in me;
	socklen_t len = sizeof(me);
	unsigned long n = atomic_fetch_add(&seq, 1);
	char req[768];
	int l, r;

	if (getsockname(fd, (struct sockaddr *)&me, &len))
		me.sin_port = 0;
	l = snprintf(req, sizeof(req),
		"OPTIONS sip:127.0.0.1:%d;transport=tls SIP/2.0\r\n"
		"Via: SIP/2.0/TLS 127.0.0.1:%u;branch=z9hG4bK-kl%lx;rport\r\n"
		"Max-Forwards: 70\r\n"
		"From: <sip:kamload@127.0.0.1>;tag=kl%lx\r\n"
		"To: <sip:127.0.0.1:%d>\r\n"
		"Call-ID: kl%lx-%ld@127.0.0.1\r\n"
		"CSeq: 1 OPTIONS\r\n"
		"Content-Length: 0\r\n\r\n",
		opt.port, ntohs(me.sin_port), n, n, opt.port, n,
		(long)getpid());
	r = SSL_write(ssl, req, l);
	if (r != l) {
		if (!quiet)
			fail(ST_WRITE, what, ssl, SSL_get_error(ssl, r));
		return -1;
	}
	return 0;
}

/* Read a SIP reply's header; 1 if it is a 200, 0 if it is another
 * reply, -1 if none came (error, timeout or close, counted unless
 * @quiet). */
static int
read_reply(SSL *ssl, const char *what, int quiet)
{
	char buf[2048];
	size_t have = 0;
	int r;

	while (have < sizeof(buf) - 1) {
		r = SSL_read(ssl, buf + have, (int)(sizeof(buf) - 1 - have));
		if (r <= 0) {
			if (!quiet)
				fail(ST_READ, what, ssl,
				     SSL_get_error(ssl, r));
			return -1;
		}
		have += (size_t)r;
		buf[have] = '\0';
		if (strstr(buf, "\r\n\r\n"))
			break;
	}
	if (!strncmp(buf, "SIP/2.0 200", 11))
		return 1;
	if (!quiet) {
		fail(ST_REPLY, what, ssl, 0);
		fprintf(stderr, "kamload: reply: %.60s\n", buf);
	}
	return 0;
}

static void
close_tls(SSL *ssl, int fd)
{
	/* A one-way close_notify: waiting for Kamailio's would only add a
	 * timeout when it does not send one. */
	SSL_shutdown(ssl);
	SSL_free(ssl);
	close(fd);
}

static int
running(void)
{
	return !atomic_load(&stop) && now() < t_end;
}

static void *
short_worker(void *arg)
{
	SSL *ssl;
	int fd, ok;

	(void)arg;
	while (running() &&
	       atomic_fetch_add(&short_started, 1) < opt.max_short) {
		ssl = open_tls(cert_ctx, "short", &fd);
		if (!ssl) {
			atomic_fetch_add(&hs_failed, 1);
			atomic_fetch_add(&short_failed, 1);
			continue;
		}
		atomic_fetch_add(&hs_ok, 1);
		note_ok();
		ok = send_options(ssl, fd, "short", 0) == 0 &&
		     read_reply(ssl, "short", 0) == 1;
		atomic_fetch_add(ok ? &short_ok : &short_failed, 1);
		close_tls(ssl, fd);
	}
	return NULL;
}

/* Sleep until @until or the stop flag, in short steps (the stop flag is
 * set when the server is gone). */
static void
idle_until(double until)
{
	struct timespec step = { 0, 50 * 1000 * 1000 };

	while (!atomic_load(&stop) && now() < until)
		nanosleep(&step, NULL);
}

static void *
long_worker(void *arg)
{
	SSL *ssl;
	int fd, ok, use;

	(void)arg;
	/* A cycle starts only if it can end near the deadline. */
	while (!atomic_load(&stop) &&
	       now() + (opt.uses - 1) * opt.idle <= t_end) {
		ssl = open_tls(cert_ctx, "long", &fd);
		if (!ssl) {
			atomic_fetch_add(&hs_failed, 1);
			atomic_fetch_add(&long_failed, 1);
			continue;
		}
		atomic_fetch_add(&hs_ok, 1);
		note_ok();
		ok = 1;
		for (use = 0; ok && use < opt.uses; use++) {
			if (use)
				idle_until(now() + opt.idle);
			if (atomic_load(&stop)) {
				ok = 0;
				break;
			}
			ok = send_options(ssl, fd, "long", 0) == 0 &&
			     read_reply(ssl, "long", 0) == 1;
		}
		atomic_fetch_add(ok ? &long_ok : &long_failed, 1);
		close_tls(ssl, fd);
	}
	return NULL;
}

static void *
nocert_worker(void *arg)
{
	SSL *ssl;
	int fd;

	(void)arg;
	while (running()) {
		ssl = NULL;
		fd = dial();
		if (fd < 0) {
			/* No connection at all is no evidence of a refusal:
			 * counted with the failures, not as refused. */
			fail(ST_CONNECT, "no-cert", NULL, errno);
			continue;
		}
		ssl = SSL_new(nocert_ctx);
		/* With TLS 1.3 the client's handshake completes before the
		 * server has checked the (missing) certificate: the refusal
		 * shows on the first read. */
		if (ssl && SSL_set_fd(ssl, fd) && SSL_connect(ssl) == 1 &&
		    send_options(ssl, fd, "no-cert", 1) == 0 &&
		    read_reply(ssl, "no-cert", 1) >= 0) {
			atomic_fetch_add(&nocert_accepted, 1);
			if (atomic_fetch_add(&told, 1) < 5)
				fprintf(stderr, "kamload: a client without "
					"certificate got a SIP reply\n");
		} else {
			atomic_fetch_add(&nocert_refused, 1);
		}
		ERR_clear_error();
		SSL_free(ssl);
		close(fd);
	}
	return NULL;
}

static SSL_CTX *
client_ctx(const char *ca, const char *cert, const char *key)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (!ctx || !SSL_CTX_load_verify_locations(ctx, ca, NULL) ||
	    !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION))
		goto err;
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	/* Every handshake a full one: no resumption. */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	if (cert && (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
		     SSL_CTX_use_PrivateKey_file(ctx, key,
						 SSL_FILETYPE_PEM) != 1 ||
		     SSL_CTX_check_private_key(ctx) != 1))
		goto err;
	return ctx;
err:
	ERR_print_errors_fp(stderr);
	SSL_CTX_free(ctx);
	return NULL;
}

static int
usage(void)
{
	fprintf(stderr, "usage: kamload -p PORT -a CA -c CERT -k KEY "
		"[-t SECONDS] [-w SHORT] [-l LONG] [-n NOCERT] [-i IDLE] "
		"[-u USES] [-m MAX] [-T TIMEOUT] [-S]\n");
	return 2;
}

static int
start(pthread_t *t, int *n, int count, void *(*fn)(void *))
{
	for (int i = 0; i < count; i++) {
		if (*n == MAX_THREADS || pthread_create(&t[*n], NULL, fn,
							NULL)) {
			fprintf(stderr, "kamload: cannot start a thread\n");
			atomic_store(&stop, 1);
			return -1;
		}
		(*n)++;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	const char *ca = NULL, *cert = NULL, *key = NULL;
	pthread_t t[MAX_THREADS];
	int c, n = 0, rc = 0;
	double elapsed, span;

	while ((c = getopt(argc, argv, "p:a:c:k:t:w:l:n:i:u:m:T:S")) != -1) {
		switch (c) {
		case 'p': opt.port = atoi(optarg); break;
		case 'a': ca = optarg; break;
		case 'c': cert = optarg; break;
		case 'k': key = optarg; break;
		case 't': opt.seconds = atof(optarg); break;
		case 'w': opt.shorts = atoi(optarg); break;
		case 'l': opt.longs = atoi(optarg); break;
		case 'n': opt.nocerts = atoi(optarg); break;
		case 'i': opt.idle = atof(optarg); break;
		case 'u': opt.uses = atoi(optarg); break;
		case 'm': opt.max_short = strtoul(optarg, NULL, 10); break;
		case 'T': opt.timeout = atof(optarg); break;
		case 'S': opt.stop_on_refused = 1; break;
		default: return usage();
		}
	}
	if (opt.port <= 0 || opt.port > 65535 || !ca || !cert || !key ||
	    opt.seconds <= 0 || opt.timeout <= 0 || opt.uses < 1 ||
	    opt.shorts < 0 || opt.longs < 0 || opt.nocerts < 0 ||
	    opt.shorts + opt.longs + opt.nocerts > MAX_THREADS)
		return usage();
	/* A write to a connection the server closed must fail, not kill. */
	signal(SIGPIPE, SIG_IGN);
	cert_ctx = client_ctx(ca, cert, key);
	nocert_ctx = client_ctx(ca, NULL, NULL);
	if (!cert_ctx || !nocert_ctx)
		return 1;
	t_start = now();
	t_end = t_start + opt.seconds;
	if (start(t, &n, opt.shorts, short_worker) ||
	    start(t, &n, opt.longs, long_worker) ||
	    start(t, &n, opt.nocerts, nocert_worker))
		rc = 1;
	for (int i = 0; i < n; i++)
		pthread_join(t[i], NULL);
	elapsed = now() - t_start;
	span = opt.stop_on_refused && atomic_load(&stop) ?
	       atomic_load(&last_ok) : elapsed;
	for (int s = 0; s < ST_COUNT; s++)
		if (atomic_load(&stage_fails[s]))
			fprintf(stderr, "kamload: %lu failures at %s\n",
				atomic_load(&stage_fails[s]), stage_name[s]);
	printf("kamload hs_ok %lu hs_failed %lu short_ok %lu short_failed %lu "
	       "long_ok %lu long_failed %lu nocert_refused %lu "
	       "nocert_accepted %lu elapsed %.2f last_ok %.2f rate %.1f "
	       "stop %d\n",
	       atomic_load(&hs_ok), atomic_load(&hs_failed),
	       atomic_load(&short_ok), atomic_load(&short_failed),
	       atomic_load(&long_ok), atomic_load(&long_failed),
	       atomic_load(&nocert_refused), atomic_load(&nocert_accepted),
	       elapsed, atomic_load(&last_ok),
	       span > 0 ? (double)atomic_load(&hs_ok) / span : 0.0,
	       atomic_load(&stop));
	SSL_CTX_free(cert_ctx);
	SSL_CTX_free(nocert_ctx);
	return rc;
}
