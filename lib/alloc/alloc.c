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
 * large for a class, a bad pointer, a fork nobody told osslproc about.
 */
#include <string.h>

#include "alloc-int.h"

static void *malloc_slow(size_t n, const char *file, int line);
static void free_slow(void *p, const char *file, int line);
static void *blk_new(size_t n, const char *file, int line);
static void blk_retire(void *p, uint32_t word, const char *file, int line);

/*
 * The common case in a few dozen instructions and no call: a block from
 * this thread's cache, for a process with one private backend and no
 * site tracking.  Every other case is one tail call away, so this path
 * saves no registers.
 */
void *
om_malloc(size_t n, const char *file, int line)
{
	struct tstate *t = tls_state;
	uint32_t word = aconf.fast_word;
	void *user;
	unsigned c;

	/* n - 1: a size of 0 (the probe) wraps and goes the slow way; the
	 * bound keeps n + the header from wrapping. */
	if (unlikely(!*proc_fork_flag || !word || !t ||
		     n - 1 >= CLASS_MAX_TOTAL - sizeof(struct blk)))
		return malloc_slow(n, file, line);
	c = class_of(n + sizeof(struct blk));
	user = t->cache[c];
	/* cache_take() reports a bad block, on the slow path. */
	if (unlikely(cache_empty(user) || !cache_pop(t, c, user,
					 (word & ~ST_MASK) | ST_CACHED)))
		return malloc_slow(n, file, line);
	blk_stamp(user, n, c, word);
	tstate_count_own(t, &t->allocs, (int64_t)n);
	return user;
}

void
om_free(void *p, const char *file, int line)
{
	struct tstate *t = tls_state;
	uint32_t word;
	struct blk *h;
	size_t n;

	/* The fork check first: a child's own counts start at its fork. */
	if (unlikely(!*proc_fork_flag || !t || !blk_fast_live(p, &word))) {
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
	n = blk_size(h);
	quarantine_push(t, p, blk_held(h), blk_class(h));
	tstate_count_own(t, &t->frees, -(int64_t)n);
}

/*
 * OpenSSL's realloc: NULL is malloc, size 0 is free.  A live block always
 * moves, so its old address goes through the quarantine like any free.
 */
void *
om_realloc(void *p, size_t n, const char *file, int line)
{
	struct tstate *t;
	uint32_t word;
	size_t old;
	void *np;

	if (!p)
		return om_malloc(n, file, line);
	if (unlikely(!*proc_fork_flag))
		proc_unnoticed_fork(true);
	if (n == 0) {
		om_free(p, file, line);
		return NULL;
	}
	if ((uintptr_t)p & ALIGN_MASK || !((uintptr_t)p & PAGE_MASK) ||
	    !blk_peek(p, &word)) {
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
	np = blk_new(n, file, line);
	if (!np)
		return NULL;
	old = blk_size(hdr_of(p));
	memcpy(np, p, old < n ? old : n);
	blk_retire(p, word, file, line);
	t = tstate_get();
	counter_add(t, &t->reallocs, 1);
	return np;
}

/* Everything but the common case: an unnoticed fork, the owner probe,
 * a cache miss, another backend, sites, a large block. */
__attribute__((noinline)) static void *
malloc_slow(size_t n, const char *file, int line)
{
	if (unlikely(!*proc_fork_flag))
		proc_unnoticed_fork(true);
	if (unlikely(n == 0))
		return owner_probe_answer(file, line);
	return blk_new(n, file, line);
}

static void *
blk_new(size_t n, const char *file, int line)
{
	enum backend bk = placement();
	uint32_t word = ST_LIVE | (uint32_t)bk << BK_SHIFT;
	struct tstate *t = tstate_get();
	unsigned c = 0;
	size_t total;
	char *user = NULL;
	struct blk *h;

	if (unlikely(n > BLK_SIZE_MAX))
		return NULL;
	if (unlikely(aconf.flags & OSSL_PROC_F_TRACK_SITES))
		word |= W_SITES;
	if (bk == BK_SHARED)
		word |= (uint32_t)proc_self() << OWNER_SHIFT;
	total = n + prefix_len(word);
	if (total <= CLASS_MAX_TOTAL && bk != BK_SHARED) {
		c = class_of(total);
		total = class_size(c);
		user = cache_take(t, c, word);
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

/* Free a block known to be valid, live and ours. */
static void
blk_retire(void *p, uint32_t word, const char *file, int line)
{
	struct blk *h = hdr_of(p);
	uint32_t live = (word & ~ST_MASK) | ST_LIVE;
	size_t n = blk_size(h);
	struct tstate *t;

	if (!atomic_compare_exchange_strong_explicit(&h->word, &live,
			(live & ~ST_MASK) | ST_QUAR, memory_order_acq_rel,
			memory_order_acquire)) {
		bad_free(BAD_DOUBLE, p, h, live, file, line);
		return;
	}
	if (unlikely(word & W_SITES))
		site_unlink(h, file, line);
	if (aconf.flags & OSSL_PROC_F_SCRUB)
		OPENSSL_cleanse(p, n);
	t = tstate_get();
	tstate_count_free(t, n);
	quarantine_push(t, p, blk_held(h), blk_class(h));
}

/* Every free but the common case: bad pointers, another backend or
 * process, sites, scrubbing, an unnoticed fork, a thread's first or
 * last free. */
__attribute__((noinline)) static void
free_slow(void *p, const char *file, int line)
{
	uint32_t word;

	if (unlikely(!*proc_fork_flag))
		proc_unnoticed_fork(true);
	if (!p || !blk_check(p, &word, file, line))
		return;
	if ((word & ST_MASK) != ST_LIVE) {
		bad_free(BAD_DOUBLE, p, hdr_of(p), word, file, line);
		return;
	}
	if (!owned_here(p, word, file, line))
		return;
	blk_retire(p, word, file, line);
}
