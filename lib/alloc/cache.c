/*
 * Where freed blocks wait: the thread's quarantine ring (the double-free
 * window) and, past it, the thread's cache lists by size class, whose
 * blocks stay in a freed state until a malloc of their class takes them
 * again.  The inline steps the fast path needs are in alloc-int.h; this
 * file has the batch moves, the budget and the clean-up.
 */
#include "alloc-int.h"

struct cache_end cache_end_obj;

void
cache_init(struct tstate *t)
{
	for (unsigned c = 0; c < NCLASSES; c++)
		t->cache[c] = CACHE_END;
}

/* @user is a cached block with a valid header. */
static bool
cached_ok(void *user)
{
	uint32_t word;

	return blk_peek(user, &word) && (word & ST_MASK) == ST_CACHED;
}

/* Sum what @t's lists hold, cutting each before its first bad block (the
 * blocks from there on are abandoned). */
static void
cache_recount(struct tstate *t)
{
	uint64_t held = 0;

	for (unsigned c = 1; c < NCLASSES; c++) {
		void **link = &t->cache[c];

		while (!cache_empty(*link)) {
			if (!link_ok(*link) || !cached_ok(*link)) {
				*link = CACHE_END;
				break;
			}
			held += class_size(c);
			link = (void **)*link;
		}
	}
	atomic_store_explicit(&t->cached_bytes, held, memory_order_relaxed);
}

__attribute__((cold, noinline)) void *
cache_corrupt(struct tstate *t, unsigned c)
{
	log_error("a freed block at %p (%zu bytes with its header) was "
		  "written after it was freed: a use after free in the host "
		  "or in OpenSSL; find it with valgrind or ASan and "
		  "cache_bytes = 1 (freed blocks then go back to the allocator "
		  "they watch).  The blocks of that size this thread kept for "
		  "reuse are abandoned",
		  t->cache[c], class_size(c));
	t->cache[c] = CACHE_END;
	cache_recount(t);
	return NULL;
}

/* Give back list 0. */
__attribute__((noinline)) static void
cache_drain(struct tstate *t)
{
	void *user;

	while (!cache_empty(user = t->cache[0])) {
		t->cache[0] = link_of(user);
		blk_to_backend(user);
	}
}

/*
 * The caches' budget: each thread draws from the process's pool in
 * grants, up to its cap, and gives its whole budget back when its cache
 * is flushed (its exit, ossl_proc_thread_release()).  So all threads
 * together hold at most cache_total_bytes, and a thread that stays
 * busy pays for the pool's atomic once per grant, not per block.
 */
#define GRANT ((uint64_t)64 * 1024)

/* Grow @t's budget to hold @need bytes, as far as the pool and its cap
 * allow; returns the budget. */
__attribute__((noinline)) static uint64_t
budget_grow(struct tstate *t, uint64_t need)
{
	while (t->budget < need && t->budget < t->cap) {
		uint64_t want = t->cap - t->budget < GRANT ? t->cap - t->budget
							   : GRANT;
		int64_t pool = atomic_load_explicit(&proc_mut.cache_pool,
						    memory_order_relaxed);

		do {
			if (pool <= 0)
				return t->budget;
			if ((uint64_t)pool < want)
				want = (uint64_t)pool;
		} while (!atomic_compare_exchange_weak_explicit(
				&proc_mut.cache_pool, &pool,
				pool - (int64_t)want, memory_order_relaxed,
				memory_order_relaxed));
		t->budget += want;
	}
	return t->budget;
}

void
budget_return(struct tstate *t)
{
	atomic_fetch_add_explicit(&proc_mut.cache_pool, (int64_t)t->budget,
				  memory_order_relaxed);
	t->budget = 0;
}

/* Hand a block on: to @t's cache while its budget has room, else (or
 * with no class, no @t, the shared fallback) to the backend. */
void
blk_release(struct tstate *t, void *user, unsigned c)
{
	uint64_t held;

	if (!c || !t || t->shared) {
		blk_to_backend(user);
		return;
	}
	held = atomic_load_explicit(&t->cached_bytes, memory_order_relaxed) +
	       class_size(c);
	if (held > t->budget && held > budget_grow(t, held)) {
		blk_to_backend(user);
		return;
	}
	cache_link(t, user, c);
	atomic_store_explicit(&t->cached_bytes, held, memory_order_relaxed);
}

void
cache_flush(struct tstate *t)
{
	park_flush(t);
	/* A bad block ends its list there: what follows it is abandoned
	 * (cache_corrupt() said why when the list was last used). */
	for (unsigned c = 1; c < NCLASSES; c++) {
		void *user = t->cache[c];

		t->cache[c] = CACHE_END;
		while (!cache_empty(user) && link_ok(user) && cached_ok(user)) {
			void *next = link_of(user);

			blk_to_backend(user);
			user = next;
		}
	}
	atomic_store_explicit(&t->cached_bytes, 0, memory_order_relaxed);
	budget_return(t);
}

static inline void
quarantine_store(struct tstate *t, size_t head, size_t tail, uint64_t bytes)
{
	/* Release: a reader of the head (add_counts) sees a tail at least as
	 * new as the one stored before it. */
	atomic_store_explicit(&t->qtail, tail, memory_order_relaxed);
	atomic_store_explicit(&t->qhead, head, memory_order_release);
	atomic_store_explicit(&t->q_bytes, bytes, memory_order_relaxed);
}

void
quarantine_child(struct tstate *t, bool release)
{
	size_t head = t->qhead, tail = head;
	uint64_t bytes = 0;

	/* Compact in FIFO order: the write position never passes the read
	 * position, so no entry is overwritten before it is read. */
	for (size_t i = head; i != t->qtail; i++) {
		struct qent e = t->qring[i & t->qmask];

		/* Another process's shared block: never ours to release. */
		if (blk_foreign(atomic_load_explicit(&hdr_of(e.user)->word,
						     memory_order_relaxed)))
			continue;
		if (release) {
			blk_to_backend(e.user);
			continue;
		}
		/* A new worker's cache holds shared blocks only (thread.c:
		 * cache_inherit): these private ones go back. */
		e.held_class &= QHELD_MASK;
		t->qring[tail++ & t->qmask] = e;
		bytes += e.held_class & QHELD_MASK;
	}
	quarantine_store(t, head, tail, bytes);
}

/*
 * Blocks leave the quarantine in batches: once it holds more than
 * quarantine_bytes and an eighth, or its ring is full, the oldest go on
 * (to their class's list while the budget has room, else to list 0)
 * until it holds at most quarantine_bytes and its ring is an eighth
 * short of full.  So a block stays while it and the blocks freed after
 * it hold at most quarantine_bytes and number at most seven eighths of
 * the ring (test-alloc: quarantine_window_in_bytes, _in_blocks).  A free
 * then costs a store and a compare, the moves come a few dozen at a
 * time.
 */
__attribute__((noinline)) void
quarantine_evict(struct tstate *t)
{
	struct qent *ring = t->qring;
	size_t head = atomic_load_explicit(&t->qhead, memory_order_relaxed);
	size_t tail = atomic_load_explicit(&t->qtail, memory_order_relaxed);
	size_t mask = t->qmask, keep = mask + 1 - (mask + 1) / 8;
	uint64_t bytes = atomic_load_explicit(&t->q_bytes,
					      memory_order_relaxed);
	uint64_t limit = aconf.quarantine_bytes, budget = t->budget;
	uint64_t cached = atomic_load_explicit(&t->cached_bytes,
					       memory_order_relaxed);

	while (bytes > limit || tail - head > keep) {
		struct qent e = ring[head++ & mask];
		uint64_t b = e.held_class & QHELD_MASK;
		unsigned ec = (unsigned)(e.held_class >> QCLASS_SHIFT);

		bytes -= b;
		if (ec && cached + b > budget)
			budget = budget_grow(t, cached + b);
		if (ec && cached + b <= budget)
			cached += b;
		else
			ec = 0;
		cache_link(t, e.user, ec);
	}
	quarantine_store(t, head, tail, bytes);
	atomic_store_explicit(&t->cached_bytes, cached, memory_order_relaxed);
	if (t->cache[0] != CACHE_END)
		cache_drain(t);
}
