/*
 * Process state and the re-initialisation of a child.
 *
 * A child is re-initialised once: by osslproc's pthread_atfork child
 * handler, by ossl_proc_child_reinit() when the host calls the fork
 * functions itself, or when a fork that bypassed pthread_atfork
 * (syscall(SYS_fork), clone, _Fork) is noticed.  Such forks are noticed
 * through a page mapped MADV_WIPEONFORK: the kernel hands the child a
 * zeroed copy, and the allocator checks one byte of it.
 */
#include <sys/mman.h>
#include <unistd.h>

#include "osslproc-int.h"

enum fork_phase {
	FORK_PARENT,         /* release the locks */
	FORK_CHILD_PREPARED, /* release them: our prepare handler ran */
	FORK_CHILD_RAW,      /* re-create them: nobody prepared this fork */
};

struct proc_mut proc_mut = {
	.hooks_lock = PTHREAD_MUTEX_INITIALIZER,
	.reg_lock = PTHREAD_MUTEX_INITIALIZER,
	.site_lock = PTHREAD_MUTEX_INITIALIZER,
	.large_lock = PTHREAD_MUTEX_INITIALIZER,
	.lk = {
		.slab_lock = PTHREAD_MUTEX_INITIALIZER,
		.quiesce_mutex = PTHREAD_MUTEX_INITIALIZER,
	},
};

static const struct proc_child_handler *handlers[PROC_CHILD_HANDLERS];
static int nhandlers;
static atomic_uint refcount;

/* A thread's identity without a call or a write: the address of its own
 * copy of this byte (the same in a child, for the thread that forked). */
static __thread char thread_anchor __attribute__((tls_model("initial-exec")));

/* One byte the allocator reads: 1 in a process that knows its pid, 0 in
 * a child of a fork we did not see.  Without MADV_WIPEONFORK it stays at
 * the static 1 and library calls compare pids instead. */
static unsigned char flag_static = 1;
volatile unsigned char *proc_fork_flag = &flag_static;
static bool wipeonfork;

/* ---- the reference count ---- */

CHILD_PATH bool
proc_initialised(void)
{
	return atomic_load_explicit(&refcount, memory_order_acquire) > 0;
}

unsigned
proc_refs(void)
{
	return atomic_load(&refcount);
}

void
proc_refs_set(unsigned n)
{
	atomic_store_explicit(&refcount, n, memory_order_release);
}

/* ---- locks ---- */

/* This thread holds osslproc's locks for a fork (proc_mut.prep_owner):
 * a host that also calls the handlers by hand nests them instead of
 * locking twice. */
CHILD_PATH static bool
prepared_here(void)
{
	return atomic_load_explicit(&proc_mut.prep_owner,
				    memory_order_relaxed) ==
	       (uintptr_t)&thread_anchor;
}

CHILD_PATH static void
prepare_forget(void)
{
	proc_mut.prep_depth = 0;
	atomic_store_explicit(&proc_mut.prep_owner, 0, memory_order_relaxed);
}

void
proc_lock(pthread_mutex_t *m)
{
	if (!prepared_here())
		pthread_mutex_lock(m);
}

void
proc_unlock(pthread_mutex_t *m)
{
	if (!prepared_here())
		pthread_mutex_unlock(m);
}

/* osslproc's locks, in the order prepare takes them. */
static pthread_mutex_t *const fork_locks[] = {
	&proc_mut.hooks_lock, &proc_mut.reg_lock, &proc_mut.site_lock,
	&proc_mut.large_lock,
};

/* After the fork: release what prepare took, or, when no prepare ran,
 * re-create the locks (their owner may not exist in this child). */
CHILD_PATH static void
unlock_all(enum fork_phase phase)
{
	for (size_t i = ARRAY_SIZE(fork_locks); i-- > 0;) {
		if (phase == FORK_CHILD_RAW)
			pthread_mutex_init(fork_locks[i], NULL);
		else
			pthread_mutex_unlock(fork_locks[i]);
	}
	/* A thread that held them for a fork does not exist here. */
	if (phase == FORK_CHILD_RAW)
		prepare_forget();
}

bool
proc_prepare_nested(void)
{
	if (!prepared_here())
		return false;
	proc_mut.prep_depth++;
	return true;
}

void
proc_prepare(void)
{
	for (size_t i = 0; i < ARRAY_SIZE(fork_locks); i++)
		pthread_mutex_lock(fork_locks[i]);
	proc_mut.prep_depth = 1;
	atomic_store_explicit(&proc_mut.prep_owner, (uintptr_t)&thread_anchor,
			      memory_order_relaxed);
}

/* True when the outermost prepare call is being matched. */
CHILD_PATH static bool
prepare_unwound(void)
{
	if (!prepared_here() || --proc_mut.prep_depth > 0)
		return false;
	prepare_forget();
	return true;
}

bool
proc_parent(void)
{
	if (!prepare_unwound())
		return false;
	unlock_all(FORK_PARENT);
	return true;
}

/* ---- child re-initialisation ---- */

void
proc_on_child(const struct proc_child_handler *h)
{
	for (int i = 0; i < nhandlers; i++)
		if (handlers[i] == h)
			return;
	if (nhandlers < PROC_CHILD_HANDLERS)
		handlers[nhandlers++] = h;
}

CHILD_PATH static void
run_locked(void)
{
	for (int i = 0; i < nhandlers; i++)
		proc_mut.child_arg[i] = handlers[i]->locked();
}

/* The part of a child's re-initialisation that calls out. */
CHILD_PATH static void
run_callouts(bool forker, bool raw)
{
	for (int i = 0; i < nhandlers; i++)
		if (handlers[i]->callout)
			handlers[i]->callout(proc_mut.child_arg[i], forker, raw);
	if (log_enabled(OSSL_PROC_LOG_DEBUG))
		log_debug("child re-initialised: generation %lu",
			  (unsigned long)proc_generation());
}

/*
 * What a re-initialisation noticed inside an OpenSSL allocation left for
 * later: the callouts call OpenSSL and the host, which must not run
 * inside OpenSSL's allocator (OpenSSL may be in the middle of its error
 * code or hold one of its locks there).  The next osslproc call that
 * checks for forks runs them (proc_mut.pending).
 */
static void
run_pending(void)
{
	if (!atomic_exchange(&proc_mut.pending, false))
		return;
	run_callouts(proc_mut.pending_forker == (uintptr_t)&thread_anchor,
		     proc_mut.pending_raw);
}

/*
 * Whether this process was re-initialised already, and its pid from now
 * on.  After a prepared fork this is a new child for sure, and its pid is
 * left to be read when first needed (proc_self): right after fork the
 * first system call is by far the dearest thing a child does.  A process
 * whose pid is still unread counts as set up, which misses only a fork
 * that bypasses pthread_atfork before that process's first allocation.
 */
CHILD_PATH static bool
child_known(enum fork_phase phase)
{
	pid_t known = atomic_load(&proc_mut.pid), self;

	if (phase != FORK_CHILD_RAW) {
		atomic_store(&proc_mut.pid, 0);
		return false;
	}
	self = getpid();
	atomic_store(&proc_mut.pid, self);
	return known == self || known == 0;
}

/* The child's work; @phase says whether our prepare handler held the
 * locks, @in_allocator that OpenSSL's allocator is the caller (what calls
 * out is then left pending).  Idempotent per process. */
CHILD_PATH static int
child_reinit(enum fork_phase phase, bool in_allocator)
{
	if (child_known(phase)) {
		if (!in_allocator)
			run_pending();
		return 0;
	}
	/* Before the locks are released: no other thread exists here, so
	 * the handlers need no lock (and each lock call would cost a page
	 * fault of glibc's code). */
	atomic_fetch_add(&proc_mut.generation, 1);
	run_locked();
	unlock_all(phase);
	if (in_allocator) {
		proc_mut.pending_forker = (uintptr_t)&thread_anchor;
		proc_mut.pending_raw = phase == FORK_CHILD_RAW;
		atomic_store(&proc_mut.pending, true);
		return 0;
	}
	/* Whatever an ancestor left pending was its own (proc_mut's page
	 * is written here anyway). */
	atomic_store_explicit(&proc_mut.pending, false, memory_order_relaxed);
	run_callouts(true, phase == FORK_CHILD_RAW);
	return 0;
}

CHILD_PATH void
proc_atfork_child(void)
{
	if (prepare_unwound())
		child_reinit(FORK_CHILD_PREPARED, false);
	else
		/* A host's atfork child handler, registered before ours, ran
		 * first and allocated: the allocator re-initialised the child
		 * and left the rest to here. */
		run_pending();
}

CHILD_PATH int
proc_child_reinit(void)
{
	bool was_prepared = prepared_here();

	prepare_forget();
	return child_reinit(was_prepared ? FORK_CHILD_PREPARED
					 : FORK_CHILD_RAW, false);
}

/* Called when a fork went unnoticed: from the allocator (flag page;
 * @in_allocator) or a library call (pid changed). */
void
proc_unnoticed_fork(bool in_allocator)
{
	pid_t known = atomic_load(&proc_mut.pid), self = getpid();

	if (known == self || known == 0) {
		/* Re-initialised already; re-arm the flag page here rather
		 * than in the child handler: writing it costs a page fault,
		 * and the first allocation of a child faults anyway. */
		atomic_store(&proc_mut.pid, self);
		*proc_fork_flag = 1;
		return;
	}
	/* A host that prepared by hand (OSSL_PROC_F_NO_ATFORK) and has not
	 * called ossl_proc_child_reinit() yet: not a surprise. */
	if (prepared_here()) {
		prepare_forget();
		child_reinit(FORK_CHILD_PREPARED, in_allocator);
		return;
	}
	log_warn("process %ld was forked without pthread_atfork handlers "
		 "running (raw clone or syscall(SYS_fork)); osslproc "
		 "re-initialised %s: call ossl_proc_child_reinit() in the "
		 "child right after such a fork", (long)getpid(),
		 in_allocator ? "its allocator now, and clears the error queue "
		 "and runs the ossl_proc_on_child() hooks at the next osslproc "
		 "call" : "it now");
	child_reinit(FORK_CHILD_RAW, in_allocator);
}

void
proc_check_fork(void)
{
	if (!*proc_fork_flag)
		proc_unnoticed_fork(false);
	else if (!wipeonfork && proc_initialised() &&
		 atomic_load(&proc_mut.pid) != getpid())
		proc_unnoticed_fork(false);
	/* Also after a re-initialisation the allocator did: its flag may
	 * not be re-armed yet. */
	if (unlikely(atomic_load_explicit(&proc_mut.pending,
					  memory_order_relaxed)))
		run_pending();
}

/* ---- identity ---- */

pid_t
proc_self(void)
{
	pid_t pid = atomic_load_explicit(&proc_mut.pid, memory_order_relaxed);

	if (unlikely(!pid)) {
		/* Unread since a prepared fork (child_known). */
		pid = getpid();
		atomic_store_explicit(&proc_mut.pid, pid,
				      memory_order_relaxed);
	}
	return pid;
}

void
proc_pid_forget(void)
{
	if (!proc_initialised())
		atomic_store_explicit(&proc_mut.pid, 0, memory_order_relaxed);
}

uint64_t
proc_generation(void)
{
	return atomic_load(&proc_mut.generation);
}

static void
map_fork_flag(void)
{
	long page = sysconf(_SC_PAGESIZE);
	unsigned char *p;

	if (wipeonfork)
		return;
	p = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return;
#ifdef MADV_WIPEONFORK
	if (madvise(p, (size_t)page, MADV_WIPEONFORK) == 0) {
		*p = 1;
		proc_fork_flag = p;
		wipeonfork = true;
		return;
	}
#endif
	munmap(p, (size_t)page);
	log_info("the kernel lacks MADV_WIPEONFORK: forks that bypass "
		 "pthread_atfork are noticed at the next osslproc call, not "
		 "at the next allocation");
}

void
proc_init(void)
{
	atomic_store(&proc_mut.pid, getpid());
	map_fork_flag();
}
