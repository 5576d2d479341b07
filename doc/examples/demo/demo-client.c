/*
 * osslproc-demo: the client, a process forked by the parent before the
 * plugin is loaded, so that it stands for an outside peer.
 *
 * Phase 1 (CMD_GO): verified TLS 1.3 handshakes to 127.0.0.1, each with
 * one request; the first few connections each worker serves stay open.
 * Phase 2 (CMD_AFTER, once every worker has unloaded the plugin): more
 * requests on those open connections, then new handshakes, every reply
 * required to say "plugin=off"; then everything is closed cleanly.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509_vfy.h>

#include "demo.h"

#define IO_TIMEOUT_S 20
/* Requests on each kept connection after the unload. */
#define KEPT_ROUNDS 3
/* Failures described on stderr; the rest are only counted. */
#define MAX_COMPLAINTS 5

struct cconn {
	int fd;
	SSL *ssl;
	unsigned worker;
};

struct client {
	struct demo *d;
	SSL_CTX *ctx;
	struct cconn *kept;
	size_t n_kept;
	unsigned kept_by[MAX_WORKERS];
	unsigned seq, complaints;
	struct report r;
};

static void
complain(struct client *c, const char *what, SSL *ssl)
{
	long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;

	if (c->complaints++ >= MAX_COMPLAINTS) {
		ERR_clear_error();
		return;
	}
	if (v != X509_V_OK)
		say("%s: certificate verification: %s", what,
		    X509_verify_cert_error_string(v));
	else
		warn_openssl(what);
}

/* The client's context: trust only the given CA, verify the peer. */
static SSL_CTX *
client_ctx(const struct demo *d)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (ctx && SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) &&
	    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) &&
	    SSL_CTX_load_verify_file(ctx, d->ca) == 1) {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
		return ctx;
	}
	warn_openssl("cannot build the client SSL_CTX");
	SSL_CTX_free(ctx);
	return NULL;
}

static int
tcp_connect(unsigned port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct timeval tv = { .tv_sec = IO_TIMEOUT_S };
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	/* Small TLS records both ways: do not wait for delayed ACKs. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int rc = -errno;

		close(fd);
		return rc;
	}
	return fd;
}

static void
conn_close(struct cconn *cc)
{
	/* A clean close both ways: send close_notify, wait for the
	 * server's (bounded by the receive timeout). */
	if (SSL_shutdown(cc->ssl) == 0)
		SSL_shutdown(cc->ssl);
	SSL_free(cc->ssl);
	close(cc->fd);
	cc->ssl = NULL;
	cc->fd = -1;
}

/* A verified TLS 1.3 connection in @cc; 0 or -1. */
static int
handshake(struct client *c, struct cconn *cc)
{
	const char *host = c->d->opt.host;

	cc->fd = tcp_connect(c->d->port);
	if (cc->fd < 0) {
		say("connect: %s", strerror(-cc->fd));
		return -1;
	}
	cc->ssl = SSL_new(c->ctx);
	/* SNI, and the name the certificate must carry. */
	if (cc->ssl && SSL_set_fd(cc->ssl, cc->fd) &&
	    SSL_set_tlsext_host_name(cc->ssl, host) &&
	    X509_VERIFY_PARAM_set1_host(SSL_get0_param(cc->ssl), host, 0) &&
	    SSL_connect(cc->ssl) == 1 &&
	    SSL_get_verify_result(cc->ssl) == X509_V_OK &&
	    SSL_get0_peer_certificate(cc->ssl) &&
	    SSL_version(cc->ssl) == TLS1_3_VERSION)
		return 0;
	complain(c, "handshake failed", cc->ssl);
	SSL_free(cc->ssl);
	close(cc->fd);
	return -1;
}

static int
read_line(SSL *ssl, char *buf, size_t size)
{
	size_t len = 0;
	int n;

	while (len < size - 1) {
		n = SSL_read(ssl, buf + len, (int)(size - 1 - len));
		if (n <= 0)
			return -1;
		len += (size_t)n;
		if (memchr(buf, '\n', len)) {
			buf[len] = '\0';
			return 0;
		}
	}
	return -1;
}

/*
 * One request and its reply; the worker that answered in cc->worker.
 * 0, or -1 for no or a malformed reply.  A reply from the wrong side of
 * the unload is counted, not failed, so the summary can say how many.
 */
static int
exchange(struct client *c, struct cconn *cc, int after)
{
	char req[32], rep[128], state[8];
	unsigned seq = ++c->seq, got, worker;
	int n = snprintf(req, sizeof(req), "ping %u\n", seq);

	if (SSL_write(cc->ssl, req, n) != n ||
	    read_line(cc->ssl, rep, sizeof(rep)) < 0) {
		complain(c, "request failed", NULL);
		return -1;
	}
	if (sscanf(rep, "pong %u worker=%u plugin=%7s", &got, &worker,
		   state) != 3 || got != seq ||
	    worker >= c->d->opt.workers) {
		say("unexpected reply \"%.60s\" to request %u", rep, seq);
		return -1;
	}
	cc->worker = worker;
	if (strcmp(state, after ? "off" : "on") != 0)
		c->r.u.c.wrong_state++;
	return 0;
}

/* Keep @cc open across the unload if its worker has fewer than --keep. */
static int
keep(struct client *c, struct cconn *cc)
{
	if (c->kept_by[cc->worker] >= c->d->opt.keep)
		return 0;
	c->kept_by[cc->worker]++;
	c->kept[c->n_kept++] = *cc;
	return 1;
}

/* One handshake and one request; @after: 0 before the unload, 1 after. */
static void
one_connection(struct client *c, int after)
{
	struct client_report *cr = &c->r.u.c;
	struct cconn cc;

	if (handshake(c, &cc) < 0) {
		cr->hs_failed[after]++;
		return;
	}
	cr->hs_ok[after]++;
	if (exchange(c, &cc, after) < 0) {
		cr->ex_failed[after]++;
		conn_close(&cc);
		return;
	}
	cr->ex_ok[after]++;
	cr->served_by[cc.worker]++;
	if (after || !keep(c, &cc))
		conn_close(&cc);
}

static unsigned
after_count(const struct options *o)
{
	return o->handshakes / 4 ? o->handshakes / 4 : 1;
}

static void
phase_before(struct client *c)
{
	unsigned n = c->d->opt.handshakes - after_count(&c->d->opt);
	uint64_t t = now_us();

	for (unsigned i = 0; i < n; i++)
		one_connection(c, 0);
	c->r.u.c.kept = c->n_kept;
	c->r.u.c.us[0] = now_us() - t;
}

/* The connections opened while the plugin was loaded still work. */
static void
use_kept(struct client *c)
{
	struct client_report *cr = &c->r.u.c;

	for (size_t i = 0; i < c->n_kept; i++) {
		struct cconn *cc = &c->kept[i];
		unsigned worker = cc->worker;

		for (int k = 0; k < KEPT_ROUNDS; k++) {
			if (exchange(c, cc, 1) == 0 && cc->worker == worker) {
				cr->kept_ex_ok++;
			} else {
				cr->kept_ex_failed++;
				break;
			}
		}
	}
}

static void
phase_after(struct client *c)
{
	unsigned n = after_count(&c->d->opt);
	uint64_t t = now_us();

	use_kept(c);
	for (unsigned i = 0; i < n; i++)
		one_connection(c, 1);
	for (size_t i = 0; i < c->n_kept; i++)
		conn_close(&c->kept[i]);
	c->n_kept = 0;
	c->r.u.c.us[1] = now_us() - t;
}

static int
await(struct client *c, int ctl, int want)
{
	int cmd = wait_command(ctl, c->d->deadline + 5000000u);

	if (cmd == want)
		return 0;
	say("stopping: %s", cmd < 0 ? strerror(-cmd) : "unexpected command");
	return -1;
}

/* Both phases; 0, or -1 if the client had to stop early. */
static int
client_run(struct client *c, int ctl, int rep)
{
	if (await(c, ctl, CMD_GO) < 0)
		return -1;
	c->ctx = client_ctx(c->d);
	c->kept = calloc((size_t)c->d->opt.workers * c->d->opt.keep + 1,
			 sizeof(*c->kept));
	if (!c->ctx || !c->kept)
		return -1;
	phase_before(c);
	c->r.kind = R_BEFORE;
	if (send_report(rep, &c->r) < 0 || await(c, ctl, CMD_AFTER) < 0)
		return -1;
	phase_after(c);
	return 0;
}

void
client_main(struct demo *d, int ctl, int rep)
{
	struct client c = { .d = d };

	int rc;

	c.r.index = -1;
	rc = client_run(&c, ctl, rep);
	for (size_t i = 0; i < c.n_kept; i++)
		conn_close(&c.kept[i]);
	free(c.kept);
	SSL_CTX_free(c.ctx);
	final_stats(&c.r.u.c.fin);
	c.r.kind = R_FINAL;
	send_report(rep, &c.r);
	exit(rc < 0 ? 1 : 0);
}
