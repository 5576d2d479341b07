/*
 * The built-in process-shared arena: one anonymous MAP_SHARED mapping made
 * before the host forks, so every worker sees the same memory at the same
 * address.  The control block sits at the start of the mapping; the rest
 * is handed out in size classes (four per power of two, so at most a
 * quarter of a block is wasted) from per-class free lists and a bump
 * pointer.  One robust, process-shared mutex serialises allocation.
 *
 * Every mutation is ordered so that a process dying mid-update (the robust
 * mutex lets the others go on) can at worst leak the block it was
 * handling, never link a block twice.
 */
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "osslproc-int.h"

#define ARENA_MAGIC 0x6f70617265e4a001ull
#define BLOCK_MAGIC 0x6f70626bu
#define MIN_CAPACITY ((size_t)64 * 1024)
#define NCLASSES 176
#define MAX_ARENAS 16

struct arena_block {
	uint32_t magic;     /* BLOCK_MAGIC ^ class */
	uint32_t klass;
	uint32_t in_use;
	uint32_t reserved;
};

struct ossl_proc_arena {
	uint64_t magic;
	struct ossl_proc_allocator allocator;
	pthread_mutex_t lock;
	size_t map_len;
	char *heap, *bump, *end;
	struct arena_block *free_list[NCLASSES];
	struct ossl_proc_arena_stats st;
	int full_logged, bad_logged;
};

/* Arenas this process created; only they can be told apart safely. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ossl_proc_arena *registry[MAX_ARENAS];
static bool registry_in_use[MAX_ARENAS];

static void *arena_malloc(size_t size, void *arg);
static void arena_free(void *ptr, void *arg);

/* Class of a request and its rounded size; NCLASSES if too large. */
static unsigned
size_class(size_t n, size_t *rounded)
{
	unsigned b, step;

	if (n <= 64) {
		unsigned c = n ? (unsigned)((n + 15) / 16) - 1 : 0;

		*rounded = (size_t)(c + 1) * 16;
		return c;
	}
	b = 63 - (unsigned)__builtin_clzll((unsigned long long)(n - 1));
	if (b > 46)
		return NCLASSES;
	step = b - 2;
	*rounded = (((n - 1) >> step) + 1) << step;
	return 4 + (b - 6) * 4 + (unsigned)(((n - 1) >> step) - 4);
}

/* The rounded size of class @c (the inverse of size_class). */
static size_t
class_size(unsigned c)
{
	unsigned b, k;

	if (c < 4)
		return (size_t)(c + 1) * 16;
	b = (c - 4) / 4 + 6;
	k = (c - 4) % 4;
	return (size_t)(5 + k) << (b - 2);
}

static void
arena_lock(struct ossl_proc_arena *a)
{
	if (pthread_mutex_lock(&a->lock) == EOWNERDEAD) {
		pthread_mutex_consistent(&a->lock);
		log_warn("a process died while holding the shared arena's lock; "
			 "the arena stays usable, at worst one block leaked");
	}
}

static struct arena_block *
carve(struct ossl_proc_arena *a, unsigned c, size_t rounded)
{
	struct arena_block *b = a->free_list[c];

	if (b) {
		/* Unlink first: a crash before in_use is set leaks b. */
		a->free_list[c] = *(struct arena_block **)(b + 1);
		return b;
	}
	if ((size_t)(a->end - a->bump) < sizeof(*b) + rounded)
		return NULL;
	b = (struct arena_block *)a->bump;
	a->bump += sizeof(*b) + rounded;
	b->klass = c;
	b->magic = BLOCK_MAGIC ^ c;
	return b;
}

static void
account_alloc(struct ossl_proc_arena *a, size_t rounded)
{
	a->st.allocs++;
	a->st.used_bytes += rounded;
	if (a->st.used_bytes > a->st.peak_bytes)
		a->st.peak_bytes = a->st.used_bytes;
}

static void *
arena_malloc(size_t size, void *arg)
{
	struct ossl_proc_arena *a = arg;
	struct arena_block *b = NULL;
	size_t rounded = 0;
	unsigned c = size_class(size, &rounded);
	bool log_full = false;

	arena_lock(a);
	if (c < NCLASSES)
		b = carve(a, c, rounded);
	if (b) {
		b->in_use = 1;
		account_alloc(a, rounded);
	} else {
		a->st.failed++;
		log_full = !a->full_logged;
		a->full_logged = 1;
	}
	pthread_mutex_unlock(&a->lock);
	if (log_full)
		log_error("shared arena of %zu bytes cannot serve %zu bytes "
			  "(%llu in use); create it larger with "
			  "ossl_proc_arena_new() (logged once)",
			  (size_t)a->st.capacity, size,
			  (unsigned long long)a->st.used_bytes);
	return b ? b + 1 : NULL;
}

/* The block header of @ptr if it is a live block of @a, else NULL. */
static struct arena_block *
live_block(struct ossl_proc_arena *a, void *ptr)
{
	char *p = ptr;
	struct arena_block *b;

	if (p < a->heap + sizeof(*b) || p >= a->bump || (uintptr_t)p & 15)
		return NULL;
	b = (struct arena_block *)p - 1;
	if (b->klass >= NCLASSES || b->magic != (BLOCK_MAGIC ^ b->klass) ||
	    b->in_use != 1)
		return NULL;
	return b;
}

static void
arena_free(void *ptr, void *arg)
{
	struct ossl_proc_arena *a = arg;
	struct arena_block *b;
	bool log_bad = false;

	if (!ptr)
		return;
	arena_lock(a);
	b = live_block(a, ptr);
	if (b) {
		b->in_use = 0;
		*(struct arena_block **)(b + 1) = a->free_list[b->klass];
		a->free_list[b->klass] = b;
		a->st.frees++;
		a->st.used_bytes -= class_size(b->klass);
	} else {
		a->st.bad_frees++;
		log_bad = !a->bad_logged;
		a->bad_logged = 1;
	}
	pthread_mutex_unlock(&a->lock);
	if (log_bad)
		log_error("shared arena: refused to free %p, which is not a "
			  "live block of the arena (logged once)", ptr);
}

static int
arena_init_lock(struct ossl_proc_arena *a)
{
	pthread_mutexattr_t at;
	int rc = pthread_mutexattr_init(&at);

	if (!rc)
		rc = pthread_mutexattr_setpshared(&at, PTHREAD_PROCESS_SHARED);
	if (!rc)
		rc = pthread_mutexattr_setrobust(&at, PTHREAD_MUTEX_ROBUST);
	if (!rc)
		rc = pthread_mutex_init(&a->lock, &at);
	pthread_mutexattr_destroy(&at);
	return -rc;
}

static void
registry_set(struct ossl_proc_arena *old, struct ossl_proc_arena *a)
{
	pthread_mutex_lock(&registry_lock);
	for (int i = 0; i < MAX_ARENAS; i++) {
		if (registry[i] == old) {
			registry[i] = a;
			registry_in_use[i] = false;
			break;
		}
	}
	pthread_mutex_unlock(&registry_lock);
}

static size_t
map_length(size_t capacity)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t head = (sizeof(struct ossl_proc_arena) + 15) & ~(size_t)15;

	if (capacity > SIZE_MAX / 2)
		return 0;
	return (head + capacity + page - 1) & ~(page - 1);
}

OSSL_PROC_EXPORT struct ossl_proc_arena *
ossl_proc_arena_new(size_t capacity)
{
	size_t len = map_length(capacity);
	struct ossl_proc_arena *a;
	int rc;

	if (capacity < MIN_CAPACITY || !len) {
		log_bug_client("ossl_proc_arena_new: capacity %zu is not "
			       "between 64 KiB and SIZE_MAX/2", capacity);
		errno = EINVAL;
		return NULL;
	}
	a = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (a == MAP_FAILED) {
		log_error("ossl_proc_arena_new: cannot map %zu bytes (%s)", len,
			  strerror(errno));
		errno = ENOMEM;
		return NULL;
	}
	rc = arena_init_lock(a);
	if (rc) {
		log_error("ossl_proc_arena_new: cannot make a process-shared "
			  "robust mutex (%s)", strerror(-rc));
		munmap(a, len);
		errno = -rc;
		return NULL;
	}
	a->map_len = len;
	a->heap = a->bump = (char *)a + ((sizeof(*a) + 15) & ~(size_t)15);
	a->end = (char *)a + len;
	a->st.size = sizeof(a->st);
	a->st.capacity = (uint64_t)(a->end - a->heap);
	a->allocator = (struct ossl_proc_allocator){
		.malloc = arena_malloc, .free = arena_free, .arg = a,
		.shared = 1,
	};
	a->magic = ARENA_MAGIC;
	registry_set(NULL, a);
	return a;
}

OSSL_PROC_EXPORT const struct ossl_proc_allocator *
ossl_proc_arena_allocator(struct ossl_proc_arena *a)
{
	if (!a || a->magic != ARENA_MAGIC) {
		log_bug_client("ossl_proc_arena_allocator: not an arena");
		return NULL;
	}
	return &a->allocator;
}

OSSL_PROC_EXPORT int
ossl_proc_arena_get_stats(struct ossl_proc_arena *a,
			  struct ossl_proc_arena_stats *out)
{
	struct ossl_proc_arena_stats st;
	size_t n;

	if (!a || a->magic != ARENA_MAGIC || !out ||
	    out->size < offsetof(struct ossl_proc_arena_stats, bad_frees) +
			sizeof(uint64_t)) {
		log_bug_client("ossl_proc_arena_get_stats: needs an arena and "
			       "out->size = sizeof(struct "
			       "ossl_proc_arena_stats)");
		return -EINVAL;
	}
	arena_lock(a);
	st = a->st;
	pthread_mutex_unlock(&a->lock);
	n = out->size < sizeof(st) ? out->size : sizeof(st);
	memcpy((char *)out + sizeof(size_t), (char *)&st + sizeof(size_t),
	       n - sizeof(size_t));
	return 0;
}

static int
registry_find(const void *arg)
{
	for (int i = 0; i < MAX_ARENAS; i++)
		if (registry[i] && registry[i] == arg)
			return i;
	return -1;
}

bool
arena_owns_allocator(const struct ossl_proc_allocator *al)
{
	int i;

	if (!al || al->malloc != arena_malloc)
		return false;
	pthread_mutex_lock(&registry_lock);
	i = registry_find(al->arg);
	pthread_mutex_unlock(&registry_lock);
	return i >= 0;
}

void
arena_set_in_use(const struct ossl_proc_allocator *al, bool in_use)
{
	int i;

	if (!al || al->malloc != arena_malloc)
		return;
	pthread_mutex_lock(&registry_lock);
	i = registry_find(al->arg);
	if (i >= 0)
		registry_in_use[i] = in_use;
	pthread_mutex_unlock(&registry_lock);
}

OSSL_PROC_EXPORT void
ossl_proc_arena_free(struct ossl_proc_arena *a)
{
	bool busy;
	int i;

	if (!a)
		return;
	pthread_mutex_lock(&registry_lock);
	i = registry_find(a);
	busy = i >= 0 && registry_in_use[i];
	pthread_mutex_unlock(&registry_lock);
	if (busy) {
		log_error("ossl_proc_arena_free: the arena is the backend of "
			  "OpenSSL's allocator, which frees into it until exit; "
			  "it stays mapped");
		return;
	}
	if (a->magic != ARENA_MAGIC) {
		log_bug_client("ossl_proc_arena_free: not an arena");
		return;
	}
	registry_set(a, NULL);
	a->magic = 0;
	munmap(a, a->map_len);
}
