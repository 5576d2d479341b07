/*
 * Trampolines for callbacks that module scopes set on an SSL_CTX.
 *
 * SSL_new() copies a context's callbacks into each SSL, so a plugin's
 * callback cannot simply be taken back from the context at unload.  The
 * context gets one of the trampolines below instead, and the plugin's
 * callback goes on a per-context stack (a binding, kept in an SSL_CTX
 * ex_data slot of ours).  A trampoline calls the newest callback on the
 * stack of the SSL's context; with the stack empty, the callback that was
 * on the context before, or OpenSSL's behaviour without one.
 *
 * No lock is held while a callback runs, so that a callback may call any
 * module function.  The per-SSL setters (SSL_set_info_callback() and
 * the others) work the same way, with the stack on the SSL: the
 * trampoline there calls what the SSL had before once the stack is
 * empty (for the info callback: none, so the context's).
 *
 * A dispatch reads the stack under the binding's own
 * mutex, held for a few loads, and counts itself on the gate of the
 * node's scope before letting go; a close unlinks its scope's nodes under
 * the same mutex, after which no dispatch reaches them, and then waits
 * for its gate alone to drain: callbacks of other scopes, and callbacks
 * that start after the unlink, do not hold it up.  Each thread keeps its
 * dispatches in progress on a list of frames, so that a close from inside
 * one of its own scope's callbacks is refused rather than waiting for
 * itself.  The nodes belong to this file: a context freed before the
 * module closed only marks its nodes, which the module's close then
 * frees.
 */
#include <stdlib.h>

#include "module-int.h"

/* Per SSL_CTX (or SSL): the stack of module callbacks above what was
 * there. */
struct binding {
	/* Dispatches read top[] and base[] under it; writers hold the
	 * binding lock as well.  Never held across a call. */
	pthread_mutex_t lock;
	struct cb_node *top[CB_COUNT];
	any_fn base[CB_COUNT];
	int base_verify_mode;
	/* Unlinked nodes whose scope has not restored them yet: marked too
	 * when the context goes first. */
	struct cb_node *retired;
	/* All bindings, for a child to reset their locks. */
	struct binding *next, **pprev;
};

/* Recursive: a context freed from inside a section that holds it (an
 * on_close hook, a callback's SSL_CTX_free) takes it again. */
static pthread_mutex_t bind_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
/* The ex_data slots of the bindings: on SSL_CTX, on SSL. */
static int bind_index[2] = { -1, -1 };
static struct binding *bindings;

/* Closers wait on it; a dispatch takes it only to wake one. */
static pthread_mutex_t wait_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t drained = PTHREAD_COND_INITIALIZER;
static struct tramp_waiter *waiters;

#define GATE_WAITING 0x80000000u

/* This thread's dispatches in progress, innermost first. */
static __thread struct tramp_frame *frames
	__attribute__((tls_model("initial-exec")));
/* Inside one of ops[]' getters, called for the trampolines. */
static __thread int raw_gets __attribute__((tls_model("initial-exec")));

void
tramp_lock(void)
{
	pthread_mutex_lock(&bind_lock);
}

void
tramp_unlock(void)
{
	pthread_mutex_unlock(&bind_lock);
}

static void
mark_freed(struct cb_node *n)
{
	for (; n; n = n->below)
		n->obj = NULL;
}

/* The context (or SSL) is going away before the modules of its nodes closed:
 * their close must not touch it.  No dispatch runs on it any more. */
static void
binding_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
	     long argl, void *argp)
{
	struct binding *b = ptr;

	(void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
	if (!b)
		return;
	tramp_lock();
	for (int k = 0; k < CB_COUNT; k++)
		mark_freed(b->top[k]);
	mark_freed(b->retired);
	*b->pprev = b->next;
	if (b->next)
		b->next->pprev = b->pprev;
	tramp_unlock();
	pthread_mutex_destroy(&b->lock);
	free(b);
}

static bool
on_ssl(enum cb_kind kind)
{
	return kind >= CB_FIRST_SSL;
}

/* CRYPTO_dup_ex_data() (SSL_dup()) copies every slot's pointer: the copy
 * must not share the original's binding, freed with either.  It gets
 * its own when SSL_dup() sets the callbacks on it. */
static int
binding_dup(CRYPTO_EX_DATA *to, const CRYPTO_EX_DATA *from, void **from_d,
	    int idx, long argl, void *argp)
{
	(void)to, (void)from, (void)idx, (void)argl, (void)argp;
	*from_d = NULL;
	return 1;
}

static struct binding *
binding_get(const void *obj, enum cb_kind kind)
{
	int idx = bind_index[on_ssl(kind)];

	if (!obj || idx < 0)
		return NULL;
	return on_ssl(kind) ? SSL_get_ex_data(obj, idx)
			    : SSL_CTX_get_ex_data(obj, idx);
}

/* ---- dispatch ---- */

/* Find what to call for @kind on @obj: the newest module entry (*arg
 * set unless it passes OpenSSL's, counted on its gate and pushed on this
 * thread's frames), else the base callback (*arg untouched); NULL when
 * there is neither.  The
 * caller calls tramp_done(@f) afterwards. */
static any_fn
lookup(const void *obj, enum cb_kind kind, void **arg,
       struct tramp_frame *f)
{
	struct binding *b = binding_get(obj, kind);
	struct cb_node *n;
	any_fn fn;

	f->gate = NULL;
	if (!b)
		return NULL;
	pthread_mutex_lock(&b->lock);
	n = b->top[kind];
	if (n) {
		if (!n->pass_arg)
			*arg = n->arg;
		fn = n->fn;
		f->gate = n->gate;
		/* The unlock orders it before the closer's unlink and so
		 * before its wait reads the count. */
		atomic_fetch_add_explicit(&f->gate->inflight, 1,
					  memory_order_relaxed);
	} else {
		fn = b->base[kind];
	}
	pthread_mutex_unlock(&b->lock);
	if (f->gate) {
		f->up = frames;
		frames = f;
	}
	return fn;
}

/* Wake the closers: one of them waits for a gate that just drained.
 * The gate is not touched: its scope may be freed by now. */
static void
wake_closers(void)
{
	pthread_mutex_lock(&wait_lock);
	pthread_cond_broadcast(&drained);
	pthread_mutex_unlock(&wait_lock);
}

static void
tramp_done(struct tramp_frame *f)
{
	unsigned was;

	if (!f->gate)
		return;
	frames = f->up;
	/* Release: what the callback did happens before the close. */
	was = atomic_fetch_sub_explicit(&f->gate->inflight, 1,
					memory_order_release);
	if (unlikely(was == (GATE_WAITING | 1)))
		wake_closers();
}

#define CTX(ssl) SSL_get_SSL_CTX(ssl)

static void
t_info(const SSL *ssl, int where, int ret)
{
	struct tramp_frame fr;
	void *arg = NULL;
	any_fn f = lookup(CTX(ssl), CB_INFO, &arg, &fr);

	if (f)
		((info_fn)f)(ssl, where, ret);
	tramp_done(&fr);
}

static int
t_verify(int ok, X509_STORE_CTX *store)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(store,
		SSL_get_ex_data_X509_STORE_CTX_idx());
	struct tramp_frame fr;
	void *arg = NULL;
	any_fn f = lookup(ssl ? CTX(ssl) : NULL, CB_VERIFY, &arg, &fr);

	if (f)
		ok = ((SSL_verify_cb)f)(ok, store);
	tramp_done(&fr);
	return ok;
}

static void
t_msg(int write_p, int version, int type, const void *buf, size_t len,
      SSL *ssl, void *arg)
{
	struct tramp_frame fr;
	void *unused = NULL;
	any_fn f = lookup(CTX(ssl), CB_MSG, &unused, &fr);

	if (f)
		((msg_fn)f)(write_p, version, type, buf, len, ssl, arg);
	tramp_done(&fr);
}

static void
t_keylog(const SSL *ssl, const char *line)
{
	struct tramp_frame fr;
	void *arg = NULL;
	any_fn f = lookup(CTX(ssl), CB_KEYLOG, &arg, &fr);

	if (f)
		((SSL_CTX_keylog_cb_func)f)(ssl, line);
	tramp_done(&fr);
}

/* Without a callback: no ALPN, as if none had been set. */
static int
t_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
       const unsigned char *in, unsigned int inlen, void *unused)
{
	struct tramp_frame fr;
	void *arg = NULL;
	any_fn f = lookup(CTX(ssl), CB_ALPN, &arg, &fr);
	int rc = SSL_TLSEXT_ERR_NOACK;

	(void)unused;
	if (f)
		rc = ((alpn_fn)f)(ssl, out, outlen, in, inlen, arg);
	tramp_done(&fr);
	return rc;
}

/* Without a callback: the name is accepted, as if none had been set. */
static int
t_servername(SSL *ssl, int *al, void *given)
{
	struct tramp_frame fr;
	void *arg = given;
	any_fn f = lookup(CTX(ssl), CB_SERVERNAME, &arg, &fr);
	int rc = SSL_TLSEXT_ERR_OK;

	if (f)
		rc = ((servername_fn)f)(ssl, al, arg);
	tramp_done(&fr);
	return rc;
}

/* Without a callback: the session is not kept (0: no reference taken). */
static int
t_sess_new(SSL *ssl, SSL_SESSION *sess)
{
	struct tramp_frame fr;
	void *arg = NULL;
	any_fn f = lookup(CTX(ssl), CB_SESS_NEW, &arg, &fr);
	int rc = 0;

	if (f)
		rc = ((sess_new_fn)f)(ssl, sess);
	tramp_done(&fr);
	return rc;
}

static void
t_sess_remove(SSL_CTX *ctx, SSL_SESSION *sess)
{
	struct tramp_frame fr;
	void *arg = NULL;
	any_fn f = lookup(ctx, CB_SESS_REMOVE, &arg, &fr);

	if (f)
		((sess_remove_fn)f)(ctx, sess);
	tramp_done(&fr);
}

/* Without a callback: no client certificate. */
static int
t_client_cert(SSL *ssl, X509 **x509, EVP_PKEY **pkey)
{
	struct tramp_frame fr;
	void *arg = NULL;
	any_fn f = lookup(CTX(ssl), CB_CLIENT_CERT, &arg, &fr);
	int rc = 0;

	if (f)
		rc = ((client_cert_fn)f)(ssl, x509, pkey);
	tramp_done(&fr);
	return rc;
}

/* Without a callback: no PSK. */
static unsigned int
t_psk_client(SSL *ssl, const char *hint, char *identity,
	     unsigned int max_identity_len, unsigned char *psk,
	     unsigned int max_psk_len)
{
	struct tramp_frame fr;
	void *arg = NULL;
	any_fn f = lookup(CTX(ssl), CB_PSK_CLIENT, &arg, &fr);
	unsigned int rc = 0;

	if (f)
		rc = ((SSL_psk_client_cb_func)f)(ssl, hint, identity,
						 max_identity_len, psk,
						 max_psk_len);
	tramp_done(&fr);
	return rc;
}

static unsigned int
t_psk_server(SSL *ssl, const char *identity, unsigned char *psk,
	     unsigned int max_psk_len)
{
	struct tramp_frame fr;
	void *arg = NULL;
	any_fn f = lookup(CTX(ssl), CB_PSK_SERVER, &arg, &fr);
	unsigned int rc = 0;

	if (f)
		rc = ((SSL_psk_server_cb_func)f)(ssl, identity, psk,
						 max_psk_len);
	tramp_done(&fr);
	return rc;
}

/* Without a callback: a server sends no status, a client accepts. */
static int
t_status(SSL *ssl, void *given)
{
	struct tramp_frame fr;
	void *arg = given;
	any_fn f = lookup(CTX(ssl), CB_STATUS, &arg, &fr);
	int rc = SSL_is_server(ssl) ? SSL_TLSEXT_ERR_NOACK : 1;

	if (f)
		rc = ((status_fn)f)(ssl, arg);
	tramp_done(&fr);
	return rc;
}

/* Without a callback: no session found in the external cache. */
static SSL_SESSION *
t_sess_get(SSL *ssl, const unsigned char *id, int len, int *copy)
{
	struct tramp_frame fr;
	void *arg = NULL;
	any_fn f = lookup(CTX(ssl), CB_SESS_GET, &arg, &fr);
	SSL_SESSION *sess = NULL;

	if (f)
		sess = ((sess_get_fn)f)(ssl, id, len, copy);
	tramp_done(&fr);
	return sess;
}

/* Without a callback: OpenSSL's own verification.  The SSL is on the
 * store context before OpenSSL calls it. */
static int
t_cert_verify(X509_STORE_CTX *store, void *unused)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(store,
		SSL_get_ex_data_X509_STORE_CTX_idx());
	struct tramp_frame fr;
	void *arg = NULL;
	any_fn f = lookup(ssl ? CTX(ssl) : NULL, CB_CERT_VERIFY, &arg, &fr);
	int rc;

	(void)unused;
	rc = f ? ((cert_verify_fn)f)(store, arg) : X509_verify_cert(store);
	tramp_done(&fr);
	return rc;
}

/* Without a callback: carry on with the certificate there is. */
static int
t_cert(SSL *ssl, void *unused)
{
	struct tramp_frame fr;
	void *arg = NULL;
	any_fn f = lookup(CTX(ssl), CB_CERT, &arg, &fr);
	int rc = 1;

	(void)unused;
	if (f)
		rc = ((cert_fn)f)(ssl, arg);
	tramp_done(&fr);
	return rc;
}

/* Without a callback: the handshake goes on. */
static int
t_client_hello(SSL *ssl, int *al, void *unused)
{
	struct tramp_frame fr;
	void *arg = NULL;
	any_fn f = lookup(CTX(ssl), CB_CLIENT_HELLO, &arg, &fr);
	int rc = SSL_CLIENT_HELLO_SUCCESS;

	(void)unused;
	if (f)
		rc = ((SSL_client_hello_cb_fn)f)(ssl, al, arg);
	tramp_done(&fr);
	return rc;
}

/* ---- per SSL ---- */

static any_fn ctx_info(const SSL *ssl);

/* With neither a module's nor one the SSL had, OpenSSL would call the
 * context's. */
static void
t_ssl_info(const SSL *ssl, int where, int ret)
{
	struct tramp_frame fr;
	void *arg = NULL;
	any_fn f = lookup(ssl, CB_SSL_INFO, &arg, &fr);

	if (!f)
		f = ctx_info(ssl);
	if (f)
		((info_fn)f)(ssl, where, ret);
	tramp_done(&fr);
}

static int
t_ssl_verify(int ok, X509_STORE_CTX *store)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(store,
		SSL_get_ex_data_X509_STORE_CTX_idx());
	struct tramp_frame fr;
	void *arg = NULL;
	any_fn f = lookup(ssl, CB_SSL_VERIFY, &arg, &fr);

	if (f)
		ok = ((SSL_verify_cb)f)(ok, store);
	tramp_done(&fr);
	return ok;
}

static void
t_ssl_msg(int write_p, int version, int type, const void *buf, size_t len,
	  SSL *ssl, void *arg)
{
	struct tramp_frame fr;
	void *unused = NULL;
	any_fn f = lookup(ssl, CB_SSL_MSG, &unused, &fr);

	if (f)
		((msg_fn)f)(write_p, version, type, buf, len, ssl, arg);
	tramp_done(&fr);
}

/* ---- per kind: how to read and set the object's callback ---- */

static any_fn g_info(void *c) { return (any_fn)SSL_CTX_get_info_callback(c); }
static any_fn g_verify(void *c) { return (any_fn)SSL_CTX_get_verify_callback(c); }
static any_fn g_keylog(void *c) { return (any_fn)SSL_CTX_get_keylog_callback(c); }
static any_fn g_sess_new(void *c) { return (any_fn)SSL_CTX_sess_get_new_cb(c); }
static any_fn g_sess_remove(void *c) { return (any_fn)SSL_CTX_sess_get_remove_cb(c); }
static any_fn g_client_cert(void *c) { return (any_fn)SSL_CTX_get_client_cert_cb(c); }
static any_fn g_sess_get(void *c) { return (any_fn)SSL_CTX_sess_get_get_cb(c); }
static any_fn g_ssl_info(void *s) { return (any_fn)SSL_get_info_callback(s); }
static any_fn g_ssl_verify(void *s) { return (any_fn)SSL_get_verify_callback(s); }

static any_fn
g_status(void *c)
{
	status_fn f = NULL;

	return SSL_CTX_get_tlsext_status_cb((SSL_CTX *)c, &f) > 0 ? (any_fn)f
								   : NULL;
}

static int m_verify(void *c) { return SSL_CTX_get_verify_mode(c); }
static int m_ssl_verify(void *s) { return SSL_get_verify_mode(s); }

static void s_info(void *c, any_fn f, int m) { (void)m; SSL_CTX_set_info_callback(c, (info_fn)f); }
static void s_verify(void *c, any_fn f, int m) { SSL_CTX_set_verify(c, m, (SSL_verify_cb)f); }
static void s_msg(void *c, any_fn f, int m) { (void)m; SSL_CTX_set_msg_callback(c, (msg_fn)f); }
static void s_keylog(void *c, any_fn f, int m) { (void)m; SSL_CTX_set_keylog_callback(c, (SSL_CTX_keylog_cb_func)f); }
static void s_alpn(void *c, any_fn f, int m) { (void)m; SSL_CTX_set_alpn_select_cb(c, (alpn_fn)f, NULL); }
/* The context's own argument stays: the trampoline passes it to a
 * module callback that takes it (pass_arg), else gives the module's. */
static void s_servername(void *c, any_fn f, int m) { (void)m; SSL_CTX_set_tlsext_servername_callback((SSL_CTX *)c, (servername_fn)f); }
static void s_sess_new(void *c, any_fn f, int m) { (void)m; SSL_CTX_sess_set_new_cb(c, (sess_new_fn)f); }
static void s_sess_remove(void *c, any_fn f, int m) { (void)m; SSL_CTX_sess_set_remove_cb(c, (sess_remove_fn)f); }
static void s_client_cert(void *c, any_fn f, int m) { (void)m; SSL_CTX_set_client_cert_cb(c, (client_cert_fn)f); }
static void s_psk_client(void *c, any_fn f, int m) { (void)m; SSL_CTX_set_psk_client_callback(c, (SSL_psk_client_cb_func)f); }
static void s_psk_server(void *c, any_fn f, int m) { (void)m; SSL_CTX_set_psk_server_callback(c, (SSL_psk_server_cb_func)f); }
static void s_status(void *c, any_fn f, int m) { (void)m; SSL_CTX_set_tlsext_status_cb((SSL_CTX *)c, (status_fn)f); }
static void s_sess_get(void *c, any_fn f, int m) { (void)m; SSL_CTX_sess_set_get_cb(c, (sess_get_fn)f); }
static void s_cert_verify(void *c, any_fn f, int m) { (void)m; SSL_CTX_set_cert_verify_callback(c, (cert_verify_fn)f, NULL); }
static void s_cert(void *c, any_fn f, int m) { (void)m; SSL_CTX_set_cert_cb(c, (cert_fn)f, NULL); }
static void s_client_hello(void *c, any_fn f, int m) { (void)m; SSL_CTX_set_client_hello_cb(c, (SSL_client_hello_cb_fn)f, NULL); }
static void s_ssl_info(void *s, any_fn f, int m) { (void)m; SSL_set_info_callback(s, (info_fn)f); }
/* SSL_set_verify() keeps the callback for NULL: the base may be none. */
static void s_ssl_verify(void *s, any_fn f, int m) { SSL_set_verify(s, m, f ? (SSL_verify_cb)f : (SSL_verify_cb)t_ssl_verify); }
static void s_ssl_msg(void *s, any_fn f, int m) { (void)m; SSL_set_msg_callback(s, (msg_fn)f); }

struct kind_ops {
	const char *name;
	any_fn (*get)(void *obj);   /* NULL: OpenSSL cannot read it back */
	int (*get_mode)(void *obj); /* the verify kinds */
	void (*set)(void *obj, any_fn f, int mode);
	any_fn tramp;
};

static const struct kind_ops ops[CB_COUNT] = {
	[CB_INFO] = { "info callback", g_info, NULL, s_info,
		      (any_fn)t_info },
	[CB_VERIFY] = { "verify callback", g_verify, m_verify, s_verify,
			(any_fn)t_verify },
	[CB_MSG] = { "msg callback", NULL, NULL, s_msg, (any_fn)t_msg },
	[CB_KEYLOG] = { "keylog callback", g_keylog, NULL, s_keylog,
			(any_fn)t_keylog },
	[CB_ALPN] = { "ALPN select callback", NULL, NULL, s_alpn,
		      (any_fn)t_alpn },
	[CB_SERVERNAME] = { "servername callback", NULL, NULL, s_servername,
			    (any_fn)t_servername },
	[CB_SESS_NEW] = { "new-session callback", g_sess_new, NULL,
			  s_sess_new, (any_fn)t_sess_new },
	[CB_SESS_REMOVE] = { "remove-session callback", g_sess_remove, NULL,
			     s_sess_remove, (any_fn)t_sess_remove },
	[CB_CLIENT_CERT] = { "client certificate callback", g_client_cert,
			     NULL, s_client_cert, (any_fn)t_client_cert },
	[CB_PSK_CLIENT] = { "PSK client callback", NULL, NULL, s_psk_client,
			    (any_fn)t_psk_client },
	[CB_PSK_SERVER] = { "PSK server callback", NULL, NULL, s_psk_server,
			    (any_fn)t_psk_server },
	[CB_STATUS] = { "status callback", g_status, NULL, s_status,
			(any_fn)t_status },
	[CB_SESS_GET] = { "get-session callback", g_sess_get, NULL,
			  s_sess_get, (any_fn)t_sess_get },
	[CB_CERT_VERIFY] = { "certificate verify callback", NULL, NULL,
			     s_cert_verify, (any_fn)t_cert_verify },
	[CB_CERT] = { "certificate callback", NULL, NULL, s_cert,
		      (any_fn)t_cert },
	[CB_CLIENT_HELLO] = { "client hello callback", NULL, NULL,
			      s_client_hello, (any_fn)t_client_hello },
	[CB_SSL_INFO] = { "SSL info callback", g_ssl_info, NULL, s_ssl_info,
			  (any_fn)t_ssl_info },
	[CB_SSL_VERIFY] = { "SSL verify callback", g_ssl_verify,
			    m_ssl_verify, s_ssl_verify,
			    (any_fn)t_ssl_verify },
	[CB_SSL_MSG] = { "SSL msg callback", NULL, NULL, s_ssl_msg,
			 (any_fn)t_ssl_msg },
};

/* What OpenSSL has on @obj for @o's kind, never translated by
 * osslproc-run's getters. */
static any_fn
raw_get(const struct kind_ops *o, void *obj)
{
	any_fn f;

	raw_gets++;
	f = o->get(obj);
	raw_gets--;
	return f;
}

static any_fn
ctx_info(const SSL *ssl)
{
	return raw_get(&ops[CB_INFO], SSL_get_SSL_CTX(ssl));
}

bool
tramp_raw_get(void)
{
	return raw_gets > 0;
}

/* ---- binding, unbinding, restoring ---- */

/* Under the binding lock: @obj's ex_data slot, allocated at first use. */
static int
bind_slot(enum cb_kind kind)
{
	int *idx = &bind_index[on_ssl(kind)];

	if (*idx < 0)
		*idx = CRYPTO_get_ex_new_index(on_ssl(kind) ?
					       CRYPTO_EX_INDEX_SSL :
					       CRYPTO_EX_INDEX_SSL_CTX,
					       0, NULL, NULL, binding_dup,
					       binding_free);
	return *idx;
}

static int
binding_set(void *obj, enum cb_kind kind, int idx, struct binding *b)
{
	return on_ssl(kind) ? SSL_set_ex_data(obj, idx, b)
			    : SSL_CTX_set_ex_data(obj, idx, b);
}

/* Under the binding lock. */
static struct binding *
binding_for(void *obj, enum cb_kind kind)
{
	int idx = bind_slot(kind);
	struct binding *b;

	if (idx < 0)
		return NULL;
	b = binding_get(obj, kind);
	if (b)
		return b;
	b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	pthread_mutex_init(&b->lock, NULL);
	if (!binding_set(obj, kind, idx, b)) {
		pthread_mutex_destroy(&b->lock);
		free(b);
		return NULL;
	}
	b->next = bindings;
	if (bindings)
		bindings->pprev = &b->next;
	b->pprev = &bindings;
	bindings = b;
	return b;
}

struct cb_node *
tramp_node_new(any_fn fn, void *arg, struct tramp_gate *g)
{
	struct cb_node *n = calloc(1, sizeof(*n));

	if (n) {
		n->fn = fn;
		n->arg = arg;
		n->gate = g;
	}
	return n;
}

void
tramp_node_free(struct cb_node *n)
{
	free(n);
}

/* Under the binding lock: the trampoline on @obj for @kind.  Whatever
 * is on the object now, if not ours, is what to go back to; with no
 * getter, only "none" is known. */
static void
put_tramp(void *obj, enum cb_kind kind, struct binding *b, int mode)
{
	const struct kind_ops *o = &ops[kind];
	any_fn now = o->get ? raw_get(o, obj) : NULL;

	if (o->get && now != o->tramp) {
		b->base[kind] = now;
		if (o->get_mode)
			b->base_verify_mode = o->get_mode(obj);
	}
	o->set(obj, o->tramp, mode);
}

int
tramp_bind(void *obj, enum cb_kind kind, struct cb_node *n, int mode)
{
	struct binding *b;

	tramp_lock();
	b = binding_for(obj, kind);
	if (!b) {
		tramp_unlock();
		return -ENOMEM;
	}
	n->obj = obj;
	n->kind = kind;
	pthread_mutex_lock(&b->lock);
	n->below = b->top[kind];
	b->top[kind] = n;
	pthread_mutex_unlock(&b->lock);
	put_tramp(obj, kind, b, mode);
	tramp_unlock();
	return 0;
}

void
tramp_rebind(struct cb_node *n, any_fn fn, void *arg, int mode)
{
	struct binding *b;

	tramp_lock();
	b = binding_get(n->obj, n->kind);
	if (b) {
		pthread_mutex_lock(&b->lock);
		n->fn = fn;
		n->arg = arg;
		pthread_mutex_unlock(&b->lock);
		put_tramp(n->obj, n->kind, b, mode);
	}
	tramp_unlock();
}

any_fn
tramp_current(const void *obj, enum cb_kind kind, any_fn now)
{
	struct binding *b;
	any_fn fn = now;

	if (now != ops[kind].tramp)
		return now;
	tramp_lock();
	b = binding_get(obj, kind);
	if (b) {
		pthread_mutex_lock(&b->lock);
		fn = b->top[kind] ? b->top[kind]->fn : b->base[kind];
		pthread_mutex_unlock(&b->lock);
	}
	tramp_unlock();
	return fn;
}

/* Unlink @n from the list at @p; false when it is not on it. */
static bool
unlink_from(struct cb_node **p, struct cb_node *n)
{
	for (; *p; p = &(*p)->below) {
		if (*p == n) {
			*p = n->below;
			return true;
		}
	}
	return false;
}

void
tramp_unbind(struct cb_node *n)
{
	struct binding *b;
	bool found;

	tramp_lock();
	b = binding_get(n->obj, n->kind);
	if (b) {
		pthread_mutex_lock(&b->lock);
		found = unlink_from(&b->top[n->kind], n);
		pthread_mutex_unlock(&b->lock);
		if (found) {
			n->below = b->retired;
			b->retired = n;
		}
	}
	tramp_unlock();
}

/* Under the binding lock, @n retired from @b. */
static void
restore_locked(const char *module, struct cb_node *n, struct binding *b)
{
	void *obj = n->obj;
	enum cb_kind kind = n->kind;
	const struct kind_ops *o = &ops[kind];
	any_fn now;

	/* Another module still needs the trampoline; without a getter, it
	 * cannot be told whether it is still ours, so it stays. */
	if (b->top[kind] || !o->get)
		return;
	now = raw_get(o, obj);
	/* Put back already (an earlier entry of the same module and kind). */
	if (now == b->base[kind] &&
	    (!o->get_mode || o->get_mode(obj) == b->base_verify_mode))
		return;
	if (now != o->tramp) {
		log_warn("module %s: the %s of %s %p was replaced since the "
			 "module set it; keeping the new one", module, o->name,
			 on_ssl(kind) ? "SSL" : "SSL_CTX", obj);
		return;
	}
	o->set(obj, b->base[kind], b->base_verify_mode);
}

void
tramp_restore(const char *module, struct cb_node *n)
{
	struct binding *b;

	tramp_lock();
	b = binding_get(n->obj, n->kind);
	if (b && unlink_from(&b->retired, n))
		restore_locked(module, n, b);
	tramp_unlock();
}

const void *
tramp_code(void)
{
	return (const void *)t_info;
}

/* ---- closing: waiting for a scope's callbacks in flight ---- */

static bool
frames_hold(const struct tramp_frame *f, const struct tramp_gate *g)
{
	for (; f; f = f->up)
		if (f->gate == g)
			return true;
	return false;
}

/*
 * Under wait_lock: whether a thread with @mine on its stack would wait
 * for itself by waiting for @g.  It waits for every thread counted on
 * @g; a closer counted there waits in turn for its own gate, and so on:
 * the gates reached so far are those of the waiters whose frames hold
 * one of them.  Few closes run at a time, so this is a small fixpoint.
 */
static bool
closes_cycle(struct tramp_gate *g, const struct tramp_frame *mine)
{
	struct tramp_gate *reached[64] = { g };
	size_t n = 1;
	bool grew = true;

	while (grew && n < ARRAY_SIZE(reached)) {
		grew = false;
		for (struct tramp_waiter *w = waiters; w; w = w->next) {
			bool known = false, held = false;

			for (size_t i = 0; i < n; i++) {
				known |= w->gate == reached[i];
				held |= frames_hold(w->frames, reached[i]);
			}
			if (held && !known && n < ARRAY_SIZE(reached)) {
				reached[n++] = w->gate;
				grew = true;
			}
		}
	}
	for (size_t i = 0; i < n; i++)
		if (frames_hold(mine, reached[i]))
			return true;
	return false;
}

int
tramp_close_begin(struct tramp_gate *g, struct tramp_waiter *w,
		  const char *module)
{
	int rc = 0;

	if (frames_hold(frames, g)) {
		log_error("ossl_proc_module_close: module %s was closed from "
			  "inside one of its own callbacks, which close would "
			  "wait for; close it after the callback returns "
			  "(from the host's loop, or another thread)", module);
		return -EDEADLK;
	}
	pthread_mutex_lock(&wait_lock);
	if (closes_cycle(g, frames)) {
		log_error("ossl_proc_module_close: closing module %s here "
			  "would wait for a callback that is itself waiting "
			  "for a close of a module whose callback this thread "
			  "is in; close it after this callback returns", module);
		rc = -EDEADLK;
	} else {
		*w = (struct tramp_waiter){ .gate = g, .frames = frames,
					    .next = waiters };
		waiters = w;
	}
	pthread_mutex_unlock(&wait_lock);
	return rc;
}

void
tramp_drain(struct tramp_waiter *w)
{
	struct tramp_gate *g = w->gate;

	pthread_mutex_lock(&wait_lock);
	/* A dispatch that brings the count to zero after this sees the
	 * bit and wakes us under wait_lock: no wake-up is lost. */
	atomic_fetch_or(&g->inflight, GATE_WAITING);
	while (atomic_load_explicit(&g->inflight, memory_order_acquire) &
	       ~GATE_WAITING)
		pthread_cond_wait(&drained, &wait_lock);
	for (struct tramp_waiter **p = &waiters; *p; p = &(*p)->next) {
		if (*p == w) {
			*p = w->next;
			break;
		}
	}
	pthread_mutex_unlock(&wait_lock);
}

/* Locks as at load: their holders are gone.  What a binding lock guards
 * is consistent, since it is held only for a few loads and stores. */
CHILD_PATH void
tramp_child_reset(void)
{
	static const pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
	static const pthread_cond_t fresh_cond = PTHREAD_COND_INITIALIZER;

	wait_lock = fresh;
	drained = fresh_cond;
	waiters = NULL;
	for (struct binding *b = bindings; b; b = b->next)
		b->lock = fresh;
}

/* Only the forking thread's own dispatches will return in the child. */
CHILD_PATH void
tramp_gate_reset(struct tramp_gate *g)
{
	unsigned n = 0;

	for (const struct tramp_frame *f = frames; f; f = f->up)
		n += f->gate == g;
	atomic_store(&g->inflight, n);
}
