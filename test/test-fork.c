/* The fork point: real fork(), workers doing verified handshakes, what a
 * child inherits and what it must not, hooks, raw forks. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/rand.h>

#include "common/testlog.h"
#include "common/tls-util.h"

static struct tls_pki *pki;
static SSL_CTX *server, *client;

static void
make_tls(void)
{
	pki = tls_pki_new();
	ck_assert_ptr_nonnull(pki);
	server = tls_server_ctx(pki);
	client = tls_client_ctx(pki);
	ck_assert(server && client);
}

static void
free_tls(void)
{
	SSL_CTX_free(client);
	SSL_CTX_free(server);
	tls_pki_free(pki);
}

#define WORKERS 16
#define HANDSHAKES 20

START_TEST(workers_handshake)
{
	pid_t pids[WORKERS];

	tl_init(TL_CONFIG());
	make_tls();
	ck_assert_int_eq(tls_handshakes(client, server, 2), 2);
	for (int i = 0; i < WORKERS; i++) {
		pids[i] = fork();
		ck_assert_int_ge(pids[i], 0);
		if (pids[i] == 0) {
			int ok = tls_handshakes(client, server, HANDSHAKES);

			_exit(ok == HANDSHAKES && ossl_proc_generation() == 1
			      ? 0 : 1);
		}
	}
	for (int i = 0; i < WORKERS; i++)
		ck_assert_int_eq(tl_reap(pids[i]), 0);
	/* The parent still works and is still generation 0. */
	ck_assert_int_eq(tls_handshakes(client, server, 2), 2);
	ck_assert_uint_eq(ossl_proc_generation(), 0);
	free_tls();
	ossl_proc_teardown();
}
END_TEST

/*
 * The DRBGs a thread holds across a fork stay its own, in both processes
 * (OpenSSL's drbgtest, test_rand_fork_safety, holds them so): the same
 * objects generate on both sides, and differently.
 */
START_TEST(drbg_pointers_survive_fork)
{
	EVP_RAND_CTX *pub, *priv;
	unsigned char mine[32], theirs[32];
	int fds[2];
	pid_t pid;

	tl_init(TL_CONFIG());
	pub = RAND_get0_public(NULL);
	priv = RAND_get0_private(NULL);
	ck_assert(pub && priv);
	ck_assert_int_eq(EVP_RAND_generate(pub, mine, 16, 0, 0, NULL, 0), 1);
	ck_assert_int_eq(pipe(fds), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		unsigned char r[32];
		int ok = RAND_get0_public(NULL) == pub &&
			 RAND_get0_private(NULL) == priv &&
			 EVP_RAND_generate(pub, r, 16, 0, 0, NULL, 0) == 1 &&
			 EVP_RAND_generate(priv, r + 16, 16, 0, 0, NULL, 0) == 1;

		_exit(ok && write(fds[1], r, 32) == 32 ? 0 : 1);
	}
	ck_assert_int_eq(tl_reap(pid), 0);
	ck_assert_int_eq(read(fds[0], theirs, 32), 32);
	/* The parent's own objects, still the thread's, still working. */
	ck_assert_ptr_eq(RAND_get0_public(NULL), pub);
	ck_assert_ptr_eq(RAND_get0_private(NULL), priv);
	ck_assert_int_eq(EVP_RAND_generate(pub, mine, 16, 0, 0, NULL, 0), 1);
	ck_assert_int_eq(EVP_RAND_generate(priv, mine + 16, 16, 0, 0, NULL, 0),
			 1);
	ck_assert(memcmp(mine, theirs, 16) != 0);
	ck_assert(memcmp(mine + 16, theirs + 16, 16) != 0);
	close(fds[0]);
	close(fds[1]);
	ossl_proc_teardown();
}
END_TEST

/* An error the parent raised before fork() is still its own after. */
START_TEST(parent_error_queue_kept)
{
	pid_t pid;

	tl_init(TL_CONFIG());
	ERR_raise(ERR_LIB_USER, ERR_R_INTERNAL_ERROR);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		_exit(ERR_peek_error() == 0 ? 0 : 1);
	ck_assert_int_eq(tl_reap(pid), 0);
	ck_assert_int_eq(ERR_GET_LIB(ERR_peek_error()), ERR_LIB_USER);
	ck_assert_int_eq(ERR_GET_REASON(ERR_get_error()), ERR_R_INTERNAL_ERROR);
	ck_assert_uint_eq(ERR_peek_error(), 0);
	ossl_proc_teardown();
}
END_TEST

/* After the last teardown the allocator stays installed; an ordinary
 * fork's child must not be taken for one that bypassed the handlers. */
START_TEST(fork_after_teardown_is_no_raw_fork)
{
	pid_t pid;

	tl_init(TL_CONFIG());
	ck_assert_int_eq(ossl_proc_teardown(), OSSL_PROC_UNLOAD_PINNED);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		const char *err;
		void *p;

		tl_stderr_begin();
		p = OPENSSL_malloc(100);
		OPENSSL_free(p);
		err = tl_stderr_end();
		_exit(p && !strstr(err, "forked without") &&
		      ossl_proc_generation() == 1 ? 0 : 1);
	}
	ck_assert_int_eq(tl_reap(pid), 0);
}
END_TEST

/* An error left on the parent's queue is not the child's. */
START_TEST(error_queue_not_inherited)
{
	pid_t pid;

	tl_init(TL_CONFIG());
	ERR_raise(ERR_LIB_USER, ERR_R_INTERNAL_ERROR);
	ck_assert_uint_ne(ERR_peek_error(), 0);
	pid = fork();
	if (pid == 0)
		_exit(ERR_peek_error() == 0 ? 0 : 1);
	ck_assert_int_eq(tl_reap(pid), 0);
	ossl_proc_teardown();
}
END_TEST

/* Parent and every child draw different random bytes. */
START_TEST(random_differs)
{
	unsigned char mine[32], theirs[4][32];
	int fds[2];
	pid_t pids[4];

	tl_init(TL_CONFIG());
	ck_assert_int_eq(RAND_bytes(mine, sizeof(mine)), 1);
	ck_assert_int_eq(pipe(fds), 0);
	for (int i = 0; i < 4; i++) {
		pids[i] = fork();
		if (pids[i] == 0) {
			unsigned char r[32];

			_exit(RAND_bytes(r, sizeof(r)) == 1 &&
			      write(fds[1], r, sizeof(r)) == sizeof(r) ? 0 : 1);
		}
		ck_assert_int_eq(tl_reap(pids[i]), 0);
		ck_assert_int_eq(read(fds[0], theirs[i], 32), 32);
	}
	ck_assert_int_eq(RAND_bytes(mine, sizeof(mine)), 1);
	for (int i = 0; i < 4; i++) {
		ck_assert(memcmp(mine, theirs[i], 32) != 0);
		for (int j = 0; j < i; j++)
			ck_assert(memcmp(theirs[j], theirs[i], 32) != 0);
	}
	close(fds[0]);
	close(fds[1]);
	ossl_proc_teardown();
}
END_TEST

START_TEST(generation_counts_lineage)
{
	pid_t pid;

	tl_init(TL_CONFIG());
	ck_assert_uint_eq(ossl_proc_generation(), 0);
	pid = fork();
	if (pid == 0) {
		pid_t grandchild;

		if (ossl_proc_generation() != 1)
			_exit(1);
		grandchild = fork();
		if (grandchild == 0)
			_exit(ossl_proc_generation() == 2 ? 0 : 2);
		_exit(tl_reap(grandchild));
	}
	ck_assert_int_eq(tl_reap(pid), 0);
	ck_assert_uint_eq(ossl_proc_generation(), 0);
	ossl_proc_teardown();
}
END_TEST

/* A child's counters are its own events; live memory includes what it
 * inherited. */
START_TEST(child_stats_are_its_own)
{
	struct ossl_proc_config c = tl_config();
	struct ossl_proc_stats st = { .size = sizeof(st) };
	uint64_t child_live;
	int fds[2];
	void *p;
	pid_t pid;

	c.on_bad_free = OSSL_PROC_BAD_FREE_IGNORE;
	ck_assert_int_eq(ossl_proc_init(&c), 0);
	ck_assert_int_eq(pipe(fds), 0);
	p = OPENSSL_malloc(1000);
	OPENSSL_free(p);
	OPENSSL_free(p); /* a double free, in the parent */
	p = OPENSSL_malloc(5000);
	pid = fork();
	if (pid == 0) {
		void *q[10];

		for (int i = 0; i < 10; i++)
			q[i] = OPENSSL_malloc(100);
		for (int i = 0; i < 10; i++)
			OPENSSL_free(q[i]);
		OPENSSL_free(p); /* inherited, freed here */
		ossl_proc_get_stats(&st);
		if (write(fds[1], &st.live_bytes, 8) != 8)
			_exit(2);
		_exit(st.allocs == 10 && st.frees == 11 &&
		      st.double_frees == 0 && st.generation == 1 ? 0 : 1);
	}
	/* The parent as it was forked (prepare stopped its OpenSSL thread
	 * state), and the child's live bytes without the 5000 it freed. */
	ossl_proc_get_stats(&st);
	ck_assert_int_eq(tl_reap(pid), 0);
	ck_assert_int_eq(read(fds[0], &child_live, 8), 8);
	ck_assert_uint_eq(child_live, st.live_bytes - 5000);
	ck_assert_uint_eq(st.double_frees, 1);
	close(fds[0]);
	close(fds[1]);
	OPENSSL_free(p);
	ossl_proc_teardown();
}
END_TEST

/* ---- hooks ---- */

static char *trace; /* shared with children: what the hooks did */

static void
hook(void *arg)
{
	size_t n = strlen(trace);

	trace[n] = (char)(intptr_t)arg;
	trace[n + 1] = '\0';
}

static void
trace_map(void)
{
	trace = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(trace, MAP_FAILED);
	trace[0] = '\0';
}

START_TEST(hooks_run_in_order_once)
{
	pid_t pid;

	tl_init(TL_CONFIG());
	trace_map();
	ck_assert_int_eq(ossl_proc_on_child(hook, (void *)'a'), 0);
	ck_assert_int_eq(ossl_proc_on_child(hook, (void *)'b'), 0);
	ck_assert_int_eq(ossl_proc_on_child(hook, (void *)'c'), 0);
	pid = fork();
	if (pid == 0) {
		/* By hand after the automatic handler: harmless. */
		int rc = ossl_proc_child_reinit();

		_exit(rc == 0 && ossl_proc_generation() == 1 ? 0 : 1);
	}
	ck_assert_int_eq(tl_reap(pid), 0);
	ck_assert_str_eq(trace, "abc");
	/* Not in the parent. */
	ck_assert_uint_eq(ossl_proc_generation(), 0);
	tl_expect(OSSL_PROC_LOG_ERROR, "client bug");
	ck_assert_int_eq(ossl_proc_on_child(NULL, NULL), -EINVAL);
	ossl_proc_teardown();
}
END_TEST

/*
 * The host's own pthread_atfork handlers, registered before osslproc's,
 * run while osslproc's prepare handler holds its locks (prepare handlers
 * run newest first, parent and child handlers oldest first).  There they
 * use OpenSSL with call sites tracked (OpenSIPS and Kamailio call
 * OPENSSL_thread_stop() in such a handler), read the statistics and
 * register a hook: the fork must not hang (Check's timeout fails it).
 * The host's child handler, which runs before osslproc's, only
 * allocates: the hooks still run in the child, before it calls osslproc.
 */
static int host_handlers_ran;

static void
host_child(void)
{
	OPENSSL_free(OPENSSL_malloc(100));
	host_handlers_ran++;
}

static void
host_atfork_work(void)
{
	struct ossl_proc_stats st = { .size = sizeof(st) };

	OPENSSL_free(OPENSSL_malloc(100));
	OPENSSL_thread_stop();
	ck_assert_int_eq(ossl_proc_get_stats(&st), 0);
	host_handlers_ran++;
}

static void
host_prepare(void)
{
	host_atfork_work();
	ck_assert_int_eq(ossl_proc_on_child(hook, (void *)'p'), 0);
}

START_TEST(host_atfork_handlers_use_osslproc)
{
	pid_t pid;

	ck_assert_int_eq(pthread_atfork(host_prepare, host_atfork_work,
					host_child), 0);
	tl_init(TL_CONFIG(.flags = OSSL_PROC_F_TRACK_SITES));
	trace_map();
	make_tls();
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		_exit(host_handlers_ran == 2 &&
		      tls_handshakes(client, server, 1) == 1 ? 0 : 1);
	ck_assert_int_eq(tl_reap(pid), 0);
	ck_assert_int_eq(host_handlers_ran, 2);
	/* The hook registered inside the prepare handler ran in the child. */
	ck_assert_str_eq(trace, "p");
	ck_assert_int_eq(tls_handshakes(client, server, 1), 1);
	free_tls();
	ossl_proc_teardown();
}
END_TEST

/* A double free names the fork generation that allocated the block: in
 * a worker, an inherited block freed twice says 0, its own block 1. */
START_TEST(double_free_names_generation)
{
	void *inherited;
	pid_t pid;

	tl_init(TL_CONFIG());
	inherited = OPENSSL_malloc(64);
	pid = fork();
	if (pid == 0) {
		void *own = OPENSSL_malloc(64);

		tl_expect(OSSL_PROC_LOG_WARNING, "double free");
		OPENSSL_free(inherited);
		CRYPTO_free(inherited, "worker.c", 1);
		OPENSSL_free(own);
		CRYPTO_free(own, "worker.c", 2);
		_exit(tl_count(OSSL_PROC_LOG_WARNING, "worker.c:1; allocated "
			       "in fork generation 0") == 1 &&
		      tl_count(OSSL_PROC_LOG_WARNING, "worker.c:2; allocated "
			       "in fork generation 1") == 1 ? 0 : 1);
	}
	ck_assert_int_eq(tl_reap(pid), 0);
	OPENSSL_free(inherited);
	ossl_proc_teardown();
}
END_TEST

/* A fork that bypasses pthread_atfork is noticed at the next allocation,
 * with a WARNING, and the child is re-initialised once: the allocator at
 * once, the hooks (which may call OpenSSL) not inside OpenSSL's
 * allocator but at the next osslproc call. */
START_TEST(raw_fork_detected)
{
	pid_t pid;

	tl_init(TL_CONFIG());
	trace_map();
	ck_assert_int_eq(ossl_proc_on_child(hook, (void *)'h'), 0);
	tl_expect(OSSL_PROC_LOG_WARNING, "without pthread_atfork");
	pid = (pid_t)syscall(SYS_fork);
	if (pid == 0) {
		struct ossl_proc_stats st = { .size = sizeof(st) };
		void *p = OPENSSL_malloc(10);
		bool deferred, ran;

		/* One allocation only: its flag page is not re-armed yet. */
		deferred = ossl_proc_generation() == 1 && trace[0] == '\0';
		ossl_proc_get_stats(&st);
		ran = !strcmp(trace, "h");
		ossl_proc_child_reinit();
		OPENSSL_free(p);
		_exit(deferred && ran && tl_count(OSSL_PROC_LOG_WARNING,
						  "call ossl_proc_child_reinit")
		      == 1 ? 0 : 1);
	}
	ck_assert_int_eq(tl_reap(pid), 0);
	ck_assert_str_eq(trace, "h");
	ossl_proc_teardown();
}
END_TEST

/* A host that calls the fork functions itself (OSSL_PROC_F_NO_ATFORK). */
/* A child of a fork that bypassed the handlers counts its own frees even
 * when it frees before it allocates. */
START_TEST(raw_fork_child_counts_first_frees)
{
	void *p[10];
	pid_t pid;

	tl_init(TL_CONFIG());
	for (int i = 0; i < 10; i++)
		ck_assert_ptr_nonnull(p[i] = OPENSSL_malloc(32));
	tl_expect(OSSL_PROC_LOG_WARNING, "without pthread_atfork");
	pid = (pid_t)syscall(SYS_fork);
	if (pid == 0) {
		struct ossl_proc_stats st = { .size = sizeof(st) };

		for (int i = 0; i < 10; i++)
			OPENSSL_free(p[i]);
		ossl_proc_get_stats(&st);
		_exit(st.frees == 10 && st.generation == 1 ? 0 : 1);
	}
	ck_assert_int_eq(tl_reap(pid), 0);
	for (int i = 0; i < 10; i++)
		OPENSSL_free(p[i]);
	ossl_proc_teardown();
}
END_TEST

START_TEST(manual_fork_handlers)
{
	pid_t pid;

	tl_init(TL_CONFIG(.flags = OSSL_PROC_F_NO_ATFORK));
	make_tls();
	ossl_proc_fork_prepare();
	pid = fork();
	if (pid == 0) {
		int rc = ossl_proc_child_reinit();

		_exit(rc == 0 && ossl_proc_generation() == 1 &&
		      tls_handshakes(client, server, 3) == 3 ? 0 : 1);
	}
	ossl_proc_fork_parent();
	ck_assert_int_eq(tl_reap(pid), 0);
	ck_assert_int_eq(tls_handshakes(client, server, 1), 1);
	free_tls();
	ossl_proc_teardown();
}
END_TEST

static pthread_barrier_t hold;

static void *
busy_thread(void *arg)
{
	(void)arg;
	OPENSSL_free(OPENSSL_malloc(64));
	pthread_barrier_wait(&hold); /* it has used OpenSSL */
	pthread_barrier_wait(&hold); /* the fork is over */
	return NULL;
}

/* Forking while another thread has used OpenSSL: quiesced and said so
 * (INFO); without the quiesce, a WARNING. */
START_TEST(threaded_parent_warned)
{
	struct ossl_proc_config c = TL_CONFIG();
	int quiet = _i;
	pthread_t t;
	pid_t pid;

	c.log_level = OSSL_PROC_LOG_INFO;
	if (!quiet)
		c.flags |= OSSL_PROC_F_NO_FORK_QUIESCE;
	tl_init(c);
	pthread_barrier_init(&hold, NULL, 2);
	pthread_create(&t, NULL, busy_thread, NULL);
	pthread_barrier_wait(&hold);
	if (!quiet)
		tl_expect(OSSL_PROC_LOG_WARNING,
			  "other thread(s) that used OpenSSL");
	pid = fork();
	if (pid == 0)
		_exit(0);
	ck_assert_int_eq(tl_reap(pid), 0);
	ck_assert_int_eq(tl_count(quiet ? OSSL_PROC_LOG_INFO :
				  OSSL_PROC_LOG_WARNING, "other thread"), 1);
	pthread_barrier_wait(&hold);
	pthread_join(t, NULL);
	ossl_proc_teardown();
}
END_TEST

static _Atomic int host_frees;

static void *
host_malloc(size_t n, void *arg)
{
	(void)arg;
	return malloc(n);
}

static void
host_free(void *p, void *arg)
{
	(void)arg;
	atomic_fetch_add(&host_frees, 1);
	free(p);
}

/* The child forgets what a thread that does not exist in it held (its
 * quarantine and cache) rather than releasing it: that thread may have
 * been moving blocks when the fork happened. */
START_TEST(vanished_thread_blocks_forgotten)
{
	static const struct ossl_proc_allocator host = {
		.malloc = host_malloc, .free = host_free,
	};
	struct ossl_proc_config c = tl_config();
	pthread_t t;
	pid_t pid;
	int before;

	c.allocator = &host;
	c.cache_bytes = 1; /* past the window, blocks would go back */
	/* The handlers by hand: what prepare frees is not the child's. */
	c.flags = OSSL_PROC_F_NO_ATFORK;
	ck_assert_int_eq(ossl_proc_init(&c), 0);
	pthread_barrier_init(&hold, NULL, 2);
	pthread_create(&t, NULL, busy_thread, NULL);
	pthread_barrier_wait(&hold); /* its block is in its quarantine */
	ossl_proc_fork_prepare();
	before = atomic_load(&host_frees);
	pid = fork();
	if (pid == 0) {
		ossl_proc_child_reinit();
		_exit(atomic_load(&host_frees) == before ? 0 : 1);
	}
	ossl_proc_fork_parent();
	ck_assert_int_eq(tl_reap(pid), 0);
	pthread_barrier_wait(&hold);
	pthread_join(t, NULL);
	/* In the parent the thread's exit gave it back. */
	ck_assert_int_gt(atomic_load(&host_frees), before);
	ossl_proc_teardown();
}
END_TEST

static pthread_barrier_t child_hold;

static void *
child_thread(void *arg)
{
	int n = *(int *)arg;

	for (int i = 0; i < n; i++)
		OPENSSL_free(OPENSSL_malloc(64));
	pthread_barrier_wait(&child_hold); /* its first block */
	pthread_barrier_wait(&child_hold); /* the stats were read */
	for (int i = 0; i < 100; i++)
		OPENSSL_free(OPENSSL_malloc(64));
	return NULL;
}

/* In the child of a threaded parent: the vanished thread's quarantine is
 * not the child's, while a thread the child starts counts in full.
 * The child forgets the parent's threads lazily (at the first read of
 * the registry), by fork generation, so a thread started in the child
 * must not be taken for one of them. */
START_TEST(child_registry_after_threaded_fork)
{
	struct ossl_proc_config c = tl_config();
	struct ossl_proc_stats st = { .size = sizeof(st) };
	uint64_t parent_q;
	pthread_t t;
	pid_t pid;

	ck_assert_int_eq(ossl_proc_init(&c), 0);
	pthread_barrier_init(&hold, NULL, 2);
	pthread_create(&t, NULL, busy_thread, NULL);
	pthread_barrier_wait(&hold); /* its block is in its quarantine */
	ossl_proc_get_stats(&st);
	parent_q = st.quarantined_blocks;
	pid = fork();
	if (pid == 0) {
		struct ossl_proc_stats a = { .size = sizeof(a) };
		struct ossl_proc_stats b = { .size = sizeof(b) };
		int one = 1;
		pthread_t u;

		pthread_barrier_init(&child_hold, NULL, 2);
		if (pthread_create(&u, NULL, child_thread, &one) != 0)
			_exit(2);
		pthread_barrier_wait(&child_hold);
		ossl_proc_get_stats(&a);
		pthread_barrier_wait(&child_hold);
		pthread_join(u, NULL);
		ossl_proc_get_stats(&b);
		if (a.quarantined_blocks >= parent_q + (uint64_t)one)
			_exit(3); /* the parent's thread still counted */
		_exit(b.allocs - a.allocs == 100 && b.frees - a.frees == 100
		      ? 0 : 4);
	}
	ck_assert_int_eq(tl_reap(pid), 0);
	pthread_barrier_wait(&hold);
	pthread_join(t, NULL);
	ossl_proc_teardown();
}
END_TEST

/* ---- shared mode: the built-in arena ---- */

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

static struct ossl_proc_arena_stats
arena_stats(void)
{
	struct ossl_proc_arena_stats st = { .size = sizeof(st) };

	ck_assert_int_eq(ossl_proc_arena_get_stats(arena, &st), 0);
	return st;
}

static int
worker_status(void)
{
	struct ossl_proc_stats st = { .size = sizeof(st) };

	ossl_proc_get_stats(&st);
	return st.double_frees || st.invalid_frees || st.inherited_frees;
}

/* Workers do verified handshakes with their OpenSSL memory in the shared
 * arena; half end with exit() (OpenSSL's cleanup runs), half with _exit()
 * (the parent reclaims what they held). */
START_TEST(shared_workers)
{
	pid_t pids[WORKERS];

	init_shared();
	make_tls();
	ck_assert_int_eq(tls_handshakes(client, server, 2), 2);
	/* Before the first fork everything stays private. */
	ck_assert_uint_eq(arena_stats().allocs, 0);
	for (int i = 0; i < WORKERS; i++) {
		pids[i] = fork();
		ck_assert_int_ge(pids[i], 0);
		if (pids[i] == 0) {
			int bad = tls_handshakes(client, server, HANDSHAKES) !=
				  HANDSHAKES || arena_stats().allocs == 0;

			bad |= worker_status();
			if (i % 2)
				_exit(bad);
			exit(bad);
		}
	}
	for (int i = 0; i < WORKERS; i++)
		ck_assert_int_eq(tl_reap(pids[i]), 0);
	/* Each worker's memory came from the arena (its cache holds its
	 * own shared blocks, so far fewer arena calls than handshakes'). */
	ck_assert_uint_gt(arena_stats().allocs, WORKERS * 100);
	ck_assert_uint_eq(arena_stats().bad_frees, 0);
	/* exit() workers gave everything back; _exit() ones are reclaimed. */
	for (int i = 0; i < WORKERS; i++) {
		int n = ossl_proc_arena_reclaim(arena, pids[i]);

		if (i % 2)
			ck_assert_int_gt(n, 0);
		else
			ck_assert_int_eq(n, 0);
	}
	ck_assert_uint_eq(arena_stats().used_bytes, 0);
	ck_assert_uint_eq(arena_stats().allocs, arena_stats().frees);
	/* The parent handshakes on, in private memory. */
	ck_assert_int_eq(tls_handshakes(client, server, 2), 2);
	ck_assert_uint_eq(arena_stats().used_bytes, 0);
	free_tls();
	ossl_proc_teardown();
}
END_TEST

/* A worker frees what another worker allocated in shared memory: never
 * released, counted, a WARNING naming both processes. */
START_TEST(shared_free_by_other_process)
{
	_Atomic(void *) *slot;
	pid_t a, b;

	init_shared();
	slot = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(slot, MAP_FAILED);
	a = fork();
	if (a == 0) {
		atomic_store(slot, OPENSSL_malloc(100));
		pause(); /* keeps the block alive until killed */
		_exit(0);
	}
	while (!atomic_load(slot))
		;
	b = fork();
	if (b == 0) {
		struct ossl_proc_stats st0 = { .size = sizeof(st0) };
		struct ossl_proc_stats st = { .size = sizeof(st) };
		char want[64];

		snprintf(want, sizeof(want), "process %ld freed", (long)getpid());
		tl_expect(OSSL_PROC_LOG_WARNING, "allocated by process");
		ossl_proc_get_stats(&st0);
		OPENSSL_free(atomic_load(slot));
		ossl_proc_get_stats(&st);
		_exit(st.inherited_frees == 1 && st.frees == st0.frees &&
		      tl_count(OSSL_PROC_LOG_WARNING, want) == 1 ? 0 : 1);
	}
	ck_assert_int_eq(tl_reap(b), 0);
	/* Still allocated: b did not release it. */
	ck_assert_uint_eq(arena_stats().frees, 0);
	kill(a, SIGKILL);
	ck_assert_int_eq(tl_reap(a), 128 + SIGKILL);
	/* Its block, and its OpenSSL thread state; b's state too. */
	ck_assert_int_ge(ossl_proc_arena_reclaim(arena, a), 1);
	ck_assert_int_ge(ossl_proc_arena_reclaim(arena, b), 0);
	ck_assert_uint_eq(arena_stats().used_bytes, 0);
	ossl_proc_teardown();
}
END_TEST

/* The same with a whole SSL object: a host handing a live connection to
 * another worker.  Nothing of it is released by the wrong process. */
START_TEST(shared_ssl_freed_by_other_process)
{
	_Atomic(SSL *) *slot;
	pid_t a, b;

	init_shared();
	make_tls();
	slot = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(slot, MAP_FAILED);
	a = fork();
	if (a == 0) {
		atomic_store(slot, SSL_new(client));
		pause();
		_exit(0);
	}
	while (!atomic_load(slot))
		;
	b = fork();
	if (b == 0) {
		struct ossl_proc_stats st = { .size = sizeof(st) };
		uint64_t used = arena_stats().used_bytes;

		/* Its OpenSSL state does not match the object's either, so
		 * double frees follow too: all refused, all logged. */
		tl_expect(OSSL_PROC_LOG_WARNING, "not released");
		SSL_free(atomic_load(slot));
		ossl_proc_get_stats(&st);
		_exit(st.inherited_frees > 0 &&
		      tl_count(OSSL_PROC_LOG_WARNING, "allocated by process")
		      == 1 && arena_stats().used_bytes >= used ? 0 : 1);
	}
	ck_assert_int_eq(tl_reap(b), 0);
	kill(a, SIGKILL);
	ck_assert_int_eq(tl_reap(a), 128 + SIGKILL);
	ck_assert_int_gt(ossl_proc_arena_reclaim(arena, a), 0);
	ossl_proc_arena_reclaim(arena, b);
	ck_assert_uint_eq(arena_stats().used_bytes, 0);
	free_tls();
	ossl_proc_teardown();
}
END_TEST

/* A shared host allocator that hands out exactly what is asked, with a
 * guard pattern right after each block, checked when it is freed. */
static const unsigned char guard[8] = { 0xde, 0xad, 0xbe, 0xef,
					 0xca, 0xfe, 0xba, 0xbe };
static int guards_broken;

static void *
exact_malloc(size_t n, void *arg)
{
	unsigned char *b = aligned_alloc(16, (n + 8 + 16 + 15) & ~(size_t)15);

	(void)arg;
	if (!b)
		return NULL;
	memcpy(b, &n, sizeof(n));
	memcpy(b + 16 + n, guard, sizeof(guard));
	return b + 16;
}

static void
exact_free(void *p, void *arg)
{
	unsigned char *b = (unsigned char *)p - 16;
	size_t n;

	(void)arg;
	memcpy(&n, b, sizeof(n));
	guards_broken += memcmp(b + 16 + n, guard, sizeof(guard)) != 0;
	free(b);
}

/* A worker's tiny blocks (shared, so of no size class) pass through the
 * quarantine and back to the backend without osslproc writing past
 * them. */
START_TEST(shared_tiny_blocks_not_overrun)
{
	static const struct ossl_proc_allocator exact = {
		.malloc = exact_malloc, .free = exact_free, .shared = 1,
	};
	struct ossl_proc_config c = tl_config();
	pid_t pid;

	c.allocator = &exact;
	ck_assert_int_eq(ossl_proc_init(&c), 0);
	pid = fork();
	if (pid == 0) {
		for (int i = 0; i < 2000; i++)
			OPENSSL_free(OPENSSL_malloc(1 + i % 7));
		_exit(ossl_proc_generation() == 1 && guards_broken == 0 ? 0
									: 1);
	}
	ck_assert_int_eq(tl_reap(pid), 0);
	ck_assert_int_eq(guards_broken, 0);
	ossl_proc_teardown();
}
END_TEST

/* What a shared worker frees of its private inheritance goes back to the
 * backend, never to the worker's cache, which holds the worker's own
 * shared blocks: an allocation in the worker never returns private
 * memory (a copy-on-write page other workers cannot see). */
START_TEST(shared_worker_keeps_no_private_blocks)
{
	enum { N = 100 };
	char *inherited[N];
	pid_t pid;

	init_shared();
	for (int i = 0; i < N; i++)
		ck_assert_ptr_nonnull(inherited[i] = OPENSSL_malloc(100));
	pid = fork();
	if (pid == 0) {
		struct ossl_proc_stats st = { .size = sizeof(st) };
		uint64_t span = arena_stats().capacity + (1u << 20);
		int bad = 0;

		/* 1,000 frees of the worker's own push them out of the
		 * 64 KiB window. */
		for (int i = 0; i < N; i++)
			OPENSSL_free(inherited[i]);
		for (int i = 0; i < 1000; i++)
			OPENSSL_free(OPENSSL_malloc(100));
		for (int i = 0; i < 2 * N; i++) {
			char *p = OPENSSL_malloc(100);

			bad |= !p || (uintptr_t)(p - (char *)arena) >= span;
			for (int k = 0; k < N; k++)
				bad |= p == inherited[k];
		}
		ossl_proc_get_stats(&st);
		_exit(!bad && st.double_frees + st.invalid_frees == 0 ? 0 : 1);
	}
	ck_assert_int_eq(tl_reap(pid), 0);
	for (int i = 0; i < N; i++)
		OPENSSL_free(inherited[i]);
	ossl_proc_teardown();
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("fork");
	TCase *tc = tcase_create("private");

	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, workers_handshake);
	tcase_add_test(tc, error_queue_not_inherited);
	tcase_add_test(tc, parent_error_queue_kept);
	tcase_add_test(tc, drbg_pointers_survive_fork);
	tcase_add_test(tc, fork_after_teardown_is_no_raw_fork);
	tcase_add_test(tc, random_differs);
	tcase_add_test(tc, child_stats_are_its_own);
	tcase_add_test(tc, generation_counts_lineage);
	tcase_add_test(tc, hooks_run_in_order_once);
	tcase_add_test(tc, raw_fork_detected);
	tcase_add_test(tc, double_free_names_generation);
	tcase_add_test(tc, host_atfork_handlers_use_osslproc);
	tcase_add_test(tc, raw_fork_child_counts_first_frees);
	tcase_add_test(tc, manual_fork_handlers);
	tcase_add_loop_test(tc, threaded_parent_warned, 0, 2);
	tcase_add_test(tc, vanished_thread_blocks_forgotten);
	tcase_add_test(tc, child_registry_after_threaded_fork);
	suite_add_tcase(s, tc);

	tc = tcase_create("shared");
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, shared_workers);
	tcase_add_test(tc, shared_free_by_other_process);
	tcase_add_test(tc, shared_ssl_freed_by_other_process);
	tcase_add_test(tc, shared_tiny_blocks_not_overrun);
	tcase_add_test(tc, shared_worker_keeps_no_private_blocks);
	suite_add_tcase(s, tc);
	return tl_run(s);
}
