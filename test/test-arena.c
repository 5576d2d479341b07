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
	int64_t drift_blocks = 0, drift_bytes = 0;
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
		int64_t blocks, bytes;
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

		/* Its first locker says whether it died holding the lock
		 * (get_stats, not reclaim: reclaim recovers the lock without
		 * the WARNING, a lib/ bug, reported). */
		tl_reset();
		tl_expect(OSSL_PROC_LOG_WARNING, LOCK_DIED);
		arena_stats(a);
		died_in_lock = tl_count(OSSL_PROC_LOG_WARNING, LOCK_DIED);
		tl_expect(0, NULL);
		ck_assert_int_le(died_in_lock, 1);
		in_lock += died_in_lock;
		ck_assert_int_ge(ossl_proc_arena_reclaim(a, pid), 0);

		st = arena_stats(a);
		blocks = (int64_t)(st.allocs - st.frees) - KEPT;
		bytes = (int64_t)(st.used_bytes - st0.used_bytes);
		if (died_in_lock) {
			ck_assert_int_le(llabs(blocks - drift_blocks), 1);
			ck_assert_int_le(llabs(bytes - drift_bytes),
					 KILL_LARGEST);
		} else {
			ck_assert_int_eq(blocks, drift_blocks);
			ck_assert_int_eq(bytes, drift_bytes);
		}
		drift_blocks = blocks;
		drift_bytes = bytes;
	}
	fprintf(stderr, "%d of %d kills landed inside the arena's lock\n",
		in_lock, KILLS);
	for (int i = 0; i < KEPT; i++) {
		for (size_t n = 0; n < 16 + (size_t)i * 40; n++)
			ck_assert_uint_eq(kept[i][n], 0xc0 + i);
		al->free(kept[i], al->arg);
	}
	/* Read as signed: a reclaimed block whose allocation the counters
	 * missed leaves them short (frees above allocs, used_bytes below
	 * zero, that is wrapped: a lib/ bug, reported, not fixed here). */
	st = arena_stats(a);
	ck_assert_int_le(llabs((int64_t)(st.allocs - st.frees)), in_lock);
	ck_assert_int_le(llabs((int64_t)st.used_bytes),
			 (int64_t)in_lock * KILL_LARGEST);
	ck_assert_uint_eq(st.bad_frees, 0);
	ck_assert_uint_eq(st.failed, 0);
	/* And it serves on: 32 blocks in, 32 blocks out, to the byte. */
	st0 = st;
	for (int i = 0; i < KEPT; i++)
		ck_assert_ptr_nonnull(kept[i] = al->malloc(5000, al->arg));
	for (int i = 0; i < KEPT; i++)
		al->free(kept[i], al->arg);
	st = arena_stats(a);
	ck_assert_uint_eq(st.allocs - st0.allocs, KEPT);
	ck_assert_uint_eq(st.frees - st0.frees, KEPT);
	ck_assert_uint_eq(st.used_bytes, st0.used_bytes);
	ossl_proc_arena_free(a);
	ossl_proc_teardown();
}
END_TEST

/* ---- processes dying inside the lock (the white-box copy) ---- */

/*
 * A worker SIGKILLed while it holds the arena's lock.  The hook stops it
 * at the first commit step of an allocation (the block is off its free
 * list, not yet marked live), so it certainly holds the lock when it is
 * killed.  The next locker recovers the lock (EOWNERDEAD): the parent
 * allocates and frees at once, one WARNING says what happened, exactly
 * the block in flight is lost, and once the worker's blocks are reclaimed
 * the counters balance.
 */
START_TEST(arena_lock_holder_killed)
{
	struct ossl_proc_arena *a = wb_arena_new(64 * 1024);
	const struct ossl_proc_allocator *al;
	struct wb_seen *seen = shared_page();
	struct ossl_proc_arena_stats st;
	struct wb_census cs;
	void *kept, *in_flight, *p;
	int status;
	pid_t pid;

	ck_assert_ptr_nonnull(a);
	al = wb_arena_allocator(a);
	/* One block on the 48-byte list, for the worker to take. */
	kept = al->malloc(40, al->arg);
	in_flight = al->malloc(40, al->arg);
	ck_assert(kept && in_flight);
	al->free(in_flight, al->arg);
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

	tl_expect(OSSL_PROC_LOG_WARNING, LOCK_DIED);
	p = al->malloc(40, al->arg);
	ck_assert_ptr_nonnull(p);
	ck_assert_ptr_ne(p, in_flight);
	al->free(p, al->arg);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_WARNING, LOCK_DIED), 1);
	tl_expect(0, NULL);
	/* Recovered once: the lock works on, silently. */
	al->free(al->malloc(40, al->arg), al->arg);
	ck_assert_int_eq(wb_lock_busy(a), 0);
	wb_census(a, &cs);
	ck_assert_msg(!cs.error, "%s", cs.error);
	ck_assert_uint_eq(cs.owner_deaths, 1);
	ck_assert_uint_eq(cs.unlisted, 1);
	ck_assert_uint_eq(cs.unlisted_bytes, 48);

	ck_assert_uint_eq(wb_owned_by(a, pid), 2);
	ck_assert_int_eq(wb_arena_reclaim(a, pid), 2);
	st = wb_stats(a);
	ck_assert_uint_eq(st.allocs - st.frees, 1);
	ck_assert_uint_eq(st.used_bytes, 48);
	al->free(kept, al->arg);
	st = wb_stats(a);
	ck_assert_uint_eq(st.allocs, st.frees);
	ck_assert_uint_eq(st.used_bytes, 0);
	ck_assert_uint_eq(st.bad_frees, 0);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_WARNING, LOCK_DIED), 1);
	wb_arena_free(a);
}
END_TEST

/*
 * Crash injection at each commit step.  A fresh arena is brought to the
 * same state each round (crash_prepare); a worker then runs the same
 * operations on it (crash_workload) with the hook armed to SIGKILL it at
 * its n-th commit step, for n = 1, 2, ... until a round runs to its end.
 * After each death the parent checks what arena.c's comment promises:
 * the structure is sound (census), at most one block is lost, no block
 * is handed out twice (the parent's blocks keep their patterns, no block
 * is both live and listed, the drain below gets distinct blocks), the
 * lock is recovered with one WARNING, the counters are within one
 * operation of the truth, reclaim frees what the dead processes held,
 * and everything not lost can be allocated again.  Every STEP() line of
 * arena.c must be one of the places a worker died.
 */
#define CRASH_ARENA (64 * 1024)
#define CRASH_MINE 256
#define CRASH_DRAIN 4096

struct crash_world {
	struct ossl_proc_arena *a;
	const struct ossl_proc_allocator *al;
	pid_t helper;                   /* died holding 3 blocks */
	void *p[4], *q[2];              /* 48- and 64-byte blocks */
	unsigned char *mine[CRASH_MINE];/* the parent's, with patterns */
	size_t mine_len[CRASH_MINE];
	int nmine;
};

/* The parent's live blocks, each with a pattern of its own. */
static void *
crash_keep(struct crash_world *w, size_t n)
{
	unsigned char *b = w->al->malloc(n, w->al->arg);

	ck_assert_ptr_nonnull(b);
	ck_assert_int_lt(w->nmine, CRASH_MINE);
	memset(b, 1 + w->nmine % 251, n);
	w->mine[w->nmine] = b;
	w->mine_len[w->nmine++] = n;
	return b;
}

static void
crash_prepare(struct crash_world *w)
{
	struct wb_census cs;
	uint64_t left;
	pid_t pid;

	*w = (struct crash_world){ .a = wb_arena_new(CRASH_ARENA) };
	ck_assert_ptr_nonnull(w->a);
	w->al = wb_arena_allocator(w->a);
	/* A process that died outside the lock, holding three blocks. */
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		_exit(w->al->malloc(100, w->al->arg) &&
		      w->al->malloc(16, w->al->arg) &&
		      w->al->malloc(3000, w->al->arg) ? 0 : 1);
	}
	ck_assert_int_eq(reap(pid), 0);
	w->helper = pid;
	/* The 48-byte list: p[3], then p[1]; p[0] the worker will free;
	 * the 64-byte list: q[1], then q[0]. */
	for (int i = 0; i < 4; i++)
		w->p[i] = w->al->malloc(40, w->al->arg);
	for (int i = 0; i < 2; i++)
		w->q[i] = w->al->malloc(64, w->al->arg);
	ck_assert(w->p[0] && w->p[1] && w->p[2] && w->p[3] && w->q[0] &&
		  w->q[1]);
	memset(w->p[2], 0x5c, 40);
	w->mine[w->nmine] = w->p[2];
	w->mine_len[w->nmine++] = 40;
	w->al->free(w->p[1], w->al->arg);
	w->al->free(w->p[3], w->al->arg);
	w->al->free(w->q[0], w->al->arg);
	w->al->free(w->q[1], w->al->arg);
	/* Bump space left for exactly one 48-byte block (16 + 48). */
	wb_census(w->a, &cs);
	left = cs.bump_left - 64;
	while (left >= 4112 + 64) {
		crash_keep(w, 4096);
		left -= 4112;
	}
	if (left % 32) {
		crash_keep(w, 32);
		left -= 48;
	}
	for (; left; left -= 32)
		crash_keep(w, 16);
	wb_census(w->a, &cs);
	ck_assert_uint_eq(cs.bump_left, 64);
}

/* The worker's operations: two pops, the last bump, a borrow from the
 * next class, frees (one of a block its parent allocated), a reclaim
 * of the dead helper.  Exits 0 when all did what they should. */
static _Noreturn void
crash_workload(struct crash_world *w)
{
	const struct ossl_proc_allocator *al = w->al;
	void *x[5];

	for (int i = 0; i < 4; i++) {
		if (!(x[i] = al->malloc(40, al->arg)))
			_exit(3);
		memset(x[i], 0xee, 40);
	}
	al->free(x[0], al->arg);
	al->free(w->p[0], al->arg);
	al->free(x[3], al->arg);
	if (!(x[4] = al->malloc(40, al->arg)))
		_exit(3);
	memset(x[4], 0xee, 40);
	if (wb_arena_reclaim(w->a, w->helper) != 3)
		_exit(4);
	al->free(x[1], al->arg);
	al->free(x[2], al->arg);
	_exit(x[0] == w->p[3] && x[1] == w->p[1] && x[3] == w->q[1] &&
	      x[4] == w->p[0] ? 0 : 5);
}

/* Within one operation of the truth: one block of the largest class the
 * workload touches (the helper's 3000 bytes), one block in number. */
static void
crash_counters(struct crash_world *w, const struct wb_census *cs,
	       const char *when, unsigned n, int line)
{
	struct ossl_proc_arena_stats st = wb_stats(w->a);
	int64_t bytes = (int64_t)(st.used_bytes - cs->live_bytes);
	int64_t blocks = (int64_t)(st.allocs - st.frees - cs->live);
	int64_t slack = (int64_t)wb_class_size(wb_class_of(3000));

	ck_assert_msg(llabs(bytes) <= slack && llabs(blocks) <= 1 &&
		      cs->live_counter - cs->live + 1 <= 2,
		      "%s a death at step %u (arena.c:%d): used_bytes %llu "
		      "for %llu bytes live, allocs - frees %llu for %llu "
		      "blocks, live counter %llu", when, n, line,
		      (unsigned long long)st.used_bytes,
		      (unsigned long long)cs->live_bytes,
		      (unsigned long long)(st.allocs - st.frees),
		      (unsigned long long)cs->live,
		      (unsigned long long)cs->live_counter);
	ck_assert_uint_eq(st.bad_frees, 0);
}

/* Blocks lost: free on no list, or live and owned by nobody (a free
 * that died after linking the block, before marking it free). */
static uint64_t
crash_lost(struct crash_world *w, const struct wb_census *cs, pid_t worker)
{
	uint64_t owned = wb_owned_by(w->a, getpid()) +
			 wb_owned_by(w->a, worker) +
			 wb_owned_by(w->a, w->helper);

	return cs->unlisted + (cs->live - owned);
}

/* Everything not lost can be allocated again, each block once: the
 * lists' blocks at their class size, then the bump space. */
static void
crash_drain(struct crash_world *w, uint64_t lost, unsigned n, int line)
{
	static unsigned char *got[CRASH_DRAIN];
	uint64_t served = 0;
	struct wb_census cs;
	int ngot = 0;

	wb_census(w->a, &cs);
	for (unsigned c = 0; c < WB_NCLASSES; c++) {
		for (uint64_t i = 0; i < cs.listed_in[c]; i++) {
			size_t sz = wb_class_size(c);

			ck_assert_int_lt(ngot, CRASH_DRAIN);
			got[ngot] = w->al->malloc(sz, w->al->arg);
			ck_assert_ptr_nonnull(got[ngot]);
			memset(got[ngot], ngot % 251, sz);
			served += WB_GRAIN + sz;
			ngot++;
		}
	}
	tl_expect(OSSL_PROC_LOG_ERROR, "is full");
	for (;;) {
		ck_assert_int_lt(ngot, CRASH_DRAIN);
		if (!(got[ngot] = w->al->malloc(16, w->al->arg)))
			break;
		memset(got[ngot], ngot % 251, 16);
		served += WB_GRAIN + 16;
		ngot++;
	}
	tl_expect(0, NULL);
	wb_census(w->a, &cs);
	ck_assert_msg(!cs.error, "%s", cs.error);
	ck_assert_uint_eq(cs.listed, 0);
	ck_assert_uint_eq(cs.live, ngot + lost - cs.unlisted);
	ck_assert_uint_lt(cs.bump_left, WB_GRAIN + 16);
	ck_assert_msg(cs.heap_bytes - cs.bump_left - served <=
		      (lost ? WB_GRAIN + wb_class_size(wb_class_of(3000)) : 0),
		      "after a death at step %u (arena.c:%d) %llu of %llu "
		      "bytes could be allocated again, %llu blocks lost", n,
		      line, (unsigned long long)served,
		      (unsigned long long)(cs.heap_bytes - cs.bump_left),
		      (unsigned long long)lost);
	for (int i = 0; i < ngot; i++) {
		ck_assert_uint_eq(got[i][0], i % 251);
		w->al->free(got[i], w->al->arg);
	}
}

/* The parent's checks after the worker @pid died at step @n (or ran to
 * its end: @died false). */
static void
crash_check(struct crash_world *w, pid_t pid, bool died, unsigned n,
	    int line)
{
	struct wb_census cs;
	uint64_t lost;

	wb_census(w->a, &cs);
	ck_assert_msg(!cs.error, "after a death at step %u (arena.c:%d): %s",
		      n, line, cs.error);
	lost = crash_lost(w, &cs, pid);
	ck_assert_msg(lost <= (died ? 1u : 0u), "a death at step %u "
		      "(arena.c:%d) lost %llu blocks", n, line,
		      (unsigned long long)lost);
	for (int i = 0; i < w->nmine; i++)
		for (size_t k = 0; k < w->mine_len[i]; k++)
			ck_assert_msg(w->mine[i][k] == (i ? 1 + i % 251 : 0x5c),
				      "after a death at step %u (arena.c:%d) "
				      "a block the parent holds was handed "
				      "out", n, line);
	/* The lock: recovered by the first locker, with one WARNING. */
	tl_expect(OSSL_PROC_LOG_WARNING, LOCK_DIED);
	crash_counters(w, &cs, "before reclaiming, after", n, line);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_WARNING, LOCK_DIED), died);
	tl_expect(0, NULL);
	wb_census(w->a, &cs);
	ck_assert_uint_eq(cs.owner_deaths, died);
	/* What the dead held comes back. */
	ck_assert_int_ge(wb_arena_reclaim(w->a, pid), 0);
	ck_assert_int_ge(wb_arena_reclaim(w->a, w->helper), 0);
	ck_assert_uint_eq(wb_owned_by(w->a, pid), 0);
	ck_assert_uint_eq(wb_owned_by(w->a, w->helper), 0);
	wb_census(w->a, &cs);
	ck_assert_msg(!cs.error, "%s", cs.error);
	ck_assert_uint_eq(crash_lost(w, &cs, pid), lost);
	crash_counters(w, &cs, "after reclaiming,", n, line);
	for (int i = 0; i < w->nmine; i++)
		w->al->free(w->mine[i], w->al->arg);
	/* The block the worker was to free, if it is still the parent's. */
	if (wb_owner(w->a, w->p[0]) == getpid())
		w->al->free(w->p[0], w->al->arg);
	crash_drain(w, lost, n, line);
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

	tc = tcase_create("crash");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, arena_lock_holder_killed);
	tcase_add_test(tc, arena_crash_at_each_commit_step);
	suite_add_tcase(s, tc);
	return tl_run(s);
}
