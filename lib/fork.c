/*
 * The fork point.  OpenSSL 3 registers no fork handlers of its own: a
 * child inherits the forking thread's thread-locals (error queue, DRBGs),
 * and forking while another thread holds an OpenSSL lock can leave the
 * child hanging.  So prepare first quiesces OpenSSL: it takes every
 * OpenSSL lock the allocator registered (alloc/locks.c), which waits out
 * the other threads' critical sections, then osslproc's own locks (in
 * that order: a thread inside OpenSSL may need the allocator's locks to
 * leave it).  In the child, proc.c starts a new generation and runs the
 * child handlers: the allocator's, which re-creates the OpenSSL locks,
 * and this file's, which empties the forking thread's inherited error
 * queue and runs the host's hooks.
 *
 * Nothing of the parent's OpenSSL state is touched: its DRBGs reseed by
 * themselves in the child (every OpenSSL 3.x and 4.0 DRBG compares the
 * pid it last seeded in, openssl_get_fork_id(), at each generate), and a
 * DRBG or an error the parent holds across the fork stays its own.
 */
#include <openssl/err.h>

#include "osslproc-int.h"
#include "alloc/alloc.h"
#include "fork.h"

#define MAX_HOOKS 32

struct hook {
	void (*fn)(void *arg);
	void *arg;
};

static struct hook hooks[MAX_HOOKS];
static int nhooks;

static atomic_bool atfork_registered;
static atomic_bool told_threads, warned_threads, warned_shared;
static bool quiesce = true;
static uint64_t quiesce_ns = FORK_QUIESCE_MS_DEFAULT * 1000000ull;

/*
 * With other threads that used OpenSSL, take OpenSSL's locks.  A
 * single-threaded parent needs none taken (no other thread can hold
 * one), and a busy lock there is the forking thread's own: a fork from
 * inside an OpenSSL callback must not wait for itself.
 */
static void
quiesce_openssl(void)
{
	unsigned others;
	bool ok;

	alloc_fork_disarm();
	others = alloc_other_threads();
	if (!others)
		return;
	if (!quiesce || !alloc_locks_registered()) {
		if (log_once(&warned_threads))
			log_warn("fork with %u other thread(s) that used "
				 "OpenSSL and %s: if one holds an OpenSSL lock "
				 "at that moment the child hangs; fork from a "
				 "single-threaded parent", others, quiesce ?
				 "no OpenSSL lock known to the allocator" :
				 "OSSL_PROC_F_NO_FORK_QUIESCE");
		return;
	}
	ok = alloc_fork_quiesce(quiesce_ns);
	if (ok && log_once(&told_threads))
		log_info("fork with %u other thread(s) that used OpenSSL: "
			 "osslproc held every OpenSSL lock across it (logged "
			 "once)", others);
}

static void
warn_hazards(void)
{
	if (alloc_shared_worker() && log_once(&warned_shared))
		log_warn("a worker of the shared backend forks again: its live "
			 "shared blocks are now visible to its child, which "
			 "must not free them; fork workers from the parent");
}

/* Also after the last teardown: the allocator stays installed, and the
 * child must still start a generation of its own. */
OSSL_PROC_EXPORT void
ossl_proc_fork_prepare(void)
{
	if (proc_prepare_nested())
		return;
	quiesce_openssl();
	warn_hazards();
	handoff_prepare();
	proc_mut.errors_at_fork = ERR_peek_error() != 0;
	proc_prepare();
}

OSSL_PROC_EXPORT void
ossl_proc_fork_parent(void)
{
	if (proc_parent())
		alloc_fork_parent();
}

/* In the child, under the locks: how many hooks to run, and whether the
 * error queue needs emptying (bit 0).  Entries below nhooks never change
 * once registered, so they are called without the lock: a hook may
 * register another. */
CHILD_PATH static uintptr_t
child_locked(void)
{
	return (uintptr_t)nhooks << 1 | proc_mut.errors_at_fork;
}

/* The inherited error queue is the forking thread's: emptied in that
 * thread only (after a fork nobody prepared, whatever it holds).  Then
 * the hooks, in registration order. */
CHILD_PATH static void
child_callout(uintptr_t arg, bool forker, bool raw)
{
	if (forker && (raw || (arg & 1)))
		ERR_clear_error();
	for (uintptr_t i = 0; i < arg >> 1; i++)
		hooks[i].fn(hooks[i].arg);
}

static const struct proc_child_handler child_handler = {
	.locked = child_locked,
	.callout = child_callout,
};

CHILD_PATH OSSL_PROC_EXPORT int
ossl_proc_child_reinit(void)
{
	if (!proc_initialised()) {
		log_bug_client("ossl_proc_child_reinit: call ossl_proc_init() "
			       "first");
		return -EINVAL;
	}
	/* No alloc_check() here: it would run OpenSSL's code in the
	 * child, a page fault more on the path the child pays for. */
	return proc_child_reinit();
}

int
fork_init(const struct init_config *cfg)
{
	quiesce = !(cfg->flags & OSSL_PROC_F_NO_FORK_QUIESCE);
	quiesce_ns = cfg->fork_quiesce_ns;
	proc_on_child(&child_handler);
	if (cfg->flags & OSSL_PROC_F_NO_ATFORK)
		return 0;
	if (atomic_exchange(&atfork_registered, true))
		return 0;
	/* glibc drops these handlers when this object is unloaded. */
	if (pthread_atfork(ossl_proc_fork_prepare, ossl_proc_fork_parent,
			   proc_atfork_child) != 0) {
		atomic_store(&atfork_registered, false);
		log_error("pthread_atfork failed: out of memory");
		return -ENOMEM;
	}
	return 0;
}

void
fork_teardown(void)
{
	proc_lock(&proc_mut.hooks_lock);
	nhooks = 0;
	proc_unlock(&proc_mut.hooks_lock);
}

OSSL_PROC_EXPORT unsigned long
ossl_proc_generation(void)
{
	return (unsigned long)proc_generation();
}

OSSL_PROC_EXPORT int
ossl_proc_on_child(void (*fn)(void *arg), void *arg)
{
	int rc = 0;

	alloc_check();
	if (!fn || !proc_initialised()) {
		log_bug_client("ossl_proc_on_child: %s", fn ? "call "
			       "ossl_proc_init() first" : "fn is NULL");
		return -EINVAL;
	}
	proc_lock(&proc_mut.hooks_lock);
	if (nhooks == MAX_HOOKS)
		rc = -ENOSPC;
	else
		hooks[nhooks++] = (struct hook){ fn, arg };
	proc_unlock(&proc_mut.hooks_lock);
	if (rc)
		log_error("ossl_proc_on_child: already %d hooks registered",
			  MAX_HOOKS);
	return rc;
}
