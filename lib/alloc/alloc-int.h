/* Internals of the tracked allocator (alloc*.c only). */
#ifndef OSSLPROC_ALLOC_INT_H
#define OSSLPROC_ALLOC_INT_H

#include <sys/types.h>

#include "osslproc-int.h"
#include "alloc.h"
#include "list.h"

#pragma GCC visibility push(hidden)

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

/* The bytes a block of class @c occupies (class 0: none); block.c. */
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
#define W_PADDED (1u << 4)      /* PAD_BYTES of padding before the prefix */
#define W_SITES (1u << 5)       /* a struct blk_site precedes the header */
#define W_ALIGN8 (1u << 6)      /* ALIGN8_BYTES first: the backend's chunk
				   was only 8-byte aligned */
#define W_LOCK (1u << 7)        /* an OpenSSL lock, in a slab (locks.c) */
#define OWNER_SHIFT 8           /* pid of the owning process (shared) */
/* No block's word: a live one has ST_LIVE, and an owner pid below 2^22
 * (Linux's PID_MAX_LIMIT) leaves the top bits clear.  0 would not do: it
 * is the word of a cached block of the libc backend. */
#define FREE_WORD_NONE UINT32_MAX

/* Backends a block can come from. */
enum backend {
	BK_LIBC = 0,   /* malloc/free */
	BK_HOST = 1,   /* cfg->allocator, process-private */
	BK_SHARED = 2, /* cfg->allocator with .shared, after the first fork */
	BK_PRIOR = 3,  /* the custom functions installed before us */
};

/* With OSSL_PROC_F_TRACK_SITES: where the block came from and went. */
struct blk_site {
	struct list link;        /* live list, under site_lock */
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
#define DEFER_SLOTS 16

struct tstate {
	/* Non-zero while this thread changes this state (tstate_enter): a
	 * signal handler that interrupts it and calls the allocator on the
	 * same thread must not touch it (alloc.c: the re-entrant path). */
	unsigned char busy;
	/* Frees such a handler made, for the interrupted call to finish
	 * when it leaves (tstate_leave): blocks already claimed (state
	 * swapped to quarantined), on a stack linked through their first
	 * word, and large blocks (whose claim takes a lock) in slots; both
	 * changed by compare-and-swap only, so nested handlers lose none. */
	atomic_bool deferred_any;
	_Atomic(void *) deferred_head;
	_Atomic(void *) deferred[DEFER_SLOTS];
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
	/* At most @budget bytes cached: what this thread drew from the
	 * process's pool (proc_mut.cache_pool, cache.c: budget_grow), in
	 * grants, up to @cap (cache_bytes). */
	uint64_t budget, cap;
	/* The backend whose blocks the lists hold: the private one, or in
	 * a worker of a shared backend the shared one (its own blocks; what
	 * it frees of its private inheritance goes back). */
	uint8_t cache_bk;
	/* Backend chunks that would have given a page-aligned user pointer,
	 * held so the backend cannot offer them again (alloc.c: park). */
	void *parked[PARK_SLOTS];
	uint8_t parked_bk[PARK_SLOTS];
	unsigned park_next;
	struct list link;        /* the registry (thread.c) */
	uint64_t gen;            /* the fork generation that registered it */
	bool shared;             /* the fallback for exiting threads */
};

/* The allocator's settings, frozen at install. */
struct alloc_conf {
	unsigned int flags;
	enum ossl_proc_bad_free on_bad_free;
	size_t quarantine_bytes;
	uint64_t quarantine_high; /* 9/8 of it: where eviction starts */
	size_t cache_bytes;
	size_t cache_total_bytes;
	struct ossl_proc_allocator host; /* .malloc NULL: none */
	CRYPTO_malloc_fn prior_m;        /* NULL: nothing was installed */
	CRYPTO_realloc_fn prior_r;
	CRYPTO_free_fn prior_f;
	uint64_t secret, secret2, secret3; /* the magic's keys (blk_magic);
					      secret3 is odd */
	/* The header word of a cached block handed out again, when every
	 * block of the process has one backend and no site record; 0 when
	 * allocations take the general path (alloc.c: om_malloc).  The
	 * word of a live block om_free() may retire without further checks
	 * (no scrubbing either); FREE_WORD_NONE when none. */
	uint32_t fast_word, free_word;
};

/* install.c */
extern struct alloc_conf aconf;

/* The process is past its exit-time drain (thread.c): what it allocates
 * from then on (OpenSSL 4.0's destructor allocates while it cleans up) is
 * private, so that nothing of it is left in a shared backend. */
extern atomic_bool alloc_exiting;

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
					    memory_order_relaxed) &&
		       !atomic_load_explicit(&alloc_exiting,
					     memory_order_relaxed) ? BK_SHARED
								   : BK_LIBC;
	}
	return aconf.prior_m ? BK_PRIOR : BK_LIBC;
}

/* ---- what each file provides ---- */

/* alloc.c: the functions OpenSSL calls. */
void *om_malloc(size_t n, const char *file, int line);
void *om_realloc(void *p, size_t n, const char *file, int line);
void om_free(void *p, const char *file, int line);

/* block.c */
/* Inside a backend function, this thread (a signal handler must not
 * enter one again). */
extern __thread unsigned char tls_in_backend
	__attribute__((tls_model("initial-exec")));
/* Fresh memory from backend @bk for a block with @word's layout, of
 * @total bytes and class *@c (0 when it had to be realigned), or NULL. */
char *backend_block(struct tstate *t, enum backend bk, size_t total,
		    uint32_t *word, unsigned *c, const char *file, int line);
/* Mark a block released and hand it to its backend. */
void blk_to_backend(void *user);
/* The live list of OSSL_PROC_F_TRACK_SITES, under proc_mut.site_lock. */
void site_link(struct blk *h, const char *file, int line);
void site_unlink(struct blk *h, const char *file, int line);
/* Each live block's site, as "  @label: N bytes at P, allocated at f:l". */
void sites_report(FILE *out, const char *label);
/* The pid that allocated @p when it is a live block of the shared
 * backend, else 0 (any pointer: the header is only peeked at). */
pid_t blk_shared_owner(void *p);
/* In a child: forget parked chunks of a shared backend (the parent's). */
void park_forget_shared(struct tstate *t);
/* Give every parked chunk of @t back. */
void park_flush(struct tstate *t);

/* locks.c: OpenSSL's locks, registered for the fork.  Only sizes that
 * lk_size_maybe() accepts can be one. */
static inline bool
lk_size_maybe(size_t n)
{
	return (n - 40 <= 16 && !(n & 7)) || n == 264;
}
/*
 * Files that end in no lock shape's tail, remembered by pointer (a file
 * name is one string literal per object file), so that from the second
 * allocation of a lock's size at such a site on, om_malloc() spends one
 * compare on it and no call.  Direct-mapped and racy by design: a lost
 * or overwritten entry only costs the slow check again.
 */
#define LK_REJECT_SLOTS 64
extern _Atomic(const char *) lk_rejected_files[LK_REJECT_SLOTS];

static inline unsigned
lk_reject_slot(const char *file)
{
	return (unsigned)(((uintptr_t)file >> 3) % LK_REJECT_SLOTS);
}

static inline bool
lk_rejected(const char *file)
{
	return atomic_load_explicit(&lk_rejected_files[lk_reject_slot(file)],
				    memory_order_relaxed) == file;
}
/* The shape of a lock allocated with these arguments, or -1. */
int lk_shape_of(size_t n, const char *file, int line);
/* A live block for a lock of @shape, in its slab, or NULL. */
void *lk_new(int shape, size_t n, const char *file, int line);
/* The end of a lock's free, once claimed. */
void lk_free(void *user);
/* @p is a live lock whose header a fork wiped: written again, true. */
bool lk_heal(void *p);
/* In a child, under no lock (thread.c: alloc_child). */
void lk_child(void);
/* The registry's counters, into @st. */
void lk_stats(struct ossl_proc_stats *st);

/* bad-free.c */
enum bad_kind { BAD_DOUBLE, BAD_INVALID, BAD_FOREIGN, BAD_INHERITED };
extern _Atomic uint64_t bad_double, bad_invalid, bad_foreign, bad_inherited;
/* Count a bad free of @kind and apply on_bad_free; @h is the block's
 * header when it is a valid one, else NULL. */
void bad_free(enum bad_kind kind, void *p, struct blk *h, uint32_t word,
	      const char *file, int line);
/* Classify @p; true with its word when it is a valid block, else it
 * went to the previous allocator or the bad-free path. */
bool blk_check(void *p, uint32_t *word, const char *file, int line);
/* False (and counted) when @p is another process's shared block. */
bool owned_here(void *p, uint32_t word, const char *file, int line);
/* A pointer without our header: to the previous allocator, or the
 * bad-free path as @kind. */
void not_ours(enum bad_kind kind, void *p, const char *file, int line);

/* large.c: blocks of no class from the libc backend, mapped by osslproc,
 * the user pointer at page offset LARGE_OFF. */
void *large_new(size_t total, const char *file, int line);
/* Free, or report, a pointer at page offset LARGE_OFF. */
void large_free(void *p, const char *file, int line);
/* 1, with its payload size, when @p is a live large block; 0 when it is
 * one freed (in the window); -1 when it is none. */
int large_size(void *p, size_t *n);
/* The live large blocks, for the leak listing (TRACK_SITES). */
void large_report(FILE *out, const char *label, size_t *shown,
		  size_t *total);

/* cache.c */
/* Empty lists for a new @t. */
void cache_init(struct tstate *t);
/* Return every cached and parked block of @t to the backend, and its
 * budget to the pool. */
void cache_flush(struct tstate *t);
/* Give @t's budget back to the process's pool. */
void budget_return(struct tstate *t);
/* In a child: forget @t's quarantined shared blocks that belong to another
 * process; with @release, release the rest too (@t's thread is gone). */
void quarantine_child(struct tstate *t, bool release);

/* handoff.c: queues of objects to their creators, and the books of
 * blocks freed by other processes (OSSL_PROC_F_SHARED_OBJECTS). */
void handoff_child(void);
void handoff_freed_for(pid_t owner, size_t bytes);
uint64_t handoff_reclaim(pid_t pid);
void handoff_stats(struct ossl_proc_stats *st);

/* arena.c: marks arenas in use as the tracked allocator's backend, which
 * can hold up to @hold_per_user bytes of it in each process. */
void arena_set_in_use(const struct ossl_proc_allocator *al, bool in_use,
		      uint64_t hold_per_user);

/* thread.c */
/* Initial-exec: one pointer, cheap to reach even from a dlopen'ed copy. */
extern __thread struct tstate *tls_state
	__attribute__((tls_model("initial-exec")));
struct tstate *tstate_new(void);

/* The shared fallback: counters of exited threads, and the state of a
 * thread that is exiting or in a signal handler inside the allocator
 * (no quarantine, no cache, atomic counters). */
extern struct tstate tstate_retired;

/* Never NULL: a thread that is exiting gets the shared fallback. */
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

/*
 * The calling thread changes its own state from here to tstate_leave(): a
 * signal handler that interrupts it and calls the allocator sees busy and
 * keeps off (alloc.c: the re-entrant path).  Compiler fences only: the
 * handler runs on this thread.  Leaving does the frees such a handler
 * deferred.
 */
static inline void
tstate_enter(struct tstate *t)
{
	t->busy = 1;
	atomic_signal_fence(memory_order_seq_cst);
}

void tstate_run_deferred(struct tstate *t);

/* Leaving, without doing the deferred frees (tstate_run_deferred() does
 * them in a loop of its own). */
static inline void
tstate_leave_quiet(struct tstate *t)
{
	atomic_signal_fence(memory_order_seq_cst);
	t->busy = 0;
	atomic_signal_fence(memory_order_seq_cst);
}

static inline void
tstate_leave(struct tstate *t)
{
	atomic_signal_fence(memory_order_seq_cst);
	t->busy = 0;
	atomic_signal_fence(memory_order_seq_cst);
	if (unlikely(atomic_load_explicit(&t->deferred_any,
					  memory_order_relaxed)))
		tstate_run_deferred(t);
}

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
/* owner.c: what a copy of osslproc tells another (an ABI between
 * copies: fields are only appended). */
struct owner_record {
	uint64_t magic;
	uint32_t version;
	uint32_t size;
	const struct owner_record *self;
	const char *object;
	int (*get_stats)(struct ossl_proc_stats *out);
	void (*report)(FILE *out);
	/* Version 2 (0.3): the malloc this copy installs in OpenSSL. */
	void *(*malloc)(size_t n, const char *file, int line);
};
/* The record of the copy whose malloc @m is, or NULL: no osslproc, or
 * a copy that is not the allocator's owner. */
const struct owner_record *owner_find(CRYPTO_malloc_fn m);
/* At install: the record names the object holding this copy. */
void owner_name_object(void);
/* This copy's part of a report: its object and the leak list. */
void owner_report(FILE *out);

/* ---- the inline block primitives of the fast path ---- */

#define PAGE_MASK ((uintptr_t)4095)
/*
 * Page offsets no other block's user pointer has: 0, as a page-aligned
 * pointer could be the start of a foreign mapping, told apart only by
 * reading the page before it, which may fault; and LARGE_OFF, the offset
 * of large.c's blocks, which are looked up in a table instead of having
 * their header read.  A backend chunk that would give one of them is
 * padded by PAD_BYTES (block.c).
 */
#define LARGE_OFF ((uintptr_t)16)
#define PAD_BYTES 32
#define ALIGN_MASK ((uintptr_t)15)
/* Backends that align to 8 only (Kamailio's shm allocator, half of its
 * blocks): such a chunk starts with this much padding (block.c). */
#define ALIGN8_BYTES 8

static inline struct blk *
hdr_of(void *user)
{
	return (struct blk *)user - 1;
}

static inline struct blk_site *
site_of(struct blk *h)
{
	return (struct blk_site *)h - 1;
}

static inline uint32_t
blk_magic(const void *user, uint64_t size_gen, uint32_t word)
{
	/*
	 * The keyed address times an odd factor keyed by the size, xor the
	 * layout times a secret odd factor, the halves folded.  Nothing
	 * enters linearly with a known coefficient: moving a header to
	 * another address, or changing its size or layout, changes the
	 * magic by an amount that depends on the secrets, so a header
	 * moved, adjusted, forged from a nearby one, or memory that is not
	 * a header validates with probability 2^-32.  The two multiplies
	 * are independent, so they run side by side.
	 */
	uint64_t a = ((uintptr_t)user ^ aconf.secret) *
		     ((size_gen ^ aconf.secret2) << 1 | 1);
	uint64_t b = (uint64_t)(word & ~ST_MASK) * aconf.secret3;
	uint64_t x = a ^ b;

	return (uint32_t)(x >> 32) ^ (uint32_t)x;
}

static inline size_t
blk_size(const struct blk *h)
{
	return (size_t)(h->size_gen & ((1ull << BLK_SIZE_BITS) - 1));
}

static inline unsigned
blk_class(const struct blk *h)
{
	return (unsigned)(h->size_gen >> BLK_CLASS_SHIFT) & 0xff;
}

/* @p (16-aligned) is at a page offset that no small block has. */
static inline bool
page_reserved(const void *p)
{
	return ((uintptr_t)p & PAGE_MASK) <= LARGE_OFF;
}

static inline size_t
prefix_len(uint32_t word)
{
	return sizeof(struct blk) +
	       (word & W_SITES ? sizeof(struct blk_site) : 0) +
	       (word & W_PADDED ? PAD_BYTES : 0) +
	       (word & W_ALIGN8 ? ALIGN8_BYTES : 0);
}

/* The bytes a freed block holds back: its class, or for a block of no
 * class its payload and prefix. */
static inline uint64_t
blk_held(struct blk *h)
{
	unsigned c = blk_class(h);

	if (likely(c))
		return class_size(c);
	return blk_size(h) + prefix_len(atomic_load_explicit(&h->word,
						memory_order_relaxed));
}

/* Read a header that may not be ours, without faulting (block.c). */
__attribute__((noipa, no_sanitize_address)) bool blk_peek(void *user,
							   uint32_t *word);
/* The same, healing a lock header a fork wiped (block.c). */
bool blk_peek_healed(void *user, uint32_t *word);

/*
 * A cached block's first payload word links it to the next block of its
 * class; a list ends at CACHE_END, which is also the head of an empty
 * list, so a pop stores the link it read without looking at it (a test
 * there would be a branch as unpredictable as the lists' lengths).  The
 * links are plain pointers, so leak checkers still see cached blocks as
 * reachable.  A write after free (a use after free in the host or in
 * OpenSSL) is noticed rather than followed: a link that is misaligned, at
 * a page start, or outside the range where Linux maps anything (below
 * 64 KiB, vm.mmap_min_addr's default, or above 2^56), is refused before
 * it is read, and so is a block whose header is not a valid cached
 * block's of that class (a live or quarantined block has another state).
 * A link into memory that is not mapped still faults, as that use after
 * free would without osslproc; a link to another cached block of the
 * same class is not noticed.
 */
extern struct cache_end {
	_Alignas(32) unsigned char bytes[32];
} cache_end_obj;
/* 16 bytes into a 32-aligned object: aligned, never at a page start; the
 * "header" before it is zero, no block's. */
#define CACHE_END ((void *)&cache_end_obj.bytes[16])

static inline void *
link_of(void *user)
{
	return *(void **)user;
}

#define LINK_MIN ((uintptr_t)64 * 1024)
#if UINTPTR_MAX > 0xffffffffu
#define LINK_MAX ((uintptr_t)1 << 56)
#else
#define LINK_MAX UINTPTR_MAX
#endif

/* aarch64 ignores a pointer's top byte, which MTE and tagging
 * allocators use: a tagged link is a valid one. */
#if defined(__aarch64__)
#define LINK_TAG_MASK (((uintptr_t)1 << 56) - 1)
#else
#define LINK_TAG_MASK UINTPTR_MAX
#endif

static inline bool
link_ok(void *next)
{
	uintptr_t v = (uintptr_t)next;

	return !(v & ALIGN_MASK) && (v & PAGE_MASK) &&
	       (v & LINK_TAG_MASK) - LINK_MIN < LINK_MAX - LINK_MIN;
}

/* A list head that holds nothing (NULL: a state never set up). */
static inline bool
cache_empty(void *head)
{
	return head == CACHE_END || !head;
}

/* A list turned out to be corrupted: abandon it, say why (cache.c). */
__attribute__((cold)) void *cache_corrupt(struct tstate *t, unsigned c);

/* The bits of a header word that say where the backend's chunk starts:
 * a refitted block (block.c) keeps them through the cache. */
#define W_LAYOUT (W_PADDED | W_ALIGN8)

/* Pop the head @user of list @c, a block whose header must be a valid
 * one of class @c with the word @cached (a cached block's of this
 * process's layout), but for the chunk's layout bits, which go to
 * @layout for the block's next header. */
static inline bool
cache_pop(struct tstate *t, unsigned c, void *user, uint32_t cached,
	  uint32_t *layout)
{
	struct blk *h = hdr_of(user);
	void *next = link_of(user);
	uint32_t word = atomic_load_explicit(&h->word, memory_order_relaxed);

	if (unlikely((word & ~W_LAYOUT) != cached || blk_class(h) != c ||
		     h->magic != blk_magic(user, h->size_gen, word) ||
		     !link_ok(next)))
		return false;
	*layout = word & W_LAYOUT;
	t->cache[c] = next;
	own_add(&t->cached_bytes, -(uint64_t)class_size(c));
	return true;
}

/* A cached block of class @c for a block with @word's layout, or NULL.
 * The caller made sure the cache holds blocks of its backend. */
static inline void *
cache_take(struct tstate *t, unsigned c, uint32_t *word)
{
	void *user = t->cache[c];
	uint32_t layout;

	if (cache_empty(user))
		return NULL;
	if (unlikely(!cache_pop(t, c, user, (*word & ~ST_MASK) | ST_CACHED,
				&layout)))
		return cache_corrupt(t, c);
	*word |= layout;
	return user;
}

/*
 * Write a live header for @n bytes of class @c at @user.  Relaxed atomic
 * stores (plain moves on x86 and arm64): a stale free in another thread
 * may read the header meanwhile; it then fails validation, without a
 * data race.
 */
static inline struct blk *
blk_stamp(void *user, size_t n, unsigned c, uint32_t word)
{
	struct blk *h = hdr_of(user);
	uint64_t size_gen = (uint64_t)n | (uint64_t)c << BLK_CLASS_SHIFT |
		atomic_load_explicit(&proc_mut.generation,
				     memory_order_relaxed) << BLK_GEN_SHIFT;

	__atomic_store_n(&h->size_gen, size_gen, __ATOMIC_RELAXED);
	atomic_store_explicit(&h->word, word, memory_order_relaxed);
	__atomic_store_n(&h->magic, blk_magic(user, size_gen, word),
			 __ATOMIC_RELAXED);
	return h;
}

/* Whether @t's cache lists hold blocks of backend @bk: the shared
 * backend's only in a worker's cache, which holds no private ones; and
 * after the program changed the backend (alloc_adopt()), a thread's lists
 * keep the old backend's blocks, so its new ones bypass them. */
static inline bool
cache_holds(const struct tstate *t, enum backend bk)
{
	return bk == t->cache_bk;
}

/* The class under which @t may cache block @h (header word @word) once
 * it leaves the quarantine: 0 when its backend is not the one @t's cache
 * holds (a shared backend's worker freeing its private inheritance, or
 * a block of the backend before the program's own, alloc_adopt()).
 * om_free()'s fast path reads the class directly: its word is the
 * current backend's, which every thread's cache holds but those that
 * existed when the program changed the backend (alloc_adopt()). */
static inline unsigned
blk_cache_class(const struct tstate *t, const struct blk *h, uint32_t word)
{
	if (!cache_holds(t, (enum backend)((word & BK_MASK) >> BK_SHIFT)))
		return 0;
	return blk_class(h);
}

/* A block of a shared backend that another process allocated. */
static inline bool
blk_foreign(uint32_t word)
{
	return ((word & BK_MASK) >> BK_SHIFT) == BK_SHARED &&
	       (pid_t)(word >> OWNER_SHIFT) != proc_self();
}

/*
 * Keep a block that left the quarantine for the next request of its
 * class @c, in the freed state: a stale free of it is still a double
 * free.  List 0 holds blocks on their way to the backend: those of no
 * class and those the budget has no room for.  No call here: the caller
 * accounts for what it kept, and cache_drain() gives back list 0 once.
 */
static inline void
cache_link(struct tstate *t, void *user, unsigned c)
{
	struct blk *h = hdr_of(user);

	/* Only ST_LIVE is ever swapped away, so no other thread can change
	 * this word now: a plain store suffices. */
	atomic_store_explicit(&h->word, atomic_load_explicit(&h->word,
			      memory_order_relaxed) & ~ST_MASK,
			      memory_order_relaxed);
	*(void **)user = t->cache[c];
	t->cache[c] = user;
}

/* Hand a quarantined block of class @c on: to @t's cache while its
 * budget has room, else (or with no class, no @t, the shared fallback)
 * to the backend (cache.c). */
void blk_release(struct tstate *t, void *user, unsigned c);
/* The quarantine is past its high mark: move its oldest blocks on. */
void quarantine_evict(struct tstate *t);

/* struct qent.held_class: the bytes held, the cache class above them. */
#define QCLASS_SHIFT 56
#define QHELD_MASK ((1ull << QCLASS_SHIFT) - 1)

/* Quarantine a block @t's thread freed, @held bytes of class @c. */
static inline void
quarantine_push(struct tstate *t, void *user, uint64_t held, unsigned c)
{
	struct qent *ring = t->qring;
	size_t tail = atomic_load_explicit(&t->qtail, memory_order_relaxed);
	uint64_t bytes = atomic_load_explicit(&t->q_bytes,
					      memory_order_relaxed) + held;
	uint64_t limit = aconf.quarantine_bytes;

	/* The shared fallback has no ring; a block larger than the whole
	 * window cannot be held back. */
	if (unlikely(!ring || held > limit)) {
		blk_release(t, user, c);
		return;
	}
	ring[tail & t->qmask] = (struct qent){
		.user = user,
		.held_class = held | (uint64_t)c << QCLASS_SHIFT,
	};
	atomic_store_explicit(&t->qtail, tail + 1, memory_order_relaxed);
	atomic_store_explicit(&t->q_bytes, bytes, memory_order_relaxed);
	if (unlikely(bytes > aconf.quarantine_high ||
		     tail + 1 - atomic_load_explicit(&t->qhead,
						     memory_order_relaxed) >
		     t->qmask))
		quarantine_evict(t);
}

/*
 * @p is a live block om_free() may retire at once: aligned, not at a
 * page start, its header valid and equal to aconf.free_word.  The read
 * is inline here (no call, so no saved registers); sanitizer builds read
 * through blk_peek(), which they are told about.
 */
static inline bool
blk_fast_live(void *p, uint32_t *word)
{
	if (((uintptr_t)p & ALIGN_MASK) || page_reserved(p))
		return false;
#ifdef OSSLPROC_SANITIZED
	return blk_peek(p, word) && *word == aconf.free_word;
#else
	struct blk *h = hdr_of(p);

	*word = atomic_load_explicit(&h->word, memory_order_acquire);
	return *word == aconf.free_word &&
	       __atomic_load_n(&h->magic, __ATOMIC_RELAXED) ==
	       blk_magic(p, __atomic_load_n(&h->size_gen, __ATOMIC_RELAXED),
			 *word);
#endif
}

#pragma GCC visibility pop

#endif /* OSSLPROC_ALLOC_INT_H */
