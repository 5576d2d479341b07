/*
 * Module scopes: everything a plugin registers with OpenSSL through a
 * scope is undone when the scope closes, so that OpenSSL never calls into
 * the plugin after it is unloaded.  Callbacks on an SSL_CTX go through
 * the trampolines of trampoline.c; this file keeps the scopes, their undo
 * logs and the close.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
		struct cb_node *cb; /* its object: node->obj */
		struct { void (*fn)(void *arg); void *arg; } hook;
	} u;
};

/*
 * A scope.  What the user holds is not its address but a handle, its
 * slot in the table below and the generation it was opened with: once
 * closed, a handle is refused even when calloc hands the same address
 * to another scope, which would otherwise be closed in its place.
 */
struct scope {
	char name[64];
	uintptr_t handle;
	bool closing;      /* registrations refused, callbacks unlinked */
	struct tramp_gate gate;
	struct undo *undo;
	size_t n, cap;
	OSSL_LIB_CTX *libctx;
	const void *code;  /* an address in the plugin (its first callback) */
	bool trampolines;  /* OpenSSL objects may call our trampolines */
};

/* All module operations are rare (load and unload time): one lock,
 * recursive because an on_close hook may call them.  Taken before the
 * trampolines' binding lock, never after it, and never held while a
 * close waits for callbacks, which may take it. */
static pthread_mutex_t modules_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static struct scope **slots;
static size_t n_slots, cap_slots, n_live;
static uintptr_t next_gen;

/* A handle: the slot + 1 in the low bits (never 0), the generation above. */
#define SLOT_BITS (UINTPTR_MAX > 0xffffffffu ? 20 : 10)
#define SLOT_MAX (((uintptr_t)1 << SLOT_BITS) - 1)

/* ---- the registry of scopes ---- */

/* Start the generations at a value of this copy of osslproc (its address
 * and the time), so that another copy's handle is refused too. */
static uintptr_t
first_gen(void)
{
	struct timespec ts;
	uint64_t x;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	x = (uint64_t)(uintptr_t)&next_gen ^ (uint64_t)ts.tv_nsec ^
	    ((uint64_t)ts.tv_sec << 30);
	return (uintptr_t)(x * 0x9e3779b97f4a7c15ull >> 16);
}

/* Under modules_lock: the scope of handle @h, open (or closing, when
 * @closing_ok), else NULL. */
static struct scope *
lookup(const struct ossl_proc_module *h, bool closing_ok)
{
	uintptr_t v = (uintptr_t)h;
	size_t i = (size_t)(v & SLOT_MAX);
	struct scope *m;

	if (i == 0 || i > n_slots)
		return NULL;
	m = slots[i - 1];
	if (!m || m->handle != v || (m->closing && !closing_ok))
		return NULL;
	return m;
}

/* Under modules_lock: the scope of @h, else a logged NULL. */
static struct scope *
find(const struct ossl_proc_module *h, bool closing_ok, const char *fn)
{
	struct scope *m;

	if (!h) {
		log_bug_client("%s: module is NULL", fn);
		return NULL;
	}
	m = lookup(h, closing_ok);
	if (!m)
		log_bug_client("%s: %p is not an open module (closed already?)",
			       fn, (const void *)h);
	return m;
}

/* Under modules_lock: give @m a slot and a handle; -ENOMEM (logged). */
static int
remember(struct scope *m)
{
	size_t i = 0;

	while (i < n_slots && slots[i])
		i++;
	if (i == n_slots) {
		if (n_slots >= SLOT_MAX ||
		    array_reserve((void **)&slots, &cap_slots, n_slots,
				  sizeof(*slots))) {
			log_error("ossl_proc_module_open: out of memory for "
				  "the table of open scopes");
			return -ENOMEM;
		}
		n_slots++;
	}
	if (!next_gen)
		next_gen = first_gen();
	m->handle = (next_gen++ << SLOT_BITS) | (i + 1);
	slots[i] = m;
	n_live++;
	return 0;
}

/* Under modules_lock: @m's handle is refused from now on. */
static void
forget(struct scope *m)
{
	slots[(m->handle & SLOT_MAX) - 1] = NULL;
	/* A vendored copy may be unloaded next: leave nothing allocated. */
	if (--n_live == 0) {
		free(slots);
		slots = NULL;
		n_slots = cap_slots = 0;
	}
}

/* In a child, alone: the callbacks other threads were in never return
 * here.  No lock: the thread that held one is gone too. */
CHILD_PATH static uintptr_t
child_locked(void)
{
	tramp_child_reset();
	for (size_t i = 0; i < n_slots; i++)
		if (slots[i])
			tramp_gate_reset(&slots[i]->gate);
	return 0;
}

static const struct proc_child_handler child_handler = {
	.locked = child_locked,
};

static int
undo_push(struct scope *m, struct undo u)
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
	struct scope *m;
	int rc;

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
	/* Only once a scope exists does a child have counts to reset. */
	proc_on_child(&child_handler);
	rc = remember(m);
	pthread_mutex_unlock(&modules_lock);
	if (rc) {
		free(m);
		errno = -rc;
		return NULL;
	}
	return (struct ossl_proc_module *)m->handle;
}

/* Under modules_lock: *@m the open scope of @h, else -EINVAL (logged). */
static int
check_open(const struct ossl_proc_module *h, const char *fn,
	   struct scope **m)
{
	*m = find(h, false, fn);
	return *m ? 0 : -EINVAL;
}

/* ---- registrations ---- */

OSSL_PROC_EXPORT int
ossl_proc_module_ex_new_index(struct ossl_proc_module *h, int class_index,
			      long argl, void *argp, CRYPTO_EX_new *new_func,
			      CRYPTO_EX_dup *dup_func, CRYPTO_EX_free *free_func)
{
	struct scope *m;
	int idx, rc;

	pthread_mutex_lock(&modules_lock);
	rc = check_open(h, __func__, &m);
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

/* Under modules_lock: @m's node for @kind on @obj, if it has one.  The
 * nodes of objects freed since are dropped on the way, so that a scope
 * that sets a callback on each connection (its SSL, or a context of its
 * own) stays as small as the live connections. */
static struct cb_node *
own_node(struct scope *m, const void *obj, enum cb_kind kind)
{
	struct cb_node *found = NULL;
	size_t j = 0;

	tramp_lock();
	for (size_t i = 0; i < m->n; i++) {
		struct undo u = m->undo[i];

		if (u.kind == U_CALLBACK && !u.u.cb->obj) {
			tramp_node_free(u.u.cb); /* unreachable since */
			continue;
		}
		if (u.kind == U_CALLBACK && u.u.cb->obj == obj &&
		    u.u.cb->kind == kind)
			found = u.u.cb;
		m->undo[j++] = u;
	}
	m->n = j;
	tramp_unlock();
	return found;
}

/* Under modules_lock: a new node of @m for @fn, recorded in its undo
 * log and bound on @obj.  0 or -ENOMEM. */
static int
bind_new(struct scope *m, void *obj, enum cb_kind kind, any_fn fn,
	 void *arg, int verify_mode, bool pass_arg)
{
	struct cb_node *n = tramp_node_new(fn, arg, &m->gate);
	int rc = n ? 0 : -ENOMEM;

	if (!rc) {
		n->pass_arg = pass_arg;
		rc = undo_push(m, (struct undo){ .kind = U_CALLBACK,
			.u.cb = n });
	}
	if (!rc) {
		rc = tramp_bind(obj, kind, n, verify_mode);
		if (rc)
			m->n--; /* the entry just pushed */
	}
	if (rc) {
		tramp_node_free(n);
		return rc;
	}
	m->trampolines = true;
	if (!m->code)
		m->code = (const void *)fn;
	return 0;
}

static int
set_callback(struct ossl_proc_module *h, void *obj, enum cb_kind kind,
	     any_fn fn, void *arg, int verify_mode, bool pass_arg,
	     const char *name)
{
	struct cb_node *n;
	struct scope *m;
	int rc;

	pthread_mutex_lock(&modules_lock);
	rc = check_open(h, name, &m);
	if (!rc && (!obj || !fn)) {
		log_bug_client("%s: the context (or SSL) and cb must not be "
			       "NULL", name);
		rc = -EINVAL;
	}
	/* Set again (once per connection, say): one entry, replaced. */
	if (!rc && (n = own_node(m, obj, kind)))
		tramp_rebind(n, fn, arg, verify_mode);
	else if (!rc)
		rc = bind_new(m, obj, kind, fn, arg, verify_mode, pass_arg);
	if (rc == -ENOMEM)
		log_error("%s: out of memory", name);
	pthread_mutex_unlock(&modules_lock);
	return rc;
}

int
module_set_callback(struct ossl_proc_module *h, void *obj,
		    enum cb_kind kind, any_fn fn, void *arg, int mode,
		    bool pass_arg)
{
	return set_callback(h, obj, kind, fn, arg, mode, pass_arg,
			    "module_set_callback");
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_info_callback(struct ossl_proc_module *m, SSL_CTX *ctx,
				   void (*cb)(const SSL *ssl, int where,
					      int ret))
{
	return set_callback(m, ctx, CB_INFO, (any_fn)cb, NULL, 0, false,
			    __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_verify(struct ossl_proc_module *m, SSL_CTX *ctx,
			    int mode, SSL_verify_cb cb)
{
	return set_callback(m, ctx, CB_VERIFY, (any_fn)cb, NULL, mode, false,
			    __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_msg_callback(struct ossl_proc_module *m, SSL_CTX *ctx,
				  void (*cb)(int write_p, int version,
					     int content_type, const void *buf,
					     size_t len, SSL *ssl, void *arg))
{
	return set_callback(m, ctx, CB_MSG, (any_fn)cb, NULL, 0, false,
			    __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_keylog_callback(struct ossl_proc_module *m,
				     SSL_CTX *ctx, SSL_CTX_keylog_cb_func cb)
{
	return set_callback(m, ctx, CB_KEYLOG, (any_fn)cb, NULL, 0, false,
			    __func__);
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
	return set_callback(m, ctx, CB_ALPN, (any_fn)cb, arg, 0, false,
			    __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_servername_callback(struct ossl_proc_module *m,
					 SSL_CTX *ctx,
					 int (*cb)(SSL *ssl, int *al,
						   void *arg),
					 void *arg)
{
	return set_callback(m, ctx, CB_SERVERNAME, (any_fn)cb, arg, 0, false,
			    __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_sess_set_new_cb(struct ossl_proc_module *m, SSL_CTX *ctx,
				 int (*cb)(SSL *ssl, SSL_SESSION *sess))
{
	return set_callback(m, ctx, CB_SESS_NEW, (any_fn)cb, NULL, 0, false,
			    __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_sess_set_remove_cb(struct ossl_proc_module *m, SSL_CTX *ctx,
				    void (*cb)(SSL_CTX *ctx,
					       SSL_SESSION *sess))
{
	return set_callback(m, ctx, CB_SESS_REMOVE, (any_fn)cb, NULL, 0, false,
			    __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_client_cert_cb(struct ossl_proc_module *m,
				    SSL_CTX *ctx,
				    int (*cb)(SSL *ssl, X509 **x509,
					      EVP_PKEY **pkey))
{
	return set_callback(m, ctx, CB_CLIENT_CERT, (any_fn)cb, NULL, 0, false,
			    __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_psk_client_callback(struct ossl_proc_module *m,
					 SSL_CTX *ctx,
					 SSL_psk_client_cb_func cb)
{
	return set_callback(m, ctx, CB_PSK_CLIENT, (any_fn)cb, NULL, 0, false,
			    __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_psk_server_callback(struct ossl_proc_module *m,
					 SSL_CTX *ctx,
					 SSL_psk_server_cb_func cb)
{
	return set_callback(m, ctx, CB_PSK_SERVER, (any_fn)cb, NULL, 0, false,
			    __func__);
}

OSSL_PROC_EXPORT int
ossl_proc_module_load_strings(struct ossl_proc_module *h, int lib,
			      ERR_STRING_DATA *str)
{
	struct scope *m;
	int rc;

	pthread_mutex_lock(&modules_lock);
	rc = check_open(h, __func__, &m);
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
ossl_proc_module_on_close(struct ossl_proc_module *h,
			  void (*undo)(void *arg), void *arg)
{
	struct scope *m;
	int rc;

	pthread_mutex_lock(&modules_lock);
	rc = check_open(h, __func__, &m);
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

/* Under modules_lock: @m's context, created now if it has none. */
static OSSL_LIB_CTX *
libctx_of(struct scope *m)
{
	if (!m->libctx) {
		m->libctx = OSSL_LIB_CTX_new();
		/* Provider loads in it must not read OPENSSL_MODULES. */
		if (m->libctx && env_modules_dir())
			OSSL_PROVIDER_set_default_search_path(m->libctx,
							      env_modules_dir());
	}
	if (!m->libctx)
		log_error("module %s: OSSL_LIB_CTX_new failed", m->name);
	return m->libctx;
}

/* While the scope closes, its callbacks in flight still get the
 * context, which is freed only once they have returned. */
OSSL_PROC_EXPORT OSSL_LIB_CTX *
ossl_proc_module_libctx(struct ossl_proc_module *h)
{
	OSSL_LIB_CTX *lc = NULL;
	struct scope *m;

	pthread_mutex_lock(&modules_lock);
	m = find(h, true, __func__);
	if (m && !m->closing)
		lc = libctx_of(m);
	else if (m && m->libctx)
		lc = m->libctx;
	else if (m)
		log_error("module %s: closing, so no library context is "
			  "created any more; create it before the module "
			  "closes", m->name);
	pthread_mutex_unlock(&modules_lock);
	return lc;
}

/* ---- close ---- */

static void
undo_one(struct scope *m, struct undo *u)
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

/* No dispatch that starts from now on reaches a callback of @m. */
static void
detach_callbacks(struct scope *m)
{
	for (size_t i = 0; i < m->n; i++)
		if (m->undo[i].kind == U_CALLBACK)
			tramp_unbind(m->undo[i].u.cb);
}

/* Whether the plugin must stay mapped: osslproc's trampolines stay
 * reachable from live objects, so if this copy of osslproc lives in the
 * plugin itself (vendored), that is plugin code; and a libcrypto linked
 * into it must stay too (pin_own_libcrypto), whether or not the
 * module registered a callback. */
static int
unload_verdict(struct scope *m)
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
module_free(struct scope *m)
{
	for (size_t i = 0; i < m->n; i++)
		if (m->undo[i].kind == U_CALLBACK)
			tramp_node_free(m->undo[i].u.cb);
	free(m->undo);
	free(m);
}

/* Refuse registrations and unlink the callbacks of the open scope of
 * @h; then @w waits for those in flight.  -EINVAL or -EDEADLK, logged. */
static int
close_begin(struct ossl_proc_module *h, struct tramp_waiter *w,
	    struct scope **out)
{
	struct scope *m;
	int rc;

	pthread_mutex_lock(&modules_lock);
	rc = check_open(h, "ossl_proc_module_close", &m);
	if (!rc)
		rc = tramp_close_begin(&m->gate, w, m->name);
	if (!rc) {
		m->closing = true;
		detach_callbacks(m);
	}
	pthread_mutex_unlock(&modules_lock);
	*out = m;
	return rc;
}

/* The wait runs with no lock of ours held: the callbacks it waits for
 * may call any module function (ossl_proc_module_libctx(), a callback
 * on another context, another scope's close). */
OSSL_PROC_EXPORT int
ossl_proc_module_close(struct ossl_proc_module *h)
{
	struct tramp_waiter w;
	struct scope *m;
	int rc;

	alloc_check();
	rc = close_begin(h, &w, &m);
	if (rc)
		return rc;
	tramp_drain(&w);
	pthread_mutex_lock(&modules_lock);
	forget(m);
	pthread_mutex_unlock(&modules_lock);
	/* The scope is nobody's but ours now; the hooks run unlocked, so
	 * they may call any module function. */
	for (size_t i = m->n; i-- > 0;)
		undo_one(m, &m->undo[i]);
	if (m->libctx) {
		OPENSSL_thread_stop_ex(m->libctx);
		OSSL_LIB_CTX_free(m->libctx);
	}
	pthread_mutex_lock(&modules_lock);
	rc = unload_verdict(m);
	pthread_mutex_unlock(&modules_lock);
	log_debug("module %s closed (%zu registrations undone)", m->name,
		  m->n);
	module_free(m);
	return rc;
}
