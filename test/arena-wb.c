/*
 * The arena's own source, compiled into test-arena a second time: meson
 * passes its path as ARENA_SRC and defines STEP(), the compiler barrier
 * between its commit steps, as a call of wb_step(), so that a test can
 * make a process die or stop at any one of them.  The copy's public
 * functions are renamed wb_arena_* (test-arena also links the shared
 * library, whose arenas it tests as they ship); the two internals it
 * needs from the rest of osslproc are stubbed below.
 */
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "arena-wb.h"
#include "common/testlog.h"

#ifndef ARENA_SRC
#error "ARENA_SRC: the path of lib/arena.c, set by test/meson.build"
#endif
#ifndef STEP
#error "STEP(): the commit-step hook, set by test/meson.build"
#endif

#define ossl_proc_arena_new wb_arena_new
#define ossl_proc_arena_allocator wb_arena_allocator
#define ossl_proc_arena_get_stats wb_arena_get_stats
#define ossl_proc_arena_reclaim wb_arena_reclaim
#define ossl_proc_arena_free wb_arena_free
#define arena_set_in_use wb_arena_set_in_use

#include ARENA_SRC

_Static_assert(WB_NCLASSES == ARENA_CLASSES, "arena-wb.h's class count");
_Static_assert(WB_GRAIN == GRAIN, "arena-wb.h's grain");

/* ---- the rest of osslproc, as far as arena.c uses it ---- */

/* Every message goes to the test's capture handler, which fails the
 * test on an ERROR or WARNING it did not announce. */
void
log_msg(enum ossl_proc_log_level level, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;

	if (level > OSSL_PROC_LOG_INFO)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	tl_log(level, buf, NULL);
}

pid_t
proc_self(void)
{
	return getpid();
}

void
proc_pid_forget(void)
{
}

/* The white-box copy's arenas hold no object queues. */
uint64_t
handoff_reclaim(pid_t pid)
{
	(void)pid;
	return 0;
}

/* ---- the hook ---- */

struct wb_hook wb_hook;

void
wb_arm(enum wb_action action, unsigned at, struct wb_seen *seen)
{
	wb_hook = (struct wb_hook){ .action = action, .at = at,
				    .seen = seen };
	if (seen)
		*seen = (struct wb_seen){ 0 };
}

/* Not inlined: to the compiler, every store before a step may be read
 * here, so none moves across it (what the barrier it replaces is for). */
__attribute__((noinline)) void
wb_step(int line)
{
	atomic_signal_fence(memory_order_seq_cst);
	wb_hook.steps++;
	if (wb_hook.seen)
		wb_hook.seen->passed = wb_hook.steps;
	if (wb_hook.action != WB_NOTHING && wb_hook.steps == wb_hook.at) {
		if (wb_hook.seen) {
			wb_hook.seen->step = wb_hook.steps;
			wb_hook.seen->line = line;
		}
		if (wb_hook.action == WB_KILL)
			kill(getpid(), SIGKILL);
		else
			raise(SIGSTOP);
	}
	atomic_signal_fence(memory_order_seq_cst);
}

/* ---- looking inside ---- */

/* The chain of headers, the arena's truth: sound headers covering the
 * heap exactly.  The error, or NULL. */
static const char *
census_chain(struct ossl_proc_arena *a, struct wb_census *out)
{
	uint64_t off = a->heap_off;

	while (off < a->map_len) {
		struct arena_hdr *h = hdr_at(a, off);

		if (!hdr_sound(a, off))
			return "a header in the chain is not one";
		out->blocks++;
		if (hdr_state(h) == ST_BLK_LIVE) {
			out->live++;
			out->live_bytes += blk_bytes(h) - GRAIN;
		} else if (hdr_state(h) == ST_BLK_QUICK) {
			out->quick++;
		} else if (hdr_state(h) == ST_BLK_FREE) {
			out->free++;
			out->free_bytes += blk_bytes(h) - GRAIN;
			if (blk_bytes(h) - GRAIN > out->largest_free)
				out->largest_free = blk_bytes(h) - GRAIN;
		}
		off += blk_bytes(h);
	}
	return off == a->map_len ? NULL : "the chain runs past the heap";
}

/* What the chain implies: back sizes, the bitmap, no two free blocks
 * side by side. */
static const char *
census_derived(struct ossl_proc_arena *a)
{
	uint32_t prev_g = 0;
	bool prev_free = false;

	for (uint64_t off = a->heap_off; off < a->map_len;) {
		struct arena_hdr *h = hdr_at(a, off);
		bool is_free = hdr_state(h) == ST_BLK_FREE;

		if (h->prev_g != prev_g)
			return "a block's back size is not its neighbour's";
		if (!is_block_start(a, off))
			return "the bitmap does not mark a block start";
		for (uint64_t g = off + GRAIN; g < off + blk_bytes(h); g += GRAIN)
			if (is_block_start(a, g))
				return "the bitmap marks the inside of a block";
		if (is_free && prev_free)
			return "two free blocks side by side";
		prev_free = is_free;
		prev_g = h->size_g;
		off += blk_bytes(h);
	}
	return NULL;
}

/* The free lists: every free block once, on its class's list, with
 * links that agree both ways. */
static const char *
census_lists(struct ossl_proc_arena *a, struct wb_census *out)
{
	uint64_t listed = 0;

	for (unsigned c = 0; c < ARENA_CLASSES; c++) {
		uint64_t prev = 0, n = 0;

		if (!!a->head[c] != !!(a->nonempty[c / 64] & 1ull << (c % 64)))
			return "the non-empty bitmap disagrees with a list";
		for (uint64_t off = a->head[c]; off;
		     off = links_of(a, off)->next) {
			if (!link_sound(a, off))
				return "a free list links something that is "
				       "not a free block";
			if (arena_class_of(blk_bytes(hdr_at(a, off))) != c)
				return "a free list links a block of another "
				       "class";
			if (links_of(a, off)->prev != prev)
				return "a free list's back link is wrong";
			if (++n > out->free)
				return "a free list loops";
			prev = off;
		}
		out->listed_in[c] = n;
		listed += n;
	}
	out->listed = listed;
	if (listed != out->free)
		return "a free block is on no list";
	listed = 0;
	for (uint32_t g = 0; g <= QUICK_MAX_G; g++) {
		for (uint64_t off = a->quick[g]; off;
		     off = links_of(a, off)->next) {
			if (!quick_sound(a, off, g))
				return "a quick list links something that is "
				       "not a quick block of its size";
			if (++listed > out->quick)
				return "a quick list loops";
		}
	}
	return listed == out->quick ? NULL : "a quick block is on no list";
}

static void
census_counters(struct ossl_proc_arena *a, struct wb_census *out)
{
	out->heap_bytes = a->st.capacity;
	out->live_counter = a->live_blocks;
	out->owner_deaths = a->owner_deaths;
	out->rebuilds = a->rebuilds;
	out->lost_bytes = a->lost_bytes;
}

void
wb_chain(struct ossl_proc_arena *a, struct wb_census *out)
{
	*out = (struct wb_census){ 0 };
	census_counters(a, out);
	out->error = census_chain(a, out);
}

void
wb_census(struct ossl_proc_arena *a, struct wb_census *out)
{
	wb_chain(a, out);
	if (!out->error)
		out->error = census_derived(a);
	if (!out->error)
		out->error = census_lists(a, out);
}

uint64_t
wb_owned_by(struct ossl_proc_arena *a, pid_t pid)
{
	uint64_t n = 0;

	for (uint64_t off = a->heap_off; off < a->map_len;) {
		struct arena_hdr *h = hdr_at(a, off);

		if (!hdr_sound(a, off))
			break;
		n += hdr_state(h) == ST_BLK_LIVE && h->owner == (uint32_t)pid;
		off += blk_bytes(h);
	}
	return n;
}

pid_t
wb_owner(struct ossl_proc_arena *a, const void *p)
{
	uint64_t off = (uint64_t)((const char *)p - (const char *)a) - GRAIN;
	enum bad_reason why;
	struct arena_hdr *h = block_at(a, off, &why);

	return h && hdr_state(h) == ST_BLK_LIVE ? (pid_t)h->owner : 0;
}

void
wb_smash_header(void *p)
{
	memset((char *)p - GRAIN, 0xa5, GRAIN);
}

void
wb_forge_size(void *p, int32_t grains)
{
	struct arena_hdr *h = (struct arena_hdr *)((char *)p - GRAIN);

	h->size_g = (uint32_t)((int64_t)h->size_g + grains);
}

void
wb_forge_next(struct ossl_proc_arena *a, void *p, void *to)
{
	uint64_t off = (uint64_t)((char *)p - (char *)a) - GRAIN;

	links_of(a, off)->next = (uint64_t)((char *)to - (char *)a) - GRAIN;
}

int
wb_lock_busy(struct ossl_proc_arena *a)
{
	int rc = pthread_mutex_trylock(&a->lock);

	if (rc == 0)
		pthread_mutex_unlock(&a->lock);
	return rc;
}

int
wb_step_lines(int *lines, int max)
{
	FILE *f = fopen(ARENA_SRC, "r");
	char buf[1024];
	int n = 0, line = 1;

	if (!f)
		return -1;
	while (fgets(buf, sizeof(buf), f)) {
		const char *p = buf + strspn(buf, " \t");

		if (!strncmp(p, "STEP();", 7) && n < max)
			lines[n++] = line;
		line += strchr(buf, '\n') != NULL;
	}
	fclose(f);
	return n;
}
