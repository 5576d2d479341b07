/*
 * The tracked allocator's entry points, the functions OpenSSL calls
 * through CRYPTO_set_mem_functions() (om_: osslproc's memory functions).
 *
 * The common cases come first and are complete here with the inline
 * primitives of alloc-int.h: om_malloc() takes a block of the request's
 * size class from the thread's cache and stamps its header; om_free()
 * validates the header, swaps the block's state from live to quarantined
 * and appends it to the thread's quarantine ring.  Each is a few dozen
 * instructions, with no lock, no system call and no call (but the
 * quarantine's batch move, once in dozens of frees): doc/benchmarks.md
 * has what they cost against glibc's.  Every other case is one tail
 * call away, further down: another backend, site tracking, a block too
 * large for a class, a bad pointer, a fork nobody told osslproc about,
 * and a call from a signal handler that interrupted this thread inside
 * the allocator (the re-entrant path at the end).
 */
#include <string.h>

#include "alloc-int.h"

static void fork_noticed(void);
static void *malloc_slow(size_t n, const char *file, int line);
static void *malloc_miss(struct tstate *t, size_t n, const char *file,
			 int line);
static void *malloc_deferred(struct tstate *t, void *user);
static void free_slow(void *p, const char *file, int line);
static void *blk_new(struct tstate *t, size_t n, bool reentrant,
		     const char *file, int line);
static void *large_realloc(void *p, size_t n, const char *file, int line);
static void blk_retire(void *p, uint32_t word, const char *file, int line);
static bool blk_claim(void *p, uint32_t word, const char *file, int line);
static void blk_finish(void *p, uint32_t word, const char *file, int line);
static void *realloc_reentrant(void *p, size_t n, const char *file,
			       int line);
static void free_reentrant(struct tstate *t, void *p);

/*
 * The common case in a few dozen instructions and no call: a block from
 * this thread's cache, for a process with one private backend and no
 * site tracking.  Every other case is one tail call away, so this path
 * saves no registers.
 */
static inline void *
malloc_fast(size_t n, const char *file, int line)
{
	struct tstate *t = tls_state;
	uint32_t word = aconf.fast_word;
	uint32_t layout;
	void *user;
	unsigned c;

	/* n - 1: a size of 0 wraps and goes the slow way; the
	 * bound keeps n + the header from wrapping. */
	if (unlikely(!*proc_fork_flag || !word || !t || t->busy ||
		     n - 1 >= CLASS_MAX_TOTAL - sizeof(struct blk)))
		return malloc_slow(n, file, line);
	c = class_of(n + sizeof(struct blk));
	tstate_enter(t);
	user = t->cache[c];
	/* cache_take() reports a bad block, on the slow path. */
	if (unlikely(cache_empty(user) || !cache_pop(t, c, user,
					 (word & ~ST_MASK) | ST_CACHED, &layout)))
		return malloc_miss(t, n, file, line);
	blk_stamp(user, n, c, word | layout);
	tstate_count_own(t, &t->allocs, (int64_t)n);
	atomic_signal_fence(memory_order_seq_cst);
	t->busy = 0;
	atomic_signal_fence(memory_order_seq_cst);
	if (unlikely(atomic_load_explicit(&t->deferred_any,
					  memory_order_relaxed)))
		return malloc_deferred(t, user);
	return user;
}

/* This process's first call after a fork (its flag page reads 0):
 * proc.c re-initialises it if no handler did, and the lock slabs lose
 * the marks the fork that made this process left (locks.c). */
__attribute__((noinline, cold)) static void
fork_noticed(void)
{
	proc_unnoticed_fork(true);
	alloc_fork_disarm();
}

/* A size an OpenSSL lock has: it may be one (locks.c). */
__attribute__((noinline)) static void *
malloc_lock_size(size_t n, const char *file, int line)
{
	struct tstate *t = tls_state;
	int shape = lk_shape_of(n, file, line);
	void *user;

	/* A worker of a shared backend puts its locks there, with its
	 * other blocks: they must be refused, not reused, if another
	 * process frees them (a host sharing live objects). */
	if (likely(shape < 0) || (t && t->busy) || placement() == BK_SHARED)
		return malloc_fast(n, file, line);
	if (unlikely(!*proc_fork_flag))
		fork_noticed();
	user = lk_new(shape, n, file, line);
	return user ? user : malloc_slow(n, file, line);
}

void *
om_malloc(size_t n, const char *file, int line)
{
	if (unlikely(lk_size_maybe(n)) && !lk_rejected(file))
		return malloc_lock_size(n, file, line);
	return malloc_fast(n, file, line);
}

void
om_free(void *p, const char *file, int line)
{
	struct tstate *t = tls_state;
	uint32_t word;
	struct blk *h;
	size_t n;

	/* The fork check first: a child's own counts start at its fork. */
	if (unlikely(!*proc_fork_flag || !t || t->busy ||
		     !blk_fast_live(p, &word))) {
		free_slow(p, file, line);
		return;
	}
	h = hdr_of(p);
	if (unlikely(!atomic_compare_exchange_strong_explicit(&h->word, &word,
			(word & ~ST_MASK) | ST_QUAR, memory_order_acq_rel,
			memory_order_acquire))) {
		bad_free(BAD_DOUBLE, p, h, word, file, line);
		return;
	}
	tstate_enter(t);
	n = blk_size(h);
	quarantine_push(t, p, blk_held(h), blk_class(h));
	tstate_count_own(t, &t->frees, -(int64_t)n);
	tstate_leave(t);
}

/* om_realloc() once the pointer is known to look like a block of ours. */
static void *
realloc_block(void *p, size_t n, const char *file, int line)
{
	struct tstate *t;
	uint32_t word;
	size_t old;
	void *np;

	if (((uintptr_t)p & PAGE_MASK) == LARGE_OFF)
		return large_realloc(p, n, file, line);
	if ((uintptr_t)p & ALIGN_MASK || !((uintptr_t)p & PAGE_MASK) ||
	    !blk_peek_healed(p, &word)) {
		if (aconf.prior_r)
			return aconf.prior_r(p, n, file, line);
		bad_free((uintptr_t)p & PAGE_MASK ? BAD_INVALID : BAD_FOREIGN,
			 p, NULL, 0, file, line);
		return NULL;
	}
	if ((word & ST_MASK) != ST_LIVE) {
		bad_free(BAD_DOUBLE, p, hdr_of(p), word, file, line);
		return NULL;
	}
	if (!owned_here(p, word, file, line))
		return NULL;
	t = tstate_get();
	np = blk_new(t, n, false, file, line);
	if (!np)
		return NULL;
	old = blk_size(hdr_of(p));
	memcpy(np, p, old < n ? old : n);
	blk_retire(p, word, file, line);
	counter_add(t, &t->reallocs, 1);
	return np;
}

/*
 * OpenSSL's realloc: NULL is malloc, size 0 is free.  A live block always
 * moves, so its old address goes through the quarantine like any free.
 */
void *
om_realloc(void *p, size_t n, const char *file, int line)
{
	struct tstate *t;
	void *np;

	if (!p)
		return om_malloc(n, file, line);
	if (unlikely(!*proc_fork_flag))
		fork_noticed();
	if (n == 0) {
		om_free(p, file, line);
		return NULL;
	}
	t = tstate_get();
	if (t->shared)
		return realloc_block(p, n, file, line);
	if (t->busy)
		return realloc_reentrant(p, n, file, line);
	tstate_enter(t);
	np = realloc_block(p, n, file, line);
	tstate_leave(t);
	return np;
}

/* om_realloc() of a pointer at the large blocks' page offset. */
static void *
large_realloc(void *p, size_t n, const char *file, int line)
{
	struct tstate *t = tstate_get();
	size_t old;
	void *np;

	switch (large_size(p, &old)) {
	case -1:
		if (aconf.prior_r)
			return aconf.prior_r(p, n, file, line);
		bad_free(BAD_INVALID, p, NULL, 0, file, line);
		return NULL;
	case 0:
		bad_free(BAD_DOUBLE, p, NULL, 0, file, line);
		return NULL;
	}
	np = blk_new(t, n, false, file, line);
	if (!np)
		return NULL;
	memcpy(np, p, old < n ? old : n);
	large_free(p, file, line);
	counter_add(t, &t->reallocs, 1);
	return np;
}

/* om_malloc()'s tails off the common path, out of line so that it needs
 * no saved register: a cache miss, and frees a signal handler deferred
 * (tstate_leave) while the block was taken. */
__attribute__((noinline)) static void *
malloc_miss(struct tstate *t, size_t n, const char *file, int line)
{
	tstate_leave(t);
	return malloc_slow(n, file, line);
}

__attribute__((noinline)) static void *
malloc_deferred(struct tstate *t, void *user)
{
	tstate_run_deferred(t);
	return user;
}

/* Everything but the common case: an unnoticed fork, a size of 0, a
 * cache miss, another backend, sites, a large block, a signal handler
 * that interrupted this thread inside the allocator. */
__attribute__((noinline)) static void *
malloc_slow(size_t n, const char *file, int line)
{
	struct tstate *t;
	void *user;

	if (unlikely(!*proc_fork_flag))
		fork_noticed();
	if (unlikely(n == 0))
		return NULL; /* what OpenSSL's own allocator answers */
	t = tstate_get();
	if (t->shared)
		return blk_new(t, n, false, file, line);
	if (t->busy)
		return blk_new(&tstate_retired, n, true, file, line);
	tstate_enter(t);
	user = blk_new(t, n, false, file, line);
	tstate_leave(t);
	return user;
}

/* A new block of @n bytes for @t: from its cache or a backend.  With
 * @reentrant (@t is then the shared fallback), nothing that takes a
 * lock: no site record, no large block. */
static void *
blk_new(struct tstate *t, size_t n, bool reentrant, const char *file,
	int line)
{
	enum backend bk = placement();
	uint32_t word = ST_LIVE | (uint32_t)bk << BK_SHIFT;
	unsigned c = 0;
	size_t total;
	char *user = NULL;
	struct blk *h;

	/* A handler that interrupted the backend itself cannot call it. */
	if (unlikely(n > BLK_SIZE_MAX) || (reentrant && tls_in_backend))
		return NULL;
	if (unlikely(aconf.flags & OSSL_PROC_F_TRACK_SITES) && !reentrant)
		word |= W_SITES;
	if (bk == BK_SHARED)
		word |= (uint32_t)proc_self() << OWNER_SHIFT;
	total = n + prefix_len(word);
	if (total > CLASS_MAX_TOTAL && bk == BK_LIBC) {
		if (reentrant)
			return NULL;
		/* Its site, if tracked, is in large.c's table. */
		word &= ~W_SITES;
		user = large_new(n + sizeof(struct blk), file, line);
		if (unlikely(!user))
			return NULL;
	} else if (total <= CLASS_MAX_TOTAL && cache_holds(t, bk)) {
		c = class_of(total);
		total = class_size(c);
		user = cache_take(t, c, &word);
	} else if (n < sizeof(void *)) {
		/* Room for the link that carries it to the backend later
		 * (cache_link); a class always has it. */
		total = prefix_len(word) + sizeof(void *);
	}
	if (!user)
		user = backend_block(t, bk, total, &word, &c, file, line);
	if (unlikely(!user))
		return NULL;
	h = blk_stamp(user, n, c, word);
	if (unlikely(word & W_SITES))
		site_link(h, file, line);
	tstate_count_alloc(t, n);
	return user;
}

/* Claim a block known to be valid, live and ours for this free: false
 * (a double free, counted) when another free won the race. */
static bool
blk_claim(void *p, uint32_t word, const char *file, int line)
{
	struct blk *h = hdr_of(p);
	uint32_t live = (word & ~ST_MASK) | ST_LIVE;

	if (atomic_compare_exchange_strong_explicit(&h->word, &live,
			(live & ~ST_MASK) | ST_QUAR, memory_order_acq_rel,
			memory_order_acquire))
		return true;
	bad_free(BAD_DOUBLE, p, h, live, file, line);
	return false;
}

/* The rest of a free, once claimed: sites, scrubbing, counts,
 * quarantine. */
static void
blk_finish(void *p, uint32_t word, const char *file, int line)
{
	struct blk *h = hdr_of(p);
	size_t n = blk_size(h);
	struct tstate *t;

	if (unlikely(word & W_SITES))
		site_unlink(h, file, line);
	if (aconf.flags & OSSL_PROC_F_SCRUB)
		OPENSSL_cleanse(p, n);
	if (unlikely(word & W_LOCK)) {
		lk_free(p);
		return;
	}
	t = tstate_get();
	if (unlikely(blk_foreign(word))) {
		/* Another process's (OSSL_PROC_F_SHARED_OBJECTS): its books,
		 * and back to the backend, never into this thread's cache
		 * (its owner's death must not reclaim a block reused here). */
		handoff_freed_for((pid_t)(word >> OWNER_SHIFT), n);
		quarantine_push(t, p, blk_held(h), 0);
		return;
	}
	tstate_count_free(t, n);
	quarantine_push(t, p, blk_held(h), blk_cache_class(t, h, word));
}

/* Free a block known to be valid, live and ours. */
static void
blk_retire(void *p, uint32_t word, const char *file, int line)
{
	if (blk_claim(p, word, file, line))
		blk_finish(p, word, file, line);
}

/* free_slow() for a non-NULL pointer. */
static void
free_block(void *p, const char *file, int line)
{
	uint32_t word;

	/* Looked up, never read: it may be unmapped. */
	if (((uintptr_t)p & PAGE_MASK) == LARGE_OFF) {
		large_free(p, file, line);
		return;
	}
	if (!blk_check(p, &word, file, line))
		return;
	if ((word & ST_MASK) != ST_LIVE) {
		bad_free(BAD_DOUBLE, p, hdr_of(p), word, file, line);
		return;
	}
	if (!owned_here(p, word, file, line))
		return;
	blk_retire(p, word, file, line);
}

/* Every free but the common case: bad pointers, another backend or
 * process, sites, scrubbing, an unnoticed fork, a thread's first or
 * last free, a signal handler that interrupted this thread inside the
 * allocator. */
__attribute__((noinline)) static void
free_slow(void *p, const char *file, int line)
{
	struct tstate *t;

	if (unlikely(!*proc_fork_flag))
		fork_noticed();
	if (!p)
		return;
	t = tstate_get();
	if (t->shared) {
		free_block(p, file, line);
		return;
	}
	if (t->busy) {
		free_reentrant(t, p);
		return;
	}
	tstate_enter(t);
	free_block(p, file, line);
	tstate_leave(t);
}

/* ---- the re-entrant path ---- */

/*
 * A signal handler that interrupts this thread inside the allocator (its
 * state busy: tstate_enter) and allocates or frees on the same thread
 * must not touch that state, which the interrupted call is changing.
 * OpenSSL is not async-signal-safe, but a host's crash handler that frees
 * must not turn into heap corruption.  So a malloc there takes a fresh
 * block from the backend through the shared fallback state (no cache, no
 * quarantine, atomic counters, no site record, no large block), or fails
 * when the handler interrupted the backend itself, and a free is
 * deferred: the block is checked and claimed at once (so a double free
 * is one there too) and waits, linked through its first word, for the
 * interrupted call, which finishes the free when it leaves
 * (tstate_leave).  A large block, whose claim takes a lock, waits
 * unclaimed in one of DEFER_SLOTS slots; with every slot taken its free
 * is dropped: a leak, never a corruption.
 */
#define HANDLER_FILE "(a signal handler)"
static atomic_bool logged_dropped;

static void
defer_large(struct tstate *t, void *p)
{
	for (unsigned i = 0; i < DEFER_SLOTS; i++) {
		void *empty = NULL;

		if (atomic_compare_exchange_strong(&t->deferred[i], &empty,
						   p)) {
			atomic_store(&t->deferred_any, true);
			return;
		}
	}
	if (log_once(&logged_dropped))
		log_warn("a free of a large block from a signal handler that "
			 "interrupted the allocator found the %d slots for such "
			 "frees taken; %p is not released (logged once)",
			 DEFER_SLOTS, p);
}

static void
free_reentrant(struct tstate *t, void *p)
{
	uint32_t word;
	void *head;

	if (((uintptr_t)p & PAGE_MASK) == LARGE_OFF) {
		defer_large(t, p);
		return;
	}
	if (!blk_check(p, &word, HANDLER_FILE, 0))
		return;
	if ((word & ST_MASK) != ST_LIVE) {
		bad_free(BAD_DOUBLE, p, hdr_of(p), word, HANDLER_FILE, 0);
		return;
	}
	if (!owned_here(p, word, HANDLER_FILE, 0) ||
	    !blk_claim(p, word, HANDLER_FILE, 0))
		return;
	head = atomic_load(&t->deferred_head);
	do
		*(void **)p = head;
	while (!atomic_compare_exchange_weak(&t->deferred_head, &head, p));
	atomic_store(&t->deferred_any, true);
}

__attribute__((noinline)) void
tstate_run_deferred(struct tstate *t)
{
	while (atomic_exchange(&t->deferred_any, false)) {
		void *p = atomic_exchange(&t->deferred_head, NULL);

		while (p) {
			void *next = *(void **)p;
			uint32_t word = atomic_load_explicit(&hdr_of(p)->word,
							memory_order_relaxed);

			tstate_enter(t);
			blk_finish(p, (word & ~ST_MASK) | ST_LIVE, HANDLER_FILE,
				   0);
			tstate_leave_quiet(t);
			p = next;
		}
		for (unsigned i = 0; i < DEFER_SLOTS; i++) {
			p = atomic_exchange(&t->deferred[i], NULL);
			if (p)
				om_free(p, HANDLER_FILE, 0);
		}
	}
}

static void *
realloc_reentrant(void *p, size_t n, const char *file, int line)
{
	uint32_t word;
	size_t old;
	void *np;

	/* A large block's size is in large.c's table, under a lock the
	 * interrupted call may hold. */
	if (((uintptr_t)p & PAGE_MASK) == LARGE_OFF ||
	    (uintptr_t)p & ALIGN_MASK || !((uintptr_t)p & PAGE_MASK) ||
	    !blk_peek(p, &word) || (word & ST_MASK) != ST_LIVE)
		return NULL;
	np = blk_new(&tstate_retired, n, true, file, line);
	if (!np)
		return NULL;
	old = blk_size(hdr_of(p));
	memcpy(np, p, old < n ? old : n);
	free_reentrant(tls_state, p);
	return np;
}
