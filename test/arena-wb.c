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

size_t
wb_class_size(unsigned c)
{
	return arena_class_size(c);
}

unsigned
wb_class_of(size_t n)
{
	size_t rounded;

	return arena_size_class(n, &rounded);
}

/* Marks of the census, one byte per heap grain. */
enum { M_NONE, M_BLOCK, M_LISTED };

/* The block walk: headers, bitmap, what is live.  Returns the error. */
static const char *
census_walk(struct ossl_proc_arena *a, unsigned char *mark,
	    struct wb_census *out)
{
	uint64_t off = a->heap_off;

	while (off < a->bump_off) {
		struct arena_hdr *h = hdr_at(a, off);
		uint64_t end;

		if (h->klass >= ARENA_CLASSES || h->magic != (HDR_MAGIC ^ h->klass))
			return "a header below the bump pointer is not one";
		if (h->state != ST_BLK_LIVE && h->state != ST_BLK_FREE)
			return "a block is neither live nor free";
		if (!is_block_start(a, off))
			return "the bitmap does not mark a block start";
		end = off + GRAIN + arena_class_size(h->klass);
		if (end > a->bump_off)
			return "a block runs past the bump pointer";
		for (uint64_t g = off + GRAIN; g < end; g += GRAIN)
			if (is_block_start(a, g))
				return "the bitmap marks the inside of a block";
		mark[(off - a->heap_off) / GRAIN] = M_BLOCK;
		out->blocks++;
		if (h->state == ST_BLK_LIVE) {
			out->live++;
			out->live_bytes += arena_class_size(h->klass);
		}
		off = end;
	}
	/* A header cut but not committed (a death before the bump moved)
	 * may mark the bump pointer itself, nothing beyond it. */
	for (off = a->bump_off + GRAIN; off < a->map_len; off += GRAIN)
		if (is_block_start(a, off))
			return "the bitmap marks a block past the bump pointer";
	return NULL;
}

/* The free lists: every link a free block of its class, each once. */
static const char *
census_lists(struct ossl_proc_arena *a, unsigned char *mark,
	     struct wb_census *out)
{
	for (unsigned c = 0; c < ARENA_CLASSES; c++) {
		for (uint64_t off = a->free_head[c]; off;) {
			struct arena_hdr *h = hdr_at(a, off);
			uint64_t g = (off - a->heap_off) / GRAIN;

			if (off < a->heap_off || off >= a->bump_off ||
			    (off - a->heap_off) % GRAIN || mark[g] == M_NONE)
				return "a free list links something that is "
				       "not a block";
			if (mark[g] == M_LISTED)
				return "a block is on the free lists twice";
			if (h->state != ST_BLK_FREE)
				return "a free list links a live block";
			if (h->klass != c)
				return "a free list links a block of another "
				       "class";
			mark[g] = M_LISTED;
			out->listed++;
			out->listed_in[c]++;
			off = h->next;
		}
	}
	return NULL;
}

void
wb_census(struct ossl_proc_arena *a, struct wb_census *out)
{
	uint64_t grains = (a->map_len - a->heap_off) / GRAIN;
	unsigned char *mark = calloc(grains, 1);

	*out = (struct wb_census){
		.heap_bytes = a->st.capacity,
		.bump_left = a->bump_off <= a->map_len ?
			     a->map_len - a->bump_off : 0,
		.live_counter = a->live_blocks,
		.carved_counter = a->carved_blocks,
		.owner_deaths = a->owner_deaths,
		.list_drops = a->list_drops,
	};
	if (!mark) {
		out->error = "out of memory for the census";
		return;
	}
	out->error = census_walk(a, mark, out);
	if (!out->error)
		out->error = census_lists(a, mark, out);
	for (uint64_t off = a->heap_off; !out->error && off < a->bump_off;) {
		struct arena_hdr *h = hdr_at(a, off);

		if (h->state == ST_BLK_FREE &&
		    mark[(off - a->heap_off) / GRAIN] != M_LISTED) {
			out->unlisted++;
			out->unlisted_bytes += arena_class_size(h->klass);
		}
		off += GRAIN + arena_class_size(h->klass);
	}
	free(mark);
}

uint64_t
wb_owned_by(struct ossl_proc_arena *a, pid_t pid)
{
	uint64_t n = 0;

	for (uint64_t off = a->heap_off; off < a->bump_off;) {
		struct arena_hdr *h = hdr_at(a, off);

		if (h->klass >= ARENA_CLASSES)
			break;
		n += h->state == ST_BLK_LIVE && h->next == (uint64_t)pid;
		off += GRAIN + arena_class_size(h->klass);
	}
	return n;
}

pid_t
wb_owner(struct ossl_proc_arena *a, const void *p)
{
	uint64_t off = (uint64_t)((const char *)p - (const char *)a) - GRAIN;
	enum bad_reason why;
	struct arena_hdr *h = block_at(a, off, &why);

	return h && h->state == ST_BLK_LIVE ? (pid_t)h->next : 0;
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
