/*
 * Large blocks: those of no size class (over 32 KiB with their header)
 * that the libc backend would serve.  glibc serves such sizes with mmap,
 * or from the top of its heap, and either can be unmapped once freed, so
 * a stale free's header read could fault.  osslproc maps these blocks
 * itself instead, each user pointer at page offset LARGE_OFF (which no
 * other block's has, block.c), and keeps a side table of them: a pointer
 * at that offset is looked up before its header is ever read, so a double
 * free of a large block never faults, however long after its first free.
 *
 * Freed large blocks have a window of their own: the last LARGE_WINDOW
 * stay mapped (above LARGE_KEEP, only their header page resident, the
 * rest given back with MADV_DONTNEED), so a double free within it is
 * caught as one.  After that a block leaves the table (its mapping kept
 * for reuse, or unmapped); the addresses of the last LARGE_RECENT are
 * remembered, so that a free of one is still called a double free.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "alloc-int.h"

#define LARGE_WINDOW 16
#define LARGE_RECENT 64

struct large_ent {
	void *user;          /* NULL: a free slot */
	size_t len;          /* of the mapping, which starts at user - 16 */
	const char *file;    /* where it was allocated (TRACK_SITES) */
	int line;
};

/* Under proc_mut.large_lock: an open-addressing table of the mapped
 * blocks (live and in the window), the window's FIFO, and the ring of
 * recently unmapped addresses. */
static struct large_ent *table;
static size_t table_cap, table_used;
static void *window[LARGE_WINDOW];
static unsigned window_head, window_n;
static void *recent[LARGE_RECENT];
static unsigned recent_next;

static size_t
slot_of(const void *user, size_t cap)
{
	return ((uintptr_t)user >> 12) * 0x9e3779b97f4a7c15ull >> 20 &
	       (cap - 1);
}

static struct large_ent *
find(const void *user)
{
	if (!table_cap || !user)
		return NULL;
	for (size_t i = slot_of(user, table_cap);; i = (i + 1) & (table_cap - 1)) {
		if (table[i].user == user)
			return &table[i];
		if (!table[i].user)
			return NULL;
	}
}

static void
put(struct large_ent *tab, size_t cap, struct large_ent e)
{
	size_t i = slot_of(e.user, cap);

	while (tab[i].user)
		i = (i + 1) & (cap - 1);
	tab[i] = e;
}

/* Room for one more entry, the table at most half full; false when out
 * of memory. */
static bool
reserve(void)
{
	size_t cap = table_cap ? table_cap * 2 : 64;
	struct large_ent *tab;

	if (2 * (table_used + 1) <= table_cap)
		return true;
	tab = calloc(cap, sizeof(*tab));
	if (!tab)
		return false;
	for (size_t i = 0; i < table_cap; i++)
		if (table[i].user)
			put(tab, cap, table[i]);
	free(table);
	table = tab;
	table_cap = cap;
	return true;
}

/* Remove @e, moving later entries of its probe run back (no
 * tombstones). */
static void
erase(struct large_ent *e)
{
	size_t i = (size_t)(e - table), j = i;

	table[i].user = NULL;
	for (;;) {
		size_t home;

		j = (j + 1) & (table_cap - 1);
		if (!table[j].user)
			break;
		home = slot_of(table[j].user, table_cap);
		/* Entry j may move to i if its home is not in (i, j]. */
		if ((j > i && (home <= i || home > j)) ||
		    (j < i && home <= i && home > j)) {
			table[i] = table[j];
			table[j].user = NULL;
			i = j;
		}
	}
	table_used--;
}

static size_t
page_size(void)
{
	long p = sysconf(_SC_PAGESIZE);

	return p > 0 ? (size_t)p : 4096;
}

/*
 * Mappings of at most LARGE_KEEP bytes that left the window are kept, up
 * to LARGE_SPARE of them, for the next large block of their length: such
 * blocks come and go often (a 64 KiB buffer per TLS connection in some
 * programs), and a mapping, its page faults and its unmapping cost about
 * 100 us a block on a virtual machine.  Their memory stays resident, as
 * it does in the window: LARGE_WINDOW + LARGE_SPARE such mappings, 4 MiB
 * at most.  Larger ones keep one page resident in the window and are
 * unmapped after it.
 */
#define LARGE_KEEP ((size_t)128 * 1024)
#define LARGE_SPARE 16

static struct {
	char *map;
	size_t len;
} spare[LARGE_SPARE];
static unsigned nspare;

/* Under the lock: a kept mapping of @len bytes, or NULL. */
static char *
spare_take(size_t len)
{
	for (unsigned i = 0; i < nspare; i++) {
		if (spare[i].len == len) {
			char *map = spare[i].map;

			spare[i] = spare[--nspare];
			return map;
		}
	}
	return NULL;
}

/* Under the lock: keep @map, or unmap it. */
static void
spare_put(char *map, size_t len)
{
	if (len <= LARGE_KEEP && nspare < LARGE_SPARE) {
		spare[nspare].map = map;
		spare[nspare++].len = len;
		return;
	}
	munmap(map, len);
}

void *
large_new(size_t total, const char *file, int line)
{
	size_t page = page_size(), len;
	char *map;

	if (total > SIZE_MAX - page)
		return NULL;
	len = (total + page - 1) & ~(page - 1);
	proc_lock(&proc_mut.large_lock);
	map = spare_take(len);
	proc_unlock(&proc_mut.large_lock);
	if (!map)
		map = mmap(NULL, len, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (map == MAP_FAILED)
		return NULL;
	proc_lock(&proc_mut.large_lock);
	if (!reserve()) {
		proc_unlock(&proc_mut.large_lock);
		munmap(map, len);
		return NULL;
	}
	put(table, table_cap, (struct large_ent){ map + LARGE_OFF, len, file,
						   line });
	table_used++;
	proc_unlock(&proc_mut.large_lock);
	return map + LARGE_OFF;
}

/* Under the lock: the oldest block of the window leaves it. */
static void
window_evict(void)
{
	void *user = window[window_head];
	struct large_ent *e = find(user);

	window_head = (window_head + 1) % LARGE_WINDOW;
	window_n--;
	if (!e)
		return;
	spare_put((char *)user - LARGE_OFF, e->len);
	erase(e);
	recent[recent_next] = user;
	recent_next = (recent_next + 1) % LARGE_RECENT;
}

static bool
recently_unmapped(const void *user)
{
	for (unsigned i = 0; i < LARGE_RECENT; i++)
		if (recent[i] == user)
			return true;
	return false;
}

/* Under the lock: @e's block, just freed, joins the window.  (An
 * eviction moves table entries: @e is not used after it.) */
static void
window_add(struct large_ent *e, size_t n)
{
	size_t page = page_size();
	void *user = e->user;
	char *map = (char *)user - LARGE_OFF;

	if (aconf.flags & OSSL_PROC_F_SCRUB)
		OPENSSL_cleanse(user, n < page - LARGE_OFF ? n
							 : page - LARGE_OFF);
	if (e->len > LARGE_KEEP)
		madvise(map + page, e->len - page, MADV_DONTNEED);
	if (window_n == LARGE_WINDOW)
		window_evict();
	window[(window_head + window_n) % LARGE_WINDOW] = user;
	window_n++;
}

void
large_free(void *p, const char *file, int line)
{
	struct large_ent *e;
	struct blk *h = hdr_of(p);
	uint32_t live;
	size_t n;

	proc_lock(&proc_mut.large_lock);
	e = find(p);
	if (!e) {
		bool again = recently_unmapped(p);

		proc_unlock(&proc_mut.large_lock);
		if (again)
			bad_free(BAD_DOUBLE, p, NULL, 0, file, line);
		else
			not_ours(BAD_INVALID, p, file, line);
		return;
	}
	live = (atomic_load_explicit(&h->word, memory_order_relaxed) &
		~ST_MASK) | ST_LIVE;
	if (!atomic_compare_exchange_strong(&h->word, &live,
					    (live & ~ST_MASK) | ST_QUAR)) {
		proc_unlock(&proc_mut.large_lock);
		bad_free(BAD_DOUBLE, p, h, live, file, line);
		return;
	}
	n = blk_size(h);
	window_add(e, n);
	proc_unlock(&proc_mut.large_lock);
	tstate_count_free(tstate_get(), n);
}

int
large_size(void *p, size_t *n)
{
	int rc = -1;

	proc_lock(&proc_mut.large_lock);
	if (find(p)) {
		rc = (atomic_load_explicit(&hdr_of(p)->word,
					   memory_order_acquire) & ST_MASK) ==
		     ST_LIVE;
		*n = blk_size(hdr_of(p));
	}
	proc_unlock(&proc_mut.large_lock);
	return rc;
}

void
large_report(FILE *out, const char *label, size_t *shown, size_t *total)
{
	proc_lock(&proc_mut.large_lock);
	for (size_t i = 0; i < table_cap; i++) {
		struct blk *h;

		if (!table[i].user)
			continue;
		h = hdr_of(table[i].user);
		if ((atomic_load_explicit(&h->word, memory_order_relaxed) &
		     ST_MASK) != ST_LIVE)
			continue;
		(*total)++;
		if ((*shown)++ < 50)
			fprintf(out, "  %s: %zu bytes at %p, allocated at "
				"%s:%d\n", label, blk_size(h), table[i].user,
				table[i].file ? table[i].file : "?",
				table[i].line);
	}
	proc_unlock(&proc_mut.large_lock);
}
