/*
 * osslproc-demo: a worker, one of N processes forked by the parent, that
 * accepts TLS 1.3 connections on its own SO_REUSEPORT socket and answers
 * "ping <n>" with "pong <n> worker=<i> plugin=<on|off>".
 *
 * One thread, poll() over the control pipe, the listening socket and the
 * open connections.  The sockets are blocking (with send and receive
 * timeouts): the demo's client is sequential, so a handshake or a
 * request never waits on another connection, and the code stays short.
 *
 * The plugin is unloaded when the parent says so (CMD_UNLOAD), at a moment
 * the parent chose: after the client's first phase, while the client
 * keeps connections to this worker open.  A single coordinator makes the
 * unload happen in every worker before the client goes on, so every
 * request after that point is provably served without the plugin.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>

#include "demo.h"

/* Send and receive timeout on each connection. */
#define IO_TIMEOUT_S 20

struct conn {
	int fd;
	SSL *ssl;
	size_t len;
	char buf[REQUEST_MAX];
};

struct worker {
	struct demo *d;
	unsigned index;
	int lfd, ctl, rep;
	SSL_CTX *ctx;
	struct conn **conns;
	size_t n, cap;
	struct pollfd *pfds;
	struct report r;
};

/*
 * The builder of the per-process server SSL_CTX (ossl_proc_ctx_new): each
 * worker gets its own context, with its own callbacks set by the plugin,
 * instead of sharing the parent's copy-on-write one.
 */
SSL_CTX *
build_server_ctx(void *arg)
{
	struct demo *d = arg;
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (!ctx || !SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
	    !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) ||
	    SSL_CTX_use_certificate_chain_file(ctx, d->cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, d->key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		warn_openssl("cannot build the server SSL_CTX");
		SSL_CTX_free(ctx);
		return NULL;
	}
	/* The client never resumes: no session cache, no tickets. */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_num_tickets(ctx, 0);
	/* Served from poll(): SSL_read must come back after a record that
	 * carries no data instead of blocking for the next one. */
	SSL_CTX_clear_mode(ctx, SSL_MODE_AUTO_RETRY);
	if (d->plugin && d->plugin->configure(ctx) < 0) {
		warn_openssl("the plugin refused the server SSL_CTX");
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

static void
set_options(int fd)
{
	struct timeval tv = { .tv_sec = IO_TIMEOUT_S };
	int one = 1;

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	/* TLS writes a flight as several records: without this, Nagle and
	 * delayed ACKs add 40 ms to every handshake. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static int
grow(struct worker *w)
{
	size_t cap = w->cap ? w->cap * 2 : 16;
	struct conn **c = realloc(w->conns, cap * sizeof(*c));
	struct pollfd *p;

	if (!c)
		return -ENOMEM;
	w->conns = c;
	/* Two more: the control pipe and the listening socket. */
	p = realloc(w->pfds, (cap + 2) * sizeof(*p));
	if (!p)
		return -ENOMEM;
	w->pfds = p;
	w->cap = cap;
	return 0;
}

static void
conn_free(struct worker *w, struct conn *c)
{
	SSL_free(c->ssl);
	close(c->fd);
	free(c);
	w->r.u.w.conns_freed++;
}

/* A new connection: handshake (blocking, bounded by the timeouts). */
static void
accept_one(struct worker *w)
{
	struct worker_report *wr = &w->r.u.w;
	int fd = accept4(w->lfd, NULL, NULL, SOCK_CLOEXEC);
	struct conn *c;

	if (fd < 0)
		return;
	set_options(fd);
	c = calloc(1, sizeof(*c));
	if (!c || (w->n == w->cap && grow(w) < 0)) {
		say("out of memory; connection dropped");
		free(c);
		close(fd);
		return;
	}
	c->fd = fd;
	c->ssl = SSL_new(w->ctx);
	if (!c->ssl || !SSL_set_fd(c->ssl, fd) || SSL_accept(c->ssl) != 1) {
		wr->hs_failed++;
		warn_openssl("handshake failed");
		conn_free(w, c);
		return;
	}
	wr->hs_ok++;
	if (!w->d->plugin)
		wr->hs_after++;
	w->conns[w->n++] = c;
}

static int
answer(struct worker *w, struct conn *c, const char *line)
{
	struct worker_report *wr = &w->r.u.w;
	char out[128];
	unsigned seq;
	int n;

	if (sscanf(line, "ping %u", &seq) != 1) {
		say("bad request \"%.40s\"", line);
		return -EPROTO;
	}
	n = snprintf(out, sizeof(out), "pong %u worker=%u plugin=%s\n", seq,
		     w->index, w->d->plugin ? "on" : "off");
	if (SSL_write(c->ssl, out, n) != n) {
		warn_openssl("reply failed");
		return -EIO;
	}
	wr->requests++;
	if (!w->d->plugin)
		wr->requests_after++;
	return 0;
}

/* Answer every complete line in the buffer. */
static int
answer_lines(struct worker *w, struct conn *c)
{
	char *nl;
	int rc;

	while ((nl = memchr(c->buf, '\n', c->len))) {
		size_t used = (size_t)(nl - c->buf) + 1;

		*nl = '\0';
		rc = answer(w, c, c->buf);
		if (rc < 0)
			return rc;
		memmove(c->buf, c->buf + used, c->len - used);
		c->len -= used;
	}
	return c->len < sizeof(c->buf) - 1 ? 0 : -EMSGSIZE;
}

/* The connection is readable: 0 to keep it, -1 to free it. */
static int
conn_serve(struct worker *w, struct conn *c)
{
	int n, err;

	do {
		n = SSL_read(c->ssl, c->buf + c->len,
			     (int)(sizeof(c->buf) - 1 - c->len));
		if (n <= 0) {
			err = SSL_get_error(c->ssl, n);
			if (err == SSL_ERROR_WANT_READ)
				return 0;
			/* The client's close_notify: answer it. */
			if (err == SSL_ERROR_ZERO_RETURN)
				SSL_shutdown(c->ssl);
			else
				warn_openssl("connection lost");
			return -1;
		}
		c->len += (size_t)n;
		if (answer_lines(w, c) < 0)
			return -1;
	} while (SSL_has_pending(c->ssl));
	return 0;
}

/* Serve the connections poll() found readable; drop the closed ones. */
static void
serve_ready(struct worker *w, size_t polled)
{
	size_t kept = 0;

	for (size_t i = 0; i < w->n; i++) {
		struct conn *c = w->conns[i];

		if (i < polled && w->pfds[2 + i].revents &&
		    conn_serve(w, c) < 0)
			conn_free(w, c);
		else
			w->conns[kept++] = c;
	}
	w->n = kept;
}

static void
unload(struct worker *w)
{
	struct worker_report *wr = &w->r.u.w;

	wr->open_at_unload = w->n;
	if (w->d->plugin) {
		w->d->plugin->counters(&wr->plugin);
		plugin_close(w->d, &wr->unload);
	}
	w->r.kind = R_UNLOADED;
	send_report(w->rep, &w->r);
}

/* One control command: 1 to go on, 0 to finish, negative on error. */
static int
control(struct worker *w)
{
	unsigned char cmd;

	if (read(w->ctl, &cmd, 1) != 1) {
		say("the parent is gone");
		return -EPIPE;
	}
	if (cmd == CMD_EXIT)
		return 0;
	if (cmd == CMD_UNLOAD)
		unload(w);
	return 1;
}

static int
serve(struct worker *w)
{
	/* A little longer than the parent waits: it kills us first. */
	uint64_t deadline = w->d->deadline + 5000000u;
	size_t polled;
	uint64_t now;
	int rc;

	for (;;) {
		now = now_us();
		if (now >= deadline)
			return -ETIMEDOUT;
		w->pfds[0] = (struct pollfd){ .fd = w->ctl, .events = POLLIN };
		w->pfds[1] = (struct pollfd){ .fd = w->lfd, .events = POLLIN };
		for (size_t i = 0; i < w->n; i++)
			w->pfds[2 + i] = (struct pollfd){
				.fd = w->conns[i]->fd, .events = POLLIN };
		polled = w->n;
		if (poll(w->pfds, polled + 2,
			 (int)((deadline - now) / 1000) + 1) < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (w->pfds[0].revents && (rc = control(w)) <= 0)
			return rc;
		if (w->pfds[1].revents & POLLIN)
			accept_one(w);
		serve_ready(w, polled);
	}
}

static void finish(struct worker *w, int rc) __attribute__((noreturn));

static void
finish(struct worker *w, int rc)
{
	struct unload_result late = { 0 };

	/* The parent stopped early: leave no plugin behind anyway. */
	if (w->d->plugin)
		plugin_close(w->d, &late);
	while (w->n > 0)
		conn_free(w, w->conns[--w->n]);
	free(w->conns);
	free(w->pfds);
	ossl_proc_ctx_free(w->d->server);
	w->d->server = NULL;
	final_stats(&w->r.u.w.fin);
	w->r.kind = R_FINAL;
	send_report(w->rep, &w->r);
	/* exit(), not _exit(): OpenSSL's atexit handler and osslproc's
	 * exit-time drain run as in any real worker. */
	exit(rc < 0 ? 1 : 0);
}

void
worker_main(struct demo *d, unsigned index, int ctl, int rep)
{
	struct worker w = { .d = d, .index = index, .lfd = d->listen_fds[index],
			    .ctl = ctl, .rep = rep };
	int rc;

	w.r.index = (int32_t)index;
	if (grow(&w) < 0) {
		say("out of memory");
		exit(1);
	}
	/* This process's own SSL_CTX: the parent's copy is dropped and a
	 * new one built, with the plugin's callbacks set again here. */
	w.ctx = ossl_proc_ctx_get(d->server);
	if (!w.ctx)
		finish(&w, -EIO);
	w.r.kind = R_READY;
	rc = send_report(rep, &w.r);
	if (!rc)
		rc = serve(&w);
	if (rc < 0)
		say("stopping: %s", strerror(-rc));
	finish(&w, rc);
}
