/*
 * Implicit module scopes: what a dlopen'ed object registers with OpenSSL
 * (callbacks, ex_data functions, error strings) goes through a module
 * scope of its own, opened at its first registration and closed when the
 * object is about to be unmapped, so that OpenSSL never calls into it
 * afterwards.  A registration belongs to the object holding the function
 * (or the data); pointers into the main program, the objects loaded at
 * start-up and objects that can never be unloaded pass straight through.
 *
 * The close comes from libosslproc-audit.so (LD_AUDIT), whose
 * la_objclose() calls ossl_proc_preload_objclose() after the object's
 * destructors and before its unmapping, with the loader's lock held.
 * Without auditing (LD_AUDIT ignored in secure-execution mode, or not
 * set), the dlclose() interposer notices afterwards, through the
 * loader's count of removed objects, that objects were unmapped and
 * closes their scopes then: until it does, a callback dispatched in
 * another thread can still reach the unmapped code.
 *
 * Lock order: the loader's lock, then objects_lock, then osslproc's
 * module lock.  So nothing here calls dladdr() or dlopen() holding
 * objects_lock, and a scope closes with objects_lock released (its
 * close waits for the object's callbacks in flight).
 */
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <openssl/provider.h>

#include "osslproc-int.h"
#include "module/module-int.h"
#include "preload-int.h"

/* Error strings an object loaded, as the copy registered in its place. */
struct strings_reg {
	const void *orig;
	int lib;
	struct strings_reg *next;
};

/* A dlopen'ed object that registered something, or that passes through. */
struct object {
	struct link_map *map;
	ElfW(Addr) addr;          /* map->l_addr, for the fallback's check */
	char name[160];           /* map->l_name is freed with the map */
	bool through;             /* start-up or NODELETE: no scope */
	bool pinned;              /* kept loaded: no scope needed any more */
	struct ossl_proc_module *scope; /* opened at its first registration */
	struct strings_reg *strings;
	struct object *next;
};

static pthread_mutex_t objects_lock = PTHREAD_MUTEX_INITIALIZER;
static struct object *objects;
static _Atomic bool active;     /* unload_start() ran; not exiting yet */
/* The objects loaded at start-up: never unmapped before exit. */
static struct link_map **startup;
static size_t n_startup;

/* Inside osslproc's own calls to OpenSSL (its trampolines, its close):
 * every interposer passes straight through. */
static __thread int inside __attribute__((tls_model("initial-exec")));

static int (*real_dlclose)(void *);
static int (*real_atexit)(void (*)(void));

static void stop(void);
static void next_resolve(void);

/* ---- which object a pointer belongs to ---- */

static struct link_map *
owner_of(const void *p)
{
	struct link_map *lm = NULL;
	Dl_info info;

	if (!p || !dladdr1(p, &info, (void **)&lm, RTLD_DL_LINKMAP))
		return NULL; /* not in any object: generated code */
	return lm;
}

static bool
is_startup(const struct link_map *lm)
{
	for (size_t i = 0; i < n_startup; i++)
		if (startup[i] == lm)
			return true;
	return false;
}

/* Linked with -z nodelete: dlclose() never unmaps it. */
static bool
is_nodelete(const struct link_map *lm)
{
	for (const ElfW(Dyn) *d = lm->l_ld; d && d->d_tag != DT_NULL; d++)
		if (d->d_tag == DT_FLAGS_1)
			return d->d_un.d_val & DF_1_NODELETE;
	return false;
}

/* Under objects_lock: @lm's entry, created when missing (NULL when out
 * of memory: the registration passes through, unprotected). */
static struct object *
object_of(struct link_map *lm)
{
	struct object *o;

	for (o = objects; o; o = o->next)
		if (o->map == lm)
			return o;
	o = calloc(1, sizeof(*o));
	if (!o) {
		log_error("osslproc-run: out of memory attributing a "
			  "registration to %s; it will not be undone when "
			  "that object is unloaded", lm->l_name);
		return NULL;
	}
	o->map = lm;
	o->addr = lm->l_addr;
	snprintf(o->name, sizeof(o->name), "%s", lm->l_name);
	o->through = is_startup(lm) || is_nodelete(lm);
	o->next = objects;
	objects = o;
	return o;
}

/* Under objects_lock: @o's scope, opened now if it has none. */
static struct ossl_proc_module *
scope_of(struct object *o)
{
	static bool exit_hooked;

	/* Without OPENSSL_atexit (4.0): an exit handler registered after
	 * OpenSSL's own, so that it runs before OpenSSL's cleanup. */
	if (!real_atexit && !exit_hooked)
		exit_hooked = !atexit(stop);
	if (!o->scope) {
		o->scope = ossl_proc_module_open(o->name);
		if (o->scope)
			log_debug("osslproc-run: implicit scope for %s",
				  o->name);
	}
	return o->scope;
}

/*
 * The first of @n pointers that lies in a dlopen'ed object decides: the
 * scope of that object, with objects_lock held and this thread inside
 * (release with leave()); NULL to pass the registration straight through.
 * *@objp gets the object.
 */
static struct ossl_proc_module *
enter_obj(const void *const *p, size_t n, struct object **objp)
{
	struct ossl_proc_module *m = NULL;
	struct link_map *lm = NULL;
	struct object *o = NULL;

	if (inside || !atomic_load_explicit(&active, memory_order_acquire))
		return NULL;
	for (size_t i = 0; i < n && !lm; i++) {
		lm = owner_of(p[i]);
		if (lm && is_startup(lm))
			lm = NULL;
	}
	if (!lm)
		return NULL;
	pthread_mutex_lock(&objects_lock);
	o = object_of(lm);
	if (o && !o->through && !o->pinned)
		m = scope_of(o);
	if (!m) {
		pthread_mutex_unlock(&objects_lock);
		return NULL;
	}
	inside++;
	*objp = o;
	return m;
}

static struct ossl_proc_module *
enter(const void *p)
{
	struct object *o;

	return enter_obj(&p, 1, &o);
}

static void
leave(void)
{
	inside--;
	pthread_mutex_unlock(&objects_lock);
}

/* ---- the close ---- */

/* Under objects_lock: unlink @lm's entry; the caller frees it. */
static struct object *
take(struct link_map *lm)
{
	for (struct object **p = &objects; *p; p = &(*p)->next) {
		if ((*p)->map == lm) {
			struct object *o = *p;

			*p = o->next;
			return o;
		}
	}
	return NULL;
}

static void
object_close(struct object *o, const char *when)
{
	size_t left = 0;

	if (o->scope) {
		inside++;
		ossl_proc_module_close(o->scope);
		inside--;
		pthread_mutex_lock(&objects_lock);
		for (struct object *p = objects; p; p = p->next)
			left += p->scope != NULL;
		pthread_mutex_unlock(&objects_lock);
		log_debug("osslproc-run: %s unloaded %s: its implicit scope "
			  "closed, %zu implicit scopes open", o->name, when,
			  left);
	}
	while (o->strings) {
		struct strings_reg *s = o->strings;

		o->strings = s->next;
		free(s);
	}
	free(o);
}

/* Called by libosslproc-audit.so's la_objclose(), for every object the
 * loader is about to unmap, after its destructors ran. */
PRELOAD_EXPORT void
ossl_proc_preload_objclose(struct link_map *map)
{
	struct object *o;

	if (!atomic_load_explicit(&active, memory_order_acquire))
		return;
	pthread_mutex_lock(&objects_lock);
	o = take(map);
	pthread_mutex_unlock(&objects_lock);
	if (o)
		object_close(o, "(before unmapping)");
}

static int
count_subs(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	*(unsigned long long *)data = info->dlpi_subs;
	return 1; /* the counter is the same in every entry */
}

static unsigned long long
subs_now(void)
{
	unsigned long long subs = 0;

	dl_iterate_phdr(count_subs, &subs);
	return subs;
}

struct lookfor {
	const struct object *o;
	bool found;
};

static int
find_loaded(struct dl_phdr_info *info, size_t size, void *data)
{
	struct lookfor *l = data;

	(void)size;
	if (info->dlpi_addr == l->o->addr && info->dlpi_name &&
	    !strncmp(info->dlpi_name, l->o->name, sizeof(l->o->name) - 1))
		l->found = true;
	return l->found;
}

/* Without auditing: the objects with a scope that are no longer there. */
static void
close_vanished(void)
{
	struct object *gone = NULL, **p;

	pthread_mutex_lock(&objects_lock);
	for (p = &objects; *p;) {
		struct lookfor l = { *p, false };

		dl_iterate_phdr(find_loaded, &l);
		if (l.found) {
			p = &(*p)->next;
			continue;
		}
		l.o = *p;
		*p = (*p)->next;
		((struct object *)l.o)->next = gone;
		gone = (struct object *)l.o;
	}
	pthread_mutex_unlock(&objects_lock);
	while (gone) {
		struct object *o = gone;

		gone = o->next;
		object_close(o, "(noticed after unmapping, no LD_AUDIT)");
	}
}

/* The fallback: with libosslproc-audit.so loaded, its la_objclose() has
 * closed the scopes already and there is nothing left to find. */
PRELOAD_EXPORT int
dlclose(void *handle)
{
	unsigned long long before;
	int rc;

	/* Called before unload_start() too, or with it off. */
	if (!real_dlclose)
		real_dlclose = (int (*)(void *))dlsym(RTLD_NEXT, "dlclose");
	if (inside || !atomic_load_explicit(&active, memory_order_acquire))
		return real_dlclose(handle);
	before = subs_now();
	rc = real_dlclose(handle);
	if (subs_now() != before)
		close_vanished();
	return rc;
}

/* ---- registrations with no undo: keep the object ---- */

static void
keep_loaded(const void *p, const char *why)
{
	struct link_map *lm;
	struct object *o;
	void *h;

	if (inside || !atomic_load_explicit(&active, memory_order_acquire))
		return;
	lm = owner_of(p);
	if (!lm || is_startup(lm) || is_nodelete(lm))
		return;
	pthread_mutex_lock(&objects_lock);
	o = object_of(lm);
	if (o && o->pinned) {
		pthread_mutex_unlock(&objects_lock);
		return;
	}
	pthread_mutex_unlock(&objects_lock);
	inside++;
	h = dlopen(lm->l_name, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
	if (h)
		real_dlclose(h); /* NODELETE is set; drop the reference */
	inside--;
	if (!h) {
		log_error("osslproc-run: cannot keep %s loaded (%s): %s; "
			  "unloading it will crash the process", lm->l_name,
			  dlerror(), why);
		return;
	}
	pthread_mutex_lock(&objects_lock);
	if (o)
		o->pinned = true;
	pthread_mutex_unlock(&objects_lock);
	log_info("osslproc-run: %s stays loaded until exit: %s", lm->l_name,
		 why);
}

/* ---- start and exit ---- */

static void
stop(void)
{
	atomic_store_explicit(&active, false, memory_order_release);
}

/* OpenSSL's own cleanup has run (or is running): what the scopes would
 * undo is gone with it.  The loader's la_objclose() calls at exit come
 * after. */
__attribute__((destructor)) static void
unload_exit(void)
{
	stop();
}

void
unload_start(void)
{
	struct link_map *lm = NULL;
	void *self = dlopen(NULL, RTLD_NOW);
	size_t n = 0;

	real_dlclose = (int (*)(void *))dlsym(RTLD_NEXT, "dlclose");
	real_atexit = (int (*)(void (*)(void)))dlsym(RTLD_NEXT,
						     "OPENSSL_atexit");
	next_resolve();
	if (!self || dlinfo(self, RTLD_DI_LINKMAP, &lm) || !lm) {
		log_error("osslproc-run: cannot list the objects loaded at "
			  "start (%s); plugins' registrations are not undone "
			  "at unload", dlerror());
		return;
	}
	for (struct link_map *p = lm; p; p = p->l_next)
		n++;
	startup = calloc(n, sizeof(*startup));
	if (!startup) {
		log_error("osslproc-run: out of memory at start; plugins' "
			  "registrations are not undone at unload");
		return;
	}
	for (struct link_map *p = lm; p; p = p->l_next)
		startup[n_startup++] = p;
	/* Inside OpenSSL's cleanup, before the loader's closes at exit. */
	if (real_atexit)
		real_atexit(stop);
	atomic_store_explicit(&active, true, memory_order_release);
}

/* ---- the interposed calls ---- */

/*
 * The next definitions of the interposed calls, looked up at start:
 * dlsym() takes the loader's lock, which a close holds (inside
 * dlclose()) while it waits for the callbacks in flight, so a callback
 * that called an interposed function for the first time just then would
 * wait forever.
 */
static const char *const next_names[] = {
	"CRYPTO_get_ex_new_index",
	"ERR_load_strings",
	"ERR_load_strings_const",
	"OSSL_PROVIDER_add_builtin",
	"SSL_CTX_callback_ctrl",
	"SSL_CTX_get_client_cert_cb",
	"SSL_CTX_get_info_callback",
	"SSL_CTX_get_keylog_callback",
	"SSL_CTX_get_verify_callback",
	"SSL_CTX_sess_get_get_cb",
	"SSL_CTX_sess_get_new_cb",
	"SSL_CTX_sess_get_remove_cb",
	"SSL_CTX_sess_set_get_cb",
	"SSL_CTX_sess_set_new_cb",
	"SSL_CTX_sess_set_remove_cb",
	"SSL_CTX_set_alpn_select_cb",
	"SSL_CTX_set_cert_cb",
	"SSL_CTX_set_cert_verify_callback",
	"SSL_CTX_set_client_cert_cb",
	"SSL_CTX_set_client_hello_cb",
	"SSL_CTX_set_default_passwd_cb",
	"SSL_CTX_set_info_callback",
	"SSL_CTX_set_keylog_callback",
	"SSL_CTX_set_msg_callback",
	"SSL_CTX_set_psk_client_callback",
	"SSL_CTX_set_psk_server_callback",
	"SSL_CTX_set_tlsext_ticket_key_evp_cb",
	"SSL_CTX_set_verify",
	"SSL_get_info_callback",
	"SSL_get_verify_callback",
	"SSL_set_default_passwd_cb",
	"SSL_set_info_callback",
	"SSL_set_msg_callback",
	"SSL_set_verify",
	"X509V3_EXT_add",
	"X509_STORE_set_cert_crl",
	"X509_STORE_set_check_crl",
	"X509_STORE_set_check_issued",
	"X509_STORE_set_check_policy",
	"X509_STORE_set_check_revocation",
	"X509_STORE_set_cleanup",
	"X509_STORE_set_get_crl",
	"X509_STORE_set_get_issuer",
	"X509_STORE_set_lookup_certs",
	"X509_STORE_set_lookup_crls",
	"X509_STORE_set_verify",
	"X509_STORE_set_verify_cb",
	"name",
};
static void *next_addrs[ARRAY_SIZE(next_names)];

static void
next_resolve(void)
{
	for (size_t i = 0; i < ARRAY_SIZE(next_names); i++)
		next_addrs[i] = dlsym(RTLD_NEXT, next_names[i]);
}

/* Once per interposer: a few string compares, no lock. */
static void *
next_sym(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(next_names); i++)
		if (next_addrs[i] && !strcmp(next_names[i], name))
			return next_addrs[i];
	return dlsym(RTLD_NEXT, name); /* before the start */
}

#define NEXT(type, name) \
	static type real_##name; \
	if (!real_##name) \
		real_##name = (type)next_sym(#name)

/* A failed scoped registration still reaches OpenSSL, unprotected. */
static bool
scoped(int rc, const char *what)
{
	if (rc >= 0)
		return true;
	log_warn("osslproc-run: %s: %s; registered without an implicit "
		 "scope, so unloading its plugin may crash the process", what,
		 strerror(-rc));
	return false;
}

typedef void (*info_setter)(SSL_CTX *, info_fn);

PRELOAD_EXPORT void
SSL_CTX_set_info_callback(SSL_CTX *ctx, info_fn cb)
{
	NEXT(info_setter, SSL_CTX_set_info_callback);
	struct ossl_proc_module *m = ctx ? enter((const void *)cb) : NULL;
	bool done = false;

	if (m) {
		done = scoped(ossl_proc_module_set_info_callback(m, ctx, cb),
			      __func__);
		leave();
	}
	if (!done)
		real_SSL_CTX_set_info_callback(ctx, cb);
}

typedef void (*verify_setter)(SSL_CTX *, int, SSL_verify_cb);

PRELOAD_EXPORT void
SSL_CTX_set_verify(SSL_CTX *ctx, int mode, SSL_verify_cb cb)
{
	NEXT(verify_setter, SSL_CTX_set_verify);
	struct ossl_proc_module *m = ctx ? enter((const void *)cb) : NULL;
	bool done = false;

	if (m) {
		done = scoped(ossl_proc_module_set_verify(m, ctx, mode, cb),
			      __func__);
		leave();
	}
	if (!done)
		real_SSL_CTX_set_verify(ctx, mode, cb);
}

typedef void (*msg_setter)(SSL_CTX *, msg_fn);

PRELOAD_EXPORT void
SSL_CTX_set_msg_callback(SSL_CTX *ctx, msg_fn cb)
{
	NEXT(msg_setter, SSL_CTX_set_msg_callback);
	struct ossl_proc_module *m = ctx ? enter((const void *)cb) : NULL;
	bool done = false;

	if (m) {
		done = scoped(ossl_proc_module_set_msg_callback(m, ctx, cb),
			      __func__);
		leave();
	}
	if (!done)
		real_SSL_CTX_set_msg_callback(ctx, cb);
}

typedef void (*keylog_setter)(SSL_CTX *, SSL_CTX_keylog_cb_func);

PRELOAD_EXPORT void
SSL_CTX_set_keylog_callback(SSL_CTX *ctx, SSL_CTX_keylog_cb_func cb)
{
	NEXT(keylog_setter, SSL_CTX_set_keylog_callback);
	struct ossl_proc_module *m = ctx ? enter((const void *)cb) : NULL;
	bool done = false;

	if (m) {
		done = scoped(ossl_proc_module_set_keylog_callback(m, ctx, cb),
			      __func__);
		leave();
	}
	if (!done)
		real_SSL_CTX_set_keylog_callback(ctx, cb);
}

typedef void (*alpn_setter)(SSL_CTX *, alpn_fn, void *);

PRELOAD_EXPORT void
SSL_CTX_set_alpn_select_cb(SSL_CTX *ctx, alpn_fn cb, void *arg)
{
	NEXT(alpn_setter, SSL_CTX_set_alpn_select_cb);
	struct ossl_proc_module *m = ctx ? enter((const void *)cb) : NULL;
	bool done = false;

	if (m) {
		done = scoped(ossl_proc_module_set_alpn_select_cb(m, ctx, cb,
								  arg),
			      __func__);
		leave();
	}
	if (!done)
		real_SSL_CTX_set_alpn_select_cb(ctx, cb, arg);
}

typedef void (*sess_new_setter)(SSL_CTX *, sess_new_fn);

PRELOAD_EXPORT void
SSL_CTX_sess_set_new_cb(SSL_CTX *ctx, sess_new_fn cb)
{
	NEXT(sess_new_setter, SSL_CTX_sess_set_new_cb);
	struct ossl_proc_module *m = ctx ? enter((const void *)cb) : NULL;
	bool done = false;

	if (m) {
		done = scoped(ossl_proc_module_sess_set_new_cb(m, ctx, cb),
			      __func__);
		leave();
	}
	if (!done)
		real_SSL_CTX_sess_set_new_cb(ctx, cb);
}

typedef void (*sess_remove_setter)(SSL_CTX *, sess_remove_fn);

PRELOAD_EXPORT void
SSL_CTX_sess_set_remove_cb(SSL_CTX *ctx, sess_remove_fn cb)
{
	NEXT(sess_remove_setter, SSL_CTX_sess_set_remove_cb);
	struct ossl_proc_module *m = ctx ? enter((const void *)cb) : NULL;
	bool done = false;

	if (m) {
		done = scoped(ossl_proc_module_sess_set_remove_cb(m, ctx, cb),
			      __func__);
		leave();
	}
	if (!done)
		real_SSL_CTX_sess_set_remove_cb(ctx, cb);
}

typedef void (*client_cert_setter)(SSL_CTX *, client_cert_fn);

PRELOAD_EXPORT void
SSL_CTX_set_client_cert_cb(SSL_CTX *ctx, client_cert_fn cb)
{
	NEXT(client_cert_setter, SSL_CTX_set_client_cert_cb);
	struct ossl_proc_module *m = ctx ? enter((const void *)cb) : NULL;
	bool done = false;

	if (m) {
		done = scoped(ossl_proc_module_set_client_cert_cb(m, ctx, cb),
			      __func__);
		leave();
	}
	if (!done)
		real_SSL_CTX_set_client_cert_cb(ctx, cb);
}

/* The callbacks the explicit scopes have no public setter for, and the
 * per-SSL ones: 0 when registered through @cb's object's scope, -1 to
 * register it straight (not a plugin's, or failed). */
static int
set_scoped(void *obj, enum cb_kind kind, any_fn cb, void *arg, int mode,
	   bool pass_arg, const char *what)
{
	struct ossl_proc_module *m = obj ? enter((const void *)cb) : NULL;
	bool done = false;

	if (m) {
		done = scoped(module_set_callback(m, obj, kind, cb, arg, mode,
						  pass_arg), what);
		leave();
	}
	return done ? 0 : -1;
}

typedef void (*psk_client_setter)(SSL_CTX *, SSL_psk_client_cb_func);
typedef void (*psk_server_setter)(SSL_CTX *, SSL_psk_server_cb_func);

PRELOAD_EXPORT void
SSL_CTX_set_psk_client_callback(SSL_CTX *ctx, SSL_psk_client_cb_func cb)
{
	NEXT(psk_client_setter, SSL_CTX_set_psk_client_callback);
	if (set_scoped(ctx, CB_PSK_CLIENT, (any_fn)cb, NULL, 0, false,
		       __func__))
		real_SSL_CTX_set_psk_client_callback(ctx, cb);
}

PRELOAD_EXPORT void
SSL_CTX_set_psk_server_callback(SSL_CTX *ctx, SSL_psk_server_cb_func cb)
{
	NEXT(psk_server_setter, SSL_CTX_set_psk_server_callback);
	if (set_scoped(ctx, CB_PSK_SERVER, (any_fn)cb, NULL, 0, false,
		       __func__))
		real_SSL_CTX_set_psk_server_callback(ctx, cb);
}

typedef void (*sess_get_setter)(SSL_CTX *, sess_get_fn);

PRELOAD_EXPORT void
SSL_CTX_sess_set_get_cb(SSL_CTX *ctx, sess_get_fn cb)
{
	NEXT(sess_get_setter, SSL_CTX_sess_set_get_cb);
	if (set_scoped(ctx, CB_SESS_GET, (any_fn)cb, NULL, 0, false,
		       __func__))
		real_SSL_CTX_sess_set_get_cb(ctx, cb);
}

typedef void (*cert_verify_setter)(SSL_CTX *, cert_verify_fn, void *);

PRELOAD_EXPORT void
SSL_CTX_set_cert_verify_callback(SSL_CTX *ctx, cert_verify_fn cb, void *arg)
{
	NEXT(cert_verify_setter, SSL_CTX_set_cert_verify_callback);
	if (set_scoped(ctx, CB_CERT_VERIFY, (any_fn)cb, arg, 0, false,
		       __func__))
		real_SSL_CTX_set_cert_verify_callback(ctx, cb, arg);
}

typedef void (*cert_setter)(SSL_CTX *, cert_fn, void *);

PRELOAD_EXPORT void
SSL_CTX_set_cert_cb(SSL_CTX *ctx, cert_fn cb, void *arg)
{
	NEXT(cert_setter, SSL_CTX_set_cert_cb);
	if (set_scoped(ctx, CB_CERT, (any_fn)cb, arg, 0, false, __func__))
		real_SSL_CTX_set_cert_cb(ctx, cb, arg);
}

typedef void (*client_hello_setter)(SSL_CTX *, SSL_client_hello_cb_fn,
				    void *);

PRELOAD_EXPORT void
SSL_CTX_set_client_hello_cb(SSL_CTX *ctx, SSL_client_hello_cb_fn cb,
			    void *arg)
{
	NEXT(client_hello_setter, SSL_CTX_set_client_hello_cb);
	if (set_scoped(ctx, CB_CLIENT_HELLO, (any_fn)cb, arg, 0, false,
		       __func__))
		real_SSL_CTX_set_client_hello_cb(ctx, cb, arg);
}

/* The servername and status callbacks take the argument set apart on
 * the context (SSL_CTX_ctrl()), which stays there: the trampoline
 * passes it on. */
typedef long (*callback_ctrl_fn)(SSL_CTX *, int, void (*)(void));

PRELOAD_EXPORT long
SSL_CTX_callback_ctrl(SSL_CTX *ctx, int cmd, void (*fp)(void))
{
	NEXT(callback_ctrl_fn, SSL_CTX_callback_ctrl);

	switch (cmd) {
	case SSL_CTRL_SET_TLSEXT_SERVERNAME_CB:
		if (!set_scoped(ctx, CB_SERVERNAME, fp, NULL, 0, true,
				"SSL_CTX_set_tlsext_servername_callback"))
			return 1;
		break;
	case SSL_CTRL_SET_TLSEXT_STATUS_REQ_CB:
		if (!set_scoped(ctx, CB_STATUS, fp, NULL, 0, true,
				"SSL_CTX_set_tlsext_status_cb"))
			return 1;
		break;
	case SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB:
		keep_loaded((const void *)fp, "it set a session ticket key "
			    "callback, which has no stand-in: without it "
			    "OpenSSL could not decrypt the tickets it issued");
		break;
	}
	return real_SSL_CTX_callback_ctrl(ctx, cmd, fp);
}

/* ---- registrations kept: the object stays loaded ---- */

typedef int (*ticket_evp_fn)(SSL *, unsigned char *, unsigned char *,
			     EVP_CIPHER_CTX *, EVP_MAC_CTX *, int);
typedef int (*ticket_evp_setter)(SSL_CTX *, ticket_evp_fn);

PRELOAD_EXPORT int
SSL_CTX_set_tlsext_ticket_key_evp_cb(SSL_CTX *ctx, ticket_evp_fn cb)
{
	NEXT(ticket_evp_setter, SSL_CTX_set_tlsext_ticket_key_evp_cb);
	keep_loaded((const void *)cb, "it set a session ticket key "
		    "callback, which has no stand-in: without it OpenSSL "
		    "could not decrypt the tickets it issued");
	return real_SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, cb);
}

/* SSL_new() copies the context's password callback into each SSL, and
 * it gets only its user data: nothing tells a trampoline whose it is. */
#define PASSWD_WHY "it set a PEM password callback, which OpenSSL copies " \
	"into every SSL and calls with nothing that says whose it is"

typedef void (*passwd_ctx_setter)(SSL_CTX *, pem_password_cb *);
typedef void (*passwd_ssl_setter)(SSL *, pem_password_cb *);

PRELOAD_EXPORT void
SSL_CTX_set_default_passwd_cb(SSL_CTX *ctx, pem_password_cb *cb)
{
	NEXT(passwd_ctx_setter, SSL_CTX_set_default_passwd_cb);
	keep_loaded((const void *)cb, PASSWD_WHY);
	real_SSL_CTX_set_default_passwd_cb(ctx, cb);
}

PRELOAD_EXPORT void
SSL_set_default_passwd_cb(SSL *ssl, pem_password_cb *cb)
{
	NEXT(passwd_ssl_setter, SSL_set_default_passwd_cb);
	keep_loaded((const void *)cb, PASSWD_WHY);
	real_SSL_set_default_passwd_cb(ssl, cb);
}

/* X509_STORE_CTX_init() copies the store's callbacks into each
 * verification; they are kept rather than given trampolines of their
 * own (a store can outlive every context). */
#define STORE_SETTER(name, type)					\
	PRELOAD_EXPORT void						\
	name(X509_STORE *st, type fn)					\
	{								\
		static __typeof__(&name) real;				\
									\
		if (!real)						\
			real = (__typeof__(&name))next_sym(#name);	\
		keep_loaded((const void *)fn, "it set an X509_STORE "	\
			    "callback (" #name "), which each "	\
			    "verification copies");			\
		real(st, fn);						\
	}

STORE_SETTER(X509_STORE_set_verify, X509_STORE_CTX_verify_fn)
STORE_SETTER(X509_STORE_set_verify_cb, X509_STORE_CTX_verify_cb)
STORE_SETTER(X509_STORE_set_get_issuer, X509_STORE_CTX_get_issuer_fn)
STORE_SETTER(X509_STORE_set_check_issued, X509_STORE_CTX_check_issued_fn)
STORE_SETTER(X509_STORE_set_check_revocation,
	     X509_STORE_CTX_check_revocation_fn)
STORE_SETTER(X509_STORE_set_get_crl, X509_STORE_CTX_get_crl_fn)
STORE_SETTER(X509_STORE_set_check_crl, X509_STORE_CTX_check_crl_fn)
STORE_SETTER(X509_STORE_set_cert_crl, X509_STORE_CTX_cert_crl_fn)
STORE_SETTER(X509_STORE_set_check_policy, X509_STORE_CTX_check_policy_fn)
STORE_SETTER(X509_STORE_set_lookup_certs, X509_STORE_CTX_lookup_certs_fn)
STORE_SETTER(X509_STORE_set_lookup_crls, X509_STORE_CTX_lookup_crls_fn)
STORE_SETTER(X509_STORE_set_cleanup, X509_STORE_CTX_cleanup_fn)

/* ---- per SSL: a stack on the SSL, as on a context ---- */

typedef void (*ssl_info_setter)(SSL *, info_fn);
typedef void (*ssl_verify_setter)(SSL *, int, SSL_verify_cb);
typedef void (*ssl_msg_setter)(SSL *, msg_fn);

PRELOAD_EXPORT void
SSL_set_info_callback(SSL *ssl, info_fn cb)
{
	NEXT(ssl_info_setter, SSL_set_info_callback);
	if (set_scoped(ssl, CB_SSL_INFO, (any_fn)cb, NULL, 0, false,
		       __func__))
		real_SSL_set_info_callback(ssl, cb);
}

PRELOAD_EXPORT void
SSL_set_verify(SSL *ssl, int mode, SSL_verify_cb cb)
{
	NEXT(ssl_verify_setter, SSL_set_verify);
	if (set_scoped(ssl, CB_SSL_VERIFY, (any_fn)cb, NULL, mode, false,
		       __func__))
		real_SSL_set_verify(ssl, mode, cb);
}

PRELOAD_EXPORT void
SSL_set_msg_callback(SSL *ssl, msg_fn cb)
{
	NEXT(ssl_msg_setter, SSL_set_msg_callback);
	if (set_scoped(ssl, CB_SSL_MSG, (any_fn)cb, NULL, 0, false,
		       __func__))
		real_SSL_set_msg_callback(ssl, cb);
}

/* ---- getters: the callback the trampoline calls, never itself ---- */

typedef any_fn (*ctx_getter)(const SSL_CTX *);

static any_fn
get_cb(const void *ctx, enum cb_kind kind, any_fn now)
{
	if (inside || tramp_raw_get() ||
	    !atomic_load_explicit(&active, memory_order_acquire))
		return now;
	return tramp_current(ctx, kind, now);
}

PRELOAD_EXPORT info_fn
SSL_CTX_get_info_callback(SSL_CTX *ctx)
{
	NEXT(ctx_getter, SSL_CTX_get_info_callback);
	return (info_fn)get_cb(ctx, CB_INFO,
			       real_SSL_CTX_get_info_callback(ctx));
}

PRELOAD_EXPORT SSL_verify_cb
SSL_CTX_get_verify_callback(const SSL_CTX *ctx)
{
	NEXT(ctx_getter, SSL_CTX_get_verify_callback);
	return (SSL_verify_cb)get_cb(ctx, CB_VERIFY,
				     real_SSL_CTX_get_verify_callback(ctx));
}

PRELOAD_EXPORT SSL_CTX_keylog_cb_func
SSL_CTX_get_keylog_callback(const SSL_CTX *ctx)
{
	NEXT(ctx_getter, SSL_CTX_get_keylog_callback);
	return (SSL_CTX_keylog_cb_func)get_cb(ctx, CB_KEYLOG,
			real_SSL_CTX_get_keylog_callback(ctx));
}

PRELOAD_EXPORT sess_new_fn
SSL_CTX_sess_get_new_cb(SSL_CTX *ctx)
{
	NEXT(ctx_getter, SSL_CTX_sess_get_new_cb);
	return (sess_new_fn)get_cb(ctx, CB_SESS_NEW,
				   real_SSL_CTX_sess_get_new_cb(ctx));
}

PRELOAD_EXPORT sess_remove_fn
SSL_CTX_sess_get_remove_cb(SSL_CTX *ctx)
{
	NEXT(ctx_getter, SSL_CTX_sess_get_remove_cb);
	return (sess_remove_fn)get_cb(ctx, CB_SESS_REMOVE,
				      real_SSL_CTX_sess_get_remove_cb(ctx));
}

PRELOAD_EXPORT client_cert_fn
SSL_CTX_get_client_cert_cb(SSL_CTX *ctx)
{
	NEXT(ctx_getter, SSL_CTX_get_client_cert_cb);
	return (client_cert_fn)get_cb(ctx, CB_CLIENT_CERT,
				      real_SSL_CTX_get_client_cert_cb(ctx));
}

PRELOAD_EXPORT sess_get_fn
SSL_CTX_sess_get_get_cb(SSL_CTX *ctx)
{
	NEXT(ctx_getter, SSL_CTX_sess_get_get_cb);
	return (sess_get_fn)get_cb(ctx, CB_SESS_GET,
				   real_SSL_CTX_sess_get_get_cb(ctx));
}

typedef any_fn (*ssl_getter)(const SSL *);

PRELOAD_EXPORT info_fn
SSL_get_info_callback(const SSL *ssl)
{
	NEXT(ssl_getter, SSL_get_info_callback);
	return (info_fn)get_cb(ssl, CB_SSL_INFO,
			       real_SSL_get_info_callback(ssl));
}

PRELOAD_EXPORT SSL_verify_cb
SSL_get_verify_callback(const SSL *ssl)
{
	NEXT(ssl_getter, SSL_get_verify_callback);
	return (SSL_verify_cb)get_cb(ssl, CB_SSL_VERIFY,
				     real_SSL_get_verify_callback(ssl));
}

/* No SSL_CTX_ctrl() interposer for SSL_CTX_get_tlsext_status_cb(): a
 * program's every control would go through dlsym(RTLD_NEXT)'s libssl,
 * which is not the program's when their sonames differ. */

/* ---- ex_data: SSL_get_ex_new_index() and the others are macros over
 * CRYPTO_get_ex_new_index() ---- */

typedef int (*ex_index_fn)(int, long, void *, CRYPTO_EX_new *,
			   CRYPTO_EX_dup *, CRYPTO_EX_free *);

PRELOAD_EXPORT int
CRYPTO_get_ex_new_index(int class_index, long argl, void *argp,
			CRYPTO_EX_new *new_func, CRYPTO_EX_dup *dup_func,
			CRYPTO_EX_free *free_func)
{
	NEXT(ex_index_fn, CRYPTO_get_ex_new_index);
	const void *fns[] = { (const void *)free_func, (const void *)new_func,
			      (const void *)dup_func };
	struct object *o;
	struct ossl_proc_module *m = enter_obj(fns, ARRAY_SIZE(fns), &o);
	int idx;

	if (!m)
		return real_CRYPTO_get_ex_new_index(class_index, argl, argp,
						    new_func, dup_func,
						    free_func);
	idx = ossl_proc_module_ex_new_index(m, class_index, argl, argp,
					    new_func, dup_func, free_func);
	leave();
	if (!scoped(idx, __func__))
		idx = real_CRYPTO_get_ex_new_index(class_index, argl, argp,
						   new_func, dup_func,
						   free_func);
	return idx;
}

/* ---- error strings, registered as a copy ---- */

/* One block: the table, then the texts.  OpenSSL keeps pointers to both;
 * the copy is ours, so that the close (even after the unmapping, in the
 * fallback) never reads the plugin's memory. */
static ERR_STRING_DATA *
strings_copy(const ERR_STRING_DATA *str)
{
	size_t n = 0, bytes = 0;
	ERR_STRING_DATA *c;
	char *text;

	for (; str[n].error; n++)
		bytes += str[n].string ? strlen(str[n].string) + 1 : 0;
	c = malloc((n + 1) * sizeof(*c) + bytes);
	if (!c)
		return NULL;
	text = (char *)(c + n + 1);
	for (size_t i = 0; i < n; i++) {
		c[i].error = str[i].error;
		c[i].string = str[i].string ? strcpy(text, str[i].string)
					    : NULL;
		text += str[i].string ? strlen(text) + 1 : 0;
	}
	c[n] = (ERR_STRING_DATA){ 0, NULL };
	return c;
}

/* Under objects_lock: whether @o registered @str for @lib already (a
 * plugin that loads its strings per connection); if not, remember it. */
static bool
strings_seen(struct object *o, const void *str, int lib)
{
	struct strings_reg *s;

	for (s = o->strings; s; s = s->next)
		if (s->orig == str && s->lib == lib)
			return true;
	s = malloc(sizeof(*s));
	if (s) {
		*s = (struct strings_reg){ str, lib, o->strings };
		o->strings = s;
	}
	return false;
}

/* The scope of the first object holding @str or one of its texts. */
static struct ossl_proc_module *
enter_strings(const ERR_STRING_DATA *str, struct object **o)
{
	const void *p[9] = { str };
	size_t n = 1;

	for (size_t i = 0; str[i].error && n < ARRAY_SIZE(p); i++)
		p[n++] = str[i].string;
	return enter_obj(p, n, o);
}

/* 1 when registered through @m, 0 on failure (the caller registers the
 * original, unprotected). */
static int
load_copy(struct ossl_proc_module *m, struct object *o, int lib,
	  const ERR_STRING_DATA *str)
{
	ERR_STRING_DATA *c;

	if (strings_seen(o, str, lib))
		return 1;
	c = strings_copy(str);
	if (!c)
		return scoped(-ENOMEM, "ERR_load_strings");
	/* Undone in reverse: freed after ERR_unload_strings(). */
	if (!scoped(ossl_proc_module_on_close(m, free, c),
		    "ERR_load_strings")) {
		free(c);
		return 0;
	}
	return scoped(ossl_proc_module_load_strings(m, lib, c),
		      "ERR_load_strings");
}

typedef int (*load_strings_fn)(int, ERR_STRING_DATA *);
typedef int (*load_const_fn)(const ERR_STRING_DATA *);

PRELOAD_EXPORT int
ERR_load_strings(int lib, ERR_STRING_DATA *str)
{
	NEXT(load_strings_fn, ERR_load_strings);
	struct object *o;
	struct ossl_proc_module *m = str ? enter_strings(str, &o) : NULL;
	int ok = 0;

	if (m) {
		ok = load_copy(m, o, lib, str);
		leave();
	}
	return ok ? ok : real_ERR_load_strings(lib, str);
}

PRELOAD_EXPORT int
ERR_load_strings_const(const ERR_STRING_DATA *str)
{
	NEXT(load_const_fn, ERR_load_strings_const);
	struct object *o;
	struct ossl_proc_module *m = str ? enter_strings(str, &o) : NULL;
	int ok = 0;

	/* Lib 0: the codes are packed already, none is patched. */
	if (m) {
		ok = load_copy(m, o, 0, str);
		leave();
	}
	return ok ? ok : real_ERR_load_strings_const(str);
}

/* ---- registrations OpenSSL cannot take back ---- */

typedef int (*atexit_fn)(void (*)(void));

/* OpenSSL 4.0 has none. */
#if OPENSSL_VERSION_MAJOR < 4
PRELOAD_EXPORT int
OPENSSL_atexit(void (*handler)(void))
{
	keep_loaded((const void *)handler, "it registered an OPENSSL_atexit "
		    "handler, which OpenSSL cannot take back and calls at "
		    "exit");
	/* Called before unload_start() too, or with it off. */
	if (!real_atexit)
		real_atexit = (atexit_fn)dlsym(RTLD_NEXT, "OPENSSL_atexit");
	return real_atexit ? real_atexit(handler) : 0;
}
#endif

typedef int (*add_builtin_fn)(OSSL_LIB_CTX *, const char *,
			      OSSL_provider_init_fn *);

PRELOAD_EXPORT int
OSSL_PROVIDER_add_builtin(OSSL_LIB_CTX *libctx, const char *name,
			  OSSL_provider_init_fn *init_fn)
{
	NEXT(add_builtin_fn, OSSL_PROVIDER_add_builtin);
	keep_loaded((const void *)init_fn, "it added a built-in provider, "
		    "which OpenSSL cannot remove");
	return real_OSSL_PROVIDER_add_builtin(libctx, name, init_fn);
}

typedef int (*ext_add_fn)(X509V3_EXT_METHOD *);

PRELOAD_EXPORT int
X509V3_EXT_add(X509V3_EXT_METHOD *ext)
{
	NEXT(ext_add_fn, X509V3_EXT_add);
	keep_loaded((const void *)ext, "it added an X509v3 extension "
		    "method, which OpenSSL cannot remove");
	return real_X509V3_EXT_add(ext);
}
