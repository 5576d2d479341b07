/* Internals shared by scope.c and trampoline.c. */
#ifndef OSSLPROC_MODULE_INT_H
#define OSSLPROC_MODULE_INT_H

#include "osslproc-int.h"

#pragma GCC visibility push(hidden)

/* The callbacks a module scope can set: on an SSL_CTX, then (CB_SSL_*)
 * on one SSL. */
enum cb_kind {
	CB_INFO,
	CB_VERIFY,
	CB_MSG,
	CB_KEYLOG,
	CB_ALPN,
	CB_SERVERNAME,
	CB_SESS_NEW,
	CB_SESS_REMOVE,
	CB_CLIENT_CERT,
	CB_PSK_CLIENT,
	CB_PSK_SERVER,
	CB_STATUS,
	CB_SESS_GET,
	CB_CERT_VERIFY,
	CB_CERT,
	CB_CLIENT_HELLO,
	CB_SSL_INFO,
	CB_SSL_VERIFY,
	CB_SSL_MSG,
	CB_COUNT
};

#define CB_FIRST_SSL CB_SSL_INFO

/* Callbacks are stored type-erased and cast back to their kind's type. */
typedef void (*any_fn)(void);
typedef void (*info_fn)(const SSL *ssl, int where, int ret);
typedef void (*msg_fn)(int write_p, int version, int content_type,
		       const void *buf, size_t len, SSL *ssl, void *arg);
typedef int (*alpn_fn)(SSL *ssl, const unsigned char **out,
		       unsigned char *outlen, const unsigned char *in,
		       unsigned int inlen, void *arg);
typedef int (*servername_fn)(SSL *ssl, int *al, void *arg);
typedef int (*sess_new_fn)(SSL *ssl, SSL_SESSION *sess);
typedef void (*sess_remove_fn)(SSL_CTX *ctx, SSL_SESSION *sess);
typedef int (*client_cert_fn)(SSL *ssl, X509 **x509, EVP_PKEY **pkey);
typedef int (*status_fn)(SSL *ssl, void *arg);
typedef SSL_SESSION *(*sess_get_fn)(SSL *ssl, const unsigned char *id,
				    int len, int *copy);
typedef int (*cert_verify_fn)(X509_STORE_CTX *store, void *arg);
typedef int (*cert_fn)(SSL *ssl, void *arg);

/* What a scope's close waits on: the number of its callbacks running,
 * in any thread, and a bit its closer sets to be woken at zero. */
struct tramp_gate {
	_Atomic unsigned inflight;
};

/* One callback a module set on a context (or an SSL), until the module
 * closes. */
struct cb_node {
	any_fn fn;
	void *arg;           /* for the kinds that take one */
	/* The callback gets the argument OpenSSL passes (the one set on
	 * the context apart, with SSL_CTX_ctrl()), not @arg. */
	bool pass_arg;
	struct tramp_gate *gate; /* its scope's */
	void *obj;           /* SSL_CTX or SSL; NULL once it was freed */
	enum cb_kind kind;
	struct cb_node *below; /* on the stack, then on the retired list */
};

/* A dispatch in progress in this thread (a frame on its stack). */
struct tramp_frame {
	struct tramp_gate *gate;
	struct tramp_frame *up;
};

/* A close waiting for a gate to drain, visible to the other closers so
 * that a cycle of closes waiting on each other is refused. */
struct tramp_waiter {
	struct tramp_gate *gate;
	struct tramp_frame *frames; /* the closing thread's */
	struct tramp_waiter *next;
};

/* trampoline.c: the scopes call down into it, never the other way. */

/* A node for @fn with @arg, counted on @gate, not yet bound; NULL when
 * out of memory. */
struct cb_node *tramp_node_new(any_fn fn, void *arg, struct tramp_gate *g);
/* Free a node that is not bound (never bound, or unbound). */
void tramp_node_free(struct cb_node *n);
/* Push @n on @obj's stack for @kind and put the trampoline on @obj (an
 * SSL for the CB_SSL_* kinds, else an SSL_CTX); @mode is the verify
 * mode for the verify kinds.  0 or -ENOMEM. */
int tramp_bind(void *obj, enum cb_kind kind, struct cb_node *n, int mode);
/* Give @n, bound, the callback @fn with @arg instead (and @mode for
 * CB_VERIFY): a scope setting the same kind on the same context again
 * replaces its entry rather than stacking one more. */
void tramp_rebind(struct cb_node *n, any_fn fn, void *arg, int mode);
/* What a getter of @kind on @ctx should report, given @now, what OpenSSL
 * returns: for our trampoline, the callback it calls (the newest
 * module's, else the one it replaced), so that code chaining to the
 * previous callback never chains to the trampoline itself. */
any_fn tramp_current(const void *obj, enum cb_kind kind, any_fn now);
/* Whether this thread is reading a callback back from OpenSSL for the
 * trampolines themselves: an interposed getter must report it as is. */
bool tramp_raw_get(void);
/* The binding lock (recursive): while it is held no context with a
 * binding is freed, and a node's ctx stays what it is. */
void tramp_lock(void);
void tramp_unlock(void);
/* Unlink @n, under the binding lock: no dispatch that starts afterwards
 * reaches it; those that found it before are counted on its gate.  A
 * node whose context was freed is left alone. */
void tramp_unbind(struct cb_node *n);
/* After its gate drained: with no module left on @n's context for its
 * kind, put back what was there, if the trampoline is still on the
 * context (else WARNING).  Takes the binding lock. */
void tramp_restore(const char *module, struct cb_node *n);
/* Before unlinking a scope's nodes: register @w as waiting for @g, or
 * -EDEADLK (logged, naming @module) when the calling thread is inside a
 * callback counted on @g, or the wait would close a cycle of closes
 * waiting for each other.  0: call tramp_drain(@w) next. */
int tramp_close_begin(struct tramp_gate *g, struct tramp_waiter *w,
		      const char *module);
/* Wait for the callbacks counted on @w's gate to return; no lock of
 * osslproc may be held (a callback may need it). */
void tramp_drain(struct tramp_waiter *w);
/* In a child, with only the forking thread left: the other threads'
 * dispatches and closes are gone; their locks and counts are reset. */
void tramp_child_reset(void);
void tramp_gate_reset(struct tramp_gate *g);
/* An address inside the trampolines' code, for dladdr(). */
const void *tramp_code(void);

/* scope.c, for osslproc-run's implicit scopes: set @fn for @kind on @obj
 * through the open scope @h, as the public setters do, also for the
 * kinds they have none for; with @pass_arg, @fn gets the argument OpenSSL
 * passes instead of @arg.  0 or a negative errno (logged). */
int module_set_callback(struct ossl_proc_module *h, void *obj,
			enum cb_kind kind, any_fn fn, void *arg, int mode,
			bool pass_arg);

#pragma GCC visibility pop

#endif
