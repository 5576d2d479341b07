/* Internals of the tracked allocator (alloc*.c only). */
#ifndef OSSLPROC_ALLOC_INT_H
#define OSSLPROC_ALLOC_INT_H

#include <sys/types.h>

#include "osslproc-int.h"
#include "alloc.h"

/* Built with AddressSanitizer: headers that may not be ours are read
 * only through alloc.c's blk_peek(), which is exempt. */
#if defined(__SANITIZE_ADDRESS__)
#define OSSLPROC_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define OSSLPROC_SANITIZED 1
#endif
#endif

/*
 * Every block handed to OpenSSL is preceded by this 16-byte header, so the
 * user pointer keeps alignof(max_align_t) when the backend's does:
 *
 *   base ... [pad 16]? [struct blk_site]? [struct blk] user ...
 *
 * @magic authenticates the immutable part of the header and the block's
 * address with a secret drawn at install, so a header that is stale (the
 * block was released and its bytes reused by someone else), forged or
 * simply random memory validates only with probability 2^-32.  @word
 * holds the state, changed only by compare-and-swap: two threads, or two
 * processes sharing the memory, racing to free one block cannot both win.
 */
struct blk {
	uint64_t size_gen;      /* payload size (40 bits), cache class (8),
				   generation (16) */
	_Atomic uint32_t word;  /* state, backend, flags, owner pid */
	uint32_t magic;
};
_Static_assert(sizeof(struct blk) == 16, "the header is 16 bytes");

#define BLK_SIZE_BITS 40
#define BLK_SIZE_MAX ((1ull << 40) - 1)
#define BLK_CLASS_SHIFT 40
#define BLK_GEN_SHIFT 48

/*
 * Blocks of at most CLASS_MAX_TOTAL bytes (prefix included) are requested
 * in size classes: 16-byte steps up to 1 KiB, then four per doubling up
 * to 32 KiB (at most 25% rounding, and OpenSSL's record buffers fit).
 * When such a block leaves the quarantine it waits in a per-thread list
 * of its class for the next request instead of going back to the
 * backend: its header stays valid, in a freed state of its own
 * (ST_CACHED), so a double free of a cached block is still caught.  The
 * lists hold at most cache_bytes per thread (512 KiB by default).
 */
#define SMALL_CLASSES 65          /* class c < 65 holds c * 16 bytes */
#define SMALL_MAX_TOTAL ((size_t)(SMALL_CLASSES - 1) * 16)
#define NCLASSES (SMALL_CLASSES + 20)
#define CLASS_MAX_TOTAL ((size_t)32768)
#define PARK_SLOTS 16

/* The class of a block of @total bytes (<= CLASS_MAX_TOTAL), never 0. */
static inline unsigned
class_of(size_t total)
{
	unsigned b;

	if (likely(total <= SMALL_MAX_TOTAL))
		return (unsigned)((total + 15) >> 4);
	/* b = floor(log2(total - 1)), 10..14; four classes per doubling. */
	b = 63u - (unsigned)__builtin_clzll((unsigned long long)total - 1);
	return SMALL_CLASSES + (b - 10) * 4 +
	       (unsigned)(((total - 1) >> (b - 2)) & 3);
}

/* The bytes a block of class @c occupies (class 0: none); alloc.c. */
extern const uint32_t class_bytes[NCLASSES];

static inline size_t
class_size(unsigned c)
{
	return class_bytes[c];
}

/* word layout */
#define ST_MASK 0x3u
#define ST_CACHED 0x0u         /* freed, past the quarantine, kept for
				  reuse in a thread's cache */
#define ST_LIVE 0x1u
#define ST_QUAR 0x2u           /* freed, held in a quarantine */
#define ST_RELEASED 0x3u       /* handed back to the backend */
#define BK_SHIFT 2
#define BK_MASK (0x3u << BK_SHIFT)
#define W_PADDED (1u << 4)      /* 16 bytes of padding before the prefix */
#define W_SITES (1u << 5)       /* a struct blk_site precedes the header */
#define OWNER_SHIFT 8           /* pid of the owning process (shared) */

/* Backends a block can come from. */
enum backend {
	BK_LIBC = 0,   /* malloc/free */
	BK_HOST = 1,   /* cfg->allocator, process-private */
	BK_SHARED = 2, /* cfg->allocator with .shared, after the first fork */
	BK_PRIOR = 3,  /* the custom functions installed before us */
};

/* With OSSL_PROC_F_TRACK_SITES: where the block came from and went. */
struct blk_site {
	struct blk_site *prev, *next; /* live list, under site_lock */
	const char *alloc_file, *free_file;
	int alloc_line, free_line;
	uint64_t reserved;
};

/* A quarantined block, with what moving it on needs, so that the
 * quarantine reads nothing from the (by then cold) block itself. */
struct qent {
	void *user;
	uint64_t held_class;     /* bytes held, class << 56 */
};

/* Per-thread state: counters written only by the owning thread. */
struct tstate {
	_Atomic uint64_t allocs, frees, reallocs, prior_frees;
	_Atomic uint64_t live;   /* bytes allocated minus freed, modulo 2^64 */
	uint64_t flushed;        /* live when last folded into the global */
	_Atomic uint64_t q_bytes;
	struct qent *qring;      /* quarantine FIFO, a power of two long */
	size_t qmask;
	_Atomic size_t qhead, qtail; /* free-running: tail - head blocks */
	/* Blocks out of the quarantine, by class, still in the freed state:
	 * lists linked through their first payload word (alloc.c: cache_link);
	 * list 0 only between an eviction and cache_drain(). */
	void *cache[NCLASSES];
	_Atomic uint64_t cached_bytes;
	/* At most this many bytes cached: cache_bytes, or 0 in a worker of
	 * a shared backend, which allocates from the shared backend only
	 * (what it frees of its private inheritance goes back). */
	uint64_t budget;
	/* Backend chunks that would have given a page-aligned user pointer,
	 * held so the backend cannot offer them again (alloc.c: park). */
	void *parked[PARK_SLOTS];
	uint8_t parked_bk[PARK_SLOTS];
	unsigned park_next;
	struct tstate *prev, *next;
	bool shared;             /* the fallback for exiting threads */
};

/* The allocator's settings, frozen at install. */
struct alloc_conf {
	unsigned int flags;
	enum ossl_proc_bad_free on_bad_free;
	size_t quarantine_bytes;
	uint64_t quarantine_high; /* 9/8 of it: where eviction starts */
	size_t cache_bytes;
	struct ossl_proc_allocator host; /* .malloc NULL: none */
	CRYPTO_malloc_fn prior_m;        /* NULL: nothing was installed */
	CRYPTO_realloc_fn prior_r;
	CRYPTO_free_fn prior_f;
	uint64_t secret;
	/* The header word of a cached block handed out again, when every
	 * block of the process has one backend and no site record; 0 when
	 * allocations take the general path (alloc.c: om_malloc).  The
	 * word of a live block om_free() may retire without further checks
	 * (no scrubbing either); 0 when none. */
	uint32_t fast_word, free_word;
};

extern struct alloc_conf aconf;

/* The backend is the host's and shared between processes. */
static inline bool
shared_backend(void)
{
	return aconf.host.malloc && aconf.host.shared;
}

/*
 * Placement by fork generation: with a shared backend, what is allocated
 * before the first fork stays private (every worker inherits one
 * consistent copy-on-write image); afterwards blocks go to the shared
 * backend and belong to the process that allocated them.
 */
static inline enum backend
placement(void)
{
	if (aconf.host.malloc) {
		if (!aconf.host.shared)
			return BK_HOST;
		return atomic_load_explicit(&proc_mut.generation,
					    memory_order_relaxed) ? BK_SHARED
								  : BK_LIBC;
	}
	return aconf.prior_m ? BK_PRIOR : BK_LIBC;
}

/* arena.c: marks arenas in use as the tracked allocator's backend. */
void arena_set_in_use(const struct ossl_proc_allocator *al, bool in_use);

/* alloc.c */
void *om_malloc(size_t n, const char *file, int line);
void *om_realloc(void *p, size_t n, const char *file, int line);
void om_free(void *p, const char *file, int line);
/* Hand a quarantined block of class @c on: to @t's cache when it has
 * room, else to the backend (@t NULL: always the backend). */
void blk_release(struct tstate *t, void *user, unsigned c);
void park_forget_shared(struct tstate *t);
/* Empty lists for a new @t. */
void cache_init(struct tstate *t);
/* Return every cached and parked block of @t to the backend. */
void cache_flush(struct tstate *t);
/* In a child: forget @t's quarantined shared blocks that belong to another
 * process; with @release, release the rest too (@t's thread is gone). */
void quarantine_child(struct tstate *t, bool release);
extern _Atomic uint64_t bad_double, bad_invalid, bad_foreign, bad_inherited;
void sites_report(FILE *out);

/* thread.c */
/* Initial-exec: one pointer, cheap to reach even from a dlopen'ed copy. */
extern __thread struct tstate *tls_state
	__attribute__((tls_model("initial-exec")));
struct tstate *tstate_new(void);

/* Never NULL: a thread that is exiting gets a shared fallback without a
 * quarantine. */
static inline struct tstate *
tstate_get(void)
{
	struct tstate *t = tls_state;

	return likely(t) ? t : tstate_new();
}
void tstate_sum(struct ossl_proc_stats *st);
void tstate_sum_unlocked(struct ossl_proc_stats *st);
/* Fold @t's live-byte delta into the global (and the peak). */
void tstate_flush(struct tstate *t);
void tstate_count_shared(int64_t delta);

/* Only the owning thread writes these: a plain add, readable by others. */
static inline void
own_add(_Atomic uint64_t *c, uint64_t v)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) +
			      v, memory_order_relaxed);
}

static inline void
counter_add(const struct tstate *t, _Atomic uint64_t *c, uint64_t v)
{
	if (likely(!t->shared))
		own_add(c, v);
	else
		atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}

/* Live-byte deltas are folded into the global this often, which is what
 * makes peak_bytes exact to within this many bytes per thread. */
#define FLUSH_BYTES ((int64_t)64 * 1024)

/* The owner's count of an allocation (+@n) or a free (-@n) of @t, which
 * is not the shared fallback: two plain adds and a test. */
static inline void
tstate_count_own(struct tstate *t, _Atomic uint64_t *events, int64_t n)
{
	uint64_t live = atomic_load_explicit(&t->live, memory_order_relaxed) +
			(uint64_t)n;

	own_add(events, 1);
	atomic_store_explicit(&t->live, live, memory_order_relaxed);
	if (unlikely((int64_t)(live - t->flushed) > FLUSH_BYTES ||
		     (int64_t)(live - t->flushed) < -FLUSH_BYTES))
		tstate_flush(t);
}

/* Inline: they run in every allocation and free.  The shared fallback
 * (exiting threads) is tested once, then the owner's plain adds. */
static inline void
tstate_count_alloc(struct tstate *t, size_t n)
{
	if (unlikely(t->shared)) {
		counter_add(t, &t->allocs, 1);
		counter_add(t, &t->live, n);
		tstate_count_shared((int64_t)n);
		return;
	}
	tstate_count_own(t, &t->allocs, (int64_t)n);
}

static inline void
tstate_count_free(struct tstate *t, size_t n)
{
	if (unlikely(t->shared)) {
		counter_add(t, &t->frees, 1);
		counter_add(t, &t->live, -(uint64_t)n);
		tstate_count_shared(-(int64_t)n);
		return;
	}
	tstate_count_own(t, &t->frees, -(int64_t)n);
}

/* thread.c */
extern const struct proc_child_handler alloc_child_handler;

/* install.c */
/* In a child: the counters so far become the baseline of its own.
 * Takes no lock. */
void alloc_stats_rebase(void);
/* Probe: an osslproc malloc called with these returns its owner record. */
#define PROBE_FILE "osslproc:owner-probe"
#define PROBE_LINE 0x6f70726f
void *owner_probe_answer(const char *file, int line);

#endif /* OSSLPROC_ALLOC_INT_H */
