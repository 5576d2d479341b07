/*
 * Module scopes: everything a plugin registers with OpenSSL through a
 * scope is undone when the scope closes, so that OpenSSL never calls into
 * the plugin after it is unloaded.  Callbacks on an SSL_CTX go through
 * the trampolines of trampoline.c; this file keeps the scopes, their undo
 * logs and the close.
 */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/provider.h>

#include "list.h"
#include "module-int.h"
#include "env.h"
#include "alloc/alloc.h"
#include "pin.h"

enum undo_kind { U_EX_INDEX, U_STRINGS, U_CALLBACK, U_HOOK };

struct undo {
	enum undo_kind kind;
	union {
		struct { int class_index, idx; } ex;
		struct { int lib; ERR_STRING_DATA *str; } strings;
		struct cb_node *cb; /* its context: node->ctx */
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
 * recursive because an on_close hook may call them.  Taken before the
 * trampolines' binding lock, never after it. */
static pthread_mutex_t modules_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static struct ossl_proc_module **open_modules;
static size_t n_open, cap_open;

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
	if (array_reserve((void **)&m->undo, &m->cap, m->n,
			  sizeof(*m->undo))) {
		log_error("module %s: out of memory recording a registration",
			  m->name);
		return -ENOMEM;
	}
	m->undo[m->n++] = u;
	return 0;
}

OSSL_PROC_EXPORT struct ossl_proc_module *
ossl_proc_module_open(const char *name)
{
	struct ossl_proc_module *m;

	alloc_check();
	if (!proc_initialised()) {
		log_bug_client("ossl_proc_module_open: call ossl_proc_init() "
			       "first");
		errno = EINVAL;
		return NULL;
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		log_error("ossl_proc_module_open: out of memory for the scope "
			  "of %s", name ? name : "(unnamed)");
		errno = ENOMEM;
		return NULL;
	}
	snprintf(m->name, sizeof(m->name), "%s", name ? name : "(unnamed)");
	pthread_mutex_lock(&modules_lock);
	if (array_reserve((void **)&open_modules, &cap_open, n_open,
			  sizeof(*open_modules))) {
		pthread_mutex_unlock(&modules_lock);
		free(m);
		log_error("ossl_proc_module_open: out of memory for the table "
			  "of open scopes");
		errno = ENOMEM;
		return NULL;
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

static int
set_callback(struct ossl_proc_module *m, SSL_CTX *ctx, enum cb_kind kind,
	     any_fn fn, void *arg, int verify_mode, const char *name)
{
	struct cb_node *n = NULL;
	int rc;

	pthread_mutex_lock(&modules_lock);
	rc = check_open(m, name);
	if (!rc && (!ctx || !fn)) {
		log_bug_client("%s: ctx and cb must not be NULL", name);
		rc = -EINVAL;
	}
	if (!rc) {
		n = tramp_node_new(fn, arg);
		rc = n ? 0 : -ENOMEM;
	}
	if (!rc)
		rc = undo_push(m, (struct undo){ .kind = U_CALLBACK,
			.u.cb = n });
	if (!rc) {
		rc = tramp_bind(ctx, kind, n, verify_mode);
		if (rc)
			m->n--; /* the entry just pushed */
	}
	if (rc) {
		tramp_node_free(n);
		if (rc == -ENOMEM)
			log_error("%s: out of memory", name);
	} else {
		m->trampolines = true;
		if (!m->code)
			m->code = (const void *)fn;
	}
	pthread_mutex_unlock(&modules_lock);
	return rc;
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_info_callback(struct ossl_proc_module *m, SSL_CTX *ctx,
				   void (*cb)(const SSL *ssl, int where,
					      int ret))
{
	return set_callback(m, ctx, CB_INFO, (any_fn)cb, NULL, 0, __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_verify(struct ossl_proc_module *m, SSL_CTX *ctx,
			    int mode, SSL_verify_cb cb)
{
	return set_callback(m, ctx, CB_VERIFY, (any_fn)cb, NULL, mode,
			    __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_msg_callback(struct ossl_proc_module *m, SSL_CTX *ctx,
				  void (*cb)(int write_p, int version,
					     int content_type, const void *buf,
					     size_t len, SSL *ssl, void *arg))
{
	return set_callback(m, ctx, CB_MSG, (any_fn)cb, NULL, 0, __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_keylog_callback(struct ossl_proc_module *m,
				     SSL_CTX *ctx, SSL_CTX_keylog_cb_func cb)
{
	return set_callback(m, ctx, CB_KEYLOG, (any_fn)cb, NULL, 0, __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_alpn_select_cb(struct ossl_proc_module *m, SSL_CTX *ctx,
				    int (*cb)(SSL *ssl,
					      const unsigned char **out,
					      unsigned char *outlen,
					      const unsigned char *in,
					      unsigned int inlen, void *arg),
				    void *arg)
{
	return set_callback(m, ctx, CB_ALPN, (any_fn)cb, arg, 0, __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_servername_callback(struct ossl_proc_module *m,
					 SSL_CTX *ctx,
					 int (*cb)(SSL *ssl, int *al,
						   void *arg),
					 void *arg)
{
	return set_callback(m, ctx, CB_SERVERNAME, (any_fn)cb, arg, 0,
			    __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_sess_set_new_cb(struct ossl_proc_module *m, SSL_CTX *ctx,
				 int (*cb)(SSL *ssl, SSL_SESSION *sess))
{
	return set_callback(m, ctx, CB_SESS_NEW, (any_fn)cb, NULL, 0,
			    __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_sess_set_remove_cb(struct ossl_proc_module *m, SSL_CTX *ctx,
				    void (*cb)(SSL_CTX *ctx,
					       SSL_SESSION *sess))
{
	return set_callback(m, ctx, CB_SESS_REMOVE, (any_fn)cb, NULL, 0,
			    __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_client_cert_cb(struct ossl_proc_module *m,
				    SSL_CTX *ctx,
				    int (*cb)(SSL *ssl, X509 **x509,
					      EVP_PKEY **pkey))
{
	return set_callback(m, ctx, CB_CLIENT_CERT, (any_fn)cb, NULL, 0,
			    __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_psk_client_callback(struct ossl_proc_module *m,
					 SSL_CTX *ctx,
					 SSL_psk_client_cb_func cb)
{
	return set_callback(m, ctx, CB_PSK_CLIENT, (any_fn)cb, NULL, 0,
			    __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_psk_server_callback(struct ossl_proc_module *m,
					 SSL_CTX *ctx,
					 SSL_psk_server_cb_func cb)
{
	return set_callback(m, ctx, CB_PSK_SERVER, (any_fn)cb, NULL, 0,
			    __func__);
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
		tramp_restore(m->name, u->u.cb);
		break;
	case U_HOOK:
		u->u.hook.fn(u->u.hook.arg);
		break;
	}
}

/* No callback of @m can run any more: its entries are unlinked. */
static void
detach_callbacks(struct ossl_proc_module *m)
{
	tramp_unbind_begin();
	for (size_t i = 0; i < m->n; i++)
		if (m->undo[i].kind == U_CALLBACK)
			tramp_unbind(m->undo[i].u.cb);
	tramp_unbind_end();
}

/* Whether the plugin must stay mapped: osslproc's trampolines stay
 * reachable from live objects, so if this copy of osslproc lives in the
 * plugin itself (vendored), that is plugin code; and a libcrypto linked
 * into it must stay too (pin_own_libcrypto), whether or not the
 * module registered a callback. */
static int
unload_verdict(struct ossl_proc_module *m)
{
	Dl_info mine, theirs;

	if (m->code && m->trampolines && dladdr(tramp_code(), &mine) &&
	    dladdr(m->code, &theirs) && mine.dli_fbase == theirs.dli_fbase &&
	    pin_self("SSL objects created while the module was loaded "
			  "still call osslproc's trampolines in it"))
		return OSSL_PROC_UNLOAD_PINNED;
	if (pin_own_libcrypto())
		return OSSL_PROC_UNLOAD_PINNED;
	return OSSL_PROC_UNLOAD_SAFE;
}

static void
forget(struct ossl_proc_module *m)
{
	for (size_t i = 0; i < n_open; i++) {
		if (open_modules[i] == m) {
			open_modules[i] = open_modules[--n_open];
			break;
		}
	}
	/* A vendored copy may be unloaded next: leave nothing allocated. */
	if (n_open == 0) {
		free(open_modules);
		open_modules = NULL;
		cap_open = 0;
	}
}

static void
module_free(struct ossl_proc_module *m)
{
	for (size_t i = 0; i < m->n; i++)
		if (m->undo[i].kind == U_CALLBACK)
			tramp_node_free(m->undo[i].u.cb);
	free(m->undo);
	free(m);
}

OSSL_PROC_EXPORT int
ossl_proc_module_close(struct ossl_proc_module *m)
{
	int rc;

	alloc_check();
	pthread_mutex_lock(&modules_lock);
	rc = check_open(m, __func__);
	if (rc) {
		pthread_mutex_unlock(&modules_lock);
		return rc;
	}
	forget(m);
	/* No context with one of the module's callbacks is freed until the
	 * undo is complete. */
	tramp_lock();
	detach_callbacks(m);
	for (size_t i = m->n; i-- > 0;)
		undo_one(m, &m->undo[i]);
	if (m->libctx) {
		OPENSSL_thread_stop_ex(m->libctx);
		OSSL_LIB_CTX_free(m->libctx);
	}
	tramp_unlock();
	rc = unload_verdict(m);
	pthread_mutex_unlock(&modules_lock);
	log_debug("module %s closed (%zu registrations undone)", m->name,
		  m->n);
	module_free(m);
	return rc;
}
