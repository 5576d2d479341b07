/*
 * The built-in process-shared arena: one anonymous MAP_SHARED mapping made
 * before the host forks, so every worker sees the same memory at the same
 * address.
 *
 * Layout of the mapping (offsets are from its start, which is the struct
 * ossl_proc_arena, so every process shares the control block):
 *
 *   [control block][start bitmap] | [heap ...........................]
 *                   page boundary ^heap_off       ^bump_off          ^map_len
 *
 * The heap is cut, front to back by a bump pointer, into blocks that are
 * never split, merged or moved:
 *
 *   [struct arena_hdr, 16 bytes][payload: class size, a multiple of 16]
 *
 * so every payload is 16-aligned (the heap starts on a page, headers and
 * class sizes are multiples of 16).  Size classes: 16, 32, 48, 64, then
 * four per power of two (2^b + k 2^(b-2), k = 1..4), so rounding costs at
 * most a quarter of a request above 64 bytes; the class is computed with
 * one count-leading-zeros.  A freed block goes on the LIFO list of its
 * class, linked through its header (the payload is not touched, so the
 * tracked allocator's header inside it stays readable after release), and
 * serves the next request of that class.  A request is served from its
 * class's list, else from the bump pointer, else from the list of one of
 * the next four classes (at most twice the size); else it fails.
 *
 * The start bitmap has one bit per 16-byte granule of the heap, set when
 * the bump pointer writes a block header there.  Since blocks never
 * change, a set bit below the bump pointer is exactly a block start: a
 * free of an interior pointer is refused without trusting bytes that the
 * payload's owner can write.
 *
 * One robust, process-shared mutex in the control block serialises every
 * operation.  A process dying while it holds the lock (EOWNERDEAD) leaves
 * the structure consistent, because each operation commits in steps whose
 * every prefix is a valid state (the steps are fenced against compiler
 * reordering; the kernel has made all of a dead process's stores visible
 * before it hands the lock on):
 *
 *  - pop from a list: head = next, then the block is marked live.  Dying
 *    in between leaks that block (free, on no list).
 *  - push on a list: hdr.next = head, hdr.state = free, head = block.
 *    Dying after the state changed but before head moved leaks the block.
 *  - bump: the header is written and its bitmap bit set beyond the bump
 *    pointer, then the pointer moves.  Dying before the move leaves
 *    nothing behind (the next bump rewrites the same place); after it,
 *    the new live block leaks.
 *  - counters are updated after the structure: they can miss the one
 *    operation in flight (used_bytes then stays high by that block, or
 *    allocs/frees are short by one).
 *
 * So each death inside the lock costs at most one block; blocks a dead
 * worker held (outside the lock) stay allocated, as with any allocator.
 *
 * A free list is not trusted either: the block at a list's head is checked
 * (inside the heap, a block start, header intact, free, of that class)
 * before it is unlinked; a list that fails the check is dropped (its
 * blocks leak) and logged, so an overflow that reaches a header can cost
 * memory but never makes the arena hand out memory outside the mapping or
 * a block twice.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include "alloc-int.h"

#define ARENA_MAGIC 0x6f73736c61726e61ull /* "osslarna" */
#define HDR_MAGIC 0x41524e42u             /* "ARNB", xor the class */
#define ST_BLK_LIVE 0x4c56u
#define ST_BLK_FREE 0x4652u
#define GRAIN 16u
#define MIN_CAPACITY ((size_t)64 * 1024)
#define MAX_CLASS_LOG2 46 /* largest class: 2^47 bytes */
#define ARENA_CLASSES (4 + (MAX_CLASS_LOG2 - 6 + 1) * 4)
#define BORROW_CLASSES 4
#define MAX_ARENAS 64

/* Compiler barrier between the commit steps described above (a white-box
 * test may define it to inject a crash at each step). */
#ifndef STEP
#define STEP() atomic_signal_fence(memory_order_seq_cst)
#endif

struct arena_hdr {
	uint32_t magic;     /* HDR_MAGIC ^ klass */
	uint16_t klass;
	uint16_t state;     /* ST_BLK_LIVE or ST_BLK_FREE */
	uint64_t next;      /* free: offset of the next free header, 0: end;
			       live: pid of the process that allocated it */
};

_Static_assert(sizeof(struct arena_hdr) == GRAIN, "header is one grain");
_Static_assert(ARENA_CLASSES < 65536, "class fits the header");

/* Why a free was refused. */
enum bad_reason {
	ARENA_BAD_OUTSIDE,        /* not inside the used part of the heap */
	ARENA_BAD_MISALIGNED,     /* not 16-aligned */
	ARENA_BAD_NOT_START,      /* inside a block, not its start */
	ARENA_BAD_CORRUPT,        /* block start whose header was overwritten */
	ARENA_BAD_ALREADY_FREE,   /* double free */
	ARENA_BAD_NREASONS
};

static const char *const bad_reason_text[ARENA_BAD_NREASONS] = {
	[ARENA_BAD_OUTSIDE] = "outside the arena's allocated memory",
	[ARENA_BAD_MISALIGNED] = "not 16-byte aligned",
	[ARENA_BAD_NOT_START] = "inside a block, not at its start",
	[ARENA_BAD_CORRUPT] = "its block header was overwritten (overflow?)",
	[ARENA_BAD_ALREADY_FREE] = "already free (double free)",
};

/* Lives at the start of the mapping: every process shares it. */
struct ossl_proc_arena {
	uint64_t magic;
	struct ossl_proc_allocator allocator;
	pthread_mutex_t lock;
	uint64_t map_len;
	uint64_t bitmap_off;     /* uint64_t words, one bit per heap grain */
	uint64_t heap_off;
	uint64_t bump_off;       /* first unused heap byte */
	uint64_t free_head[ARENA_CLASSES]; /* offsets of headers, 0: empty */
	/* Counters, under the lock. */
	struct ossl_proc_arena_stats st;
	uint64_t live_blocks, carved_blocks, list_drops, owner_deaths;
	/* Logging state, under the lock: each event is logged once per
	 * arena, not once per process. */
	uint64_t full_rearm_below; /* used_bytes under which "full" is
				      logged again */
	atomic_bool full_logged, too_large_logged, corrupt_logged, bad_logged;
};

/*
 * Arenas this copy of osslproc created and has not unmapped, stored as
 * (uintptr_t)arena | in_use (arenas are page-aligned).  Lock-free, so that
 * a fork can never leave it locked, and so that the public functions can
 * check an arena without touching memory that may be unmapped already.
 */
static _Atomic uintptr_t registry[MAX_ARENAS];
static atomic_bool notrecoverable_logged;

static void *arena_malloc(size_t size, void *arg);
static void arena_free(void *ptr, void *arg);

/* ------------------------------------------------------------------ */
/* Size classes                                                        */
/* ------------------------------------------------------------------ */

/* Class of a request of @n bytes and its size; ARENA_CLASSES if too large. */
static unsigned
arena_size_class(size_t n, size_t *rounded)
{
	unsigned b, k;

	if (n <= 64) {
		unsigned c = n ? (unsigned)((n - 1) / 16) : 0;

		*rounded = (size_t)(c + 1) * 16;
		return c;
	}
	b = 63 - (unsigned)__builtin_clzll((unsigned long long)(n - 1));
	if (b > MAX_CLASS_LOG2)
		return ARENA_CLASSES;
	k = (unsigned)((n - 1) >> (b - 2)) - 4;     /* 0..3 */
	*rounded = (size_t)(k + 5) << (b - 2);
	return 4 + (b - 6) * 4 + k;
}

/* Payload size of class @c (the inverse of size_class). */
static size_t
arena_class_size(unsigned c)
{
	unsigned b, k;

	if (c < 4)
		return (size_t)(c + 1) * 16;
	b = (c - 4) / 4 + 6;
	k = (c - 4) % 4;
	return (size_t)(k + 5) << (b - 2);
}

/* ------------------------------------------------------------------ */
/* Blocks                                                              */
/* ------------------------------------------------------------------ */

static struct arena_hdr *
hdr_at(struct ossl_proc_arena *a, uint64_t off)
{
	return (struct arena_hdr *)((char *)a + off);
}

static uint64_t *
bitmap_word(struct ossl_proc_arena *a, uint64_t off, uint64_t *bit)
{
	uint64_t g = (off - a->heap_off) / GRAIN;

	*bit = 1ull << (g % 64);
	return (uint64_t *)((char *)a + a->bitmap_off) + g / 64;
}

static bool
is_block_start(struct ossl_proc_arena *a, uint64_t off)
{
	uint64_t bit, *w = bitmap_word(a, off, &bit);

	return *w & bit;
}

/* The header of the block at offset @off (any value), or NULL and why. */
static struct arena_hdr *
block_at(struct ossl_proc_arena *a, uint64_t off, enum bad_reason *why)
{
	struct arena_hdr *h;
	uint64_t end = a->bump_off < a->map_len ? a->bump_off : a->map_len;

	if (off < a->heap_off || off >= end || end - off < 2 * GRAIN) {
		*why = ARENA_BAD_OUTSIDE;
		return NULL;
	}
	if ((off - a->heap_off) % GRAIN) {
		*why = ARENA_BAD_MISALIGNED;
		return NULL;
	}
	if (!is_block_start(a, off)) {
		*why = ARENA_BAD_NOT_START;
		return NULL;
	}
	h = hdr_at(a, off);
	if (h->klass >= ARENA_CLASSES || h->magic != (HDR_MAGIC ^ h->klass) ||
	    (h->state != ST_BLK_LIVE && h->state != ST_BLK_FREE) ||
	    end - off - GRAIN < arena_class_size(h->klass)) {
		*why = ARENA_BAD_CORRUPT;
		return NULL;
	}
	return h;
}

/* Unlinks the head of list @c: 0 if it is empty or had to be dropped
 * (then *@corrupt = @c + 1). */
static uint64_t
list_pop(struct ossl_proc_arena *a, unsigned c, unsigned *corrupt)
{
	uint64_t off = a->free_head[c];
	enum bad_reason why;
	struct arena_hdr *h;

	if (!off)
		return 0;
	h = block_at(a, off, &why);
	if (!h || h->state != ST_BLK_FREE || h->klass != c) {
		/* Never follow a link that cannot be vouched for: this
		 * list's blocks leak, the arena stays sound. */
		a->free_head[c] = 0;
		a->list_drops++;
		*corrupt = c + 1;
		return 0;
	}
	a->free_head[c] = h->next;
	STEP();
	h->next = (uint64_t)proc_self();
	h->state = ST_BLK_LIVE;
	STEP();
	return off;
}

static void
list_push(struct ossl_proc_arena *a, uint64_t off, struct arena_hdr *h)
{
	h->next = a->free_head[h->klass];
	STEP();
	h->state = ST_BLK_FREE;
	STEP();
	a->free_head[h->klass] = off;
	STEP();
}

/* A new block of class @c from the bump pointer, or 0. */
static uint64_t
bump_carve(struct ossl_proc_arena *a, unsigned c, size_t rounded)
{
	uint64_t off = a->bump_off, bit, *w;
	struct arena_hdr *h;

	if (off > a->map_len || a->map_len - off < GRAIN + (uint64_t)rounded)
		return 0;
	h = hdr_at(a, off);
	h->magic = HDR_MAGIC ^ c;
	h->klass = (uint16_t)c;
	h->state = ST_BLK_LIVE;
	h->next = (uint64_t)proc_self();
	w = bitmap_word(a, off, &bit);
	*w |= bit;
	STEP();
	a->bump_off = off + GRAIN + rounded;
	STEP();
	a->carved_blocks++;
	return off;
}

/* ------------------------------------------------------------------ */
/* Lock                                                                */
/* ------------------------------------------------------------------ */

/* 0 with the lock held, or an errno.  *@died is set when the previous
 * owner died holding it; the structure is consistent all the same. */
static int
arena_lock(struct ossl_proc_arena *a, bool *died)
{
	int rc = pthread_mutex_lock(&a->lock);

	*died = false;
	if (rc == EOWNERDEAD) {
		rc = pthread_mutex_consistent(&a->lock);
		if (rc) {
			/* Cannot happen with a robust mutex; the next
			 * locker gets ENOTRECOVERABLE. */
			pthread_mutex_unlock(&a->lock);
			return rc;
		}
		a->owner_deaths++;
		*died = true;
	}
	return rc;
}

/* Logs what arena_lock() reported; call it without the lock. */
static void
log_lock_outcome(struct ossl_proc_arena *a, int rc, bool died,
		 uint64_t deaths)
{
	if (died)
		log_warn("shared arena %p: a process died while holding its "
			 "lock (%llu time(s) so far); the arena stays "
			 "consistent and usable, at most one block per such "
			 "death is leaked and the counters may miss that "
			 "operation", (void *)a, (unsigned long long)deaths);
	if (rc && log_once(&notrecoverable_logged))
		log_error("shared arena %p: cannot take its lock (%s): "
			  "allocations fail and frees are skipped (memory "
			  "leaks) from now on", (void *)a, strerror(rc));
}

/* ------------------------------------------------------------------ */
/* Backend functions                                                   */
/* ------------------------------------------------------------------ */

/* What arena_malloc() found worth logging, logged after unlocking. */
struct malloc_event {
	bool full, too_large;
	unsigned corrupt;      /* class + 1 of a dropped list, 0: none */
	uint64_t used, carved_free, failed, capacity;
};

static void
log_malloc_event(struct ossl_proc_arena *a, size_t size,
		 const struct malloc_event *ev)
{
	if (ev->corrupt)
		log_error("shared arena %p: the free list of %zu-byte blocks "
			  "is corrupted (a block header was overwritten, "
			  "probably by a buffer overflow); the list is "
			  "dropped and its blocks are leaked (logged once)",
			  (void *)a, arena_class_size(ev->corrupt - 1));
	if (ev->too_large)
		log_error("shared arena %p: a request of %zu bytes can never "
			  "fit in its %llu bytes; such requests fail (logged "
			  "once)", (void *)a, size,
			  (unsigned long long)ev->capacity);
	if (ev->full)
		log_error("shared arena %p is full: a request of %zu bytes "
			  "failed with %llu of %llu bytes in use and %llu "
			  "bytes in free blocks of other sizes (%llu "
			  "failure(s) so far); create it larger with "
			  "ossl_proc_arena_new() (logged again only after a "
			  "quarter of the memory in use is freed)",
			  (void *)a, size, (unsigned long long)ev->used,
			  (unsigned long long)ev->capacity,
			  (unsigned long long)ev->carved_free,
			  (unsigned long long)ev->failed);
}

static void *
arena_malloc(size_t size, void *arg)
{
	struct ossl_proc_arena *a = arg;
	struct malloc_event ev = { 0 };
	uint64_t off = 0, deaths, overhead;
	size_t rounded = 0;
	unsigned c = arena_size_class(size, &rounded);
	bool died;
	int rc;

	rc = arena_lock(a, &died);
	if (rc) {
		log_lock_outcome(a, rc, false, 0);
		return NULL;
	}
	deaths = a->owner_deaths;
	if (c < ARENA_CLASSES) {
		off = list_pop(a, c, &ev.corrupt);
		if (!off)
			off = bump_carve(a, c, rounded);
		for (unsigned k = c + 1;
		     !off && k <= c + BORROW_CLASSES && k < ARENA_CLASSES; k++)
			off = list_pop(a, k, &ev.corrupt);
	}
	if (off) {
		rounded = arena_class_size(hdr_at(a, off)->klass);
		a->st.allocs++;
		a->live_blocks++;
		a->st.used_bytes += rounded;
		if (a->st.used_bytes > a->st.peak_bytes)
			a->st.peak_bytes = a->st.used_bytes;
	} else {
		a->st.failed++;
		if (c >= ARENA_CLASSES || GRAIN + rounded > a->st.capacity) {
			ev.too_large = log_once(&a->too_large_logged);
		} else if (log_once(&a->full_logged)) {
			ev.full = true;
			a->full_rearm_below = a->st.used_bytes -
					      a->st.used_bytes / 4;
		}
	}
	if (ev.corrupt && !log_once(&a->corrupt_logged))
		ev.corrupt = 0;
	ev.used = a->st.used_bytes;
	ev.capacity = a->st.capacity;
	ev.failed = a->st.failed;
	/* Counters can be short by an operation a dead process left. */
	overhead = a->st.used_bytes + a->carved_blocks * GRAIN;
	if (a->bump_off - a->heap_off > overhead)
		ev.carved_free = a->bump_off - a->heap_off - overhead;
	pthread_mutex_unlock(&a->lock);
	log_lock_outcome(a, 0, died, deaths);
	log_malloc_event(a, size, &ev);
	return off ? (char *)a + off + GRAIN : NULL;
}

/* Under the lock: @h at @off goes back to its free list. */
static void
release_block(struct ossl_proc_arena *a, uint64_t off, struct arena_hdr *h)
{
	list_push(a, off, h);
	a->st.frees++;
	a->live_blocks--;
	a->st.used_bytes -= arena_class_size(h->klass);
	if (a->st.used_bytes < a->full_rearm_below)
		atomic_store(&a->full_logged, false);
}

static void
arena_free(void *ptr, void *arg)
{
	struct ossl_proc_arena *a = arg;
	enum bad_reason why = ARENA_BAD_OUTSIDE;
	struct arena_hdr *h = NULL;
	uintptr_t p = (uintptr_t)ptr, base = (uintptr_t)a;
	bool died, log_bad = false;
	uint64_t deaths;
	int rc;

	if (!ptr)
		return;
	rc = arena_lock(a, &died);
	if (rc) {
		log_lock_outcome(a, rc, false, 0);
		return;
	}
	deaths = a->owner_deaths;
	if (p - base >= GRAIN && p - base <= a->map_len) {
		h = block_at(a, p - base - GRAIN, &why);
		if (h && h->state != ST_BLK_LIVE) {
			why = ARENA_BAD_ALREADY_FREE;
			h = NULL;
		}
	}
	if (h) {
		release_block(a, p - base - GRAIN, h);
	} else {
		a->st.bad_frees++;
		log_bad = log_once(&a->bad_logged);
	}
	pthread_mutex_unlock(&a->lock);
	log_lock_outcome(a, 0, died, deaths);
	if (log_bad)
		log_error("shared arena %p: refused to free %p, which is not a "
			  "live block of the arena (%s); nothing was changed "
			  "(logged once, further ones are counted in "
			  "bad_frees)", (void *)a, ptr, bad_reason_text[why]);
}

/* ------------------------------------------------------------------ */
/* Registry                                                            */
/* ------------------------------------------------------------------ */

static int
registry_find(const void *arena)
{
	uintptr_t key = (uintptr_t)arena;

	if (!arena)
		return -1;
	for (int i = 0; i < MAX_ARENAS; i++)
		if ((atomic_load(&registry[i]) & ~(uintptr_t)1) == key)
			return i;
	return -1;
}

static bool
registry_add(struct ossl_proc_arena *a)
{
	for (int i = 0; i < MAX_ARENAS; i++) {
		uintptr_t empty = 0;

		if (atomic_compare_exchange_strong(&registry[i], &empty,
						   (uintptr_t)a))
			return true;
	}
	return false;
}

/* Our arena behind @al (a copy of an arena's allocator is fine), or -1. */
static int
registry_find_allocator(const struct ossl_proc_allocator *al)
{
	if (!al || al->malloc != arena_malloc || al->free != arena_free)
		return -1;
	return registry_find(al->arg);
}

void
arena_set_in_use(const struct ossl_proc_allocator *al, bool in_use)
{
	int i = registry_find_allocator(al);
	uintptr_t cur;

	if (i < 0)
		return;
	cur = atomic_load(&registry[i]);
	while ((cur & ~(uintptr_t)1) == (uintptr_t)al->arg &&
	       !atomic_compare_exchange_weak(&registry[i], &cur,
					     (uintptr_t)al->arg |
					     (uintptr_t)in_use))
		;
}

/* ------------------------------------------------------------------ */
/* Public API                                                          */
/* ------------------------------------------------------------------ */

static size_t
round_up(size_t n, size_t to)
{
	return (n + to - 1) / to * to;
}

/* Lays the mapping out; false if @capacity is out of range. */
static bool
arena_layout(size_t capacity, size_t page, uint64_t *bitmap_off,
	     uint64_t *heap_off, uint64_t *map_len)
{
	size_t heap, words, head;

	if (capacity < MIN_CAPACITY ||
	    capacity > ((size_t)1 << MAX_CLASS_LOG2) ||
	    capacity > SIZE_MAX / 2)
		return false;
	heap = round_up(capacity, page);
	words = heap / GRAIN / 64 + 1;
	*bitmap_off = round_up(sizeof(struct ossl_proc_arena), 64);
	head = round_up(*bitmap_off + words * sizeof(uint64_t), page);
	if (head > SIZE_MAX - heap)
		return false;
	*heap_off = head;
	*map_len = head + heap;
	return true;
}

static int
arena_init_lock(struct ossl_proc_arena *a)
{
	pthread_mutexattr_t at;
	int rc = pthread_mutexattr_init(&at);

	if (rc)
		return rc;
	rc = pthread_mutexattr_setpshared(&at, PTHREAD_PROCESS_SHARED);
	if (!rc)
		rc = pthread_mutexattr_setrobust(&at, PTHREAD_MUTEX_ROBUST);
	if (!rc)
		rc = pthread_mutex_init(&a->lock, &at);
	pthread_mutexattr_destroy(&at);
	return rc;
}

OSSL_PROC_EXPORT struct ossl_proc_arena *
ossl_proc_arena_new(size_t capacity)
{
	long page = sysconf(_SC_PAGESIZE);
	uint64_t bitmap_off, heap_off, map_len;
	struct ossl_proc_arena *a;
	int rc;

	if (page <= 0)
		page = 4096;
	if (!arena_layout(capacity, (size_t)page, &bitmap_off, &heap_off,
			  &map_len)) {
		log_bug_client("ossl_proc_arena_new: capacity %zu is not between "
			       "64 KiB and %llu bytes", capacity,
			       (unsigned long long)((size_t)1 <<
						    MAX_CLASS_LOG2));
		errno = EINVAL;
		return NULL;
	}
	a = mmap(NULL, (size_t)map_len, PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (a == MAP_FAILED) {
		rc = errno;
		log_error("ossl_proc_arena_new: cannot map %llu bytes of shared "
			  "memory for an arena of %zu bytes (%s)",
			  (unsigned long long)map_len, capacity, strerror(rc));
		errno = ENOMEM;
		return NULL;
	}
	/* The mapping is zero-filled: lists empty, counters 0, bitmap
	 * clear. */
	rc = arena_init_lock(a);
	if (rc) {
		log_error("ossl_proc_arena_new: cannot create a process-shared "
			  "robust mutex (%s)", strerror(rc));
		munmap(a, (size_t)map_len);
		errno = rc == ENOMEM ? ENOMEM : EINVAL;
		return NULL;
	}
	a->map_len = map_len;
	a->bitmap_off = bitmap_off;
	a->heap_off = heap_off;
	a->bump_off = heap_off;
	a->st.size = sizeof(a->st);
	a->st.capacity = map_len - heap_off;
	a->allocator = (struct ossl_proc_allocator){
		.malloc = arena_malloc,
		.realloc = NULL,
		.free = arena_free,
		.arg = a,
		.shared = 1,
	};
	a->magic = ARENA_MAGIC;
	if (!registry_add(a)) {
		log_error("ossl_proc_arena_new: %d arenas already exist in this "
			  "process; free one with ossl_proc_arena_free() first",
			  MAX_ARENAS);
		pthread_mutex_destroy(&a->lock);
		munmap(a, (size_t)map_len);
		errno = ENOMEM;
		return NULL;
	}
	log_info("shared arena %p: %llu bytes usable in %llu bytes of shared "
		 "memory", (void *)a, (unsigned long long)a->st.capacity,
		 (unsigned long long)map_len);
	return a;
}

/* True for an arena this process made and has not freed; logs the client
 * bug otherwise.  Never reads memory that may be unmapped. */
static bool
arena_valid(struct ossl_proc_arena *a, const char *fn)
{
	if (!a) {
		log_bug_client("%s: NULL arena", fn);
		return false;
	}
	if (registry_find(a) < 0 || a->magic != ARENA_MAGIC) {
		log_bug_client("%s: %p is not an arena made by "
			       "ossl_proc_arena_new() in this process, or it "
			       "was freed", fn, (void *)a);
		return false;
	}
	return true;
}

OSSL_PROC_EXPORT const struct ossl_proc_allocator *
ossl_proc_arena_allocator(struct ossl_proc_arena *a)
{
	if (!a || !arena_valid(a, "ossl_proc_arena_allocator"))
		return NULL;
	return &a->allocator;
}

OSSL_PROC_EXPORT int
ossl_proc_arena_get_stats(struct ossl_proc_arena *a,
			  struct ossl_proc_arena_stats *out)
{
	struct ossl_proc_arena_stats st;
	uint64_t deaths;
	bool died;
	int rc;

	if (!out) {
		log_bug_client("ossl_proc_arena_get_stats: NULL out");
		return -EINVAL;
	}
	/* One version of the struct exists: it is the minimum. */
	if (out->size < sizeof(st)) {
		log_bug_client("ossl_proc_arena_get_stats: out->size is %zu, "
			       "set it to sizeof(struct ossl_proc_arena_stats) "
			       "(%zu)", out->size, sizeof(st));
		return -EINVAL;
	}
	if (!arena_valid(a, "ossl_proc_arena_get_stats"))
		return -EINVAL;
	rc = arena_lock(a, &died);
	/* Without the lock (not recoverable), a racy snapshot is better
	 * than nothing. */
	deaths = rc ? 0 : a->owner_deaths;
	st = a->st;
	if (!rc)
		pthread_mutex_unlock(&a->lock);
	log_lock_outcome(a, rc, died, deaths);
	/* A newer caller's tail is left alone. */
	memcpy((char *)out + sizeof(size_t), (char *)&st + sizeof(size_t),
	       sizeof(st) - sizeof(size_t));
	return 0;
}

OSSL_PROC_EXPORT void
ossl_proc_arena_free(struct ossl_proc_arena *a)
{
	uintptr_t expect = (uintptr_t)a;
	int i;

	if (!a)
		return;
	i = registry_find(a);
	if (i < 0) {
		log_bug_client("ossl_proc_arena_free: %p is not an arena made by "
			       "ossl_proc_arena_new() in this process, or it "
			       "was already freed", (void *)a);
		return;
	}
	/* Removing the entry decides: it fails while the arena is marked
	 * in use. */
	if (!atomic_compare_exchange_strong(&registry[i], &expect, 0)) {
		log_error("ossl_proc_arena_free: arena %p is the backend of "
			  "OpenSSL's allocator, which frees into it until the "
			  "process exits; it stays mapped", (void *)a);
		return;
	}
	/* Processes forked since share the control block and may go on
	 * using the arena: nothing in it changes (the mutex is not
	 * destroyed), only this process's mapping goes. */
	munmap(a, (size_t)a->map_len);
}

/* Under the lock: free every live block allocated by @pid. */
static uint64_t
reclaim_locked(struct ossl_proc_arena *a, pid_t pid, uint64_t *bytes)
{
	uint64_t n = 0;

	for (uint64_t off = a->heap_off; off < a->bump_off;) {
		struct arena_hdr *h = hdr_at(a, off);

		if (h->magic != (HDR_MAGIC ^ h->klass) || h->klass >= ARENA_CLASSES)
			break; /* never walk past a header that is not one */
		if (h->state == ST_BLK_LIVE && h->next == (uint64_t)pid) {
			*bytes += arena_class_size(h->klass);
			release_block(a, off, h);
			n++;
		}
		off += GRAIN + arena_class_size(h->klass);
	}
	return n;
}

OSSL_PROC_EXPORT int
ossl_proc_arena_reclaim(struct ossl_proc_arena *a, pid_t pid)
{
	uint64_t n, bytes = 0;
	bool died;
	int rc;

	if (!arena_valid(a, __func__))
		return -EINVAL;
	if (pid <= 0) {
		log_bug_client("ossl_proc_arena_reclaim: pid %ld", (long)pid);
		return -EINVAL;
	}
	if (kill(pid, 0) == 0 || errno != ESRCH) {
		log_bug_client("ossl_proc_arena_reclaim: process %ld still "
			       "exists; reclaim only after waitpid() reaped it",
			       (long)pid);
		return -EBUSY;
	}
	rc = arena_lock(a, &died);
	if (rc) {
		log_lock_outcome(a, rc, false, 0);
		return -rc;
	}
	n = reclaim_locked(a, pid, &bytes);
	pthread_mutex_unlock(&a->lock);
	if (n)
		log_info("shared arena: reclaimed %llu blocks (%llu bytes) "
			 "left by process %ld", (unsigned long long)n,
			 (unsigned long long)bytes, (long)pid);
	return n > INT32_MAX ? INT32_MAX : (int)n;
}
