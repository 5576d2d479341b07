/* The built-in process-shared arena: its API on its own, real fork()ed
 * processes sharing it, reclaiming what dead processes left, and (on a
 * copy of arena.c with a hook at each commit step, arena-wb.c) processes
 * that die or stop inside its lock. */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "arena-wb.h"
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

/* Initialises with @c (built by TL_CONFIG() at the call site), the
 * tracked allocator installed. */
static void
init_with(struct ossl_proc_config c)
{
	tl_init(c);
	ck_assert_int_eq(stats().allocator, OSSL_PROC_ALLOC_TRACKED);
}

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

/* The arena as the tracked allocator's shared backend. */
static struct ossl_proc_arena *arena;

static void
init_shared(void)
{
	struct ossl_proc_config c = tl_config();

	arena = ossl_proc_arena_new(64 << 20);
	ck_assert_ptr_nonnull(arena);
	c.allocator = ossl_proc_arena_allocator(arena);
	ck_assert_int_eq(ossl_proc_init(&c), 0);
}

/* A zeroed page shared with the processes forked after. */
static void *
shared_page(void)
{
	void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(p, MAP_FAILED);
	return p;
}

/* Wait for @pid; its exit status, or 128 + signal. */
static int
reap(pid_t pid)
{
	int status;

	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	return WIFEXITED(status) ? WEXITSTATUS(status)
				 : 128 + WTERMSIG(status);
}

static struct ossl_proc_arena_stats
wb_stats(struct ossl_proc_arena *a)
{
	struct ossl_proc_arena_stats st = { .size = sizeof(st) };

	ck_assert_int_eq(wb_arena_get_stats(a, &st), 0);
	return st;
}

/* The WARNING of the first locker after a death inside the lock. */
#define LOCK_DIED "died while holding its lock"

/* ---- the API ---- */

START_TEST(arena_bad_arguments)
{
	struct ossl_proc_config c = tl_config();
	struct ossl_proc_arena_stats st = { .size = 8 };

	ck_assert_int_eq(ossl_proc_init(&c), 0);
	tl_expect(OSSL_PROC_LOG_ERROR, "client bug");
	ck_assert_ptr_null(ossl_proc_arena_new(1000));
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_ptr_null(ossl_proc_arena_new(SIZE_MAX));
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_ptr_null(ossl_proc_arena_allocator(NULL));
	ck_assert_int_eq(ossl_proc_arena_get_stats(NULL, &st), -EINVAL);
	ossl_proc_arena_free(NULL);
	ossl_proc_teardown();
}
END_TEST

/* Full: NULL and one ERROR, never memory outside the mapping; freeing
 * makes room again; foreign and repeated frees are refused. */
START_TEST(arena_full_and_bad_frees)
{
	struct ossl_proc_config c = tl_config();
	struct ossl_proc_arena *a;
	const struct ossl_proc_allocator *al;
	void *blocks[4096];
	int n = 0;

	ck_assert_int_eq(ossl_proc_init(&c), 0);
	a = ossl_proc_arena_new(64 * 1024);
	al = ossl_proc_arena_allocator(a);
	ck_assert(al && al->shared && !al->realloc);
	tl_expect(OSSL_PROC_LOG_ERROR, "create it larger");
	while (n < 4096 && (blocks[n] = al->malloc(100, al->arg))) {
		ck_assert_uint_eq((uintptr_t)blocks[n] % 16, 0);
		ck_assert((char *)blocks[n] > (char *)a &&
			  (char *)blocks[n] + 100 <= (char *)a + 80 * 1024);
		memset(blocks[n++], 0x77, 100);
	}
	ck_assert_int_gt(n, 400);
	ck_assert_ptr_null(al->malloc(100, al->arg));
	ck_assert_uint_eq(arena_stats(a).failed, 2);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_ERROR, "create it larger"), 1);
	al->free(blocks[0], al->arg);
	ck_assert_ptr_eq(al->malloc(100, al->arg), blocks[0]);
	tl_expect(OSSL_PROC_LOG_ERROR, "not a live block");
	al->free((char *)blocks[1] + 16, al->arg);  /* interior */
	al->free(&n, al->arg);                      /* not in the arena */
	al->free(blocks[2], al->arg);
	al->free(blocks[2], al->arg);               /* twice */
	ck_assert_uint_eq(arena_stats(a).bad_frees, 3);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_ERROR, "not a live block"), 1);
	for (int i = 0; i < n; i++)
		if (i != 2)
			al->free(blocks[i], al->arg);
	ck_assert_uint_eq(arena_stats(a).used_bytes, 0);
	ck_assert_uint_eq(arena_stats(a).allocs, arena_stats(a).frees);
	ossl_proc_arena_free(a);
	ossl_proc_teardown();
}
END_TEST

/* The arena under the tracked allocator cannot be unmapped. */
START_TEST(arena_in_use_kept)
{
	struct ossl_proc_arena *a = ossl_proc_arena_new(4 << 20);
	struct ossl_proc_allocator view = *ossl_proc_arena_allocator(a);

	view.shared = 0;
	init_with(TL_CONFIG(.allocator = &view));
	tls_round(2);
	ck_assert_uint_gt(arena_stats(a).allocs, 1000);
	tl_expect(OSSL_PROC_LOG_ERROR, "stays mapped");
	ossl_proc_arena_free(a);
	/* Still mapped: OpenSSL keeps working in it. */
	tls_round(1);
	ck_assert_uint_gt(arena_stats(a).used_bytes, 0);
	ossl_proc_teardown();
}
END_TEST

START_TEST(reclaim_refuses_live_process)
{
	init_shared();
	tl_expect(OSSL_PROC_LOG_ERROR, "still exists");
	ck_assert_int_eq(ossl_proc_arena_reclaim(arena, getpid()), -EBUSY);
	tl_expect(OSSL_PROC_LOG_ERROR, "client bug");
	ck_assert_int_eq(ossl_proc_arena_reclaim(arena, 0), -EINVAL);
	ck_assert_int_eq(ossl_proc_arena_reclaim(NULL, 1), -EINVAL);
	ossl_proc_teardown();
}
END_TEST

/* ---- processes ---- */

#define CHURN_CHILDREN 4
#define CHURN_OPS 20000

/* One worker: random sizes, a pattern per block checked before free. */
static int
churn(const struct ossl_proc_allocator *al, unsigned seed)
{
	unsigned char *held[64] = { 0 };
	size_t len[64] = { 0 };
	unsigned char tag = (unsigned char)seed;
	int bad = 0;

	for (int i = 0; i < CHURN_OPS; i++) {
		int s = rand_r(&seed) % 64;

		if (held[s]) {
			for (size_t k = 0; k < len[s]; k++)
				bad += held[s][k] != (unsigned char)(s + tag);
			al->free(held[s], al->arg);
		}
		len[s] = 1 + (size_t)rand_r(&seed) % (rand_r(&seed) % 8 ? 512
								     : 8192);
		held[s] = al->malloc(len[s], al->arg);
		if (!held[s])
			return -1;
		memset(held[s], (unsigned char)(s + tag), len[s]);
	}
	for (int s = 0; s < 64; s++)
		al->free(held[s], al->arg);
	return bad;
}

START_TEST(arena_processes_churn)
{
	struct ossl_proc_arena *a = ossl_proc_arena_new(16 << 20);
	const struct ossl_proc_allocator *al = ossl_proc_arena_allocator(a);
	pid_t pids[CHURN_CHILDREN];

	for (int i = 0; i < CHURN_CHILDREN; i++) {
		pids[i] = fork();
		ck_assert_int_ge(pids[i], 0);
		if (pids[i] == 0)
			_exit(churn(al, (unsigned)i * 7919 + 1) == 0 ? 0 : 1);
	}
	for (int i = 0; i < CHURN_CHILDREN; i++) {
		int status;

		ck_assert_int_eq(waitpid(pids[i], &status, 0), pids[i]);
		ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
			      "worker %d saw corrupted or missing memory", i);
	}
	ck_assert_uint_eq(arena_stats(a).allocs,
			  (uint64_t)CHURN_CHILDREN * CHURN_OPS);
	ck_assert_uint_eq(arena_stats(a).frees, arena_stats(a).allocs);
	ck_assert_uint_eq(arena_stats(a).used_bytes, 0);
	ck_assert_uint_eq(arena_stats(a).bad_frees, 0);
	ossl_proc_arena_free(a);
}
END_TEST

#define KILLS 40
#define KEPT 32
#define KILL_LARGEST 8192 /* the largest class a killed worker uses */

struct kill_board {
	atomic_uint ops;        /* the current worker's operations */
	atomic_int corrupt;     /* a worker found a block changed */
};

/* Allocates and frees until killed, with a pattern per block checked
 * before its free; a finding ends it with the board's flag set. */
static _Noreturn void
worker_until_killed(const struct ossl_proc_allocator *al, unsigned seed,
		    struct kill_board *b)
{
	static unsigned char want[KILL_LARGEST];
	unsigned char *held[64] = { 0 };
	size_t len[64] = { 0 };
	unsigned char tag = (unsigned char)seed;

	alarm(300); /* if the parent never kills it */
	for (;;) {
		int s = rand_r(&seed) % 64;

		/* Mostly small blocks: most of its time in the arena. */
		if (held[s]) {
			memset(want, (unsigned char)(s + tag), len[s]);
			if (memcmp(held[s], want, len[s])) {
				atomic_store(&b->corrupt, 1);
				_exit(1);
			}
		}
		al->free(held[s], al->arg);
		len[s] = 1 + (size_t)rand_r(&seed) %
			 (rand_r(&seed) % 8 ? 256 : KILL_LARGEST);
		held[s] = al->malloc(len[s], al->arg);
		if (!held[s]) {
			atomic_store(&b->corrupt, 2);
			_exit(2);
		}
		memset(held[s], (unsigned char)(s + tag), len[s]);
		atomic_fetch_add(&b->ops, 1);
	}
}

static void
assert_no_finding(struct kill_board *b)
{
	int finding = atomic_load(&b->corrupt);

	ck_assert_msg(finding == 0, "a worker %s", finding == 1 ?
		      "found one of its blocks changed (handed out twice?)" :
		      "could not allocate");
}

/* Until the worker has done @target operations, within two minutes. */
static void
wait_for_ops(struct kill_board *b, unsigned target)
{
	struct timespec t0, now;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (atomic_load(&b->ops) < target) {
		assert_no_finding(b);
		clock_gettime(CLOCK_MONOTONIC, &now);
		ck_assert_msg(now.tv_sec - t0.tv_sec < 120, "the worker did "
			      "%u of %u operations in two minutes",
			      atomic_load(&b->ops), target);
		sched_yield();
	}
}

/*
 * 40 workers, one after the other, allocate and free in the arena (the
 * shared library's) and are SIGKILLed after a random number of
 * operations, so at a random instruction: outside the arena, or inside
 * its lock.  The parent's first call after each death tells which (the
 * WARNING of a recovered lock); then it reclaims the worker.  A death
 * outside the lock leaves the counters exactly as before the worker; one
 * inside may cost one operation (documented slack).  The parent's own
 * blocks are never handed out, and at the end the counters balance.
 */
START_TEST(arena_workers_killed_at_random)
{
	struct kill_board *b = shared_page();
	struct ossl_proc_arena_stats st0, st;
	const struct ossl_proc_allocator *al;
	struct ossl_proc_arena *a;
	unsigned char *kept[KEPT];
	unsigned seed = 20240;
	int in_lock = 0;

	/* The arena's log is captured, and osslproc's fork handler gives
	 * each worker its own pid for the blocks it allocates (without
	 * ossl_proc_init() they get the pid the parent cached: a lib/
	 * bug, reported, which would make every reclaim return 0). */
	tl_init(TL_CONFIG());
	a = ossl_proc_arena_new(16 << 20);
	ck_assert_ptr_nonnull(a);
	al = ossl_proc_arena_allocator(a);
	for (int i = 0; i < KEPT; i++) {
		kept[i] = al->malloc(16 + (size_t)i * 40, al->arg);
		ck_assert_ptr_nonnull(kept[i]);
		memset(kept[i], 0xc0 + i, 16 + (size_t)i * 40);
	}
	st0 = arena_stats(a);
	for (int k = 0; k < KILLS; k++) {
		unsigned target = 1 + (unsigned)rand_r(&seed) % 3000;
		int died_in_lock;
		pid_t pid;

		atomic_store(&b->ops, 0);
		pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0)
			worker_until_killed(al, seed + (unsigned)k, b);
		wait_for_ops(b, target);
		ck_assert_int_eq(kill(pid, SIGKILL), 0);
		ck_assert_int_eq(reap(pid), 128 + SIGKILL);
		assert_no_finding(b);

		/* Its first locker says whether it died holding the lock. */
		tl_reset();
		tl_expect(OSSL_PROC_LOG_WARNING, LOCK_DIED);
		arena_stats(a);
		died_in_lock = tl_count(OSSL_PROC_LOG_WARNING, LOCK_DIED);
		tl_expect(0, NULL);
		ck_assert_int_le(died_in_lock, 1);
		in_lock += died_in_lock;
		ck_assert_int_ge(ossl_proc_arena_reclaim(a, pid), 0);

		/* Whether it died inside the lock or not, the rebuild and
		 * the reclaim leave the counters exactly as before it. */
		st = arena_stats(a);
		ck_assert_uint_eq(st.allocs - st.frees, KEPT);
		ck_assert_uint_eq(st.used_bytes, st0.used_bytes);
	}
	fprintf(stderr, "%d of %d kills landed inside the arena's lock\n",
		in_lock, KILLS);
	for (int i = 0; i < KEPT; i++) {
		for (size_t n = 0; n < 16 + (size_t)i * 40; n++)
			ck_assert_uint_eq(kept[i][n], 0xc0 + i);
		al->free(kept[i], al->arg);
	}
	st = arena_stats(a);
	ck_assert_uint_eq(st.allocs, st.frees);
	ck_assert_uint_eq(st.used_bytes, 0);
	ck_assert_uint_eq(st.bad_frees, 0);
	ck_assert_uint_eq(st.failed, 0);
	/* Nothing is lost: the arena is one free block again. */
	ck_assert_uint_eq(st.free_blocks, 1);
	ck_assert_uint_eq(st.largest_free, st.capacity);
	ossl_proc_arena_free(a);
	ossl_proc_teardown();
}
END_TEST

/* ---- fragmentation and sizing ---- */

/* Allocates @n-byte blocks from @al until it fails, then frees them all;
 * the number it got. */
static long
burst(const struct ossl_proc_allocator *al, size_t n)
{
	size_t cap = 1 << 20, got = 0;
	void **v = malloc(cap * sizeof(*v));

	ck_assert_ptr_nonnull(v);
	while (got < cap && (v[got] = al->malloc(n, al->arg)))
		got++;
	for (size_t i = 0; i < got; i++)
		al->free(v[i], al->arg);
	free(v);
	return (long)got;
}

/* An empty arena serves any request up to its capacity, whatever was
 * allocated and freed before: a burst of small blocks, then mixed. */
START_TEST(arena_empty_serves_capacity)
{
	struct ossl_proc_config c = tl_config();
	struct ossl_proc_arena_stats st;
	const struct ossl_proc_allocator *al;
	struct ossl_proc_arena *a;
	unsigned seed = 7;
	void *v[256], *all;

	ck_assert_int_eq(ossl_proc_init(&c), 0);
	a = ossl_proc_arena_new(1 << 20);
	al = ossl_proc_arena_allocator(a);
	tl_expect(OSSL_PROC_LOG_ERROR, "is full");
	ck_assert_int_gt(burst(al, 24), 20000);
	for (int i = 0; i < 256; i++)
		v[i] = al->malloc(1 + (size_t)rand_r(&seed) % 6000, al->arg);
	for (int i = 0; i < 256; i += 2)
		al->free(v[i], al->arg);
	for (int i = 1; i < 256; i += 2)
		al->free(v[i], al->arg);
	tl_expect(0, NULL);
	st = arena_stats(a);
	ck_assert_uint_eq(st.used_bytes, 0);
	ck_assert_uint_eq(st.free_blocks, 1);
	ck_assert_uint_eq(st.largest_free, st.capacity);
	ck_assert_uint_ge(st.capacity, (1 << 20) - 16);
	all = al->malloc(st.capacity, al->arg);
	ck_assert_ptr_nonnull(all);
	memset(all, 0x11, st.capacity);
	al->free(all, al->arg);
	ossl_proc_arena_free(a);
	ossl_proc_teardown();
}
END_TEST

/* A worker that does @n verified handshakes on @c and @s and leaves with
 * exit(), which gives its blocks back; exits 0 when
 * all completed, else 10 + the number that did. */
static _Noreturn void
handshake_worker(SSL_CTX *c, SSL_CTX *s, int n)
{
	int done;

	alarm(120);
	done = tls_handshakes(c, s, n);
	exit(done == n ? 0 : 10 + (done > 0 ? done : 0));
}

/*
 * The review's reproduction: in a 16 MiB shared arena (45 times one
 * handshake's peak), one worker allocates 24-byte blocks until the arena
 * is full and frees them all; the workers after it must complete every
 * handshake (0.2, whose blocks never merged: 1 of 10).
 */
START_TEST(arena_burst_then_handshakes)
{
	struct ossl_proc_config c = tl_config();
	const struct ossl_proc_allocator *al;
	struct ossl_proc_arena *a;
	struct tls_pki *pki;
	SSL_CTX *sc, *cc;
	pid_t pid;

	a = ossl_proc_arena_new(16 << 20);
	ck_assert_ptr_nonnull(a);
	al = ossl_proc_arena_allocator(a);
	c.allocator = al;
	ck_assert_int_eq(ossl_proc_init(&c), 0);
	pki = tls_pki_new();
	ck_assert_ptr_nonnull(pki);
	sc = tls_server_ctx(pki);
	cc = tls_client_ctx(pki);
	ck_assert(sc && cc);
	/* As a daemon does: OpenSSL's lazy state made before forking. */
	ck_assert_int_eq(tls_handshakes(cc, sc, 1), 1);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		tl_expect(OSSL_PROC_LOG_ERROR, "is full");
		exit(burst(al, 24) > 100000 ? 0 : 1);
	}
	ck_assert_int_eq(reap(pid), 0);
	ck_assert_uint_eq(arena_stats(a).used_bytes, 0);
	for (int w = 0; w < 3; w++) {
		pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0)
			handshake_worker(cc, sc, 10);
		ck_assert_msg(reap(pid) == 0, "worker %d after the burst did "
			      "not complete its 10 handshakes", w);
	}
	ck_assert_uint_eq(arena_stats(a).used_bytes, 0);
	ck_assert_uint_eq(arena_stats(a).free_blocks, 1);
	SSL_CTX_free(cc);
	SSL_CTX_free(sc);
	tls_pki_free(pki);
	ossl_proc_teardown();
}
END_TEST

#define SIZING "allocate from it"

/*
 * A 1 MiB arena holds the quarantines (64 KiB and an eighth each, no
 * cache) of 8 workers and a handshake's peak, not of 9: the ninth worker's first
 * allocation logs one WARNING saying how to size it; the others none.
 */
START_TEST(arena_sizing_warns_once)
{
	struct ossl_proc_config c = tl_config();
	struct ossl_proc_arena *a = ossl_proc_arena_new(1 << 20);
	int go[2];
	pid_t pids[10];

	ck_assert_ptr_nonnull(a);
	c.allocator = ossl_proc_arena_allocator(a);
	c.quarantine_bytes = 64 * 1024;
	c.cache_bytes = 1; /* no cache: the quarantine is all a worker holds */
	ck_assert_int_eq(ossl_proc_init(&c), 0);
	ck_assert_int_eq(pipe(go), 0);
	for (int i = 0; i < 10; i++) {
		pids[i] = fork();
		ck_assert_int_ge(pids[i], 0);
		if (pids[i] == 0) {
			char byte;
			void *p;

			alarm(60);
			close(go[1]);
			tl_expect(OSSL_PROC_LOG_WARNING, SIZING);
			p = OPENSSL_malloc(100);
			(void)!read(go[0], &byte, 1); /* until all started */
			OPENSSL_free(p);
			_exit(p ? tl_count(OSSL_PROC_LOG_WARNING, SIZING) : 9);
		}
		/* The next one starts after this one allocated. */
		while (arena_stats(a).allocs < (uint64_t)i + 1)
			sched_yield();
	}
	close(go[1]);
	for (int i = 0; i < 10; i++)
		ck_assert_msg(reap(pids[i]) == (i == 8),
			      "worker %d: %s WARNING", i + 1,
			      i == 8 ? "no" : "an unexpected");
	close(go[0]);
	ossl_proc_teardown();
}
END_TEST

/* ---- processes dying inside the lock (the white-box copy) ---- */

/* Everything comes back: the arena is one free block (reading the
 * stats merges the quick lists), the counters balance, the census finds
 * nothing wrong. */
static void
assert_whole(struct ossl_proc_arena *a, const char *when, unsigned n,
	     int line)
{
	struct ossl_proc_arena_stats st = wb_stats(a);
	struct wb_census cs;

	wb_census(a, &cs);
	ck_assert_msg(!cs.error, "%s a death at step %u (arena.c:%d): %s",
		      when, n, line, cs.error);
	ck_assert_msg(cs.blocks == 1 && cs.free == 1 &&
		      cs.largest_free == cs.heap_bytes,
		      "%s a death at step %u (arena.c:%d): %llu blocks, "
		      "largest free %llu of %llu bytes", when, n, line,
		      (unsigned long long)cs.blocks,
		      (unsigned long long)cs.largest_free,
		      (unsigned long long)cs.heap_bytes);
	ck_assert_uint_eq(st.used_bytes, 0);
	ck_assert_uint_eq(st.allocs, st.frees);
	ck_assert_uint_eq(st.bad_frees, 0);
	ck_assert_uint_eq(st.free_blocks, 1);
	ck_assert_uint_eq(st.largest_free, st.capacity);
}

/*
 * A worker SIGKILLed while it holds the arena's lock.  The hook stops it
 * at the first commit step of an allocation (a split, its remainder's
 * header written, the block not yet cut), so it certainly holds the lock
 * when it is killed.  The next locker recovers the lock (EOWNERDEAD) and
 * rebuilds: one WARNING says what happened, nothing is lost, and once
 * the worker's blocks are reclaimed the arena is whole again.
 */
START_TEST(arena_lock_holder_killed)
{
	struct ossl_proc_arena *a = wb_arena_new(64 * 1024);
	const struct ossl_proc_allocator *al;
	struct wb_seen *seen = shared_page();
	struct wb_census cs;
	void *kept, *p;
	int status;
	pid_t pid;

	ck_assert_ptr_nonnull(a);
	al = wb_arena_allocator(a);
	kept = al->malloc(40, al->arg);
	ck_assert_ptr_nonnull(kept);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		void *own[2];

		alarm(30); /* if it never stops */
		own[0] = al->malloc(100, al->arg);
		own[1] = al->malloc(3000, al->arg);
		wb_arm(WB_STOP, 1, seen);
		al->malloc(40, al->arg);
		_exit(own[0] && own[1] ? 0 : 1);
	}
	ck_assert_int_eq(waitpid(pid, &status, WUNTRACED), pid);
	ck_assert_msg(WIFSTOPPED(status), "the worker never stopped in the "
		      "arena (status %#x)", status);
	ck_assert_uint_eq(seen->step, 1);
	ck_assert_int_eq(wb_lock_busy(a), EBUSY);
	ck_assert_int_eq(kill(pid, SIGKILL), 0);
	ck_assert_int_eq(reap(pid), 128 + SIGKILL);
	/* What it left: a sound chain, derived state still to mend. */
	wb_chain(a, &cs);
	ck_assert_msg(!cs.error, "%s", cs.error);

	tl_expect(OSSL_PROC_LOG_WARNING, LOCK_DIED);
	p = al->malloc(40, al->arg);
	ck_assert_ptr_nonnull(p);
	al->free(p, al->arg);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_WARNING, LOCK_DIED), 1);
	tl_expect(0, NULL);
	/* Recovered once: the lock works on, silently. */
	al->free(al->malloc(40, al->arg), al->arg);
	ck_assert_int_eq(wb_lock_busy(a), 0);
	wb_census(a, &cs);
	ck_assert_msg(!cs.error, "%s", cs.error);
	ck_assert_uint_eq(cs.owner_deaths, 1);
	ck_assert_uint_eq(cs.rebuilds, 1);

	ck_assert_uint_eq(wb_owned_by(a, pid), 2);
	ck_assert_int_eq(wb_arena_reclaim(a, pid), 2);
	ck_assert_uint_eq(wb_stats(a).allocs - wb_stats(a).frees, 1);
	al->free(kept, al->arg);
	assert_whole(a, "after", 1, 0);
	wb_arena_free(a);
}
END_TEST

/*
 * Crash injection at each commit step.  A fresh arena is brought to the
 * same state each round (crash_prepare); a worker then runs the same
 * operations on it (crash_workload) with the hook armed to SIGKILL it at
 * its n-th commit step, for n = 1, 2, ... until a round runs to its end.
 * After each death the parent checks what arena.c's comment promises:
 * the chain of headers is sound right away; the first locker recovers
 * the lock with one WARNING and rebuilds; no block is handed out twice
 * (the parent's blocks keep their patterns); the counters are exact;
 * and once the dead are reclaimed and the parent frees what is its own,
 * the arena is one free block again: nothing lost.  Every STEP() line of
 * arena.c must be one of the places a worker died.
 */
#define CRASH_ARENA (64 * 1024)
#define CRASH_P 6

struct crash_world {
	struct ossl_proc_arena *a;
	const struct ossl_proc_allocator *al;
	pid_t helper;                   /* died holding 3 blocks */
	unsigned char *p[CRASH_P];      /* the parent's 40-byte blocks */
};

static void
crash_prepare(struct crash_world *w)
{
	pid_t pid;

	*w = (struct crash_world){ .a = wb_arena_new(CRASH_ARENA) };
	ck_assert_ptr_nonnull(w->a);
	w->al = wb_arena_allocator(w->a);
	/* A process that died outside the lock, holding three blocks at
	 * the start of the heap. */
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		_exit(w->al->malloc(100, w->al->arg) &&
		      w->al->malloc(16, w->al->arg) &&
		      w->al->malloc(3000, w->al->arg) ? 0 : 1);
	}
	ck_assert_int_eq(reap(pid), 0);
	w->helper = pid;
	/* Then p[0..5] and the rest free; p[1] and p[3] are holes. */
	for (int i = 0; i < CRASH_P; i++) {
		w->p[i] = w->al->malloc(40, w->al->arg);
		ck_assert_ptr_nonnull(w->p[i]);
		memset(w->p[i], 0x50 + i, 40);
	}
	w->al->free(w->p[1], w->al->arg);
	w->al->free(w->p[3], w->al->arg);
}

/* The worker's operations: pops from a quick list, splits, frees onto a
 * quick list and frees that merge with the next block and with both
 * (two of them of blocks its parent allocated), a reclaim of the dead
 * helper.  Exits 0 when all did what they should. */
static _Noreturn void
crash_workload(struct crash_world *w)
{
	const struct ossl_proc_allocator *al = w->al;
	unsigned char *x0, *x1, *x2, *x3;

	x0 = al->malloc(40, al->arg);              /* p[3]'s, quick */
	x1 = al->malloc(2000, al->arg);            /* split of the rest */
	x2 = al->malloc(2000, al->arg);            /* split of the rest */
	x3 = al->malloc(40, al->arg);              /* p[1]'s, quick */
	if (!x0 || !x1 || !x2 || !x3)
		_exit(3);
	memset(x1, 0xee, 2000);
	al->free(w->p[5], al->arg);                /* quick */
	al->free(x1, al->arg);                     /* neither */
	al->free(x2, al->arg);                     /* both */
	al->free(x3, al->arg);                     /* quick */
	al->free(w->p[0], al->arg);                /* quick */
	if (wb_arena_reclaim(w->a, w->helper) != 3)
		_exit(4);
	al->free(x0, al->arg);                     /* quick */
	_exit(x0 == w->p[3] && x3 == w->p[1] ? 0 : 5);
}

/* The parent's checks after the worker @pid died at step @n (or ran to
 * its end: @died false). */
static void
crash_check(struct crash_world *w, pid_t pid, bool died, unsigned n,
	    int line)
{
	struct ossl_proc_arena_stats st;
	struct wb_census cs;

	wb_chain(w->a, &cs);
	ck_assert_msg(!cs.error, "right after a death at step %u "
		      "(arena.c:%d): %s", n, line, cs.error);
	for (int i = 2; i < 5; i += 2)
		for (size_t k = 0; k < 40; k++)
			ck_assert_msg(w->p[i][k] == 0x50 + i, "after a death "
				      "at step %u (arena.c:%d) a block the "
				      "parent holds was changed", n, line);
	/* The lock: recovered by the first locker, with one WARNING. */
	tl_expect(OSSL_PROC_LOG_WARNING, LOCK_DIED);
	st = wb_stats(w->a);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_WARNING, LOCK_DIED), died);
	tl_expect(0, NULL);
	wb_census(w->a, &cs);
	ck_assert_msg(!cs.error, "after a death at step %u (arena.c:%d): %s",
		      n, line, cs.error);
	ck_assert_uint_eq(cs.owner_deaths, died);
	/* The counters are the truth again. */
	ck_assert_msg(st.used_bytes == cs.live_bytes &&
		      st.allocs - st.frees == cs.live &&
		      cs.live_counter == cs.live,
		      "after a death at step %u (arena.c:%d): used_bytes %llu "
		      "for %llu bytes live, allocs - frees %llu for %llu "
		      "blocks", n, line, (unsigned long long)st.used_bytes,
		      (unsigned long long)cs.live_bytes,
		      (unsigned long long)(st.allocs - st.frees),
		      (unsigned long long)cs.live);
	/* What the dead held comes back, and what is the parent's. */
	ck_assert_int_ge(wb_arena_reclaim(w->a, pid), 0);
	ck_assert_int_ge(wb_arena_reclaim(w->a, w->helper), 0);
	ck_assert_uint_eq(wb_owned_by(w->a, pid), 0);
	ck_assert_uint_eq(wb_owned_by(w->a, w->helper), 0);
	w->al->free(w->p[2], w->al->arg);
	w->al->free(w->p[4], w->al->arg);
	/* The two the worker was to free, if they are still live. */
	if (wb_owner(w->a, w->p[0]) == getpid())
		w->al->free(w->p[0], w->al->arg);
	if (wb_owner(w->a, w->p[5]) == getpid())
		w->al->free(w->p[5], w->al->arg);
	ck_assert_uint_eq(wb_owned_by(w->a, getpid()), 0);
	assert_whole(w->a, died ? "after" : "without", n, line);
}

START_TEST(arena_crash_at_each_commit_step)
{
	struct wb_seen *seen = shared_page();
	int lines[64], nlines = wb_step_lines(lines, 64);
	bool hit[64] = { false };
	unsigned n;

	ck_assert_int_gt(nlines, 0);
	ck_assert_int_lt(nlines, 64);
	for (n = 1;; n++) {
		struct crash_world w;
		int rc;
		pid_t pid;

		ck_assert_msg(n < 1000, "the workload never ran to its end");
		tl_reset();
		crash_prepare(&w);
		pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			alarm(30);
			wb_arm(WB_KILL, n, seen);
			crash_workload(&w);
		}
		rc = reap(pid);
		if (rc != 128 + SIGKILL) {
			/* n is past the last step: the round ran to its end. */
			ck_assert_msg(rc == 0, "the worker ended with %d", rc);
			ck_assert_uint_eq(seen->step, 0);
			ck_assert_uint_eq(seen->passed, n - 1);
			crash_check(&w, pid, false, n, 0);
			wb_arena_free(w.a);
			break;
		}
		ck_assert_uint_eq(seen->step, n);
		for (int i = 0; i < nlines; i++)
			hit[i] |= lines[i] == seen->line;
		crash_check(&w, pid, true, n, seen->line);
		wb_arena_free(w.a);
	}
	for (int i = 0; i < nlines; i++)
		ck_assert_msg(hit[i], "no worker died at the commit step of "
			      "arena.c:%d: extend crash_workload", lines[i]);
	fprintf(stderr, "crash injection: %u steps, %d STEP() lines\n",
		n - 1, nlines);
}
END_TEST

/*
 * An overflow that overwrites a block's header: the free of that block
 * is refused, the blocks around it are freed and merged as far as the
 * damage allows, and the rest of the arena stays usable.
 */
START_TEST(arena_header_overwritten)
{
	struct ossl_proc_arena *a = wb_arena_new(64 * 1024);
	const struct ossl_proc_allocator *al = wb_arena_allocator(a);
	void *b[3], *big;
	struct wb_census cs;

	for (int i = 0; i < 3; i++)
		ck_assert_ptr_nonnull(b[i] = al->malloc(100, al->arg));
	wb_smash_header(b[1]);
	tl_expect(OSSL_PROC_LOG_ERROR, "not a live block");
	al->free(b[1], al->arg);
	ck_assert_uint_eq(wb_stats(a).bad_frees, 1);
	al->free(b[0], al->arg);
	al->free(b[2], al->arg);
	tl_expect(0, NULL);
	/* The damage is in the chain, where no walk follows it. */
	wb_chain(a, &cs);
	ck_assert_ptr_nonnull(cs.error);
	/* The space after the damage serves a large request still. */
	big = al->malloc(32 * 1024, al->arg);
	ck_assert_ptr_nonnull(big);
	al->free(big, al->arg);
	wb_arena_free(a);
}
END_TEST

/*
 * An overflow that forges a plausible size into the header of a free
 * block at the head of its list (the review's reproduction): the next
 * free of that class once wrote through it, far outside the arena, or
 * onto a live block's header so that a later allocation overlapped a
 * live block.  Now the head is checked first and the arena rebuilt.
 */
START_TEST(arena_forged_size_at_list_head)
{
	struct ossl_proc_arena *a = wb_arena_new(1 << 20);
	const struct ossl_proc_allocator *al = wb_arena_allocator(a);
	char *x = al->malloc(3000, al->arg), *h = al->malloc(3000, al->arg);
	char *y = al->malloc(100, al->arg), *z = al->malloc(3000, al->arg);
	char *w = al->malloc(100, al->arg), *n;
	struct wb_census cs;

	ck_assert(x && h && y && z && w);
	memset(y, 0x3c, 100);
	memset(w, 0x3d, 100);
	al->free(h, al->arg);
	wb_forge_size(h, 1);                        /* one grain too many */
	tl_expect(OSSL_PROC_LOG_ERROR, "overwritten");
	al->free(z, al->arg);                       /* z's class is h's */
	al->free(y, al->arg);
	n = al->malloc(100000, al->arg);
	ck_assert_ptr_nonnull(n);
	ck_assert_msg(w + 100 <= n || w >= n + 100000,
		      "a new block overlaps a live one");
	for (int i = 0; i < 100; i++)
		ck_assert_uint_eq((unsigned char)w[i], 0x3d);
	ck_assert_int_le(tl_count(OSSL_PROC_LOG_ERROR, "overwritten"), 1);
	tl_expect(0, NULL);
	wb_census(a, &cs);
	ck_assert_msg(!cs.error, "%s", cs.error);
	wb_arena_free(a);
}
END_TEST

/* A freed block's list link pointed at itself (a use after free): the
 * stats, which walk the lists, still return, and allocation goes on. */
START_TEST(arena_looping_link)
{
	struct ossl_proc_arena *a = wb_arena_new(1 << 20);
	const struct ossl_proc_allocator *al = wb_arena_allocator(a);
	void *p[4];

	for (int i = 0; i < 4; i++)
		ck_assert_ptr_nonnull(p[i] = al->malloc(5000, al->arg));
	al->free(p[1], al->arg);
	wb_forge_next(a, p[1], p[1]);
	tl_expect(OSSL_PROC_LOG_ERROR, "overwritten");
	wb_stats(a);
	for (int i = 0; i < 8; i++)
		al->free(al->malloc(5000 + (size_t)i * 100, al->arg), al->arg);
	tl_expect(0, NULL);
	ck_assert_int_eq(wb_lock_busy(a), 0);
	wb_arena_free(a);
}
END_TEST

/* A fitting free block behind more than a few smaller ones of its class
 * serves the request (0.3's first version looked at eight). */
START_TEST(arena_fit_behind_smaller_blocks)
{
	struct ossl_proc_arena *a = wb_arena_new(2 << 20);
	const struct ossl_proc_allocator *al = wb_arena_allocator(a);
	void *big, *small[9], *sep[10], *rest;

	/* One 81 KiB block, then nine 64 KiB ones, kept apart. */
	big = al->malloc(81000, al->arg);
	sep[0] = al->malloc(16, al->arg);
	for (int i = 0; i < 9; i++) {
		small[i] = al->malloc(65000, al->arg);
		sep[i + 1] = al->malloc(16, al->arg);
	}
	ck_assert_ptr_nonnull(sep[9]);
	/* The rest of the arena, so nothing larger is free. */
	tl_expect(OSSL_PROC_LOG_ERROR, "is full");
	rest = al->malloc(wb_stats(a).largest_free, al->arg);
	ck_assert_ptr_nonnull(rest);
	al->free(big, al->arg);
	for (int i = 0; i < 9; i++)
		al->free(small[i], al->arg);
	ck_assert_ptr_nonnull(al->malloc(70000, al->arg));
	ck_assert_uint_eq(wb_stats(a).failed, 0);
	tl_expect(0, NULL);
	wb_arena_free(a);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("arena");
	TCase *tc = tcase_create("api");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, arena_bad_arguments);
	tcase_add_test(tc, arena_full_and_bad_frees);
	tcase_add_test(tc, arena_in_use_kept);
	tcase_add_test(tc, reclaim_refuses_live_process);
	suite_add_tcase(s, tc);

	tc = tcase_create("processes");
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, arena_processes_churn);
	tcase_add_test(tc, arena_workers_killed_at_random);
	suite_add_tcase(s, tc);

	tc = tcase_create("fragmentation");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, arena_empty_serves_capacity);
	tcase_add_test(tc, arena_burst_then_handshakes);
	tcase_add_test(tc, arena_sizing_warns_once);
	suite_add_tcase(s, tc);

	tc = tcase_create("crash");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, arena_lock_holder_killed);
	tcase_add_test(tc, arena_crash_at_each_commit_step);
	tcase_add_test(tc, arena_header_overwritten);
	tcase_add_test(tc, arena_forged_size_at_list_head);
	tcase_add_test(tc, arena_looping_link);
	tcase_add_test(tc, arena_fit_behind_smaller_blocks);
	suite_add_tcase(s, tc);
	return tl_run(s);
}
