/*
 * Per-thread state of the tracked allocator: counters that only their
 * thread writes (so they never bounce between cores), the thread's
 * quarantine, and the registry that sums them.  The registry lock is taken
 * when a thread first allocates, when it exits and when stats are read,
 * never on the common path.
 */
#include <stdlib.h>

#include "alloc-int.h"

static struct list reg = LIST_INIT(reg);
#define tstate_of(l) list_entry(l, struct tstate, link)
/* Counters of exited threads and of the exiting-thread fallback. */
struct tstate tstate_retired = { .shared = true };
static _Atomic int64_t live_global;
static _Atomic uint64_t peak_global;

static pthread_key_t tkey;
static pthread_once_t tkey_once = PTHREAD_ONCE_INIT;
static int tkey_ok;

__thread struct tstate *tls_state __attribute__((tls_model("initial-exec")));
static __thread bool tls_exiting __attribute__((tls_model("initial-exec")));
static __thread bool tls_creating __attribute__((tls_model("initial-exec")));

static void reg_settle(void);

static void
peak_raise(uint64_t now)
{
	uint64_t peak = atomic_load_explicit(&peak_global,
					     memory_order_relaxed);

	while (now > peak && !atomic_compare_exchange_weak_explicit(
			&peak_global, &peak, now, memory_order_relaxed,
			memory_order_relaxed))
		;
}

void
tstate_flush(struct tstate *t)
{
	uint64_t live = atomic_load_explicit(&t->live, memory_order_relaxed);
	int64_t v = (int64_t)(live - t->flushed);
	int64_t now;

	t->flushed = live;
	now = atomic_fetch_add_explicit(&live_global, v,
					memory_order_relaxed) + v;
	if (v > 0 && now > 0)
		peak_raise((uint64_t)now);
}

static void
fold(struct tstate *dst, const struct tstate *src)
{
	_Atomic uint64_t *d[] = { &dst->allocs, &dst->frees, &dst->reallocs,
				  &dst->prior_frees, &dst->live };
	const _Atomic uint64_t *s[] = { &src->allocs, &src->frees,
					&src->reallocs, &src->prior_frees,
					&src->live };

	for (size_t i = 0; i < ARRAY_SIZE(d); i++)
		atomic_fetch_add_explicit(d[i], atomic_load_explicit(s[i],
					  memory_order_relaxed),
					  memory_order_relaxed);
}

/* Give back what @t holds: its quarantine (never another process's shared
 * blocks) and its cache. */
static void
tstate_drain(struct tstate *t)
{
	quarantine_child(t, true);
	cache_flush(t);
}

OSSL_PROC_EXPORT int
ossl_proc_thread_release(void)
{
	struct tstate *t = tls_state;

	if (!t)
		return 0;
	tstate_enter(t);
	tstate_drain(t);
	tstate_flush(t);
	tstate_leave(t);
	return 0;
}

/* Thread exit: release the quarantine, keep the counts, forget the thread. */
static void
tstate_exit(void *arg)
{
	struct tstate *t = arg;

	tls_exiting = true;
	tls_state = NULL;
	tstate_drain(t);
	tstate_flush(t);
	proc_lock(&proc_mut.reg_lock);
	fold(&tstate_retired, t);
	list_del(&t->link);
	proc_unlock(&proc_mut.reg_lock);
	free(t->qring);
	free(t);
}

static void
key_create(void)
{
	tkey_ok = pthread_key_create(&tkey, tstate_exit) == 0;
}

/* Quarantine ring length: a power of two (an index is a mask away), one
 * slot per 128 bytes of window, about OpenSSL's mean block size, at least
 * 128, at most 16384 (a small ring stays in the L1 cache). */
static size_t
ring_slots(void)
{
	size_t slots = 128;

	while (slots < 16384 && slots * 128 < aconf.quarantine_bytes)
		slots *= 2;
	return slots;
}

struct tstate *
tstate_new(void)
{
	struct tstate *t;

	/* A signal handler that interrupted this very function (which
	 * takes locks) gets the fallback too. */
	if (tls_exiting || tls_creating)
		return &tstate_retired;
	tls_creating = true;
	pthread_once(&tkey_once, key_create);
	t = tkey_ok ? calloc(1, sizeof(*t)) : NULL;
	if (!t) {
		tls_creating = false;
		return &tstate_retired;
	}
	cache_init(t);
	t->cap = aconf.cache_bytes;
	t->cache_bk = (uint8_t)placement();
	t->qmask = ring_slots() - 1;
	t->qring = calloc(t->qmask + 1, sizeof(*t->qring));
	proc_lock(&proc_mut.reg_lock);
	t->gen = proc_generation();
	list_add(&reg, &t->link);
	proc_unlock(&proc_mut.reg_lock);
	pthread_setspecific(tkey, t);
	tls_state = t;
	tls_creating = false;
	return t;
}

/* An exiting thread's counts go to the shared fallback, under atomics. */
void
tstate_count_shared(int64_t delta)
{
	int64_t now = atomic_fetch_add(&live_global, delta) + delta;

	if (delta > 0)
		peak_raise(now > 0 ? (uint64_t)now : 0);
}

CHILD_PATH static void
add_counts(struct ossl_proc_stats *st, const struct tstate *t)
{
	size_t head;

	st->allocs += atomic_load_explicit(&t->allocs, memory_order_relaxed);
	st->frees += atomic_load_explicit(&t->frees, memory_order_relaxed);
	st->reallocs += atomic_load_explicit(&t->reallocs,
					     memory_order_relaxed);
	st->prior_frees += atomic_load_explicit(&t->prior_frees,
						memory_order_relaxed);
	st->live_bytes += atomic_load_explicit(&t->live, memory_order_relaxed);
	/* The head first: the tail never passes behind a head read
	 * earlier. */
	head = atomic_load_explicit(&t->qhead, memory_order_acquire);
	st->quarantined_blocks += atomic_load_explicit(&t->qtail,
						       memory_order_relaxed) - head;
	st->quarantined_bytes += atomic_load_explicit(&t->q_bytes,
						      memory_order_relaxed);
	st->cached_bytes += atomic_load_explicit(&t->cached_bytes,
						 memory_order_relaxed);
}

/* The sum over the registry, whose lock the caller holds (or which only
 * the calling thread can touch: a child). */
CHILD_PATH void
tstate_sum_unlocked(struct ossl_proc_stats *st)
{
	struct list *l;

	list_for_each(l, &reg)
		add_counts(st, tstate_of(l));
	add_counts(st, &tstate_retired);
	st->live_blocks = st->allocs - st->frees;
	/* Counters read mid-update by other threads can be a block apart;
	 * never report a negative number of live bytes. */
	if ((int64_t)st->live_bytes < 0)
		st->live_bytes = 0;
	st->peak_bytes = atomic_load_explicit(&peak_global,
					      memory_order_relaxed);
}

void
tstate_sum(struct ossl_proc_stats *st)
{
	proc_lock(&proc_mut.reg_lock);
	reg_settle();
	tstate_sum_unlocked(st);
	proc_unlock(&proc_mut.reg_lock);
	/* Deltas not yet flushed can put the sum above the peak.  Not in
	 * the child's path: writing the peak there costs a page fault. */
	if (st->live_bytes > st->peak_bytes) {
		peak_raise(st->live_bytes);
		st->peak_bytes = st->live_bytes;
	}
}

/* ---- fork ---- */

unsigned
alloc_other_threads(void)
{
	unsigned n = 0;
	struct list *l;

	proc_lock(&proc_mut.reg_lock);
	reg_settle();
	list_for_each(l, &reg)
		n += tstate_of(l) != tls_state;
	proc_unlock(&proc_mut.reg_lock);
	return n;
}

bool
alloc_shared_worker(void)
{
	return shared_backend() && atomic_load(&proc_mut.generation) > 0;
}

/* Threads that do not exist in this process (a child): kept reachable,
 * so that leak checkers do not report what they held. */
static struct list forgotten = LIST_INIT(forgotten);

/*
 * A thread that does not exist in the child: its counts stay; its
 * quarantine, cache and parked chunks are forgotten, not released.  They
 * are copies of the parent's (private, untouched, so they cost no memory)
 * or the parent's own shared blocks, and the thread may have been moving
 * blocks from its quarantine to its cache when the fork happened:
 * releasing them could free one twice.
 */
static void
forget_thread(struct tstate *t)
{
	tstate_flush(t);
	fold(&tstate_retired, t);
	list_del(&t->link);
	list_add(&forgotten, &t->link);
}

/* Under the registry's lock: a child's registry lists the threads of
 * the process it was forked from until here, as forgetting them in the
 * child handler writes each one's state and the counters of exited
 * threads, each a page fault in every child, and most children exec or
 * exit before anything reads the registry.  A thread registered in an
 * earlier generation is gone, unless it forked this process. */
static void
reg_settle(void)
{
	uint64_t gen = proc_generation();
	struct list *l, *next;

	if (!proc_mut.reg_stale)
		return;
	proc_mut.reg_stale = false;
	list_for_each_safe(l, next, &reg) {
		struct tstate *t = tstate_of(l);

		if (t != proc_mut.reg_survivor && t->gen < gen)
			forget_thread(t);
	}
}

/* What the forking thread's cache held when a worker of a shared backend
 * was forked: private copies, or a parent worker's shared blocks, never
 * this worker's to hand out or release.  Kept reachable for leak
 * checkers (volatile: stores to a never-read static are dropped). */
static void *volatile inherited_cache[NCLASSES];

/* In a new worker of a shared backend, the forking thread's cache starts
 * empty and holds the worker's own shared blocks from now on: most
 * allocations then never reach the shared backend's lock.  Writes one
 * page of statics besides the thread's state. */
CHILD_PATH static void
cache_inherit(struct tstate *t)
{
	for (unsigned c = 0; c < NCLASSES; c++) {
		inherited_cache[c] = t->cache[c];
		t->cache[c] = CACHE_END;
	}
	atomic_store_explicit(&t->cached_bytes, 0, memory_order_relaxed);
	t->budget = 0;
	t->cap = aconf.cache_bytes;
	t->cache_bk = BK_SHARED;
}

/* The allocator's child handler (proc.h): the threads that do not exist
 * here are set aside, the caches' pool is what their budgets leave, and
 * the counters so far become the baseline of the child's own. */
CHILD_PATH static uintptr_t
alloc_child(void)
{
	struct list *l, *next;
	uint64_t mine = 0;

	proc_mut.reg_stale = true;
	proc_mut.reg_survivor = tls_state;
	if (tls_state)
		mine = tls_state->budget;
	/* Only a shared backend leaves blocks that are not this process's
	 * (private ones are its own copies): at once, then. */
	if (shared_backend()) {
		list_for_each_safe(l, next, &reg)
			park_forget_shared(tstate_of(l));
		reg_settle();
		if (tls_state) {
			quarantine_child(tls_state, false);
			cache_inherit(tls_state);
		}
	}
	atomic_store_explicit(&proc_mut.cache_pool,
			      (int64_t)(aconf.cache_total_bytes - mine),
			      memory_order_relaxed);
	alloc_stats_rebase();
	lk_child();
	handoff_child();
	return 0;
}

const struct proc_child_handler alloc_child_handler = {
	.locked = alloc_child,
};

/*
 * At exit the exiting thread gives its quarantine and cache back, so that
 * a worker that ends with exit() leaves a shared backend balanced.  OpenSSL
 * 3.x has freed its state by then (in the atexit handler it registers by
 * default); 4.0 registers none, and frees its state only when
 * OPENSSL_cleanup() was called, in libcrypto's own destructor, which runs
 * after this one (this object depends on libcrypto).  So a worker of a
 * shared backend asks for that cleanup on 4.0, as 3.x does by default;
 * the thread keeps nothing back from now on (its frees go straight to the
 * backend), and what the process allocates from now on is private (that
 * destructor allocates too, and keeps some of it).
 */
atomic_bool alloc_exiting;

__attribute__((destructor)) static void
alloc_exit_drain(void)
{
	struct tstate *t = tls_state;

	atomic_store(&alloc_exiting, true);
	if (alloc_shared_worker() && OpenSSL_version_num() >= 0x40000000L)
		OPENSSL_cleanup();
	if (!t)
		return;
	tstate_enter(t);
	tstate_drain(t);
	t->cap = 0;
	free(t->qring);
	t->qring = NULL; /* quarantine_push() then releases at once */
	tstate_leave(t);
}
