/*
 * Per-process SSL_CTX.  An SSL_CTX inherited through fork carries the
 * parent's sessions, tickets keys and caches; each worker should have its
 * own.  ossl_proc_ctx builds one with the host's builder in each process,
 * lazily, the first time that process asks for it.
 */
#include <stdlib.h>

#include "osslproc-int.h"
#include "alloc/alloc.h"

struct ossl_proc_ctx {
	SSL_CTX *(*build)(void *arg);
	void *arg;
	pthread_mutex_t lock;
	_Atomic(SSL_CTX *) ctx;
	_Atomic pid_t pid;      /* the process ctx was built in */
};

OSSL_PROC_EXPORT struct ossl_proc_ctx *
ossl_proc_ctx_new(SSL_CTX *(*build)(void *arg), void *arg)
{
	struct ossl_proc_ctx *pc;

	if (!build || !proc_initialised()) {
		log_bug_client("ossl_proc_ctx_new: %s", build ? "call "
			       "ossl_proc_init() first" : "build is NULL");
		errno = EINVAL;
		return NULL;
	}
	pc = calloc(1, sizeof(*pc));
	if (!pc) {
		log_error("ossl_proc_ctx_new: out of memory");
		errno = ENOMEM;
		return NULL;
	}
	pc->build = build;
	pc->arg = arg;
	pthread_mutex_init(&pc->lock, NULL);
	return pc;
}

/* Under the lock: this process's context, built if it has none yet. */
static SSL_CTX *
rebuild(struct ossl_proc_ctx *pc, pid_t self)
{
	SSL_CTX *ctx = atomic_load(&pc->ctx);

	if (ctx && atomic_load(&pc->pid) == self)
		return ctx;
	if (ctx) {
		/* The parent's copy: this process's to drop. */
		atomic_store(&pc->ctx, NULL);
		SSL_CTX_free(ctx);
	}
	ctx = pc->build(pc->arg);
	if (!ctx) {
		log_error("the SSL_CTX builder failed in process %ld; the next "
			  "ossl_proc_ctx_get() tries again", (long)self);
		return NULL;
	}
	atomic_store(&pc->pid, self);
	atomic_store(&pc->ctx, ctx);
	return ctx;
}

OSSL_PROC_EXPORT SSL_CTX *
ossl_proc_ctx_get(struct ossl_proc_ctx *pc)
{
	SSL_CTX *ctx;
	pid_t self;

	if (!pc) {
		log_bug_client("ossl_proc_ctx_get: pc is NULL");
		return NULL;
	}
	proc_check_fork();
	alloc_check();
	handoff_drain();
	self = proc_self();
	ctx = atomic_load(&pc->ctx);
	if (ctx && atomic_load(&pc->pid) == self)
		return ctx;
	pthread_mutex_lock(&pc->lock);
	ctx = rebuild(pc, self);
	pthread_mutex_unlock(&pc->lock);
	return ctx;
}

OSSL_PROC_EXPORT void
ossl_proc_ctx_free(struct ossl_proc_ctx *pc)
{
	if (!pc)
		return;
	SSL_CTX_free(atomic_load(&pc->ctx));
	pthread_mutex_destroy(&pc->lock);
	free(pc);
}
