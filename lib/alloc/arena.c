/*
 * The built-in process-shared arena: one anonymous MAP_SHARED mapping made
 * before the host forks, so every worker sees the same memory at the same
 * address.
 *
 * Layout of the mapping (offsets are from its start, which is the struct
 * ossl_proc_arena, so every process shares the control block):
 *
 *   [control block][start bitmap] | [heap: blocks, end to end ........]
 *                   page boundary ^heap_off                    map_len^
 *
 * The heap is a chain of blocks that covers it exactly, each starting
 * with a 16-byte header that gives its size and the size of the block
 * before it (boundary tags), so both neighbours of a block are found in
 * constant time.  An allocation takes a free block and splits off what it
 * does not need; a free merges the block with free neighbours.  So an
 * empty arena is one free block again, whatever happened before, and
 * serves any request up to its capacity minus one header.  Every payload
 * is 16-aligned (the heap starts on a page; headers and block sizes are
 * multiples of 16).
 *
 * Free blocks are on doubly linked lists by size class (16-byte steps up
 * to 1 KiB, then four per power of two), linked through their last 16
 * bytes; every block is at least 48 bytes, so the front of a free
 * block's payload is not touched and the tracked allocator's header
 * inside a released block stays readable.  A request is served by the
 * first fit among a few blocks of its own class, else by the first block
 * of the next non-empty class (a bitmap of non-empty classes finds it
 * with one count-trailing-zeros per 64 classes), else by the rest of its
 * own class.  Freed blocks of up to 1 KiB first wait, unmerged, on quick
 * lists by exact size, which serve the next request of that size with
 * one pop; they are merged like any free when they hold an eighth of
 * the arena, when a request finds no fit, and when the stats are read.
 *
 * The start bitmap has one bit per 16-byte granule of the heap, set where
 * a block starts.  It lives outside the heap, where no overflow of a
 * payload reaches: a free of an interior pointer is refused without
 * trusting bytes the payload's owner can write, and a header whose block
 * does not end at a marked start (an overflow changed its size) is not
 * followed, nor written through, by any operation.
 *
 * One robust, process-shared mutex in the control block serialises every
 * operation.  The chain of headers is the arena's truth; lists, bitmap,
 * neighbours' back sizes and counters are derived from it.  Every
 * operation changes the chain with one store (a block's size, or its
 * state), having written everything that store makes visible first, so
 * every prefix of an operation leaves a walkable chain.  When a process
 * dies holding the lock (EOWNERDEAD), or a link or header fails its
 * check, the next holder rebuilds everything derived from one walk of
 * the chain (arena_rebuild): nothing is lost but a free in flight (the
 * block stays live and its allocator's: if that was the dead process,
 * ossl_proc_arena_reclaim() frees it), and an allocation in flight is
 * the dead process's to reclaim.
 *
 * A header that fails its check during that walk (an overflow wrote over
 * it) cannot be followed: the walk resumes at the next granule the bitmap
 * marks whose header is sound, and the bytes in between are fenced off as
 * a lost block that is never handed out or merged (logged once).  A size
 * forged larger is cut back at the first marked start inside it whose
 * header is not free: a death leaves marks inside a block only at free
 * headers.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include "alloc-int.h"

#define ARENA_MAGIC 0x6f73736c61726e61ull /* "osslarna" */
#define HDR_MAGIC 0x41524e42u             /* "ARNB", xor the state */
#define ST_BLK_LIVE 0x4c56u
#define ST_BLK_FREE 0x4652u
#define ST_BLK_LOST 0x4c53u               /* fenced off after corruption */
#define ST_BLK_QUICK 0x5143u              /* freed, on a quick list */
#define GRAIN 16u
#define MIN_BLOCK 3u                      /* grains: header, a payload
					     grain, links */
#define MIN_CAPACITY ((size_t)64 * 1024)
#define MAX_CAPACITY ((size_t)1 << 35)    /* sizes in grains fit 32 bits */
#define SMALL_LIMIT 1024u                 /* 16-byte classes below it */
#define ARENA_CLASSES (SMALL_LIMIT / GRAIN + (35 - 10 + 1) * 4)
#define CLASS_WORDS ((ARENA_CLASSES + 63) / 64)
#define FIRST_FIT_TRIES 8
#define QUICK_MAX_G (SMALL_LIMIT / GRAIN) /* quick lists: up to 1 KiB */
#define ARENA_USERS 64
#define MAX_ARENAS 64

/* Compiler barrier between the commit steps described above (a white-box
 * test may define it to inject a crash at each step). */
#ifndef STEP
#define STEP() atomic_signal_fence(memory_order_seq_cst)
#endif

struct arena_hdr {
	uint32_t magic;     /* HDR_MAGIC ^ state */
	uint32_t owner;     /* live: pid of the process that allocated it */
	uint32_t size_g;    /* grains of this block, its header included */
	uint32_t prev_g;    /* grains of the block before it; 0: first */
};

/* In the last 16 bytes of a free block: offsets of headers, 0: none. */
struct arena_links {
	uint64_t next, prev;
};

_Static_assert(sizeof(struct arena_hdr) == GRAIN, "header is one grain");
_Static_assert(sizeof(struct arena_links) == GRAIN, "links are one grain");

/* Why a free was refused. */
enum bad_reason {
	ARENA_BAD_OUTSIDE,        /* not inside the heap */
	ARENA_BAD_MISALIGNED,     /* not 16-aligned */
	ARENA_BAD_NOT_START,      /* inside a block, not its start */
	ARENA_BAD_CORRUPT,        /* block start whose header was overwritten */
	ARENA_BAD_ALREADY_FREE,   /* double free */
	ARENA_BAD_NREASONS
};

static const char *const bad_reason_text[ARENA_BAD_NREASONS] = {
	[ARENA_BAD_OUTSIDE] = "outside the arena's heap",
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
	uint64_t head[ARENA_CLASSES];    /* offsets of headers, 0: empty */
	uint64_t nonempty[CLASS_WORDS];  /* bit c: head[c] != 0 */
	uint64_t quick[QUICK_MAX_G + 1]; /* by grains, singly linked */
	uint64_t quick_bytes;            /* in blocks on the quick lists */
	uint64_t listed, listed_bytes;   /* on the free lists (payloads) */
	/* Counters, under the lock. */
	struct ossl_proc_arena_stats st;
	uint64_t live_blocks, owner_deaths, rebuilds, lost_bytes;
	/* Sizing: processes that allocated here, and what each thread can
	 * hold back in its quarantine and cache (set by the tracked
	 * allocator). */
	uint64_t hold_per_user;
	uint32_t nusers;
	pid_t users[ARENA_USERS];
	uint32_t slot;           /* this arena's registry index */
	/* Logging state, under the lock: each event is logged once per
	 * arena, not once per process. */
	uint64_t full_rearm_below; /* used_bytes under which "full" is
				      logged again */
	atomic_bool full_logged, too_large_logged, corrupt_logged, bad_logged,
		    sizing_logged;
};

/*
 * Arenas this copy of osslproc created and has not unmapped, stored as
 * (uintptr_t)arena | in_use (arenas are page-aligned).  Lock-free, so that
 * a fork can never leave it locked, and so that the public functions can
 * check an arena without touching memory that may be unmapped already.
 */
static _Atomic uintptr_t registry[MAX_ARENAS];
/* The pid each arena last saw allocate in this process: a new process
 * registers as a user once (arena_note_user). */
static pid_t user_seen[MAX_ARENAS];
static atomic_bool notrecoverable_logged, reentry_logged;

static void *arena_malloc(size_t size, void *arg);
static void arena_free(void *ptr, void *arg);

/* ------------------------------------------------------------------ */
/* Size classes                                                        */
/* ------------------------------------------------------------------ */

/* The class of a free block of @bytes (>= 32, a multiple of 16): blocks
 * of class c are smaller than those of class c + 1. */
static unsigned
arena_class_of(uint64_t bytes)
{
	unsigned b;

	if (bytes < SMALL_LIMIT)
		return (unsigned)(bytes / GRAIN);
	b = 63u - (unsigned)__builtin_clzll((unsigned long long)bytes);
	return SMALL_LIMIT / GRAIN + (b - 10) * 4 +
	       (unsigned)((bytes >> (b - 2)) & 3);
}

/* ------------------------------------------------------------------ */
/* Blocks                                                              */
/* ------------------------------------------------------------------ */

static struct arena_hdr *
hdr_at(struct ossl_proc_arena *a, uint64_t off)
{
	return (struct arena_hdr *)((char *)a + off);
}

static uint64_t
blk_bytes(const struct arena_hdr *h)
{
	return (uint64_t)h->size_g * GRAIN;
}

static struct arena_links *
links_of(struct ossl_proc_arena *a, uint64_t off)
{
	return (struct arena_links *)((char *)a + off +
				      blk_bytes(hdr_at(a, off)) - GRAIN);
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

static void
mark_start(struct ossl_proc_arena *a, uint64_t off, bool start)
{
	uint64_t bit, *w = bitmap_word(a, off, &bit);

	*w = start ? *w | bit : *w & ~bit;
}

static uint32_t
hdr_state(const struct arena_hdr *h)
{
	return h->magic ^ HDR_MAGIC;
}

static void
set_state(struct arena_hdr *h, uint32_t state)
{
	h->magic = HDR_MAGIC ^ state;
}

/* A header at @off that can be followed: a known state, a size that
 * stays inside the heap. */
static bool
hdr_sound(struct ossl_proc_arena *a, uint64_t off)
{
	struct arena_hdr *h = hdr_at(a, off);
	uint32_t s = hdr_state(h);

	return (s == ST_BLK_LIVE || s == ST_BLK_FREE || s == ST_BLK_LOST ||
		s == ST_BLK_QUICK) &&
	       h->size_g >= (s == ST_BLK_LOST ? 1 : MIN_BLOCK) &&
	       h->size_g <= (a->map_len - off) / GRAIN;
}

/*
 * A header ordinary operations may follow: sound, and its block ends
 * where the bitmap marks the next start (or at the heap's end), so a size
 * an overflow changed is noticed before anything is written through it.
 * The rebuild walk trusts sizes alone: a death may have left the bitmap
 * short of a start.
 */
static bool
hdr_trusted(struct ossl_proc_arena *a, uint64_t off)
{
	uint64_t end;

	if (!hdr_sound(a, off))
		return false;
	end = off + blk_bytes(hdr_at(a, off));
	return end == a->map_len || is_block_start(a, end);
}

/* The header of the block at offset @off (any value), or NULL and why. */
static struct arena_hdr *
block_at(struct ossl_proc_arena *a, uint64_t off, enum bad_reason *why)
{
	if (off < a->heap_off || off >= a->map_len ||
	    a->map_len - off < MIN_BLOCK * GRAIN) {
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
	if (!hdr_trusted(a, off)) {
		*why = ARENA_BAD_CORRUPT;
		return NULL;
	}
	return hdr_at(a, off);
}

/* The block after @off, or 0 at the end of the heap. */
static uint64_t
next_of(struct ossl_proc_arena *a, uint64_t off)
{
	uint64_t n = off + blk_bytes(hdr_at(a, off));

	return n < a->map_len ? n : 0;
}

/* ------------------------------------------------------------------ */
/* Free lists                                                          */
/* ------------------------------------------------------------------ */

/* Whether offset @off, which may hold anything (a list link, a
 * neighbour's back size), is a block start the operations may follow,
 * in @state. */
static bool
block_in_state(struct ossl_proc_arena *a, uint64_t off, uint32_t state)
{
	return off >= a->heap_off && off < a->map_len &&
	       !((off - a->heap_off) % GRAIN) && is_block_start(a, off) &&
	       hdr_trusted(a, off) && hdr_state(hdr_at(a, off)) == state;
}

/* A free block that @link may name: false if it cannot be vouched for. */
static bool
link_sound(struct ossl_proc_arena *a, uint64_t link)
{
	return block_in_state(a, link, ST_BLK_FREE);
}

/* Free block @off at the head of its list, trusting the list (the
 * rebuild's, which it makes from the chain). */
static void
list_link(struct ossl_proc_arena *a, uint64_t off)
{
	unsigned c = arena_class_of(blk_bytes(hdr_at(a, off)));
	struct arena_links *l = links_of(a, off);
	uint64_t head = a->head[c];

	l->next = head;
	l->prev = 0;
	if (head)
		links_of(a, head)->prev = off;
	a->head[c] = off;
	a->nonempty[c / 64] |= 1ull << (c % 64);
	a->listed++;
	a->listed_bytes += blk_bytes(hdr_at(a, off)) - GRAIN;
}

/* The same after checking the head it writes through; false (nothing
 * changed) when the list is corrupted. */
static bool
list_push(struct ossl_proc_arena *a, uint64_t off)
{
	uint64_t head = a->head[arena_class_of(blk_bytes(hdr_at(a, off)))];

	if (head && !link_sound(a, head))
		return false;
	list_link(a, off);
	return true;
}

/* The most blocks the heap can hold: a bound for every list walk, which
 * a corrupted link could otherwise make endless. */
static uint64_t
max_blocks(const struct ossl_proc_arena *a)
{
	return (a->map_len - a->heap_off) / (MIN_BLOCK * GRAIN) + 1;
}

/* Unlinks free block @off; false (nothing changed) when its links or its
 * neighbours' do not agree: the lists are then corrupted. */
static bool
list_unlink(struct ossl_proc_arena *a, uint64_t off)
{
	unsigned c = arena_class_of(blk_bytes(hdr_at(a, off)));
	struct arena_links *l = links_of(a, off);
	uint64_t next = l->next, prev = l->prev;

	if ((next && (!link_sound(a, next) || links_of(a, next)->prev != off)) ||
	    (prev && (!link_sound(a, prev) || links_of(a, prev)->next != off)) ||
	    (!prev && a->head[c] != off))
		return false;
	if (next)
		links_of(a, next)->prev = prev;
	if (prev)
		links_of(a, prev)->next = next;
	else
		a->head[c] = next;
	if (!a->head[c])
		a->nonempty[c / 64] &= ~(1ull << (c % 64));
	a->listed--;
	a->listed_bytes -= blk_bytes(hdr_at(a, off)) - GRAIN;
	return true;
}

/* The first non-empty class from @c on, or ARENA_CLASSES. */
static unsigned
class_from(struct ossl_proc_arena *a, unsigned c)
{
	for (unsigned w = c / 64; w < CLASS_WORDS; w++) {
		uint64_t bits = a->nonempty[w];

		if (w == c / 64)
			bits &= ~0ull << (c % 64);
		if (bits)
			return w * 64 + (unsigned)__builtin_ctzll(bits);
	}
	return ARENA_CLASSES;
}

/* A free block of at least @need bytes, or 0; *@corrupt when a list
 * failed its check on the way. */
static uint64_t
find_fit(struct ossl_proc_arena *a, uint64_t need, bool *corrupt)
{
	unsigned c = arena_class_of(need), k;
	uint64_t off = a->head[c];

	for (int i = 0; off && i < FIRST_FIT_TRIES; i++) {
		if (!link_sound(a, off)) {
			*corrupt = true;
			return 0;
		}
		if (blk_bytes(hdr_at(a, off)) >= need)
			return off;
		off = links_of(a, off)->next;
	}
	k = class_from(a, c + 1);
	if (k < ARENA_CLASSES) {
		if (!link_sound(a, a->head[k])) {
			*corrupt = true;
			return 0;
		}
		return a->head[k];
	}
	/* Nothing larger: the rest of its own class may still fit. */
	for (uint64_t i = 0; off; off = links_of(a, off)->next) {
		if (!link_sound(a, off) || ++i > max_blocks(a)) {
			*corrupt = true;
			return 0;
		}
		if (blk_bytes(hdr_at(a, off)) >= need)
			return off;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Split, merge, rebuild                                               */
/* ------------------------------------------------------------------ */

/* Sets the back size of the block after @off, if there is one. */
static void
fix_next_prev(struct ossl_proc_arena *a, uint64_t off)
{
	uint64_t n = next_of(a, off);

	if (n)
		hdr_at(a, n)->prev_g = hdr_at(a, off)->size_g;
}

/* Unlinked free block @off keeps @need bytes; the rest, if it can be a
 * block, becomes a free block of its own, on its list (false when that
 * list is corrupted: the rest is then on none). */
static bool
split(struct ossl_proc_arena *a, uint64_t off, uint64_t need)
{
	struct arena_hdr *h = hdr_at(a, off), *r;
	uint64_t rest = blk_bytes(h) - need, roff = off + need;

	if (rest < MIN_BLOCK * GRAIN)
		return true;
	r = hdr_at(a, roff);
	r->owner = 0;
	r->size_g = (uint32_t)(rest / GRAIN);
	r->prev_g = (uint32_t)(need / GRAIN);
	set_state(r, ST_BLK_FREE);
	mark_start(a, roff, true);
	STEP();
	h->size_g = (uint32_t)(need / GRAIN);   /* the commit */
	STEP();
	fix_next_prev(a, roff);
	return list_push(a, roff);
}

/* Free block @off (on no list) absorbs the free block after it, if
 * there is one and it can be unlinked; false on a corrupted list. */
static bool
merge_next(struct ossl_proc_arena *a, uint64_t off)
{
	struct arena_hdr *h = hdr_at(a, off);
	uint64_t n = next_of(a, off);

	if (!n || !block_in_state(a, n, ST_BLK_FREE) ||
	    hdr_at(a, n)->prev_g != h->size_g)
		return true;
	if (!list_unlink(a, n))
		return false;
	h->size_g += hdr_at(a, n)->size_g;      /* the commit */
	STEP();
	mark_start(a, n, false);
	fix_next_prev(a, off);
	return true;
}

/* The free block before @off, if it is one; 0 otherwise. */
static uint64_t
free_before(struct ossl_proc_arena *a, uint64_t off)
{
	uint32_t pg = hdr_at(a, off)->prev_g;
	uint64_t p;

	if (!pg || (uint64_t)pg * GRAIN > off - a->heap_off)
		return 0;
	p = off - (uint64_t)pg * GRAIN;
	if (!block_in_state(a, p, ST_BLK_FREE) || hdr_at(a, p)->size_g != pg)
		return 0;
	return p;
}

static void
clear_lists(struct ossl_proc_arena *a)
{
	memset(a->head, 0, sizeof(a->head));
	memset(a->nonempty, 0, sizeof(a->nonempty));
	memset(a->quick, 0, sizeof(a->quick));
	a->quick_bytes = 0;
	a->listed = a->listed_bytes = 0;
}

/* The next granule after @off that the bitmap marks with a sound header,
 * or the end of the heap. */
static uint64_t
resync(struct ossl_proc_arena *a, uint64_t off)
{
	for (off += GRAIN; off < a->map_len; off += GRAIN)
		if (is_block_start(a, off) && hdr_sound(a, off))
			return off;
	return a->map_len;
}

/* The block at @off of the rebuild walk, made sound: a header that cannot
 * be followed becomes a lost block up to the next sound one. */
static void
rebuild_fence(struct ossl_proc_arena *a, uint64_t off, uint32_t prev_g)
{
	uint64_t end = resync(a, off);
	struct arena_hdr *h = hdr_at(a, off);

	h->owner = 0;
	h->size_g = (uint32_t)((end - off) / GRAIN);
	h->prev_g = prev_g;
	set_state(h, ST_BLK_LOST);
	a->lost_bytes += end - off;
}

/*
 * The first start the bitmap marks inside the block at @off, up to @end,
 * whose header is sound and not free; 0 if none.  Outside a rebuild the
 * bitmap marks no start inside a block, and a death inside the lock
 * leaves marks inside one only at free headers (a split's remainder, a
 * merged neighbour): such a mark is an overflow having forged the size
 * at @off larger.
 */
static uint64_t
span_cut(struct ossl_proc_arena *a, uint64_t off, uint64_t end)
{
	uint64_t g = (off - a->heap_off) / GRAIN + 1;
	uint64_t last = (end - a->heap_off) / GRAIN;
	const uint64_t *map = (const uint64_t *)((char *)a + a->bitmap_off);

	while (g < last) {
		uint64_t bits = map[g / 64] & (~0ull << (g % 64)), cand;

		if (!bits) {
			g = (g / 64 + 1) * 64;
			continue;
		}
		g = g / 64 * 64 + (uint64_t)__builtin_ctzll(bits);
		if (g >= last)
			break;
		cand = a->heap_off + g * GRAIN;
		if (hdr_sound(a, cand) &&
		    hdr_state(hdr_at(a, cand)) != ST_BLK_FREE)
			return cand;
		g++;
	}
	return 0;
}

/* The block at @off of the rebuild walk cut back to @cut: a forged size
 * undone (too short to be a block: lost). */
static void
rebuild_cut(struct ossl_proc_arena *a, uint64_t off, uint64_t cut)
{
	struct arena_hdr *h = hdr_at(a, off);

	h->size_g = (uint32_t)((cut - off) / GRAIN);
	if (h->size_g < MIN_BLOCK) {
		set_state(h, ST_BLK_LOST);
		a->lost_bytes += cut - off;
	}
}

/*
 * Under the lock: everything derived from the chain of headers made
 * true again.  One walk: back sizes, the bitmap, adjacent free blocks
 * merged, lists and counters rebuilt.  Returns the bytes fenced off by
 * this walk (corrupted headers).
 */
static uint64_t
arena_rebuild(struct ossl_proc_arena *a)
{
	uint64_t words = (a->map_len - a->heap_off) / GRAIN / 64 + 1;
	uint64_t lost0 = a->lost_bytes, used = 0, live = 0, prev = 0;
	uint32_t prev_g = 0;

	clear_lists(a);
	for (uint64_t off = a->heap_off; off < a->map_len;) {
		struct arena_hdr *h = hdr_at(a, off);

		uint64_t cut;

		if (!hdr_sound(a, off))
			rebuild_fence(a, off, prev_g);
		cut = span_cut(a, off, off + blk_bytes(h));
		if (cut)
			rebuild_cut(a, off, cut);
		if (hdr_state(h) == ST_BLK_QUICK)
			set_state(h, ST_BLK_FREE);
		h->prev_g = prev_g;
		if (prev && hdr_state(h) == ST_BLK_FREE &&
		    hdr_state(hdr_at(a, prev)) == ST_BLK_FREE) {
			hdr_at(a, prev)->size_g += h->size_g;
			off = prev + blk_bytes(hdr_at(a, prev));
			prev_g = hdr_at(a, prev)->size_g;
			continue;
		}
		if (hdr_state(h) == ST_BLK_LIVE) {
			used += blk_bytes(h) - GRAIN;
			live++;
		}
		prev = off;
		prev_g = h->size_g;
		off += blk_bytes(h);
	}
	/* The bitmap and the lists from the merged chain. */
	memset((char *)a + a->bitmap_off, 0, words * sizeof(uint64_t));
	for (uint64_t off = a->heap_off; off < a->map_len;
	     off += blk_bytes(hdr_at(a, off))) {
		mark_start(a, off, true);
		if (hdr_state(hdr_at(a, off)) == ST_BLK_FREE)
			list_link(a, off);
	}
	a->st.used_bytes = used;
	a->live_blocks = live;
	/* allocs - frees counts the live blocks again. */
	a->st.frees = a->st.allocs >= live ? a->st.allocs - live : 0;
	return a->lost_bytes - lost0;
}

/* ------------------------------------------------------------------ */
/* Lock                                                                */
/* ------------------------------------------------------------------ */

/* 0 with the lock held, or an errno.  *@died is set when the previous
 * owner died holding it; what it left is rebuilt before this returns. */
static int
arena_lock(struct ossl_proc_arena *a, bool *died)
{
	bool waited = false;
	int rc = pthread_mutex_trylock(&a->lock);

	if (rc == EBUSY) {
		waited = true;
		rc = pthread_mutex_lock(&a->lock);
	}
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
		a->rebuilds++;
		arena_rebuild(a);
		*died = true;
	}
	if (!rc) {
		a->st.lock_ops++;
		a->st.lock_waits += waited;
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
			 "lock (%llu time(s) so far); the arena was rebuilt "
			 "and stays usable, at most the one block that "
			 "process was freeing is leaked", (void *)a,
			 (unsigned long long)deaths);
	if (rc == EDEADLK && log_once(&reentry_logged))
		log_error("shared arena %p: entered again by a thread that "
			  "holds its lock (from a signal handler?): that "
			  "allocation fails or that free is skipped; do not "
			  "call OpenSSL from signal handlers (logged once)",
			  (void *)a);
	else if (rc && rc != EDEADLK && log_once(&notrecoverable_logged))
		log_error("shared arena %p: cannot take its lock (%s): "
			  "allocations fail and frees are skipped (memory "
			  "leaks) from now on", (void *)a, strerror(rc));
}

/* Under the lock: the lists failed a check; rebuilt from the chain.
 * True when that is to be logged (once per arena). */
static bool
lists_corrupted(struct ossl_proc_arena *a)
{
	a->rebuilds++;
	arena_rebuild(a);
	return log_once(&a->corrupt_logged);
}

static void
log_corrupt(struct ossl_proc_arena *a)
{
	log_error("shared arena %p: a free list link was overwritten "
		  "(probably by a buffer overflow in a block before it); the "
		  "arena was rebuilt from its block headers, %llu bytes "
		  "fenced off so far (logged once)", (void *)a,
		  (unsigned long long)a->lost_bytes);
}

/* ------------------------------------------------------------------ */
/* Sizing                                                              */
/* ------------------------------------------------------------------ */

/* What one worker's handshake needs at its peak (measured: 349 KiB for a
 * verified TLS 1.3 handshake with a 2048-bit RSA key, plus a margin). */
#define HANDSHAKE_PEAK ((uint64_t)400 * 1024)

/* Under the lock, once per process and arena: @pid allocates here.
 * True when the arena now serves more processes than it can hold the
 * quarantines of (to be logged once). */
static bool
note_user(struct ossl_proc_arena *a, pid_t pid)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < a->nusers; i++)
		if (a->users[i] != pid &&
		    (kill(a->users[i], 0) == 0 || errno != ESRCH))
			a->users[n++] = a->users[i];
	if (n < ARENA_USERS)
		a->users[n++] = pid;
	a->nusers = n;
	return a->hold_per_user &&
	       n * a->hold_per_user + HANDSHAKE_PEAK > a->st.capacity &&
	       log_once(&a->sizing_logged);
}

static void
log_sizing(struct ossl_proc_arena *a, uint32_t users)
{
	log_warn("shared arena %p: %u processes allocate from it, and each "
		 "thread of each can hold up to %llu bytes of it in its "
		 "quarantine and cache; with a handshake's peak (about %llu "
		 "bytes) that is more than its %llu bytes, so allocations "
		 "will fail under load: create it with at least threads x "
		 "(quarantine_bytes x 9/8 + cache_bytes) + 400 KiB per "
		 "concurrent handshake, or lower quarantine_bytes and "
		 "cache_bytes (logged once)", (void *)a, users,
		 (unsigned long long)a->hold_per_user,
		 (unsigned long long)HANDSHAKE_PEAK,
		 (unsigned long long)a->st.capacity);
}

/* ------------------------------------------------------------------ */
/* Backend functions                                                   */
/* ------------------------------------------------------------------ */

/* What arena_malloc() found worth logging, logged after unlocking. */
struct malloc_event {
	bool full, too_large, corrupt, sizing;
	uint32_t users;
	uint64_t used, failed, capacity;
};

static void
log_malloc_event(struct ossl_proc_arena *a, size_t size,
		 const struct malloc_event *ev)
{
	if (ev->corrupt)
		log_corrupt(a);
	if (ev->sizing)
		log_sizing(a, ev->users);
	if (ev->too_large)
		log_error("shared arena %p: a request of %zu bytes can never "
			  "fit in its %llu bytes; such requests fail (logged "
			  "once)", (void *)a, size,
			  (unsigned long long)ev->capacity);
	if (ev->full)
		log_error("shared arena %p is full: a request of %zu bytes "
			  "failed with %llu of %llu bytes in use (%llu "
			  "failure(s) so far); create it larger with "
			  "ossl_proc_arena_new() (logged again only after a "
			  "quarter of the memory in use is freed)",
			  (void *)a, size, (unsigned long long)ev->used,
			  (unsigned long long)ev->capacity,
			  (unsigned long long)ev->failed);
}

/*
 * Quick lists: a freed block of up to 1 KiB is not merged at once but
 * kept, in its own state, on a LIFO list of its exact size, and serves
 * the next request of that size with one pop (OpenSSL frees and asks
 * for the same small sizes over and over).  They are merged back, by one
 * rebuild, when they hold an eighth of the arena, when a request finds
 * no fit, and when the stats are read: they never make the arena fail
 * what merged memory could serve.
 */
static bool
quick_sound(struct ossl_proc_arena *a, uint64_t off, uint32_t g)
{
	return block_in_state(a, off, ST_BLK_QUICK) &&
	       hdr_at(a, off)->size_g == g;
}

/* Under the lock: a block of @g grains off its quick list, or 0. */
static uint64_t
quick_pop(struct ossl_proc_arena *a, uint32_t g, bool *corrupt)
{
	uint64_t off = a->quick[g];

	if (!off)
		return 0;
	if (!quick_sound(a, off, g)) {
		*corrupt = true;
		return 0;
	}
	a->quick[g] = links_of(a, off)->next;
	STEP();
	a->quick_bytes -= (uint64_t)g * GRAIN;
	return off;
}

static void
quick_push(struct ossl_proc_arena *a, uint64_t off)
{
	uint32_t g = hdr_at(a, off)->size_g;

	links_of(a, off)->next = a->quick[g];
	a->quick[g] = off;
	a->quick_bytes += (uint64_t)g * GRAIN;
}

static bool merge_free(struct ossl_proc_arena *a, uint64_t off);

/* Under the lock: every quick block merged back as a free would, in time
 * proportional to their number; false on a corrupted list. */
static bool
consolidate(struct ossl_proc_arena *a)
{
	for (uint32_t g = 0; g <= QUICK_MAX_G; g++) {
		while (a->quick[g]) {
			bool bad = false;
			uint64_t off = quick_pop(a, g, &bad);

			if (bad || !merge_free(a, off))
				return false;
		}
	}
	return true;
}

/* Under the lock: a free block of @need bytes, unlinked, or 0. */
static uint64_t
take_fit(struct ossl_proc_arena *a, uint64_t need, bool *corrupt)
{
	uint64_t off = 0;

	if (need / GRAIN <= QUICK_MAX_G)
		off = quick_pop(a, (uint32_t)(need / GRAIN), corrupt);
	if (off || *corrupt)
		return off;
	off = find_fit(a, need, corrupt);
	if (!off && !*corrupt && a->quick_bytes) {
		if (!consolidate(a)) {
			*corrupt = true;
			return 0;
		}
		off = find_fit(a, need, corrupt);
	}
	if (!off)
		return 0;
	if (!list_unlink(a, off) || !split(a, off, need)) {
		*corrupt = true;
		return 0;
	}
	return off;
}

/* Under the lock: a block of @need bytes (header included), or 0. */
static uint64_t
take_block(struct ossl_proc_arena *a, uint64_t need, bool *corrupt)
{
	uint64_t off = take_fit(a, need, corrupt);

	if (!off && *corrupt) {
		*corrupt = lists_corrupted(a);
		off = take_fit(a, need, &(bool){ false });
	}
	if (!off)
		return 0;
	hdr_at(a, off)->owner = (uint32_t)proc_self();
	set_state(hdr_at(a, off), ST_BLK_LIVE);     /* the commit */
	STEP();
	return off;
}

/* Under the lock: the counters and logging decisions of a malloc. */
static void
count_malloc(struct ossl_proc_arena *a, uint64_t off, uint64_t need,
	     struct malloc_event *ev)
{
	if (off) {
		a->st.allocs++;
		a->live_blocks++;
		a->st.used_bytes += blk_bytes(hdr_at(a, off)) - GRAIN;
		if (a->st.used_bytes > a->st.peak_bytes)
			a->st.peak_bytes = a->st.used_bytes;
		return;
	}
	a->st.failed++;
	if (need > a->st.capacity) {
		ev->too_large = log_once(&a->too_large_logged);
	} else if (log_once(&a->full_logged)) {
		ev->full = true;
		a->full_rearm_below = a->st.used_bytes - a->st.used_bytes / 4;
	}
}

static void *
arena_malloc(size_t size, void *arg)
{
	struct ossl_proc_arena *a = arg;
	struct malloc_event ev = { 0 };
	uint64_t off = 0, deaths, need = 0;
	pid_t self = proc_self();
	bool died;
	int rc;

	rc = arena_lock(a, &died);
	if (rc) {
		log_lock_outcome(a, rc, false, 0);
		return NULL;
	}
	deaths = a->owner_deaths;
	if (user_seen[a->slot] != self) {
		user_seen[a->slot] = self;
		ev.sizing = note_user(a, self);
		ev.users = a->nusers;
	}
	if (size <= a->st.capacity) {
		need = (((uint64_t)size + GRAIN - 1) / GRAIN + 1) * GRAIN;
		if (need < MIN_BLOCK * GRAIN)
			need = MIN_BLOCK * GRAIN;
		off = take_block(a, need, &ev.corrupt);
	} else {
		need = (uint64_t)size;
	}
	count_malloc(a, off, need, &ev);
	ev.used = a->st.used_bytes;
	ev.capacity = a->st.capacity;
	ev.failed = a->st.failed;
	pthread_mutex_unlock(&a->lock);
	log_lock_outcome(a, 0, died, deaths);
	log_malloc_event(a, size, &ev);
	return off ? (char *)a + off + GRAIN : NULL;
}

/* Under the lock: live block @off is free again, merged with its free
 * neighbours and on its list.  False on a corrupted list (then rebuilt:
 * the block is free all the same). */
static bool
release_block(struct ossl_proc_arena *a, uint64_t off)
{
	struct arena_hdr *h = hdr_at(a, off);

	a->st.frees++;
	a->live_blocks--;
	a->st.used_bytes -= blk_bytes(h) - GRAIN;
	if (a->st.used_bytes < a->full_rearm_below)
		atomic_store(&a->full_logged, false);
	/* The owner stays: a death before the commit leaves the block live
	 * and still its allocator's, for ossl_proc_arena_reclaim(). */
	if (h->size_g <= QUICK_MAX_G) {
		set_state(h, ST_BLK_QUICK);         /* the commit */
		STEP();
		quick_push(a, off);
		return a->quick_bytes <= a->st.capacity / 8 || consolidate(a);
	}
	return merge_free(a, off);
}

/* Under the lock: block @off, on no list, free, merged with its free
 * neighbours and on its list; false on a corrupted list. */
static bool
merge_free(struct ossl_proc_arena *a, uint64_t off)
{
	struct arena_hdr *h = hdr_at(a, off);
	uint64_t p;

	set_state(h, ST_BLK_FREE);                  /* the commit */
	STEP();
	if (!merge_next(a, off))
		return false;
	p = free_before(a, off);
	if (p) {
		if (!list_unlink(a, p))
			return false;
		hdr_at(a, p)->size_g += h->size_g;  /* the commit */
		STEP();
		mark_start(a, off, false);
		fix_next_prev(a, p);
		off = p;
	}
	return list_push(a, off);
}

/* Under the lock: the live block @ptr points to, or NULL and why. */
static struct arena_hdr *
live_block(struct ossl_proc_arena *a, uintptr_t p, enum bad_reason *why)
{
	uintptr_t base = (uintptr_t)a;
	struct arena_hdr *h;

	*why = ARENA_BAD_OUTSIDE;
	if (p - base < a->heap_off + GRAIN || p - base >= a->map_len)
		return NULL;
	h = block_at(a, p - base - GRAIN, why);
	if (h && hdr_state(h) != ST_BLK_LIVE) {
		*why = hdr_state(h) == ST_BLK_FREE ||
		       hdr_state(h) == ST_BLK_QUICK ? ARENA_BAD_ALREADY_FREE :
						       ARENA_BAD_CORRUPT;
		return NULL;
	}
	return h;
}

static void
arena_free(void *ptr, void *arg)
{
	struct ossl_proc_arena *a = arg;
	enum bad_reason why;
	uintptr_t p = (uintptr_t)ptr;
	bool died, log_bad = false, corrupt = false;
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
	if (live_block(a, p, &why)) {
		if (!release_block(a, p - (uintptr_t)a - GRAIN))
			corrupt = lists_corrupted(a);
	} else {
		a->st.bad_frees++;
		log_bad = log_once(&a->bad_logged);
	}
	pthread_mutex_unlock(&a->lock);
	log_lock_outcome(a, 0, died, deaths);
	if (corrupt)
		log_corrupt(a);
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

static int
registry_add(struct ossl_proc_arena *a)
{
	for (int i = 0; i < MAX_ARENAS; i++) {
		uintptr_t empty = 0;

		if (atomic_compare_exchange_strong(&registry[i], &empty,
						   (uintptr_t)a))
			return i;
	}
	return -1;
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
arena_set_in_use(const struct ossl_proc_allocator *al, bool in_use,
		 uint64_t hold_per_user)
{
	int i = registry_find_allocator(al);
	struct ossl_proc_arena *a;
	uintptr_t cur;

	if (i < 0)
		return;
	a = al->arg;
	cur = atomic_load(&registry[i]);
	while ((cur & ~(uintptr_t)1) == (uintptr_t)a &&
	       !atomic_compare_exchange_weak(&registry[i], &cur,
					     (uintptr_t)a |
					     (uintptr_t)in_use))
		;
	if (in_use && al->shared)
		__atomic_store_n(&a->hold_per_user, hold_per_user,
				 __ATOMIC_RELAXED);
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

	if (capacity < MIN_CAPACITY || capacity > MAX_CAPACITY)
		return false;
	heap = round_up(capacity, page);
	words = heap / GRAIN / 64 + 1;
	*bitmap_off = round_up(sizeof(struct ossl_proc_arena), 64);
	head = round_up(*bitmap_off + words * sizeof(uint64_t), page);
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
	/* A thread locking twice gets EDEADLK, not a hang. */
	if (!rc)
		rc = pthread_mutexattr_settype(&at, PTHREAD_MUTEX_ERRORCHECK);
	if (!rc)
		rc = pthread_mutex_init(&a->lock, &at);
	pthread_mutexattr_destroy(&at);
	return rc;
}

/* A new child forgets the pid it inherited even where osslproc's own fork
 * handlers are not registered (an arena used before ossl_proc_init()):
 * blocks record the pid of the process that allocated them. */
static void
arena_child(void)
{
	proc_pid_forget();
}

static void
arena_atfork_once(void)
{
	if (pthread_atfork(NULL, NULL, arena_child))
		log_warn("shared arena: pthread_atfork failed; call "
			 "ossl_proc_init() before forking, or blocks may "
			 "record their parent's pid");
}

/* The fresh mapping @a of @map_len bytes made an arena: one free block. */
static void
arena_format(struct ossl_proc_arena *a, uint64_t bitmap_off,
	     uint64_t heap_off, uint64_t map_len)
{
	struct arena_hdr *h = hdr_at(a, heap_off);

	/* The mapping is zero-filled: lists empty, counters 0, bitmap
	 * clear. */
	a->map_len = map_len;
	a->bitmap_off = bitmap_off;
	a->heap_off = heap_off;
	a->st.size = sizeof(a->st);
	a->st.capacity = map_len - heap_off - GRAIN;
	h->size_g = (uint32_t)((map_len - heap_off) / GRAIN);
	set_state(h, ST_BLK_FREE);
	mark_start(a, heap_off, true);
	list_link(a, heap_off);
	a->allocator = (struct ossl_proc_allocator){
		.malloc = arena_malloc,
		.realloc = NULL,
		.free = arena_free,
		.arg = a,
		.shared = 1,
	};
}

OSSL_PROC_EXPORT struct ossl_proc_arena *
ossl_proc_arena_new(size_t capacity)
{
	static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
	long page = sysconf(_SC_PAGESIZE);
	uint64_t bitmap_off, heap_off, map_len;
	struct ossl_proc_arena *a;
	int rc, slot;

	if (page <= 0)
		page = 4096;
	if (!arena_layout(capacity, (size_t)page, &bitmap_off, &heap_off,
			  &map_len)) {
		log_bug_client("ossl_proc_arena_new: capacity %zu is not between "
			       "64 KiB and %zu bytes", capacity, MAX_CAPACITY);
		errno = EINVAL;
		return NULL;
	}
	pthread_once(&atfork_once, arena_atfork_once);
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
	rc = arena_init_lock(a);
	if (rc) {
		log_error("ossl_proc_arena_new: cannot create a process-shared "
			  "robust mutex (%s)", strerror(rc));
		munmap(a, (size_t)map_len);
		errno = rc == ENOMEM ? ENOMEM : EINVAL;
		return NULL;
	}
	arena_format(a, bitmap_off, heap_off, map_len);
	a->magic = ARENA_MAGIC;
	slot = registry_add(a);
	if (slot < 0) {
		log_error("ossl_proc_arena_new: %d arenas already exist in this "
			  "process; free one with ossl_proc_arena_free() first",
			  MAX_ARENAS);
		pthread_mutex_destroy(&a->lock);
		munmap(a, (size_t)map_len);
		errno = ENOMEM;
		return NULL;
	}
	a->slot = (uint32_t)slot;
	user_seen[slot] = 0;
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

/* Under the lock, the quick lists merged: free blocks, their bytes and
 * the largest request that can succeed now, from the counters and the
 * first blocks of the highest non-empty class (its blocks differ by less
 * than a quarter, so a bounded look is close and keeps the lock short). */
#define CENSUS_LOOK 256
static void
free_census(struct ossl_proc_arena *a, struct ossl_proc_arena_stats *st)
{
	uint64_t largest = 0, n = 0;
	unsigned top = ARENA_CLASSES;

	st->free_blocks = a->listed;
	st->free_bytes = a->listed_bytes;
	for (unsigned w = CLASS_WORDS; w-- > 0 && top == ARENA_CLASSES;)
		if (a->nonempty[w])
			top = w * 64 + 63 -
			      (unsigned)__builtin_clzll(a->nonempty[w]);
	if (top == ARENA_CLASSES)
		return;
	for (uint64_t off = a->head[top]; off; off = links_of(a, off)->next) {
		if (!link_sound(a, off) || ++n > CENSUS_LOOK)
			break;
		if (blk_bytes(hdr_at(a, off)) - GRAIN > largest)
			largest = blk_bytes(hdr_at(a, off)) - GRAIN;
	}
	st->largest_free = largest;
}

/* The size of the first version of struct ossl_proc_arena_stats. */
#define ARENA_STATS_V1 (offsetof(struct ossl_proc_arena_stats, bad_frees) + \
			sizeof(uint64_t))

OSSL_PROC_EXPORT int
ossl_proc_arena_get_stats(struct ossl_proc_arena *a,
			  struct ossl_proc_arena_stats *out)
{
	struct ossl_proc_arena_stats st;
	uint64_t deaths;
	bool died, corrupt = false;
	int rc;

	if (!out) {
		log_bug_client("ossl_proc_arena_get_stats: NULL out");
		return -EINVAL;
	}
	if (out->size < ARENA_STATS_V1) {
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
	if (!rc && !consolidate(a))
		corrupt = lists_corrupted(a);
	st = a->st;
	if (!rc) {
		free_census(a, &st);
		pthread_mutex_unlock(&a->lock);
	}
	log_lock_outcome(a, rc, died, deaths);
	if (corrupt)
		log_corrupt(a);
	/* An older caller gets its prefix, a newer caller's tail is left
	 * alone. */
	memcpy((char *)out + sizeof(size_t), (char *)&st + sizeof(size_t),
	       (out->size < sizeof(st) ? out->size : sizeof(st)) -
	       sizeof(size_t));
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

/* Under the lock: every live block allocated by @pid marked free, then
 * one rebuild merges and lists them (and recounts: frees = allocs minus
 * what is live).  *@corrupt when a header had to be fenced off. */
static uint64_t
reclaim_locked(struct ossl_proc_arena *a, pid_t pid, uint64_t *bytes,
	       bool *corrupt)
{
	uint64_t n = 0;

	for (uint64_t off = a->heap_off; off < a->map_len;) {
		struct arena_hdr *h = hdr_at(a, off);

		if (!hdr_sound(a, off)) {
			/* Fenced off by a rebuild, the walk goes on. */
			*corrupt |= lists_corrupted(a);
			continue;
		}
		if (hdr_state(h) == ST_BLK_LIVE && h->owner == (uint32_t)pid) {
			*bytes += blk_bytes(h) - GRAIN;
			set_state(h, ST_BLK_FREE);
			n++;
		}
		off += blk_bytes(h);
	}
	if (n)
		arena_rebuild(a);
	return n;
}

OSSL_PROC_EXPORT int
ossl_proc_arena_reclaim(struct ossl_proc_arena *a, pid_t pid)
{
	uint64_t n, bytes = 0, deaths;
	bool died, corrupt = false;
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
	deaths = a->owner_deaths;
	/* Again under the lock: a new process with that pid could have
	 * started allocating since the check above. */
	if (kill(pid, 0) == 0 || errno != ESRCH) {
		pthread_mutex_unlock(&a->lock);
		log_lock_outcome(a, 0, died, deaths);
		log_bug_client("ossl_proc_arena_reclaim: process %ld exists "
			       "again (its pid was reused)", (long)pid);
		return -EBUSY;
	}
	n = reclaim_locked(a, pid, &bytes, &corrupt);
	pthread_mutex_unlock(&a->lock);
	log_lock_outcome(a, 0, died, deaths);
	handoff_reclaim(pid);
	if (corrupt)
		log_corrupt(a);
	if (n)
		log_info("shared arena: reclaimed %llu blocks (%llu bytes) "
			 "left by process %ld", (unsigned long long)n,
			 (unsigned long long)bytes, (long)pid);
	return n > INT32_MAX ? INT32_MAX : (int)n;
}
