/* The tracked allocator: real OpenSSL work through it, every kind of bad
 * free, realloc, alignment, races between threads and processes, the
 * bad-free policies, stacking on a host allocator. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>

#include "common/testlog.h"
#include "common/tls-util.h"

static struct ossl_proc_stats
stats(void)
{
	struct ossl_proc_stats st = { .size = sizeof(st) };

	ck_assert_int_eq(ossl_proc_get_stats(&st), 0);
	return st;
}

static struct ossl_proc_arena_stats
arena_stats(struct ossl_proc_arena *a)
{
	struct ossl_proc_arena_stats st = { .size = sizeof(st) };

	ck_assert_int_eq(ossl_proc_arena_get_stats(a, &st), 0);
	return st;
}

/* ---- a counting host backend that never reuses an address ---- */

/* Its own 16-byte header in front of each block links every block it
 * ever handed out (memory is never given back, so no address is handed
 * out twice) and records whether the block was released, so a second
 * release is always seen. */
#define BK_FREED 0x46524545u

struct bk_hdr {
	struct bk_hdr *next;
	uint32_t state;
	uint32_t pad;
};

static struct {
	_Atomic(struct bk_hdr *) all;
	atomic_int mallocs, frees, twice;
} bk;

static void *
bk_malloc(size_t n, void *arg)
{
	struct bk_hdr *h = malloc(n + sizeof(*h));

	(void)arg;
	if (!h)
		return NULL;
	h->state = 0;
	h->next = atomic_load(&bk.all);
	while (!atomic_compare_exchange_weak(&bk.all, &h->next, h))
		;
	atomic_fetch_add(&bk.mallocs, 1);
	return h + 1;
}

static void
bk_free(void *p, void *arg)
{
	struct bk_hdr *h = (struct bk_hdr *)p - 1;

	(void)arg;
	if (h->state == BK_FREED)
		atomic_fetch_add(&bk.twice, 1);
	h->state = BK_FREED;
	atomic_fetch_add(&bk.frees, 1);
	/* Scribble on osslproc's header (every block is larger than it),
	 * like a real allocator reusing the memory. */
	memset(p, 0x5a, 16);
}

static const struct ossl_proc_allocator counting = {
	.malloc = bk_malloc, .free = bk_free,
};

/* cache_bytes of 1: a thread keeps no freed block for reuse, so what
 * leaves the quarantine reaches the backend (which scribbles on the
 * header). */
#define CACHE_NONE 1

/* Initialises with @c (built by TL_CONFIG() at the call site), the
 * tracked allocator installed. */
static void
init_with(struct ossl_proc_config c)
{
	tl_init(c);
	ck_assert_int_eq(stats().allocator, OSSL_PROC_ALLOC_TRACKED);
}

/* ---- real OpenSSL work ---- */

static void
tls_round(int handshakes)
{
	struct tls_pki *pki = tls_pki_new();
	SSL_CTX *s, *c;

	ck_assert_ptr_nonnull(pki);
	s = tls_server_ctx(pki);
	c = tls_client_ctx(pki);
	ck_assert_ptr_nonnull(s);
	ck_assert_ptr_nonnull(c);
	ck_assert_int_eq(tls_handshakes(c, s, handshakes), handshakes);
	SSL_CTX_free(c);
	SSL_CTX_free(s);
	tls_pki_free(pki);
}

START_TEST(handshakes_balance)
{
	uint64_t before;

	init_with(TL_CONFIG());
	/* The first round fills OpenSSL's caches (fetched algorithms). */
	tls_round(2);
	before = stats().live_bytes;
	tls_round(30);
	ck_assert_uint_gt(stats().allocs, 1000);
	ck_assert_uint_eq(stats().live_bytes, before);
	ck_assert_uint_gt(stats().peak_bytes, before);
	ck_assert_uint_eq(stats().double_frees + stats().invalid_frees +
			  stats().foreign_frees, 0);
	ossl_proc_teardown();
}
END_TEST

START_TEST(handshakes_scrub_sites_host)
{
	init_with(TL_CONFIG(.allocator = &counting,
			    .flags = OSSL_PROC_F_SCRUB |
				     OSSL_PROC_F_TRACK_SITES));
	tls_round(5);
	ck_assert_int_gt(atomic_load(&bk.mallocs), 1000);
	ck_assert_int_eq(atomic_load(&bk.twice), 0);
	ossl_proc_teardown();
}
END_TEST

/* ---- bad frees ---- */

START_TEST(double_free_in_quarantine)
{
	char *p;

	init_with(TL_CONFIG(.allocator = &counting));
	p = OPENSSL_malloc(100);
	ck_assert_ptr_nonnull(p);
	OPENSSL_free(p);
	tl_expect(OSSL_PROC_LOG_WARNING, "double free");
	OPENSSL_free(p);
	ck_assert_uint_eq(stats().double_frees, 1);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_WARNING, "double free"), 1);
	/* Logged once per call site. */
	for (int i = 0; i < 5; i++)
		CRYPTO_free(p, "site.c", 7);
	ck_assert_uint_eq(stats().double_frees, 6);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_WARNING, "double free"), 2);
	ck_assert_int_eq(atomic_load(&bk.twice), 0);
	ossl_proc_teardown();
}
END_TEST

/* With sites tracked, the report of a double free names both sites. */
START_TEST(double_free_names_sites)
{
	char *p;

	init_with(TL_CONFIG(.flags = OSSL_PROC_F_TRACK_SITES));
	p = CRYPTO_malloc(64, "alloc-site.c", 11);
	CRYPTO_free(p, "first-free.c", 22);
	tl_expect(OSSL_PROC_LOG_WARNING, "double free");
	CRYPTO_free(p, "second-free.c", 33);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_WARNING, "second-free.c:33; "
				  "allocated at alloc-site.c:11, first freed "
				  "at first-free.c:22"), 1);
	ossl_proc_teardown();
}
END_TEST

/* Past the quarantine and the thread's cache (full here) the block went
 * back to the backend, which scribbled on its header; a stale free is
 * refused as not ours and never reaches the backend a second time. */
START_TEST(double_free_after_quarantine)
{
	enum { FILL = 8192, TAIL = 32 };
	char **churn = calloc(FILL + TAIL, sizeof(*churn));
	char *p;
	int frees0;

	ck_assert_ptr_nonnull(churn);
	init_with(TL_CONFIG(.allocator = &counting, .quarantine_bytes = 1024));
	for (int i = 0; i < FILL + TAIL; i++)
		ck_assert_ptr_nonnull(churn[i] = OPENSSL_malloc(100));
	p = OPENSSL_malloc(100);
	/* 8192 blocks of 128 bytes fill the cache's 512 KiB. */
	for (int i = 0; i < FILL; i++)
		OPENSSL_free(churn[i]);
	ck_assert_uint_le(stats().cached_bytes, 512 * 1024);
	ck_assert_uint_gt(stats().cached_bytes, 512 * 1024 - 1024);
	frees0 = atomic_load(&bk.frees);
	ck_assert_int_gt(frees0, 0);
	/* p, then enough frees to push it out of the 1 KiB quarantine into
	 * a full cache: it goes back to the backend. */
	OPENSSL_free(p);
	for (int i = FILL; i < FILL + TAIL; i++)
		OPENSSL_free(churn[i]);
	ck_assert_int_ge(atomic_load(&bk.frees), frees0 + TAIL);
	tl_expect(OSSL_PROC_LOG_WARNING, "free");
	OPENSSL_free(p);
	ck_assert_uint_eq(stats().invalid_frees, 1);
	ck_assert_uint_eq(stats().double_frees, 0);
	ck_assert_int_eq(atomic_load(&bk.twice), 0);
	ossl_proc_teardown();
	free(churn);
}
END_TEST

/* A block that left the quarantine waits in the thread's cache with its
 * header intact: a stale free is still a double free, and the next
 * request of its size gets it back as a new, valid block. */
START_TEST(double_free_of_cached_block)
{
	char *p, *q, *other;

	init_with(TL_CONFIG(.allocator = &counting, .quarantine_bytes = 64,
			    .on_bad_free = OSSL_PROC_BAD_FREE_IGNORE));
	p = OPENSSL_malloc(40);
	OPENSSL_free(p);
	/* 64 bytes of quarantine: one more 40-byte free evicts p. */
	other = OPENSSL_malloc(40);
	OPENSSL_free(other);
	OPENSSL_free(p);
	ck_assert_uint_eq(stats().double_frees, 1);
	ck_assert_uint_eq(stats().invalid_frees, 0);
	q = OPENSSL_malloc(40);
	ck_assert_ptr_eq(q, p);
	memset(q, 1, 40);
	OPENSSL_free(q);
	ck_assert_uint_eq(stats().double_frees, 1);
	ck_assert_int_eq(atomic_load(&bk.twice), 0);
	ossl_proc_teardown();
}
END_TEST

/* The window in bytes: a block stays quarantined while it and the blocks
 * its thread freed after it hold at most quarantine_bytes (headers and
 * class rounding counted), and leaves once they hold 9/8 of it. */
START_TEST(quarantine_window_in_bytes)
{
	char *p, *later[40];
	int frees0;

	init_with(TL_CONFIG(.allocator = &counting, .quarantine_bytes = 1024,
			    .cache_bytes = CACHE_NONE));
	/* 200 + 16 bytes: class 14, 224 bytes held. */
	p = OPENSSL_malloc(200);
	for (int i = 0; i < 40; i++)
		ck_assert_ptr_nonnull(later[i] = OPENSSL_malloc(48));
	frees0 = atomic_load(&bk.frees);
	OPENSSL_free(p);
	/* 12 blocks of 64 bytes and one of 32: 800 more, 1024 in all. */
	for (int i = 0; i < 12; i++)
		OPENSSL_free(later[i]);
	OPENSSL_free(OPENSSL_malloc(16));
	tl_expect(OSSL_PROC_LOG_WARNING, "double free");
	OPENSSL_free(p);
	ck_assert_uint_eq(stats().double_frees, 1);
	/* 28 blocks (1,792 bytes) more: p has gone to the backend, once,
	 * and a stale free of it now meets the backend's scribble. */
	for (int i = 12; i < 40; i++)
		OPENSSL_free(later[i]);
	ck_assert_int_gt(atomic_load(&bk.frees), frees0);
	tl_expect(OSSL_PROC_LOG_WARNING, "never returned");
	OPENSSL_free(p);
	ck_assert_uint_eq(stats().double_frees, 1);
	ck_assert_uint_eq(stats().invalid_frees, 1);
	ck_assert_int_eq(atomic_load(&bk.twice), 0);
	ossl_proc_teardown();
}
END_TEST

/* The window in blocks, in a thread whose quarantine starts empty: with
 * 16 KiB the ring has 128 slots; once it is full, its oldest eighth
 * leaves, so a block stays while at most 111 blocks were freed after it
 * when the ring fills (seven eighths of it), and here leaves when the
 * ring fills again. */
static void *
window_in_blocks(void *arg)
{
	char *p, *older[16], *later[127];

	(void)arg;
	for (int i = 0; i < 16; i++)
		ck_assert_ptr_nonnull(older[i] = OPENSSL_malloc(16));
	p = OPENSSL_malloc(16);
	for (int i = 0; i < 127; i++)
		ck_assert_ptr_nonnull(later[i] = OPENSSL_malloc(16));
	/* 16 + 1 + 111 = 128: the ring fills and the 16 older leave. */
	for (int i = 0; i < 16; i++)
		OPENSSL_free(older[i]);
	OPENSSL_free(p);
	for (int i = 0; i < 111; i++)
		OPENSSL_free(later[i]);
	OPENSSL_free(p);
	ck_assert_uint_eq(stats().double_frees, 1);
	ck_assert_uint_eq(stats().invalid_frees, 0);
	/* 16 more fill it again: p, the oldest, leaves for the backend. */
	for (int i = 111; i < 127; i++)
		OPENSSL_free(later[i]);
	OPENSSL_free(p);
	ck_assert_uint_eq(stats().double_frees, 1);
	ck_assert_uint_eq(stats().invalid_frees, 1);
	return NULL;
}

START_TEST(quarantine_window_in_blocks)
{
	pthread_t t;

	init_with(TL_CONFIG(.allocator = &counting, .quarantine_bytes = 16384,
			    .cache_bytes = CACHE_NONE,
			    .on_bad_free = OSSL_PROC_BAD_FREE_IGNORE));
	ck_assert_int_eq(pthread_create(&t, NULL, window_in_blocks, NULL), 0);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ossl_proc_teardown();
}
END_TEST

/* A header is bound to its address: the same 16 bytes copied in front of
 * another (aligned) buffer do not make it a block. */
START_TEST(header_bound_to_address)
{
	static _Alignas(16) char copy[256];
	char *p;

	init_with(TL_CONFIG(.allocator = &counting));
	p = OPENSSL_malloc(64);
	ck_assert_ptr_nonnull(p);
	memset(p, 0x3c, 64);
	memcpy(copy + 16, p - 16, 16 + 64);
	tl_expect(OSSL_PROC_LOG_WARNING, "never returned");
	OPENSSL_free(copy + 32);
	ck_assert_uint_eq(stats().invalid_frees, 1);
	ck_assert_uint_eq(stats().double_frees, 0);
	tl_expect(0, NULL);
	OPENSSL_free(p);
	ck_assert_uint_eq(stats().invalid_frees + stats().double_frees, 1);
	ossl_proc_teardown();
}
END_TEST

/* OSSL_PROC_F_SCRUB: the payload is zero as soon as it is freed (key
 * material does not linger in the quarantine, the cache or a shared
 * backend). */
START_TEST(scrub_zeroes_freed_blocks)
{
	static const size_t sizes[] = { 24, 300, 5000, 40000 };

	init_with(TL_CONFIG(.allocator = &counting, .cache_bytes = CACHE_NONE,
			    .flags = OSSL_PROC_F_SCRUB));
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		unsigned char *p = OPENSSL_malloc(sizes[i]);
		size_t nonzero = 0;

		ck_assert_ptr_nonnull(p);
		memset(p, 0xa5, sizes[i]);
		OPENSSL_free(p);
		/* Quarantined, or for 40000 bytes (more than the window)
		 * back in the test backend, which never reuses memory and
		 * writes only over the header. */
		for (size_t k = 0; k < sizes[i]; k++)
			nonzero += p[k] != 0;
		ck_assert_uint_eq(nonzero, 0);
	}
	ossl_proc_teardown();
}
END_TEST

static char static_block[256] __attribute__((aligned(16)));

START_TEST(invalid_pointers)
{
	_Alignas(16) char stack_block[256];
	char *p, *libc;
	uint64_t frees0;
	int backend_frees0;

	init_with(TL_CONFIG(.allocator = &counting,
			    .on_bad_free = OSSL_PROC_BAD_FREE_IGNORE));
	p = OPENSSL_malloc(256);
	libc = malloc(64);
	frees0 = stats().frees;
	backend_frees0 = atomic_load(&bk.frees);
	char *bad[] = {
		p + 16,            /* interior */
		p + 1,             /* misaligned */
		static_block + 32, /* static */
		stack_block + 32,  /* stack */
		libc,              /* malloc'ed, never ours */
	};
	uint64_t page_aligned = 0;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		/* Where the layout puts one at a page start, it is told apart
		 * without reading: a foreign free. */
		page_aligned += ((uintptr_t)bad[i] & 4095) == 0;
		OPENSSL_free(bad[i]);
	}
	ck_assert_uint_eq(stats().invalid_frees, 5 - page_aligned);
	ck_assert_uint_eq(stats().foreign_frees, page_aligned);
	ck_assert_uint_eq(stats().frees, frees0);
	ck_assert_int_eq(atomic_load(&bk.frees), backend_frees0);
	/* The real block is untouched and frees normally. */
	OPENSSL_free(p);
	ck_assert_uint_eq(stats().frees, frees0 + 1);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_WARNING, NULL), 0);
	free(libc);
	ossl_proc_teardown();
}
END_TEST

/* A page-aligned pointer at the start of a mapping whose previous page
 * is inaccessible: reading the header would fault. */
START_TEST(foreign_page_aligned)
{
	long page = sysconf(_SC_PAGESIZE);
	char *map = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(map, MAP_FAILED);
	ck_assert_int_eq(mprotect(map, page, PROT_NONE), 0);
	init_with(TL_CONFIG());
	tl_expect(OSSL_PROC_LOG_WARNING, "page-aligned foreign pointer");
	OPENSSL_free(map + page);
	ck_assert_uint_eq(stats().foreign_frees, 1);
	ck_assert_ptr_null(OPENSSL_realloc(map + page, 10));
	ck_assert_uint_eq(stats().foreign_frees, 2);
	ossl_proc_teardown();
	munmap(map, 2 * page);
}
END_TEST

/* SIGABRT without the ERROR first is not what the policy promises: the
 * test then exits instead of dying of the signal, and fails. */
static void
abort_logged_first(int sig)
{
	if (tl_count(OSSL_PROC_LOG_ERROR, "aborting as configured") != 1)
		_exit(3);
	signal(sig, SIG_DFL);
}

START_TEST(abort_policy)
{
	char *p;

	init_with(TL_CONFIG(.on_bad_free = OSSL_PROC_BAD_FREE_ABORT));
	signal(SIGABRT, abort_logged_first);
	p = OPENSSL_malloc(10);
	OPENSSL_free(p);
	tl_expect(OSSL_PROC_LOG_ERROR, "aborting as configured");
	OPENSSL_free(p);
	ck_abort_msg("not reached");
}
END_TEST

/* ---- the per-thread cache ---- */

/* Blocks up to 32 KiB are reused from the thread's cache once they
 * have left the quarantine, in classes (16-byte steps, then four per
 * doubling), and the cache stays within its budget. */
START_TEST(cache_reuses_by_class)
{
	static const size_t sizes[] = { 1, 40, 1000, 1009, 3000, 16384 + 600,
					32752 };
	char *p, *q;

	init_with(TL_CONFIG(.allocator = &counting, .quarantine_bytes = 64));
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		int mallocs;

		p = OPENSSL_malloc(sizes[i]);
		ck_assert_ptr_nonnull(p);
		memset(p, 0xa5, sizes[i]);
		OPENSSL_free(p);
		/* Larger than the 64-byte window: straight to the cache;
		 * smaller ones are pushed out by three frees of another
		 * class. */
		for (int k = 0; k < 3; k++)
			OPENSSL_free(OPENSSL_malloc(24));
		mallocs = atomic_load(&bk.mallocs);
		q = OPENSSL_malloc(sizes[i]);
		ck_assert_ptr_eq(q, p);
		ck_assert_int_eq(atomic_load(&bk.mallocs), mallocs);
		OPENSSL_free(q);
	}
	ck_assert_uint_gt(stats().cached_bytes, 32768);
	/* One byte more than the largest class: never cached. */
	p = OPENSSL_malloc(32753);
	OPENSSL_free(p);
	ck_assert_uint_le(stats().cached_bytes, 512 * 1024);
	ck_assert_uint_eq(stats().double_frees + stats().invalid_frees, 0);
	ossl_proc_teardown();
}
END_TEST

/* cache_bytes bounds what each thread keeps; 1 keeps nothing, so
 * every block past the quarantine goes back to the backend. */
struct budget_case {
	size_t cache_bytes;     /* the configured budget */
	uint64_t least_cached;  /* cached_bytes after 64 frees, at least */
	int backend_frees;      /* of those 64 frees, at least */
};

static void
cache_budget_case(struct budget_case bc)
{
	char *p[64];
	int frees0;

	init_with(TL_CONFIG(.allocator = &counting, .quarantine_bytes = 64,
			    .cache_bytes = bc.cache_bytes));
	for (int i = 0; i < 64; i++)
		ck_assert_ptr_nonnull(p[i] = OPENSSL_malloc(100));
	frees0 = atomic_load(&bk.frees);
	/* 128-byte blocks, larger than the window: straight on. */
	for (int i = 0; i < 64; i++)
		OPENSSL_free(p[i]);
	ck_assert_uint_le(stats().cached_bytes, bc.cache_bytes);
	ck_assert_uint_ge(stats().cached_bytes, bc.least_cached);
	ck_assert_int_ge(atomic_load(&bk.frees) - frees0, bc.backend_frees);
	ck_assert_uint_eq(stats().double_frees + stats().invalid_frees, 0);
	ossl_proc_teardown();
}

START_TEST(cache_bytes_bounds_the_cache)
{
	/* Full to within one block; at most 32 of the 64 kept. */
	cache_budget_case((struct budget_case){
		.cache_bytes = 4096,
		.least_cached = 4096 - 128,
		.backend_frees = 32,
	});
}
END_TEST

START_TEST(cache_bytes_one_keeps_nothing)
{
	cache_budget_case((struct budget_case){
		.cache_bytes = CACHE_NONE,
		.least_cached = 0,
		.backend_frees = 64,
	});
}
END_TEST

/* A cached block written after its free (a use after free in the host)
 * is not followed: neither the scribbled link nor the blocks after it
 * are handed out, one ERROR names the block, and everything else keeps
 * working.  @value is what the host writes where the link is. */
static _Alignas(16) char forged_target[64];

static void
scribbled_cache_case(const void *value)
{
	char *p, *q, *r[2];

	init_with(TL_CONFIG(.allocator = &counting, .quarantine_bytes = 64));
	q = OPENSSL_malloc(40);
	p = OPENSSL_malloc(40);
	OPENSSL_free(q);
	OPENSSL_free(p);
	/* Three frees of another class push both out of the 64-byte
	 * window: p and q are cached now, p first. */
	for (int k = 0; k < 3; k++)
		OPENSSL_free(OPENSSL_malloc(24));
	memcpy(p, value, sizeof(void *));
	tl_expect(OSSL_PROC_LOG_ERROR, "written after it was freed");
	for (int i = 0; i < 2; i++) {
		r[i] = OPENSSL_malloc(40);
		ck_assert_ptr_nonnull(r[i]);
		ck_assert_ptr_ne(r[i], q);
		ck_assert_ptr_ne(r[i], forged_target + 16);
		memset(r[i], 1, 40);
	}
	ck_assert_ptr_ne(r[0], r[1]);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_ERROR,
				  "written after it was freed"), 1);
	OPENSSL_free(r[0]);
	OPENSSL_free(r[1]);
	ck_assert_uint_le(stats().cached_bytes, 512 * 1024);
	ck_assert_uint_eq(stats().double_frees + stats().invalid_frees, 0);
	ck_assert_int_eq(atomic_load(&bk.twice), 0);
	ossl_proc_teardown();
}

START_TEST(cache_misaligned_link_refused)
{
	uintptr_t v = (uintptr_t)0xa5a5a5a5a5a5a5a5ull;

	scribbled_cache_case(&v);
}
END_TEST

START_TEST(cache_null_link_refused)
{
	void *v = NULL;

	scribbled_cache_case(&v);
}
END_TEST

/* An aligned address that is not a cached block (its header is not one)
 * is refused when it would be handed out. */
START_TEST(cache_forged_link_refused)
{
	void *v = forged_target + 16;

	/* Its own link is plausible too: it points to itself. */
	memcpy(forged_target + 16, &v, sizeof(v));
	scribbled_cache_case(&v);
}
END_TEST

/* A small number where the link was (a length, a count): aligned and
 * not at a page start, but below anything Linux maps: never read. */
START_TEST(cache_small_link_refused)
{
	uintptr_t v = 0x10;

	scribbled_cache_case(&v);
}
END_TEST

/* A link to a block still in the quarantine: a valid header, but not a
 * cached block's, so it is not handed out while the quarantine holds it,
 * and a double free of it is still caught. */
START_TEST(cache_link_to_quarantined_refused)
{
	char *p, *q, *b, *r[2];

	init_with(TL_CONFIG(.allocator = &counting, .quarantine_bytes = 64));
	q = OPENSSL_malloc(40);
	p = OPENSSL_malloc(40);
	b = OPENSSL_malloc(40);
	OPENSSL_free(q);
	OPENSSL_free(p);
	for (int k = 0; k < 3; k++)
		OPENSSL_free(OPENSSL_malloc(24));
	/* p and q are cached, p first; b fills the 64-byte window. */
	OPENSSL_free(b);
	memcpy(p, &b, sizeof(b));
	tl_expect(OSSL_PROC_LOG_ERROR, "written after it was freed");
	for (int i = 0; i < 2; i++) {
		r[i] = OPENSSL_malloc(40);
		ck_assert_ptr_nonnull(r[i]);
		ck_assert_ptr_ne(r[i], b);
		ck_assert_ptr_ne(r[i], q);
		memset(r[i], 1, 40);
	}
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_ERROR,
				  "written after it was freed"), 1);
	tl_expect(OSSL_PROC_LOG_WARNING, "double free");
	OPENSSL_free(b);
	ck_assert_uint_eq(stats().double_frees, 1);
	tl_expect(0, NULL);
	OPENSSL_free(r[0]);
	OPENSSL_free(r[1]);
	ck_assert_uint_eq(stats().invalid_frees, 0);
	ck_assert_int_eq(atomic_load(&bk.twice), 0);
	ossl_proc_teardown();
}
END_TEST

/* ossl_proc_report() lists what is still allocated: the count and bytes,
 * and with OSSL_PROC_F_TRACK_SITES each block's allocation site; a block
 * freed again leaves the list. */
static const char *
report_text(void)
{
	static char buf[16384];
	FILE *f = tmpfile();
	size_t n;

	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(ossl_proc_report(f), 0);
	rewind(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

START_TEST(report_lists_leaks)
{
	struct ossl_proc_stats st0;
	char *p, want[128];

	init_with(TL_CONFIG(.flags = OSSL_PROC_F_TRACK_SITES));
	st0 = stats();
	p = CRYPTO_malloc(77, "leak-site.c", 42);
	ck_assert_ptr_nonnull(p);
	snprintf(want, sizeof(want), "%s: %llu blocks, %llu bytes",
		 OpenSSL_version_num() >= 0x40000000L ? "still allocated"
						      : "leaks",
		 (unsigned long long)st0.live_blocks + 1,
		 (unsigned long long)st0.live_bytes + 77);
	ck_assert_ptr_nonnull(strstr(report_text(), want));
	snprintf(want, sizeof(want), "%s: 77 bytes at %p, allocated at "
		 "leak-site.c:42", OpenSSL_version_num() >= 0x40000000L ?
		 "still allocated" : "leak", (void *)p);
	ck_assert_ptr_nonnull(strstr(report_text(), want));
	CRYPTO_free(p, "leak-site.c", 43);
	ck_assert_ptr_null(strstr(report_text(), "leak-site.c"));
	ossl_proc_teardown();
}
END_TEST

/*
 * The leaks at exit (OSSL_PROC_F_EXIT_LEAKS), in a child whose stderr
 * the test reads: it does real TLS work (OpenSSL's own state: providers,
 * fetched algorithms, error strings), leaks one block of its own, tears
 * down, asks for OpenSSL's cleanup if @cleanup, writes its live count to
 * @fd and exits.  On 4.0 that count still includes OpenSSL's state
 * (freed by libcrypto's destructor, after main); the line printed at exit
 * must count the leaked block alone.
 */
/* Where the child keeps its leaked block: still reachable for
 * LeakSanitizer (a global), a leak for osslproc (never freed). */
static void *volatile exit_leak;

static void
exit_leaks_child(int fd, bool cleanup)
{
	struct ossl_proc_config c = {
		.size = sizeof(c),
		.flags = OSSL_PROC_F_EXIT_LEAKS | OSSL_PROC_F_TRACK_SITES,
	};
	struct ossl_proc_stats st = { .size = sizeof(st) };

	if (ossl_proc_init(&c) != 0)
		_exit(2);
	tls_round(4);
	exit_leak = CRYPTO_malloc(77, "leak-site.c", 42);
	if (!exit_leak)
		_exit(3);
	ossl_proc_teardown();
	if (cleanup)
		OPENSSL_cleanup();
	ossl_proc_get_stats(&st);
	if (write(fd, &st.live_blocks, sizeof(st.live_blocks)) !=
	    sizeof(st.live_blocks))
		_exit(4);
	exit(0);
}

/* Runs exit_leaks_child(); returns its stderr, *live its count before
 * exit. */
static const char *
exit_leaks_run(bool cleanup, uint64_t *live)
{
	static char buf[16384];
	int out[2], cnt[2];
	size_t n = 0;
	ssize_t r;
	pid_t pid;

	ck_assert_int_eq(pipe(out), 0);
	ck_assert_int_eq(pipe(cnt), 0);
	fflush(NULL);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		dup2(out[1], STDERR_FILENO);
		close(out[0]);
		close(cnt[0]);
		exit_leaks_child(cnt[1], cleanup);
	}
	close(out[1]);
	close(cnt[1]);
	while (n < sizeof(buf) - 1 &&
	       (r = read(out[0], buf + n, sizeof(buf) - 1 - n)) > 0)
		n += (size_t)r;
	buf[n] = '\0';
	ck_assert_int_eq(read(cnt[0], live, sizeof(*live)), sizeof(*live));
	close(out[0]);
	close(cnt[0]);
	ck_assert_msg(tl_reap(pid) == 0, "child: %s", buf);
	return buf;
}

START_TEST(exit_leaks_after_cleanup)
{
	uint64_t live;
	const char *text = exit_leaks_run(true, &live);

	/* OpenSSL's state is still there after OPENSSL_cleanup() on 4.0
	 * (thousands of blocks), gone on 3.x. */
	if (OpenSSL_version_num() >= 0x40000000L)
		ck_assert_uint_gt(live, 100);
	else
		ck_assert_uint_eq(live, 1);
	ck_assert_msg(strstr(text, "at exit, after OpenSSL freed its state: "
			     "leaks: 1 blocks, 77 bytes\n"), "%s", text);
	ck_assert_msg(strstr(text, "allocated at leak-site.c:42\n"), "%s",
		      text);
}
END_TEST

/* Without OPENSSL_cleanup(): 3.x frees its state at exit all the same
 * (its atexit handler), 4.0 keeps it, and the line says so rather than
 * calling it leaked. */
START_TEST(exit_leaks_without_cleanup)
{
	uint64_t live;
	const char *text = exit_leaks_run(false, &live);

	ck_assert_uint_gt(live, 100);
	if (OpenSSL_version_num() >= 0x40000000L)
		ck_assert_msg(strstr(text, "OpenSSL kept its own state") &&
			      !strstr(text, "leaks:"), "%s", text);
	else
		ck_assert_msg(strstr(text, "at exit, after OpenSSL freed its "
				     "state: leaks: 1 blocks, 77 bytes\n"),
			      "%s", text);
}
END_TEST

/* With a shared allocator the window defaults to 64 KiB. */
START_TEST(report_shared_defaults)
{
	struct ossl_proc_arena *a = ossl_proc_arena_new(4 << 20);
	struct ossl_proc_config c = tl_config();

	ck_assert_ptr_nonnull(a);
	c.allocator = ossl_proc_arena_allocator(a);
	ck_assert_int_eq(ossl_proc_init(&c), 0);
	ck_assert_ptr_nonnull(strstr(report_text(),
				     "backend: host allocator (shared after "
				     "the first fork), quarantine 65536 bytes "
				     "and cache 524288 bytes per thread"));
	ossl_proc_teardown();
}
END_TEST

/* ---- realloc and alignment ---- */

START_TEST(realloc_semantics)
{
	struct ossl_proc_stats st0;
	char *p, *q;

	init_with(TL_CONFIG());
	st0 = stats();
	p = OPENSSL_realloc(NULL, 10);          /* NULL: malloc */
	ck_assert_ptr_nonnull(p);
	memcpy(p, "0123456789", 10);
	q = OPENSSL_realloc(p, 5000);           /* grow keeps the bytes */
	ck_assert_ptr_nonnull(q);
	ck_assert_int_eq(memcmp(q, "0123456789", 10), 0);
	p = OPENSSL_realloc(q, 4);              /* shrink keeps the prefix */
	ck_assert_int_eq(memcmp(p, "0123", 4), 0);
	ck_assert_uint_eq(stats().reallocs, st0.reallocs + 2);
	ck_assert_uint_eq(stats().live_blocks, st0.live_blocks + 1);
	ck_assert_uint_eq(stats().live_bytes, st0.live_bytes + 4);
	/* The old address was freed through the quarantine: guarded. */
	tl_expect(OSSL_PROC_LOG_WARNING, "double free");
	ck_assert_ptr_null(OPENSSL_realloc(q, 8));
	ck_assert_uint_eq(stats().double_frees, 1);
	tl_expect(0, NULL);
	/* OpenSSL 3.6 records the failed realloc on the error queue, with
	 * allocated data: that block is OpenSSL's until the queue is read. */
	ERR_clear_error();
	ck_assert_ptr_null(OPENSSL_realloc(p, 0)); /* size 0: free */
	ck_assert_uint_eq(stats().live_blocks, st0.live_blocks);
	ossl_proc_teardown();
}
END_TEST

START_TEST(alignment)
{
	void *ptrs[2048];
	uint64_t live0;

	init_with(TL_CONFIG());
	live0 = stats().live_bytes;
	for (size_t i = 0; i < 2048; i++) {
		size_t n = i < 1024 ? i + 1 : (size_t)rand() % 70000 + 1;

		ptrs[i] = OPENSSL_malloc(n);
		ck_assert_ptr_nonnull(ptrs[i]);
		ck_assert_uint_eq((uintptr_t)ptrs[i] % _Alignof(max_align_t),
				  0);
		/* Never page-aligned: those are told apart without reading. */
		ck_assert_uint_ne((uintptr_t)ptrs[i] % 4096, 0);
		memset(ptrs[i], 0xee, n);
	}
	for (size_t i = 0; i < 2048; i++)
		OPENSSL_free(ptrs[i]);
	ck_assert_uint_eq(stats().live_bytes, live0);
	ck_assert_ptr_null(OPENSSL_malloc(0));
	ossl_proc_teardown();
}
END_TEST

/*
 * A host allocator with glibc's tcache habit: chunks are binned by the
 * size asked for, and the chunk freed last into a bin is the next one
 * handed out for that size.  Its first chunk starts 16 bytes before a
 * page boundary, so the user pointer behind a 16-byte header would be
 * page-aligned and osslproc must refuse it.  (Once armed: OpenSSL's own
 * allocations at init must not take it.)
 */
#define LIFO_BINS 64

static struct {
	size_t size;
	void *top;
} lifo_bin[LIFO_BINS];
static void *trap_page, *trap_chunk;
static bool trap_armed; /* the next new chunk is the trap */
static int lifo_calls;

/* The bin of @size, or -1 when every bin holds another size. */
static int
lifo_bin_of(size_t size)
{
	for (int i = 0; i < LIFO_BINS; i++) {
		if (!lifo_bin[i].size)
			lifo_bin[i].size = size;
		if (lifo_bin[i].size == size)
			return i;
	}
	return -1;
}

/* Each chunk records the size it was asked for just before it. */
static size_t
lifo_size_of(void *p)
{
	return ((size_t *)p)[-1];
}

static void *
lifo_malloc(size_t n, void *arg)
{
	int b = lifo_bin_of(n);
	char *p;

	(void)arg;
	lifo_calls++;
	if (trap_armed && !trap_chunk && n <= 2 * 4096) {
		trap_page = aligned_alloc(4096, 3 * 4096);
		trap_chunk = (char *)trap_page + 4096 - 16;
		p = trap_chunk;
	} else if (b >= 0 && lifo_bin[b].top) {
		p = lifo_bin[b].top;
		lifo_bin[b].top = NULL;
		return p;
	} else {
		p = malloc(n + 16);
		if (!p)
			return NULL;
		p += 16;
	}
	((size_t *)p)[-1] = n;
	return p;
}

static void
lifo_release(void *p)
{
	if (p && p != trap_chunk)
		free((char *)p - 16);
}

static void
lifo_free(void *p, void *arg)
{
	int b = lifo_bin_of(lifo_size_of(p));

	(void)arg;
	if (b < 0) {
		lifo_release(p);
		return;
	}
	lifo_release(lifo_bin[b].top);
	lifo_bin[b].top = p;
}

/* The refused chunk is not asked for again and again: one request per
 * allocation, not two (a LIFO backend would offer it every time). */
START_TEST(refused_chunk_not_offered_again)
{
	struct ossl_proc_allocator lifo = { .malloc = lifo_malloc,
					    .free = lifo_free };
	uint64_t allocs0;
	int calls0;

	init_with(TL_CONFIG(.allocator = &lifo, .quarantine_bytes = 1));
	allocs0 = stats().allocs;
	calls0 = lifo_calls;
	trap_armed = true;
	/* Above the class cache's sizes: every block reaches the host. */
	for (int i = 0; i < 1000; i++) {
		void *p = OPENSSL_malloc(2000);

		ck_assert_ptr_nonnull(p);
		ck_assert_uint_ne((uintptr_t)p % 4096, 0);
		OPENSSL_free(p);
	}
	ck_assert_uint_eq(stats().allocs - allocs0, 1000);
	ck_assert_ptr_nonnull(trap_chunk);
	ck_assert_int_le(lifo_calls - calls0, 1000 + 2);
	ck_assert_uint_eq(stats().invalid_frees + stats().double_frees, 0);
	ossl_proc_teardown();
}
END_TEST

/*
 * A backend like Kamailio's shm allocator: every other block is only
 * 8-byte aligned.  Each block records where its chunk starts just
 * before itself.
 */
static struct {
	atomic_uint calls, eight, frees;
	bool all; /* every block 8-byte aligned */
} a8;

static void *
a8_malloc(size_t n, void *arg)
{
	unsigned k = atomic_fetch_add(&a8.calls, 1);
	char *base = malloc(n + 32), *p;

	(void)arg;
	if (!base)
		return NULL;
	if (a8.all)
		k = 1;
	p = base + (k & 1 ? 8 : 16);
	atomic_fetch_add(&a8.eight, k & 1);
	((char **)p)[-1] = base;
	return p;
}

static void
a8_free(void *p, void *arg)
{
	(void)arg;
	atomic_fetch_add(&a8.frees, 1);
	free(((char **)p)[-1]);
}

/* Accepted and padded: every block handed out is 16-byte aligned, real
 * handshakes work, and every chunk goes back to the backend. */
START_TEST(backend_aligned_to_8)
{
	struct ossl_proc_allocator eight = { .malloc = a8_malloc,
					     .free = a8_free };
	void *ptrs[512];

	init_with(TL_CONFIG(.allocator = &eight, .flags = (unsigned)_i));
	for (size_t i = 0; i < sizeof(ptrs) / sizeof(ptrs[0]); i++) {
		size_t n = i < 256 ? i + 1 : (size_t)rand() % 40000 + 1;

		ptrs[i] = OPENSSL_malloc(n);
		ck_assert_ptr_nonnull(ptrs[i]);
		ck_assert_uint_eq((uintptr_t)ptrs[i] % 16, 0);
		memset(ptrs[i], 0xee, n);
	}
	for (size_t i = 0; i < sizeof(ptrs) / sizeof(ptrs[0]); i++)
		OPENSSL_free(ptrs[i]);
	tls_round(3);
	ck_assert_uint_gt(atomic_load(&a8.eight), 100);
	ck_assert_uint_eq(stats().invalid_frees + stats().double_frees, 0);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_ERROR, ""), 0);
	OPENSSL_cleanup();
	ossl_proc_thread_release();
	/* Every chunk is a live block or went back; OpenSSL 4.0 frees its
	 * state only in its destructor, after the test.  Locks live in
	 * osslproc's slabs, not in the backend. */
	ck_assert_uint_eq(atomic_load(&a8.calls) - atomic_load(&a8.frees),
			  stats().live_blocks - stats().locks_registered);
	if (OpenSSL_version_num() < 0x40000000L)
		ck_assert_uint_eq(stats().live_blocks, 0);
}
END_TEST

/* A block refitted for such a backend keeps its size class: past the
 * quarantine it is reused from the cache like any other, rather than
 * going back to the backend at every free (then every allocation of
 * its class, once the quarantine is full, was a backend call). */
START_TEST(refitted_blocks_cached)
{
	struct ossl_proc_allocator eight = { .malloc = a8_malloc,
					     .free = a8_free };
	unsigned calls0;

	a8.all = true;
	init_with(TL_CONFIG(.allocator = &eight));
	for (int i = 0; i < 1000; i++)
		OPENSSL_free(OPENSSL_malloc(40));
	calls0 = atomic_load(&a8.calls);
	for (int i = 0; i < 10000; i++) {
		char *p = OPENSSL_malloc(40);

		ck_assert_ptr_nonnull(p);
		ck_assert_uint_eq((uintptr_t)p % 16, 0);
		memset(p, 0xee, 40);
		OPENSSL_free(p);
	}
	ck_assert_uint_lt(atomic_load(&a8.calls) - calls0, 100);
	ck_assert_uint_eq(stats().invalid_frees + stats().double_frees, 0);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_ERROR, ""), 0);
	ossl_proc_thread_release();
	ossl_proc_teardown();
	a8.all = false;
}
END_TEST

/* ---- races ---- */

#define RACE_ROUNDS 5000

static void *race_ptr;
static pthread_barrier_t race_barrier;

static void *
race_free(void *arg)
{
	int me = (int)(intptr_t)arg;

	for (int r = 0; r < RACE_ROUNDS; r++) {
		/* Both threads leave the barrier together and free one block. */
		pthread_barrier_wait(&race_barrier);
		OPENSSL_free(race_ptr);
		pthread_barrier_wait(&race_barrier);
		if (me == 0)
			race_ptr = OPENSSL_malloc(32);
	}
	pthread_barrier_wait(&race_barrier);
	return NULL;
}

START_TEST(two_threads_one_block)
{
	pthread_t t[2];
	uint64_t frees0;

	init_with(TL_CONFIG(.on_bad_free = OSSL_PROC_BAD_FREE_IGNORE));
	frees0 = stats().frees;
	pthread_barrier_init(&race_barrier, NULL, 2);
	race_ptr = OPENSSL_malloc(32);
	for (intptr_t i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, race_free, (void *)i);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	ck_assert_uint_eq(stats().frees - frees0, RACE_ROUNDS);
	ck_assert_uint_eq(stats().double_frees, RACE_ROUNDS);
	OPENSSL_free(race_ptr);
	pthread_barrier_destroy(&race_barrier);
	ossl_proc_teardown();
}
END_TEST

/* Two processes free the same block in shared memory at once: the state
 * lives in the block, so exactly one of them wins and releases it to the
 * arena, and the arena sees each block freed exactly once. */
START_TEST(two_processes_one_block)
{
	struct ossl_proc_arena *a = ossl_proc_arena_new(8 << 20);
	struct ossl_proc_config c = tl_config();
	struct ossl_proc_allocator private_view;
	atomic_int *go = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
			      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int rounds = 200, parent_wins = 0, child_wins, status;
	uint64_t arena_frees0;
	pid_t pid;
	void **blocks;

	ck_assert_ptr_nonnull(a);
	ck_assert_ptr_ne(go, MAP_FAILED);
	/* Placed in the arena from the start, without fork generations, and
	 * released at once (no quarantine, no cache): a free that wins goes
	 * straight to the arena, which counts it and refuses a second. */
	private_view = *ossl_proc_arena_allocator(a);
	private_view.shared = 0;
	c.allocator = &private_view;
	c.quarantine_bytes = 1;
	c.cache_bytes = CACHE_NONE;
	c.on_bad_free = OSSL_PROC_BAD_FREE_IGNORE;
	ck_assert_int_eq(ossl_proc_init(&c), 0);
	blocks = (void **)(go + 16);
	for (int i = 0; i < rounds; i++)
		blocks[i] = OPENSSL_malloc(48);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	/* After the fork: its prepare handler stops OpenSSL's thread state,
	 * whose blocks the arena takes back too. */
	arena_frees0 = arena_stats(a).frees;
	for (int i = 0; i < rounds; i++) {
		uint64_t before = stats().frees;

		atomic_fetch_add(&go[0], 1);
		while (atomic_load(&go[0]) < 2 * (i + 1))
			;
		OPENSSL_free(blocks[i]);
		if (stats().frees > before)
			pid ? parent_wins++ : atomic_fetch_add(&go[1], 1);
	}
	/* The loser saw the winner's state, or (once the arena took the
	 * block back) no valid header: refused either way. */
	if (pid == 0)
		_exit(stats().double_frees + stats().invalid_frees +
		      (uint64_t)atomic_load(&go[1]) == (uint64_t)rounds ? 0 : 1);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	child_wins = atomic_load(&go[1]);
	ck_assert_int_eq(parent_wins + child_wins, rounds);
	ck_assert_uint_eq(stats().double_frees + stats().invalid_frees,
			  (uint64_t)child_wins);
	ck_assert_uint_eq(arena_stats(a).frees - arena_frees0,
			  (uint64_t)rounds);
	ck_assert_uint_eq(arena_stats(a).bad_frees, 0);
	ossl_proc_teardown();
}
END_TEST

#define STAT_THREADS 4
#define STAT_OPS 20000

static atomic_int workers_done;

static void *
stat_worker(void *arg)
{
	void *held[64] = { 0 };
	unsigned seed = (unsigned)(uintptr_t)arg;

	for (int i = 0; i < STAT_OPS; i++) {
		int slot = rand_r(&seed) % 64;

		OPENSSL_free(held[slot]);
		held[slot] = OPENSSL_malloc(1 + rand_r(&seed) % 2000);
	}
	for (int i = 0; i < 64; i++)
		OPENSSL_free(held[i]);
	atomic_fetch_add(&workers_done, 1);
	return NULL;
}

/* Counters read while threads allocate stay coherent, and add up exactly
 * once they stop, threads that exited included. */
START_TEST(stats_under_threads)
{
	pthread_t t[STAT_THREADS];
	uint64_t last_allocs = 0;
	struct ossl_proc_stats st0;

	init_with(TL_CONFIG(.quarantine_bytes = 4096));
	st0 = stats();
	for (uintptr_t i = 0; i < STAT_THREADS; i++)
		pthread_create(&t[i], NULL, stat_worker, (void *)(i + 1));
	while (atomic_load(&workers_done) < STAT_THREADS) {
		struct ossl_proc_stats st = stats();

		ck_assert_uint_ge(st.allocs, last_allocs);
		ck_assert_uint_le(st.frees, st.allocs);
		ck_assert_uint_le(st.live_bytes, st.peak_bytes);
		last_allocs = st.allocs;
	}
	for (int i = 0; i < STAT_THREADS; i++)
		pthread_join(t[i], NULL);
	ck_assert_uint_ge(stats().allocs - st0.allocs, STAT_THREADS * STAT_OPS);
	ck_assert_uint_eq(stats().allocs - st0.allocs,
			  stats().frees - st0.frees);
	ck_assert_uint_eq(stats().live_blocks, st0.live_blocks);
	ck_assert_uint_eq(stats().live_bytes, st0.live_bytes);
	/* Exited threads released their quarantines. */
	ck_assert_uint_eq(stats().quarantined_blocks, st0.quarantined_blocks);
	ossl_proc_teardown();
}
END_TEST

/* ---- stacking on a host's functions ---- */

static atomic_int host_m, host_f, host_r;
static void *host_watch;

static void *
host_malloc(size_t n, const char *file, int line)
{
	(void)file, (void)line;
	atomic_fetch_add(&host_m, 1);
	return malloc(n);
}

static void *
host_realloc(void *p, size_t n, const char *file, int line)
{
	(void)file, (void)line;
	atomic_fetch_add(&host_r, 1);
	return realloc(p, n);
}

static void
host_free(void *p, const char *file, int line)
{
	(void)file, (void)line;
	if (p && p == host_watch)
		atomic_fetch_add(&host_f, 1);
	free(p);
}

START_TEST(stacks_on_host_functions)
{
	struct ossl_proc_config c = tl_config();
	void *old, *old2, *fresh;
	uint64_t frees0;
	int m0;

	ck_assert_int_eq(CRYPTO_set_mem_functions(host_malloc, host_realloc,
						  host_free), 1);
	old = OPENSSL_malloc(40);
	old2 = OPENSSL_malloc(40);
	ck_assert_ptr_nonnull(old2);
	memcpy(old2, "before", 7);
	host_watch = old;
	ck_assert_int_eq(ossl_proc_init(&c), 0);
	ck_assert_int_eq(stats().allocator, OSSL_PROC_ALLOC_TRACKED);
	/* A block from before the install goes back to the host's free. */
	OPENSSL_free(old);
	ck_assert_int_eq(atomic_load(&host_f), 1);
	ck_assert_uint_eq(stats().prior_frees, 1);
	ck_assert_uint_eq(stats().invalid_frees, 0);
	/* Its realloc goes to the host's realloc, and stays the host's. */
	old2 = OPENSSL_realloc(old2, 4000);
	ck_assert_ptr_nonnull(old2);
	ck_assert_int_eq(atomic_load(&host_r), 1);
	ck_assert_str_eq(old2, "before");
	host_watch = old2;
	OPENSSL_free(old2);
	ck_assert_int_eq(atomic_load(&host_f), 2);
	ck_assert_uint_eq(stats().prior_frees, 2);
	ck_assert_uint_eq(stats().invalid_frees, 0);
	/* New blocks are tracked on top of the host's functions (a size
	 * above the per-thread cache's classes, so it must reach them). */
	m0 = atomic_load(&host_m);
	frees0 = stats().frees;
	fresh = OPENSSL_malloc(3000);
	/* Two calls when the first chunk put the block at a reserved page
	 * offset (block.c: refit), which depends on the heap's layout. */
	ck_assert_int_ge(atomic_load(&host_m), m0 + 1);
	ck_assert_int_le(atomic_load(&host_m), m0 + 2);
	OPENSSL_free(fresh);
	ck_assert_uint_eq(stats().frees, frees0 + 1);
	ossl_proc_teardown();
}
END_TEST

START_TEST(replacement_detected)
{
	struct ossl_proc_config c = tl_config();
	CRYPTO_malloc_fn m;
	CRYPTO_realloc_fn r;
	CRYPTO_free_fn f;

	ck_assert_int_eq(ossl_proc_init(&c), 0);
	CRYPTO_get_mem_functions(&m, &r, &f);
	ck_assert_int_eq(CRYPTO_set_mem_functions(host_malloc, host_realloc,
						  host_free), 1);
	tl_expect(OSSL_PROC_LOG_ERROR, "were replaced");
	/* The next osslproc call says so, naming the object whose
	 * functions OpenSSL now calls: this program. */
	ck_assert_int_eq(ossl_proc_init(NULL), 1);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_ERROR, "were replaced"), 1);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_ERROR, "test-alloc"), 1);
	ck_assert_int_eq(stats().allocator, OSSL_PROC_ALLOC_REPLACED);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_ERROR, "were replaced"), 1);
	ossl_proc_teardown();
	/* Put ours back, or OpenSSL's exit-time cleanup would hand our
	 * blocks to free(): the crash the report warns about. */
	ck_assert_int_eq(CRYPTO_set_mem_functions(m, r, f), 1);
	ossl_proc_teardown();
}
END_TEST

/* ---- Reliability: what an attacker, a signal or a pool does ---- */

/* A double free of a block past a 64-byte quarantine, in the cache, is
 * a double free with @c: its word is not taken for a live one, and the
 * block stays a sound cached one. */
static void
assert_cached_double_free(struct ossl_proc_config c)
{
	uint64_t frees, live;
	char *p, *other, *q;

	c.quarantine_bytes = 64;
	c.on_bad_free = OSSL_PROC_BAD_FREE_IGNORE;
	init_with(c);
	p = OPENSSL_malloc(40);
	OPENSSL_free(p);
	other = OPENSSL_malloc(40);
	OPENSSL_free(other);
	frees = stats().frees;
	live = stats().live_blocks;
	OPENSSL_free(p);
	ck_assert_uint_eq(stats().double_frees, 1);
	ck_assert_uint_eq(stats().frees, frees);
	ck_assert_uint_eq(stats().live_blocks, live);
	/* Handed out again with no complaint (the test log fails on an
	 * unexpected ERROR). */
	q = OPENSSL_malloc(40);
	ck_assert_ptr_nonnull(q);
	OPENSSL_free(q);
	ck_assert_uint_eq(stats().live_blocks, live);
	ossl_proc_teardown();
}

/* With OSSL_PROC_F_SCRUB there is no fast free word. */
START_TEST(double_free_of_cached_block_scrub)
{
	assert_cached_double_free(TL_CONFIG(.flags = OSSL_PROC_F_SCRUB));
}
END_TEST

/* Nor with a shared backend: before the first fork blocks are private
 * and cached. */
START_TEST(double_free_of_cached_block_shared)
{
	struct ossl_proc_arena *a = ossl_proc_arena_new(1 << 20);

	ck_assert_ptr_nonnull(a);
	assert_cached_double_free(TL_CONFIG(.allocator =
					    ossl_proc_arena_allocator(a)));
}
END_TEST

/*
 * A header forged from a nearby one: an attacker who can read one live
 * block's header and write inside its payload builds a header 16 bytes
 * further, for an interior pointer, and tries the three magics a magic
 * linear in the address gives there (the carry patterns of adding 16).
 * Each accepted free would make the next allocations overlap the live
 * block.  The header's layout (size word, state word, magic) is spelled
 * out as the attacker sees it.  0.2 accepted 169 of 200.
 */
START_TEST(forged_nearby_header_refused)
{
	static const uint32_t guess[] = { 0x10, 0x30, 0x70 };
	static char *blocks[200];
	unsigned accepted = 0;

	init_with(TL_CONFIG(.on_bad_free = OSSL_PROC_BAD_FREE_IGNORE));
	for (int i = 0; i < 200; i++) {
		char *b = blocks[i] = OPENSSL_malloc(256), hdr[16];

		ck_assert_ptr_nonnull(b);
		memcpy(hdr, b - 16, 16);
		for (unsigned g = 0; g < sizeof(guess) / sizeof(guess[0]); g++) {
			uint32_t magic;
			uint64_t frees = stats().frees;

			memcpy(b, hdr, 16);
			memcpy(&magic, b + 12, 4);
			magic ^= guess[g];
			memcpy(b + 12, &magic, 4);
			OPENSSL_free(b + 16);
			accepted += stats().frees != frees;
		}
	}
	ck_assert_uint_eq(accepted, 0);
	ck_assert_uint_ge(stats().invalid_frees + stats().foreign_frees, 600);
	/* Each b is still live and whole: nothing of it was released. */
	for (int i = 0; i < 200; i++)
		OPENSSL_free(blocks[i]);
	ck_assert_uint_eq(stats().double_frees, 0);
	ossl_proc_teardown();
}
END_TEST

/* A large block (64 MiB: glibc would serve it with mmap) freed twice:
 * within its window a double free, long after (its memory unmapped) one
 * too, and never a fault. */
START_TEST(large_double_free_never_faults)
{
	char *p, *r;

	init_with(TL_CONFIG(.on_bad_free = OSSL_PROC_BAD_FREE_IGNORE));
	p = OPENSSL_malloc(64 << 20);
	ck_assert_ptr_nonnull(p);
	memset(p, 1, 1 << 20);
	OPENSSL_free(p);
	OPENSSL_free(p);
	ck_assert_uint_eq(stats().double_frees, 1);
	ck_assert_ptr_null(OPENSSL_realloc(p, 10));
	ck_assert_uint_eq(stats().double_frees, 2);
	/* Twenty more large frees push it out of the window: unmapped. */
	for (int i = 0; i < 20; i++)
		OPENSSL_free(OPENSSL_malloc((size_t)(40 + i) << 10));
	OPENSSL_free(p);
	ck_assert_uint_eq(stats().double_frees, 3);
	ck_assert_uint_eq(stats().invalid_frees, 0);
	/* Live large blocks work as any other: realloc keeps the bytes. */
	p = OPENSSL_malloc(100 << 10);
	memset(p, 0x5c, 100 << 10);
	r = OPENSSL_realloc(p, 300 << 10);
	ck_assert_ptr_nonnull(r);
	for (size_t i = 0; i < (100 << 10); i += 4093)
		ck_assert_int_eq(r[i], 0x5c);
	OPENSSL_free(r);
	ck_assert_uint_eq(stats().double_frees, 3);
	ck_assert_uint_eq(stats().live_blocks + 0, stats().allocs -
			  stats().frees);
	ossl_proc_teardown();
}
END_TEST

/* Large blocks coming and going, as a program with a 64 KiB buffer per
 * connection does (OpenSSL's ssl_test): every free evicts one block from
 * the window.  An eviction used to move the table entry of the block
 * being freed under a pointer still in use, which lost count of the
 * table until it filled and looped for ever, and called live blocks
 * freed twice. */
START_TEST(large_blocks_come_and_go)
{
	unsigned char *b[5] = { 0 };
	unsigned seed = 5;

	init_with(TL_CONFIG());
	for (int n = 0; n < 100000; n++) {
		int i = rand_r(&seed) % 5;

		if (b[i])
			ck_assert_int_eq(b[i][100], i + 1);
		OPENSSL_free(b[i]);
		b[i] = OPENSSL_malloc(64 << 10);
		ck_assert_ptr_nonnull(b[i]);
		b[i][100] = (unsigned char)(i + 1);
	}
	for (int i = 0; i < 5; i++)
		OPENSSL_free(b[i]);
	ck_assert_uint_eq(stats().double_frees + stats().invalid_frees, 0);
	ossl_proc_teardown();
}
END_TEST

/*
 * A signal handler that frees and allocates on the thread it
 * interrupted, at a high rate, while that thread churns through the
 * allocator: nothing may be corrupted.  Each live block carries its
 * owner's token, so a block handed out twice shows as an overwritten
 * token.  0.2 crashed (SIGSEGV, glibc's "double free or corruption") or
 * handed out hundreds of live blocks twice.
 */
#define SIG_BLOCKS 4000
static void *sig_blocks[SIG_BLOCKS];
static volatile sig_atomic_t sig_next, sig_bad;

static void
on_tick(int sig)
{
	int i = sig_next;
	unsigned char *q;

	(void)sig;
	if (i >= SIG_BLOCKS)
		return;
	sig_next = i + 1;
	OPENSSL_free(sig_blocks[i]);
	q = OPENSSL_malloc(24 + (size_t)i % 200);
	if (q) {
		memset(q, 0xee, 24);
		if (q[23] != 0xee)
			sig_bad = 1;
		OPENSSL_free(q);
	}
}

START_TEST(signal_handler_reenters_allocator)
{
	struct sigaction sa = { .sa_handler = on_tick, .sa_flags = SA_RESTART };
	struct itimerval tick = { { 0, 20 }, { 0, 20 } }, off = { { 0, 0 },
								   { 0, 0 } };
	uint32_t *held[64] = { 0 };
	unsigned seed = 3, twice = 0, failed = 0;
	uint64_t live;
	int armed;

	init_with(TL_CONFIG());
	for (int i = 0; i < SIG_BLOCKS; i++)
		ck_assert_ptr_nonnull(sig_blocks[i] =
				      OPENSSL_malloc(16 + (size_t)i % 300));
	live = stats().live_blocks;
	sigemptyset(&sa.sa_mask);
	ck_assert_int_eq(sigaction(SIGALRM, &sa, NULL), 0);
	/* No check assertion while the timer ticks: check's own malloc and
	 * free would be interrupted by a handler that calls the backend,
	 * which no allocator survives. */
	armed = setitimer(ITIMER_REAL, &tick, NULL);
	for (long n = 0; !armed && n < 3000000 && sig_next < SIG_BLOCKS;
	     n++) {
		unsigned slot = (unsigned)rand_r(&seed) % 64;

		if (held[slot]) {
			twice += held[slot][0] != slot + 1;
			OPENSSL_free(held[slot]);
		}
		held[slot] = OPENSSL_malloc(8 + (size_t)rand_r(&seed) % 600);
		if (!held[slot]) {
			failed++;
			continue;
		}
		held[slot][0] = slot + 1;
	}
	ck_assert_int_eq(setitimer(ITIMER_REAL, &off, NULL), 0);
	signal(SIGALRM, SIG_DFL);
	ck_assert_int_eq(armed, 0);
	ck_assert_uint_eq(failed, 0);
	for (unsigned slot = 0; slot < 64; slot++) {
		if (!held[slot])
			continue;
		twice += held[slot][0] != slot + 1;
		OPENSSL_free(held[slot]);
	}
	for (int i = sig_next; i < SIG_BLOCKS; i++)
		OPENSSL_free(sig_blocks[i]);
	/* The handler ran often enough to matter. */
	ck_assert_int_ge(sig_next, 200);
	ck_assert_uint_eq(twice, 0);
	ck_assert_int_eq(sig_bad, 0);
	ck_assert_uint_eq(stats().double_frees + stats().invalid_frees, 0);
	ck_assert_uint_eq(stats().live_blocks, live - SIG_BLOCKS);
	ossl_proc_teardown();
}
END_TEST

/* Idle threads do not pin memory: 32 threads that each freed 130 KiB
 * hold at most cache_total_bytes cached together, and nothing once they
 * call ossl_proc_thread_release(). */
#define IDLE_THREADS 32
static pthread_barrier_t idle_filled, idle_checked, idle_released;

static void *
idle_worker(void *arg)
{
	void *b[600];

	(void)arg;
	for (int i = 0; i < 600; i++)
		b[i] = OPENSSL_malloc(200);
	for (int i = 0; i < 600; i++)
		OPENSSL_free(b[i]);
	pthread_barrier_wait(&idle_filled);
	pthread_barrier_wait(&idle_checked);
	ossl_proc_thread_release();
	pthread_barrier_wait(&idle_released);
	return NULL;
}

START_TEST(idle_threads_bounded)
{
	pthread_t t[IDLE_THREADS];
	struct ossl_proc_stats st;

	init_with(TL_CONFIG(.cache_total_bytes = 1 << 20));
	ossl_proc_thread_release();
	pthread_barrier_init(&idle_filled, NULL, IDLE_THREADS + 1);
	pthread_barrier_init(&idle_checked, NULL, IDLE_THREADS + 1);
	pthread_barrier_init(&idle_released, NULL, IDLE_THREADS + 1);
	for (int i = 0; i < IDLE_THREADS; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, idle_worker, NULL),
				 0);
	pthread_barrier_wait(&idle_filled);
	st = stats();
	/* They wanted 3.5 MiB together; the pool gave 1 MiB. */
	ck_assert_uint_le(st.cached_bytes, 1 << 20);
	ck_assert_uint_ge(st.cached_bytes, 1 << 19);
	ck_assert_uint_gt(st.quarantined_bytes, 0);
	pthread_barrier_wait(&idle_checked);
	pthread_barrier_wait(&idle_released);
	st = stats();
	ck_assert_uint_eq(st.cached_bytes, 0);
	ck_assert_uint_eq(st.quarantined_bytes, 0);
	for (int i = 0; i < IDLE_THREADS; i++)
		pthread_join(t[i], NULL);
	ossl_proc_teardown();
}
END_TEST

static Suite *
alloc_suite(void)
{
	Suite *s = suite_create("alloc");
	TCase *tc = tcase_create("openssl");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, handshakes_balance);
	tcase_add_test(tc, handshakes_scrub_sites_host);
	suite_add_tcase(s, tc);

	tc = tcase_create("bad-free");
	tcase_add_test(tc, double_free_in_quarantine);
	tcase_add_test(tc, double_free_names_sites);
	tcase_add_test(tc, double_free_after_quarantine);
	tcase_add_test(tc, double_free_of_cached_block);
	tcase_add_test(tc, quarantine_window_in_bytes);
	tcase_add_test(tc, quarantine_window_in_blocks);
	tcase_add_test(tc, header_bound_to_address);
	tcase_add_test(tc, invalid_pointers);
	tcase_add_test(tc, foreign_page_aligned);
	tcase_add_test_raise_signal(tc, abort_policy, SIGABRT);
	suite_add_tcase(s, tc);

	tc = tcase_create("cache");
	tcase_add_test(tc, cache_reuses_by_class);
	tcase_add_test(tc, cache_bytes_bounds_the_cache);
	tcase_add_test(tc, cache_bytes_one_keeps_nothing);
	tcase_add_test(tc, cache_misaligned_link_refused);
	tcase_add_test(tc, refitted_blocks_cached);
	tcase_add_test(tc, cache_null_link_refused);
	tcase_add_test(tc, cache_forged_link_refused);
	tcase_add_test(tc, cache_small_link_refused);
	tcase_add_test(tc, cache_link_to_quarantined_refused);
	suite_add_tcase(s, tc);

	tc = tcase_create("blocks");
	tcase_add_test(tc, scrub_zeroes_freed_blocks);
	tcase_add_test(tc, report_lists_leaks);
	tcase_add_test(tc, exit_leaks_after_cleanup);
	tcase_add_test(tc, exit_leaks_without_cleanup);
	tcase_add_test(tc, report_shared_defaults);
	tcase_add_test(tc, realloc_semantics);
	tcase_add_test(tc, alignment);
	tcase_add_test(tc, refused_chunk_not_offered_again);
	tcase_add_loop_test(tc, backend_aligned_to_8, 0, 1);
	tcase_add_loop_test(tc, backend_aligned_to_8, OSSL_PROC_F_TRACK_SITES,
			    OSSL_PROC_F_TRACK_SITES + 1);
	suite_add_tcase(s, tc);

	tc = tcase_create("races");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, two_threads_one_block);
	tcase_add_test(tc, two_processes_one_block);
	tcase_add_test(tc, stats_under_threads);
	suite_add_tcase(s, tc);

	tc = tcase_create("stacking");
	tcase_add_test(tc, stacks_on_host_functions);
	tcase_add_test(tc, replacement_detected);
	suite_add_tcase(s, tc);

	tc = tcase_create("hardening");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, double_free_of_cached_block_scrub);
	tcase_add_test(tc, double_free_of_cached_block_shared);
	tcase_add_test(tc, forged_nearby_header_refused);
	tcase_add_test(tc, large_double_free_never_faults);
	tcase_add_test(tc, large_blocks_come_and_go);
	tcase_add_test(tc, signal_handler_reenters_allocator);
	tcase_add_test(tc, idle_threads_bounded);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return tl_run(alloc_suite());
}
