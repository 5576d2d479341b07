/*
 * Module scopes: everything a plugin registers with OpenSSL through a
 * scope is undone when the scope closes, so that OpenSSL never calls into
 * the plugin after it is unloaded.
 *
 * Callbacks set on an SSL_CTX are the hard part: SSL_new() copies them
 * into every SSL, so resetting the context does not reach live
 * connections.  So the context gets a trampoline owned by this library,
 * and the plugin's callback is recorded in a per-context binding (an
 * SSL_CTX ex_data slot of ours).  The trampoline calls the newest
 * callback whose module is still open, else the callback that was there
 * before the first module set one.  Closing unlinks the module's entries
 * under a write lock, so no callback into the plugin is in flight when
 * close returns; live SSL objects only ever hold the trampoline.
 */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/provider.h>

#include "osslproc-int.h"

enum cb_kind { CB_INFO, CB_VERIFY, CB_MSG, CB_COUNT };

typedef void (*info_fn)(const SSL *ssl, int where, int ret);
typedef void (*msg_fn)(int write_p, int version, int content_type,
		       const void *buf, size_t len, SSL *ssl, void *arg);

/* One callback a module set on a context, until the module closes. */
struct cb_node {
	struct ossl_proc_module *module;
	union {
		info_fn info;
		SSL_verify_cb verify;
		msg_fn msg;
	} cb;
	struct cb_node *below;
};

/* Per SSL_CTX: the stack of module callbacks above what was there. */
struct binding {
	struct cb_node *top[CB_COUNT];
	info_fn base_info;
	SSL_verify_cb base_verify;
	int base_verify_mode;
};

enum undo_kind { U_EX_INDEX, U_STRINGS, U_CALLBACK, U_HOOK };

struct undo {
	enum undo_kind kind;
	union {
		struct { int class_index, idx; } ex;
		struct { int lib; ERR_STRING_DATA *str; } strings;
		/* ctx NULL: the context was freed before the module closed */
		struct { SSL_CTX *ctx; enum cb_kind kind; struct cb_node *node; } cb;
		struct { void (*fn)(void *arg); void *arg; } hook;
	} u;
};

struct ossl_proc_module {
	char name[64];
	struct undo *undo;
	size_t n, cap;
	OSSL_LIB_CTX *libctx;
	const void *code;  /* an address in the plugin (its first callback) */
	bool trampolines;  /* OpenSSL objects may call our trampolines */
};

/* All module operations are rare (load and unload time): one lock,
 * recursive because an on_close hook may free a context, whose binding
 * destructor takes it too. */
static pthread_mutex_t modules_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static struct ossl_proc_module **open_modules;
static size_t n_open, cap_open;
/* Held for reading while a trampoline calls into a module. */
static pthread_rwlock_t dispatch_lock = PTHREAD_RWLOCK_INITIALIZER;
static int bind_index = -1;

/* ---- bindings and trampolines ---- */

/* The context is going away before these modules closed: their undo
 * entries must not touch it. */
static void
forget_node(struct cb_node *n)
{
	struct ossl_proc_module *m = n->module;

	for (size_t i = 0; i < m->n; i++)
		if (m->undo[i].kind == U_CALLBACK && m->undo[i].u.cb.node == n)
			m->undo[i].u.cb.ctx = NULL;
	free(n);
}

static void
binding_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
	     long argl, void *argp)
{
	struct binding *b = ptr;

	(void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
	if (!b)
		return;
	pthread_mutex_lock(&modules_lock);
	for (int k = 0; k < CB_COUNT; k++) {
		struct cb_node *n = b->top[k], *below;

		for (; n; n = below) {
			below = n->below;
			forget_node(n);
		}
	}
	pthread_mutex_unlock(&modules_lock);
	free(b);
}

static struct binding *
binding_get(const SSL_CTX *ctx)
{
	return bind_index < 0 ? NULL : SSL_CTX_get_ex_data(ctx, bind_index);
}

/* The newest entry of @kind on @ctx, under dispatch_lock. */
static struct cb_node *
open_node(const SSL_CTX *ctx, enum cb_kind kind, struct binding **bp)
{
	struct binding *b = ctx ? binding_get(ctx) : NULL;

	*bp = b;
	return b ? b->top[kind] : NULL;
}

static void
tramp_info(const SSL *ssl, int where, int ret)
{
	struct binding *b;
	struct cb_node *n;

	pthread_rwlock_rdlock(&dispatch_lock);
	n = open_node(SSL_get_SSL_CTX(ssl), CB_INFO, &b);
	if (n)
		n->cb.info(ssl, where, ret);
	else if (b && b->base_info)
		b->base_info(ssl, where, ret);
	pthread_rwlock_unlock(&dispatch_lock);
}

static int
tramp_verify(int ok, X509_STORE_CTX *store)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(store,
		SSL_get_ex_data_X509_STORE_CTX_idx());
	struct binding *b;
	struct cb_node *n;

	pthread_rwlock_rdlock(&dispatch_lock);
	n = open_node(ssl ? SSL_get_SSL_CTX(ssl) : NULL, CB_VERIFY, &b);
	if (n)
		ok = n->cb.verify(ok, store);
	else if (b && b->base_verify)
		ok = b->base_verify(ok, store);
	pthread_rwlock_unlock(&dispatch_lock);
	return ok;
}

static void
tramp_msg(int write_p, int version, int content_type, const void *buf,
	  size_t len, SSL *ssl, void *arg)
{
	struct binding *b;
	struct cb_node *n;

	pthread_rwlock_rdlock(&dispatch_lock);
	n = open_node(SSL_get_SSL_CTX(ssl), CB_MSG, &b);
	if (n)
		n->cb.msg(write_p, version, content_type, buf, len, ssl, arg);
	pthread_rwlock_unlock(&dispatch_lock);
}

/* ---- the registry of open modules ---- */

static bool
is_open(const struct ossl_proc_module *m)
{
	for (size_t i = 0; i < n_open; i++)
		if (open_modules[i] == m)
			return true;
	return false;
}

/* Under modules_lock: @m is an open module, else a logged -EINVAL. */
static int
check_open(const struct ossl_proc_module *m, const char *fn)
{
	if (!m) {
		log_bug_client("%s: module is NULL", fn);
		return -EINVAL;
	}
	if (!is_open(m)) {
		log_bug_client("%s: %p is not an open module (closed already?)",
			       fn, (const void *)m);
		return -EINVAL;
	}
	return 0;
}

static int
undo_push(struct ossl_proc_module *m, struct undo u)
{
	if (m->n == m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 8;
		struct undo *nu = realloc(m->undo, cap * sizeof(*nu));

		if (!nu) {
			log_error("module %s: out of memory recording a "
				  "registration", m->name);
			return -ENOMEM;
		}
		m->undo = nu;
		m->cap = cap;
	}
	m->undo[m->n++] = u;
	return 0;
}

OSSL_PROC_EXPORT struct ossl_proc_module *
ossl_proc_module_open(const char *name)
{
	struct ossl_proc_module *m;

	if (!proc_initialised()) {
		log_bug_client("ossl_proc_module_open: call ossl_proc_init() "
			       "first");
		errno = EINVAL;
		return NULL;
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		errno = ENOMEM;
		return NULL;
	}
	snprintf(m->name, sizeof(m->name), "%s", name ? name : "(unnamed)");
	pthread_mutex_lock(&modules_lock);
	if (n_open == cap_open) {
		size_t cap = cap_open ? cap_open * 2 : 8;
		struct ossl_proc_module **nm = realloc(open_modules,
						       cap * sizeof(*nm));

		if (!nm) {
			pthread_mutex_unlock(&modules_lock);
			free(m);
			errno = ENOMEM;
			return NULL;
		}
		open_modules = nm;
		cap_open = cap;
	}
	open_modules[n_open++] = m;
	pthread_mutex_unlock(&modules_lock);
	return m;
}

/* ---- registrations ---- */

OSSL_PROC_EXPORT int
ossl_proc_module_ex_new_index(struct ossl_proc_module *m, int class_index,
			      long argl, void *argp, CRYPTO_EX_new *new_func,
			      CRYPTO_EX_dup *dup_func, CRYPTO_EX_free *free_func)
{
	int idx, rc;

	pthread_mutex_lock(&modules_lock);
	rc = check_open(m, __func__);
	if (!rc) {
		idx = CRYPTO_get_ex_new_index(class_index, argl, argp,
					      new_func, dup_func, free_func);
		if (idx < 0) {
			log_error("module %s: CRYPTO_get_ex_new_index(%d) "
				  "failed", m->name, class_index);
			rc = -EIO;
		} else {
			rc = undo_push(m, (struct undo){ .kind = U_EX_INDEX,
				.u.ex = { class_index, idx } });
			if (rc)
				CRYPTO_free_ex_index(class_index, idx);
			else
				rc = idx;
		}
	}
	pthread_mutex_unlock(&modules_lock);
	return rc;
}

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
	if (b) {
		b->base_info = SSL_CTX_get_info_callback(ctx);
		b->base_verify = SSL_CTX_get_verify_callback(ctx);
		b->base_verify_mode = SSL_CTX_get_verify_mode(ctx);
	}
	return b;
}

/* Install @kind's trampoline on @ctx (the first time) and push @n. */
static void
install(SSL_CTX *ctx, struct binding *b, enum cb_kind kind,
	struct cb_node *n, int verify_mode)
{
	pthread_rwlock_wrlock(&dispatch_lock);
	n->below = b->top[kind];
	b->top[kind] = n;
	pthread_rwlock_unlock(&dispatch_lock);
	switch (kind) {
	case CB_INFO:
		if (SSL_CTX_get_info_callback(ctx) != tramp_info) {
			b->base_info = SSL_CTX_get_info_callback(ctx);
			SSL_CTX_set_info_callback(ctx, tramp_info);
		}
		break;
	case CB_VERIFY:
		if (SSL_CTX_get_verify_callback(ctx) != tramp_verify)
			b->base_verify = SSL_CTX_get_verify_callback(ctx);
		SSL_CTX_set_verify(ctx, verify_mode, tramp_verify);
		break;
	case CB_MSG:
		SSL_CTX_set_msg_callback(ctx, tramp_msg);
		break;
	case CB_COUNT:
		break;
	}
}

static int
set_callback(struct ossl_proc_module *m, SSL_CTX *ctx, enum cb_kind kind,
	     struct cb_node proto, int verify_mode, const char *fn)
{
	struct binding *b;
	struct cb_node *n;
	int rc;

	pthread_mutex_lock(&modules_lock);
	rc = check_open(m, fn);
	if (!rc && (!ctx || !proto.cb.info)) {
		log_bug_client("%s: ctx and cb must not be NULL", fn);
		rc = -EINVAL;
	}
	b = rc ? NULL : binding_for(ctx);
	n = b ? malloc(sizeof(*n)) : NULL;
	if (!rc && !n) {
		log_error("%s: out of memory", fn);
		rc = -ENOMEM;
	}
	if (!rc) {
		*n = proto;
		n->module = m;
		rc = undo_push(m, (struct undo){ .kind = U_CALLBACK,
			.u.cb = { ctx, kind, n } });
	}
	if (!rc) {
		install(ctx, b, kind, n, verify_mode);
		m->trampolines = true;
		if (!m->code)
			m->code = (const void *)proto.cb.info;
	} else {
		free(n);
	}
	pthread_mutex_unlock(&modules_lock);
	return rc;
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_info_callback(struct ossl_proc_module *m, SSL_CTX *ctx,
				   void (*cb)(const SSL *ssl, int where,
					      int ret))
{
	return set_callback(m, ctx, CB_INFO,
			    (struct cb_node){ .cb.info = cb }, 0, __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_verify(struct ossl_proc_module *m, SSL_CTX *ctx,
			    int mode, SSL_verify_cb cb)
{
	return set_callback(m, ctx, CB_VERIFY,
			    (struct cb_node){ .cb.verify = cb }, mode,
			    __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_msg_callback(struct ossl_proc_module *m, SSL_CTX *ctx,
				  void (*cb)(int write_p, int version,
					     int content_type, const void *buf,
					     size_t len, SSL *ssl, void *arg))
{
	return set_callback(m, ctx, CB_MSG, (struct cb_node){ .cb.msg = cb },
			    0, __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_load_strings(struct ossl_proc_module *m, int lib,
			      ERR_STRING_DATA *str)
{
	int rc;

	pthread_mutex_lock(&modules_lock);
	rc = check_open(m, __func__);
	if (!rc && !str) {
		log_bug_client("%s: str is NULL", __func__);
		rc = -EINVAL;
	}
	if (!rc && !ERR_load_strings(lib, str)) {
		log_error("module %s: ERR_load_strings failed", m->name);
		rc = -EIO;
	}
	if (!rc) {
		rc = undo_push(m, (struct undo){ .kind = U_STRINGS,
			.u.strings = { lib, str } });
		if (rc)
			ERR_unload_strings(lib, str);
	}
	pthread_mutex_unlock(&modules_lock);
	return rc;
}

OSSL_PROC_EXPORT int
ossl_proc_module_on_close(struct ossl_proc_module *m,
			  void (*undo)(void *arg), void *arg)
{
	int rc;

	pthread_mutex_lock(&modules_lock);
	rc = check_open(m, __func__);
	if (!rc && !undo) {
		log_bug_client("%s: undo is NULL", __func__);
		rc = -EINVAL;
	}
	if (!rc)
		rc = undo_push(m, (struct undo){ .kind = U_HOOK,
			.u.hook = { undo, arg } });
	pthread_mutex_unlock(&modules_lock);
	return rc;
}

OSSL_PROC_EXPORT OSSL_LIB_CTX *
ossl_proc_module_libctx(struct ossl_proc_module *m)
{
	OSSL_LIB_CTX *lc = NULL;

	pthread_mutex_lock(&modules_lock);
	if (!check_open(m, __func__)) {
		if (!m->libctx) {
			m->libctx = OSSL_LIB_CTX_new();
			/* Provider loads in it must not read OPENSSL_MODULES. */
			if (m->libctx && env_modules_dir())
				OSSL_PROVIDER_set_default_search_path(
					m->libctx, env_modules_dir());
		}
		lc = m->libctx;
		if (!lc)
			log_error("module %s: OSSL_LIB_CTX_new failed", m->name);
	}
	pthread_mutex_unlock(&modules_lock);
	return lc;
}

/* ---- close ---- */

static const char *const cb_names[] = {
	[CB_INFO] = "info callback",
	[CB_VERIFY] = "verify callback",
	[CB_MSG] = "msg callback",
};

/* Put the context's callback back when it is still our trampoline and no
 * open module needs it; keep whatever someone set since. */
static void
restore(struct ossl_proc_module *m, SSL_CTX *ctx, enum cb_kind kind)
{
	struct binding *b = ctx ? binding_get(ctx) : NULL;
	bool ours;

	/* Another module still needs the trampoline; for msg, OpenSSL has no
	 * getter to check it is still ours, so the trampoline stays. */
	if (!b || b->top[kind] || kind == CB_MSG)
		return;
	ours = kind == CB_INFO ? SSL_CTX_get_info_callback(ctx) == tramp_info
			       : SSL_CTX_get_verify_callback(ctx) ==
				 tramp_verify;
	if (!ours) {
		log_warn("module %s: the %s of SSL_CTX %p was replaced since "
			 "the module set it; keeping the new one", m->name,
			 cb_names[kind], (void *)ctx);
		return;
	}
	if (kind == CB_INFO)
		SSL_CTX_set_info_callback(ctx, b->base_info);
	else
		SSL_CTX_set_verify(ctx, b->base_verify_mode, b->base_verify);
}

static void
undo_one(struct ossl_proc_module *m, struct undo *u)
{
	switch (u->kind) {
	case U_EX_INDEX:
		/* Live objects keep the slot; OpenSSL swaps in no-ops. */
		CRYPTO_free_ex_index(u->u.ex.class_index, u->u.ex.idx);
		break;
	case U_STRINGS:
		ERR_unload_strings(u->u.strings.lib, u->u.strings.str);
		break;
	case U_CALLBACK:
		restore(m, u->u.cb.ctx, u->u.cb.kind);
		break;
	case U_HOOK:
		u->u.hook.fn(u->u.hook.arg);
		break;
	}
}

static void
unlink_node(struct binding *b, enum cb_kind kind, struct cb_node *n)
{
	for (struct cb_node **p = &b->top[kind]; *p; p = &(*p)->below) {
		if (*p == n) {
			*p = n->below;
			free(n);
			return;
		}
	}
}

/* No callback of @m can run any more: its entries are unlinked. */
static void
detach_callbacks(struct ossl_proc_module *m)
{
	pthread_rwlock_wrlock(&dispatch_lock);
	for (size_t i = 0; i < m->n; i++) {
		struct undo *u = &m->undo[i];

		if (u->kind == U_CALLBACK && u->u.cb.ctx)
			unlink_node(binding_get(u->u.cb.ctx), u->u.cb.kind,
				    u->u.cb.node);
	}
	pthread_rwlock_unlock(&dispatch_lock);
}

/* Whether the plugin must stay mapped: our trampolines stay reachable
 * from live objects, and if this copy of osslproc lives in the plugin
 * itself (vendored), that is the plugin's code. */
static int
unload_verdict(struct ossl_proc_module *m)
{
	Dl_info mine, theirs;

	if (!m->trampolines || !m->code ||
	    !dladdr((void *)tramp_info, &mine) ||
	    !dladdr(m->code, &theirs) || mine.dli_fbase != theirs.dli_fbase)
		return OSSL_PROC_UNLOAD_SAFE;
	return proc_pin_self("SSL objects created while the module was "
			     "loaded still call osslproc's trampolines in it")
	       ? OSSL_PROC_UNLOAD_PINNED : OSSL_PROC_UNLOAD_SAFE;
}

static void
forget(struct ossl_proc_module *m)
{
	for (size_t i = 0; i < n_open; i++) {
		if (open_modules[i] == m) {
			open_modules[i] = open_modules[--n_open];
			return;
		}
	}
}

OSSL_PROC_EXPORT int
ossl_proc_module_close(struct ossl_proc_module *m)
{
	int rc;

	pthread_mutex_lock(&modules_lock);
	rc = check_open(m, __func__);
	if (rc) {
		pthread_mutex_unlock(&modules_lock);
		return rc;
	}
	forget(m);
	detach_callbacks(m);
	for (size_t i = m->n; i-- > 0;)
		undo_one(m, &m->undo[i]);
	if (m->libctx) {
		OPENSSL_thread_stop_ex(m->libctx);
		OSSL_LIB_CTX_free(m->libctx);
	}
	rc = unload_verdict(m);
	pthread_mutex_unlock(&modules_lock);
	log_debug("module %s closed (%zu registrations undone)", m->name,
		  m->n);
	free(m->undo);
	free(m);
	return rc;
}
