/*
 * The tracked allocator's blocks: headers, the free state machine, the
 * quarantine and bad-free handling.  These functions run inside every
 * OpenSSL allocation, so the common path takes no lock and makes no
 * system call; locks appear only with OSSL_PROC_F_TRACK_SITES (a debugging
 * mode) and on the first allocation of a thread.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alloc-int.h"

#define PAGE_MASK ((uintptr_t)4095)
#define ALIGN_MASK ((uintptr_t)15)

struct alloc_conf aconf;

const uint32_t class_bytes[NCLASSES] = {
	0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224,
	240, 256, 272, 288, 304, 320, 336, 352, 368, 384, 400, 416, 432, 448,
	464, 480, 496, 512, 528, 544, 560, 576, 592, 608, 624, 640, 656, 672,
	688, 704, 720, 736, 752, 768, 784, 800, 816, 832, 848, 864, 880, 896,
	912, 928, 944, 960, 976, 992, 1008, 1024,
	1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096, 5120, 6144, 7168,
	8192, 10240, 12288, 14336, 16384, 20480, 24576, 28672, 32768,
};
_Atomic uint64_t bad_double, bad_invalid, bad_foreign, bad_inherited;

static struct blk_site site_list = { &site_list, &site_list, 0, 0, 0, 0, 0 };

enum bad_kind { BAD_DOUBLE, BAD_INVALID, BAD_FOREIGN, BAD_INHERITED };

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
	/* One multiply over the secret-keyed inputs, its halves folded:
	 * what a header must resist is memory that is not one (random,
	 * stale, a payload read as a header), which then matches with
	 * probability 2^-32; a second mixing round adds nothing against
	 * that and cost about 0.2 ns per malloc+free pair. */
	uint64_t x = ((uintptr_t)user ^ aconf.secret) +
		     (size_gen ^ (uint64_t)(word & ~ST_MASK) << 29) *
		     0x9e3779b97f4a7c15ull;

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

static inline size_t
prefix_len(uint32_t word)
{
	return sizeof(struct blk) +
	       (word & W_SITES ? sizeof(struct blk_site) : 0) +
	       (word & W_PADDED ? 16 : 0);
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

/* ---- backends ---- */

static void *
bk_alloc(enum backend bk, size_t n, const char *file, int line)
{
	switch (bk) {
	case BK_LIBC:
		return malloc(n);
	case BK_HOST:
	case BK_SHARED:
		return aconf.host.malloc(n, aconf.host.arg);
	case BK_PRIOR:
		return aconf.prior_m(n, file, line);
	}
	return NULL;
}

static void
bk_free(enum backend bk, void *base, const char *file, int line)
{
	switch (bk) {
	case BK_LIBC:
		free(base);
		break;
	case BK_HOST:
	case BK_SHARED:
		aconf.host.free(base, aconf.host.arg);
		break;
	case BK_PRIOR:
		aconf.prior_f(base, file, line);
		break;
	}
}

/* ---- allocation ---- */

static void
site_link(struct blk *h, const char *file, int line)
{
	struct blk_site *s = site_of(h);

	s->alloc_file = file;
	s->alloc_line = line;
	s->free_file = NULL;
	s->free_line = 0;
	proc_lock(&proc_mut.site_lock);
	s->next = site_list.next;
	s->prev = &site_list;
	site_list.next->prev = s;
	site_list.next = s;
	proc_unlock(&proc_mut.site_lock);
}

static void
site_unlink(struct blk *h, const char *file, int line)
{
	struct blk_site *s = site_of(h);

	proc_lock(&proc_mut.site_lock);
	s->prev->next = s->next;
	s->next->prev = s->prev;
	s->next = s->prev = s;
	proc_unlock(&proc_mut.site_lock);
	s->free_file = file;
	s->free_line = line;
}

/*
 * A block whose user pointer is page-aligned could not be told from the
 * start of a foreign mapping without reading the page before it, which may
 * fault.  Such blocks are never handed out: take a 16-byte larger block
 * and, if needed, pad.  The rejected chunk is parked rather than freed: a
 * LIFO backend (glibc's tcache) would hand the same chunk back for the
 * next request of its size, and every allocation of that size would pay
 * for two more backend calls.
 */
static void
park(struct tstate *t, enum backend bk, void *base)
{
	unsigned slot = t->park_next;
	void *old = t->parked[slot];
	enum backend old_bk = (enum backend)t->parked_bk[slot];

	if (t->shared) {
		bk_free(bk, base, OPENSSL_FILE, OPENSSL_LINE);
		return;
	}
	t->parked[slot] = base;
	t->parked_bk[slot] = (uint8_t)bk;
	t->park_next = (slot + 1) % PARK_SLOTS;
	if (old)
		bk_free(old_bk, old, OPENSSL_FILE, OPENSSL_LINE);
}

static void *
realign(struct tstate *t, enum backend bk, void *base, size_t total,
	uint32_t *word, const char *file, int line)
{
	void *nb = bk_alloc(bk, total + 16, file, line);

	park(t, bk, base);
	if (!nb)
		return NULL;
	if ((((uintptr_t)nb + prefix_len(*word)) & PAGE_MASK) == 0)
		*word |= W_PADDED;
	return nb;
}

/*
 * Read a header that may lie in memory we do not own (a stale pointer's
 * block after release, or a stack or static object).  The caller made sure
 * the 16 bytes are in the same page as the pointer, so the read cannot
 * fault; sanitizers are told that reading here is deliberate, and
 * test/valgrind.supp tells valgrind (noipa keeps the frame visible).
 */
__attribute__((noipa, no_sanitize_address)) static bool
blk_peek(void *user, uint32_t *word)
{
	struct blk *h = hdr_of(user);
	uint64_t size_gen = __atomic_load_n(&h->size_gen, __ATOMIC_RELAXED);
	uint32_t magic = __atomic_load_n(&h->magic, __ATOMIC_RELAXED);

	*word = atomic_load_explicit(&h->word, memory_order_acquire);
	return magic == blk_magic(user, size_gen, *word);
}

/* ---- the per-thread cache ---- */

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
static struct {
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
list_empty(void *head)
{
	return head == CACHE_END || !head;
}

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

		while (!list_empty(*link)) {
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

__attribute__((cold, noinline)) static void *
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

/* Pop the head @user of list @c, a block whose header must be a valid
 * one of class @c with the word @cached (a cached block's of this
 * process's layout). */
static inline bool
cache_pop(struct tstate *t, unsigned c, void *user, uint32_t cached)
{
	struct blk *h = hdr_of(user);
	void *next = link_of(user);

	if (unlikely(atomic_load_explicit(&h->word, memory_order_relaxed) !=
		     cached || blk_class(h) != c ||
		     h->magic != blk_magic(user, h->size_gen, cached) ||
		     !link_ok(next)))
		return false;
	t->cache[c] = next;
	own_add(&t->cached_bytes, -(uint64_t)class_size(c));
	return true;
}

/* A cached block of class @c for a block with @word's layout, or NULL.
 * Shared blocks are never cached: they belong to the process that
 * allocated them. */
static inline void *
cache_take(struct tstate *t, unsigned c, uint32_t word)
{
	void *user = t->cache[c];

	if (list_empty(user))
		return NULL;
	if (unlikely(!cache_pop(t, c, user, (word & ~ST_MASK) | ST_CACHED)))
		return cache_corrupt(t, c);
	return user;
}

/* Fresh memory from the backend for a block with @word's layout. */
static char *
backend_block(struct tstate *t, enum backend bk, size_t total, uint32_t *word,
	      unsigned *c, const char *file, int line)
{
	char *base = bk_alloc(bk, total, file, line);

	if (unlikely(!base))
		return NULL;
	if (unlikely((((uintptr_t)base + prefix_len(*word)) & PAGE_MASK) ==
		     0)) {
		base = realign(t, bk, base, total, word, file, line);
		*c = 0; /* its size is no longer its class's */
		if (!base)
			return NULL;
	}
	if (unlikely((uintptr_t)base & ALIGN_MASK)) {
		log_error("the allocator backend returned %p, which is not "
			  "16-byte aligned; fix the backend", (void *)base);
		bk_free(bk, base, file, line);
		return NULL;
	}
	return base + prefix_len(*word);
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
	if (unlikely(list_empty(user) || !cache_pop(t, c, user,
					 (word & ~ST_MASK) | ST_CACHED)))
		return malloc_slow(n, file, line);
	blk_stamp(user, n, c, word);
	tstate_count_own(t, &t->allocs, (int64_t)n);
	return user;
}

/* ---- bad frees ---- */

static const char *const bad_names[] = {
	[BAD_DOUBLE] = "double free",
	[BAD_INVALID] = "free of a pointer osslproc never returned",
	[BAD_FOREIGN] = "free of a page-aligned foreign pointer",
	[BAD_INHERITED] = "free of a shared block owned by another process",
};

/* A bad free of @kind at file:line is logged the first time only. */
static bool
site_first_time(const char *file, int line, enum bad_kind kind)
{
	return log_once_key((uintptr_t)file ^ ((uintptr_t)line << 3) ^
			    (uintptr_t)kind);
}

/* What the header @h (NULL: none valid) tells of the block: "; allocated
 * at f:l, first freed at f:l" while its site record is still ours
 * (quarantined or cached), then the fork generation that allocated it
 * (a double free across a fork is a freed inheritance). */
static const char *
sites_text(char *buf, size_t len, struct blk *h, uint32_t word)
{
	struct blk_site *s;
	int n = 0;

	buf[0] = '\0';
	if (!h)
		return buf;
	if ((word & W_SITES) && ((word & ST_MASK) == ST_QUAR ||
				 (word & ST_MASK) == ST_CACHED)) {
		s = site_of(h);
		n = snprintf(buf, len, "; allocated at %s:%d, first freed at "
			     "%s:%d", s->alloc_file ? s->alloc_file : "?",
			     s->alloc_line, s->free_file ? s->free_file : "?",
			     s->free_line);
		if (n < 0 || (size_t)n >= len)
			return buf;
	}
	snprintf(buf + n, len - (size_t)n, "; allocated in fork generation %u",
		 (unsigned)(h->size_gen >> BLK_GEN_SHIFT));
	return buf;
}

static void
bad_free(enum bad_kind kind, void *p, struct blk *h, uint32_t word,
	 const char *file, int line)
{
	static _Atomic uint64_t *const counters[] = {
		&bad_double, &bad_invalid, &bad_foreign, &bad_inherited,
	};
	char sites[512];

	atomic_fetch_add_explicit(counters[kind], 1, memory_order_relaxed);
	if (aconf.on_bad_free == OSSL_PROC_BAD_FREE_IGNORE)
		return;
	if (aconf.on_bad_free == OSSL_PROC_BAD_FREE_ABORT) {
		log_error("%s: %p at %s:%d%s; aborting as configured "
			  "(OSSL_PROC_BAD_FREE_ABORT)", bad_names[kind], p,
			  file ? file : "?", line,
			  sites_text(sites, sizeof(sites), h, word));
		abort();
	}
	if (!site_first_time(file, line, kind))
		return;
	log_warn("%s: %p at %s:%d%s; not released (logged once per call "
		 "site)", bad_names[kind], p, file ? file : "?", line,
		 sites_text(sites, sizeof(sites), h, word));
}

/* ---- free ---- */

/* Where a pointer without our header goes: the previous allocator, or
 * the bad-free path. */
static void
not_ours(enum bad_kind kind, void *p, const char *file, int line)
{
	if (aconf.prior_f) {
		struct tstate *t = tstate_get();

		aconf.prior_f(p, file, line);
		counter_add(t, &t->prior_frees, 1);
		return;
	}
	bad_free(kind, p, NULL, 0, file, line);
}

/* Classify @p; returns true with its word when it is a valid block. */
static bool
blk_check(void *p, uint32_t *word, const char *file, int line)
{
	if ((uintptr_t)p & ALIGN_MASK) {
		not_ours(BAD_INVALID, p, file, line);
		return false;
	}
	if (!((uintptr_t)p & PAGE_MASK)) {
		not_ours(BAD_FOREIGN, p, file, line);
		return false;
	}
	if (!blk_peek(p, word)) {
		not_ours(BAD_INVALID, p, file, line);
		return false;
	}
	return true;
}

/* A block of a shared backend that another process allocated. */
static inline bool
blk_foreign(uint32_t word)
{
	return ((word & BK_MASK) >> BK_SHIFT) == BK_SHARED &&
	       (pid_t)(word >> OWNER_SHIFT) != proc_self();
}

/* A block of a shared backend may be freed only by the process that
 * allocated it: anything else means live OpenSSL objects are shared
 * between processes, which OpenSSL 3 cannot support. */
static bool
owned_here(void *p, uint32_t word, const char *file, int line)
{
	pid_t owner, self;

	if (!blk_foreign(word))
		return true;
	owner = (pid_t)(word >> OWNER_SHIFT);
	self = proc_self();
	atomic_fetch_add_explicit(&bad_inherited, 1, memory_order_relaxed);
	if (site_first_time(NULL, 0, BAD_INHERITED))
		log_warn("process %ld freed %p, a shared block allocated by "
			 "process %ld (at %s:%d); it is not released.  Keep "
			 "each SSL object in the process that created it "
			 "(logged once)", (long)self, p, (long)owner,
			 file ? file : "?", line);
	return false;
}

static void
to_backend(void *user, uint32_t word)
{
	enum backend bk = (enum backend)((word & BK_MASK) >> BK_SHIFT);

	bk_free(bk, (char *)user - prefix_len(word), OPENSSL_FILE,
		OPENSSL_LINE);
}

/* Mark a block released and hand it to its backend. */
static void
blk_to_backend(void *user)
{
	struct blk *h = hdr_of(user);
	uint32_t word = atomic_load_explicit(&h->word, memory_order_relaxed);

	atomic_store_explicit(&h->word, (word & ~ST_MASK) | ST_RELEASED,
			      memory_order_release);
	to_backend(user, word);
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

/* Give back list 0. */
__attribute__((noinline)) static void
cache_drain(struct tstate *t)
{
	void *user;

	while (!list_empty(user = t->cache[0])) {
		t->cache[0] = link_of(user);
		blk_to_backend(user);
	}
}

/* Hand a block on: to @t's cache while its budget has room, else (or
 * with no class, no @t, the shared fallback) to the backend. */
static void
release_inline(struct tstate *t, void *user, unsigned c)
{
	uint64_t held;

	if (!c || !t || t->shared) {
		blk_to_backend(user);
		return;
	}
	held = atomic_load_explicit(&t->cached_bytes, memory_order_relaxed) +
	       class_size(c);
	if (held > t->budget) {
		blk_to_backend(user);
		return;
	}
	cache_link(t, user, c);
	atomic_store_explicit(&t->cached_bytes, held, memory_order_relaxed);
}

void
blk_release(struct tstate *t, void *user, unsigned c)
{
	release_inline(t, user, c);
}

/* In a child: parked chunks of a shared backend are the parent's, which
 * still holds them; forget them rather than free them. */
CHILD_PATH void
park_forget_shared(struct tstate *t)
{
	for (unsigned i = 0; i < PARK_SLOTS; i++)
		if (t->parked_bk[i] == BK_SHARED)
			t->parked[i] = NULL;
}

void
cache_flush(struct tstate *t)
{
	for (unsigned i = 0; i < PARK_SLOTS; i++) {
		if (t->parked[i])
			bk_free((enum backend)t->parked_bk[i], t->parked[i],
				OPENSSL_FILE, OPENSSL_LINE);
		t->parked[i] = NULL;
	}
	/* A bad block ends its list there: what follows it is abandoned
	 * (cache_corrupt() said why when the list was last used). */
	for (unsigned c = 1; c < NCLASSES; c++) {
		void *user = t->cache[c];

		t->cache[c] = CACHE_END;
		while (!list_empty(user) && link_ok(user) && cached_ok(user)) {
			void *next = link_of(user);

			blk_to_backend(user);
			user = next;
		}
	}
	atomic_store_explicit(&t->cached_bytes, 0, memory_order_relaxed);
}

/* struct qent.held_class: the bytes held, the cache class above them. */
#define QCLASS_SHIFT 56
#define QHELD_MASK ((1ull << QCLASS_SHIFT) - 1)

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
			blk_release(NULL, e.user, 0);
			continue;
		}
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
 * time; moving one block per free cost 1.3 ns per pair.
 */
__attribute__((noinline)) static void
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
		release_inline(t, user, c);
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

/*
 * @p is a live block om_free() may retire at once: aligned, not at a
 * page start, its header valid and equal to aconf.free_word.  The read
 * is inline here (no call, so no saved registers); sanitizer builds read
 * through blk_peek(), which they are told about.
 */
static inline bool
blk_fast_live(void *p, uint32_t *word)
{
	if (((uintptr_t)p & ALIGN_MASK) || !((uintptr_t)p & PAGE_MASK))
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

/* ---- leak listing ---- */

void
sites_report(FILE *out)
{
	size_t shown = 0, total = 0;

	proc_lock(&proc_mut.site_lock);
	for (struct blk_site *s = site_list.next; s != &site_list;
	     s = s->next, total++) {
		struct blk *h = (struct blk *)(s + 1);

		if (shown++ < 50)
			fprintf(out, "  leak: %zu bytes at %p, allocated at "
				"%s:%d\n", blk_size(h), (void *)(h + 1),
				s->alloc_file ? s->alloc_file : "?",
				s->alloc_line);
	}
	proc_unlock(&proc_mut.site_lock);
	if (total > shown)
		fprintf(out, "  ... and %zu more\n", total - shown);
}
