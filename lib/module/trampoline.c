/*
 * Trampolines for callbacks that module scopes set on an SSL_CTX.
 *
 * SSL_new() copies a context's callbacks into each SSL, so a plugin's
 * callback cannot simply be taken back from the context at unload.  The
 * context gets one of the trampolines below instead, and the plugin's
 * callback goes on a per-context stack (a binding, kept in an SSL_CTX
 * ex_data slot of ours).  A trampoline calls the newest callback on the
 * stack of the SSL's context; with the stack empty, the callback that was
 * on the context before, or OpenSSL's behaviour without one.  Entries are
 * pushed and unlinked under a write lock that every dispatch holds for
 * reading, so once a module's entries are unlinked none of its callbacks
 * is running or can start.  The nodes belong to this file: a context
 * freed before the module closed only marks its nodes, which the
 * module's close then frees.
 */
#include <stdlib.h>

#include "module-int.h"

/* Per SSL_CTX: the stack of module callbacks above what was there. */
struct binding {
	struct cb_node *top[CB_COUNT];
	any_fn base[CB_COUNT];
	int base_verify_mode;
};

static pthread_rwlock_t dispatch_lock = PTHREAD_RWLOCK_INITIALIZER;
/* Recursive: a module's close holds it while its on_close hooks run, and
 * a hook may free a context. */
static pthread_mutex_t bind_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static int bind_index = -1;

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

/* The context is going away before the modules of its nodes closed:
 * their close must not touch it. */
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
		for (struct cb_node *n = b->top[k]; n; n = n->below)
			n->ctx = NULL;
	tramp_unlock();
	free(b);
}

static struct binding *
binding_get(const SSL_CTX *ctx)
{
	return ctx && bind_index >= 0 ? SSL_CTX_get_ex_data(ctx, bind_index)
				      : NULL;
}

/* ---- dispatch ---- */

/* Take the read lock and find what to call for @kind on @ctx: the newest
 * module entry (*arg set), else the base callback (*arg untouched); NULL
 * when there is neither.  The caller calls tramp_done() afterwards. */
static any_fn
lookup(const SSL_CTX *ctx, enum cb_kind kind, void **arg)
{
	struct binding *b;

	pthread_rwlock_rdlock(&dispatch_lock);
	b = binding_get(ctx);
	if (!b)
		return NULL;
	if (b->top[kind]) {
		*arg = b->top[kind]->arg;
		return b->top[kind]->fn;
	}
	return b->base[kind];
}

static void
tramp_done(void)
{
	pthread_rwlock_unlock(&dispatch_lock);
}

#define CTX(ssl) SSL_get_SSL_CTX(ssl)

static void
t_info(const SSL *ssl, int where, int ret)
{
	void *arg = NULL;
	any_fn f = lookup(CTX(ssl), CB_INFO, &arg);

	if (f)
		((info_fn)f)(ssl, where, ret);
	tramp_done();
}

static int
t_verify(int ok, X509_STORE_CTX *store)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(store,
		SSL_get_ex_data_X509_STORE_CTX_idx());
	void *arg = NULL;
	any_fn f = lookup(ssl ? CTX(ssl) : NULL, CB_VERIFY, &arg);

	if (f)
		ok = ((SSL_verify_cb)f)(ok, store);
	tramp_done();
	return ok;
}

static void
t_msg(int write_p, int version, int type, const void *buf, size_t len,
      SSL *ssl, void *arg)
{
	void *unused = NULL;
	any_fn f = lookup(CTX(ssl), CB_MSG, &unused);

	if (f)
		((msg_fn)f)(write_p, version, type, buf, len, ssl, arg);
	tramp_done();
}

static void
t_keylog(const SSL *ssl, const char *line)
{
	void *arg = NULL;
	any_fn f = lookup(CTX(ssl), CB_KEYLOG, &arg);

	if (f)
		((SSL_CTX_keylog_cb_func)f)(ssl, line);
	tramp_done();
}

/* Without a callback: no ALPN, as if none had been set. */
static int
t_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
       const unsigned char *in, unsigned int inlen, void *unused)
{
	void *arg = NULL;
	any_fn f = lookup(CTX(ssl), CB_ALPN, &arg);
	int rc = SSL_TLSEXT_ERR_NOACK;

	(void)unused;
	if (f)
		rc = ((alpn_fn)f)(ssl, out, outlen, in, inlen, arg);
	tramp_done();
	return rc;
}

/* Without a callback: the name is accepted, as if none had been set. */
static int
t_servername(SSL *ssl, int *al, void *unused)
{
	void *arg = NULL;
	any_fn f = lookup(CTX(ssl), CB_SERVERNAME, &arg);
	int rc = SSL_TLSEXT_ERR_OK;

	(void)unused;
	if (f)
		rc = ((servername_fn)f)(ssl, al, arg);
	tramp_done();
	return rc;
}

/* Without a callback: the session is not kept (0: no reference taken). */
static int
t_sess_new(SSL *ssl, SSL_SESSION *sess)
{
	void *arg = NULL;
	any_fn f = lookup(CTX(ssl), CB_SESS_NEW, &arg);
	int rc = 0;

	if (f)
		rc = ((sess_new_fn)f)(ssl, sess);
	tramp_done();
	return rc;
}

static void
t_sess_remove(SSL_CTX *ctx, SSL_SESSION *sess)
{
	void *arg = NULL;
	any_fn f = lookup(ctx, CB_SESS_REMOVE, &arg);

	if (f)
		((sess_remove_fn)f)(ctx, sess);
	tramp_done();
}

/* Without a callback: no client certificate. */
static int
t_client_cert(SSL *ssl, X509 **x509, EVP_PKEY **pkey)
{
	void *arg = NULL;
	any_fn f = lookup(CTX(ssl), CB_CLIENT_CERT, &arg);
	int rc = 0;

	if (f)
		rc = ((client_cert_fn)f)(ssl, x509, pkey);
	tramp_done();
	return rc;
}

/* Without a callback: no PSK. */
static unsigned int
t_psk_client(SSL *ssl, const char *hint, char *identity,
	     unsigned int max_identity_len, unsigned char *psk,
	     unsigned int max_psk_len)
{
	void *arg = NULL;
	any_fn f = lookup(CTX(ssl), CB_PSK_CLIENT, &arg);
	unsigned int rc = 0;

	if (f)
		rc = ((SSL_psk_client_cb_func)f)(ssl, hint, identity,
						 max_identity_len, psk,
						 max_psk_len);
	tramp_done();
	return rc;
}

static unsigned int
t_psk_server(SSL *ssl, const char *identity, unsigned char *psk,
	     unsigned int max_psk_len)
{
	void *arg = NULL;
	any_fn f = lookup(CTX(ssl), CB_PSK_SERVER, &arg);
	unsigned int rc = 0;

	if (f)
		rc = ((SSL_psk_server_cb_func)f)(ssl, identity, psk,
						 max_psk_len);
	tramp_done();
	return rc;
}

/* ---- per kind: how to read and set the context's callback ---- */

static any_fn g_info(SSL_CTX *c) { return (any_fn)SSL_CTX_get_info_callback(c); }
static any_fn g_verify(SSL_CTX *c) { return (any_fn)SSL_CTX_get_verify_callback(c); }
static any_fn g_keylog(SSL_CTX *c) { return (any_fn)SSL_CTX_get_keylog_callback(c); }
static any_fn g_sess_new(SSL_CTX *c) { return (any_fn)SSL_CTX_sess_get_new_cb(c); }
static any_fn g_sess_remove(SSL_CTX *c) { return (any_fn)SSL_CTX_sess_get_remove_cb(c); }
static any_fn g_client_cert(SSL_CTX *c) { return (any_fn)SSL_CTX_get_client_cert_cb(c); }

static void s_info(SSL_CTX *c, any_fn f, int m) { (void)m; SSL_CTX_set_info_callback(c, (info_fn)f); }
static void s_verify(SSL_CTX *c, any_fn f, int m) { SSL_CTX_set_verify(c, m, (SSL_verify_cb)f); }
static void s_msg(SSL_CTX *c, any_fn f, int m) { (void)m; SSL_CTX_set_msg_callback(c, (msg_fn)f); }
static void s_keylog(SSL_CTX *c, any_fn f, int m) { (void)m; SSL_CTX_set_keylog_callback(c, (SSL_CTX_keylog_cb_func)f); }
static void s_alpn(SSL_CTX *c, any_fn f, int m) { (void)m; SSL_CTX_set_alpn_select_cb(c, (alpn_fn)f, NULL); }
static void s_servername(SSL_CTX *c, any_fn f, int m) { (void)m; SSL_CTX_set_tlsext_servername_callback(c, (servername_fn)f); SSL_CTX_set_tlsext_servername_arg(c, NULL); }
static void s_sess_new(SSL_CTX *c, any_fn f, int m) { (void)m; SSL_CTX_sess_set_new_cb(c, (sess_new_fn)f); }
static void s_sess_remove(SSL_CTX *c, any_fn f, int m) { (void)m; SSL_CTX_sess_set_remove_cb(c, (sess_remove_fn)f); }
static void s_client_cert(SSL_CTX *c, any_fn f, int m) { (void)m; SSL_CTX_set_client_cert_cb(c, (client_cert_fn)f); }
static void s_psk_client(SSL_CTX *c, any_fn f, int m) { (void)m; SSL_CTX_set_psk_client_callback(c, (SSL_psk_client_cb_func)f); }
static void s_psk_server(SSL_CTX *c, any_fn f, int m) { (void)m; SSL_CTX_set_psk_server_callback(c, (SSL_psk_server_cb_func)f); }

struct kind_ops {
	const char *name;
	any_fn (*get)(SSL_CTX *ctx);   /* NULL: OpenSSL cannot read it back */
	void (*set)(SSL_CTX *ctx, any_fn f, int mode);
	any_fn tramp;
};

static const struct kind_ops ops[CB_COUNT] = {
	[CB_INFO] = { "info callback", g_info, s_info, (any_fn)t_info },
	[CB_VERIFY] = { "verify callback", g_verify, s_verify,
			(any_fn)t_verify },
	[CB_MSG] = { "msg callback", NULL, s_msg, (any_fn)t_msg },
	[CB_KEYLOG] = { "keylog callback", g_keylog, s_keylog,
			(any_fn)t_keylog },
	[CB_ALPN] = { "ALPN select callback", NULL, s_alpn, (any_fn)t_alpn },
	[CB_SERVERNAME] = { "servername callback", NULL, s_servername,
			    (any_fn)t_servername },
	[CB_SESS_NEW] = { "new-session callback", g_sess_new, s_sess_new,
			  (any_fn)t_sess_new },
	[CB_SESS_REMOVE] = { "remove-session callback", g_sess_remove,
			     s_sess_remove, (any_fn)t_sess_remove },
	[CB_CLIENT_CERT] = { "client certificate callback", g_client_cert,
			     s_client_cert, (any_fn)t_client_cert },
	[CB_PSK_CLIENT] = { "PSK client callback", NULL, s_psk_client,
			    (any_fn)t_psk_client },
	[CB_PSK_SERVER] = { "PSK server callback", NULL, s_psk_server,
			    (any_fn)t_psk_server },
};

/* ---- binding, unbinding, restoring ---- */

static struct binding *
binding_for(SSL_CTX *ctx)
{
	struct binding *b;

	if (bind_index < 0)
		bind_index = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL_CTX,
						     0, NULL, NULL, NULL,
						     binding_free);
	if (bind_index < 0)
		return NULL;
	b = SSL_CTX_get_ex_data(ctx, bind_index);
	if (b)
		return b;
	b = calloc(1, sizeof(*b));
	if (b && !SSL_CTX_set_ex_data(ctx, bind_index, b)) {
		free(b);
		b = NULL;
	}
	return b;
}

struct cb_node *
tramp_node_new(any_fn fn, void *arg)
{
	struct cb_node *n = calloc(1, sizeof(*n));

	if (n) {
		n->fn = fn;
		n->arg = arg;
	}
	return n;
}

void
tramp_node_free(struct cb_node *n)
{
	free(n);
}

int
tramp_bind(SSL_CTX *ctx, enum cb_kind kind, struct cb_node *n, int mode)
{
	const struct kind_ops *o = &ops[kind];
	struct binding *b;

	tramp_lock();
	b = binding_for(ctx);
	if (!b) {
		tramp_unlock();
		return -ENOMEM;
	}
	n->ctx = ctx;
	n->kind = kind;
	pthread_rwlock_wrlock(&dispatch_lock);
	n->below = b->top[kind];
	b->top[kind] = n;
	pthread_rwlock_unlock(&dispatch_lock);
	/* Whatever is on the context now, if not ours, is what to go back
	 * to; with no getter, only "none" is known. */
	if (o->get && o->get(ctx) != o->tramp) {
		b->base[kind] = o->get(ctx);
		if (kind == CB_VERIFY)
			b->base_verify_mode = SSL_CTX_get_verify_mode(ctx);
	}
	o->set(ctx, o->tramp, mode);
	tramp_unlock();
	return 0;
}

void
tramp_unbind_begin(void)
{
	pthread_rwlock_wrlock(&dispatch_lock);
}

void
tramp_unbind(struct cb_node *n)
{
	struct binding *b = binding_get(n->ctx);

	for (struct cb_node **p = b ? &b->top[n->kind] : NULL; p && *p;
	     p = &(*p)->below) {
		if (*p == n) {
			*p = n->below;
			return;
		}
	}
}

void
tramp_unbind_end(void)
{
	pthread_rwlock_unlock(&dispatch_lock);
}

void
tramp_restore(const char *module, struct cb_node *n)
{
	SSL_CTX *ctx = n->ctx;
	enum cb_kind kind = n->kind;
	const struct kind_ops *o = &ops[kind];
	struct binding *b = binding_get(ctx);

	/* Another module still needs the trampoline; without a getter, it
	 * cannot be told whether it is still ours, so it stays. */
	if (!b || b->top[kind] || !o->get)
		return;
	/* Put back already (an earlier entry of the same module and kind). */
	if (o->get(ctx) == b->base[kind] &&
	    (kind != CB_VERIFY ||
	     SSL_CTX_get_verify_mode(ctx) == b->base_verify_mode))
		return;
	if (o->get(ctx) != o->tramp) {
		log_warn("module %s: the %s of SSL_CTX %p was replaced since "
			 "the module set it; keeping the new one", module,
			 o->name, (void *)ctx);
		return;
	}
	o->set(ctx, b->base[kind], b->base_verify_mode);
}

const void *
tramp_code(void)
{
	return (const void *)t_info;
}
