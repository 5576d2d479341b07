/* Shared live objects (the Kamailio model): an SSL pair made by one
 * worker in the shared arena, handshaken and used by another, destroyed
 * by its creator through ossl_proc_free_by_owner(); real fork()s, real
 * verified handshakes, and the failures without it. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "common/testlog.h"
#include "common/tls-util.h"

static struct tls_pki *pki;
static SSL_CTX *sctx, *cctx;

/* What the workers pass each other, in memory they all share. */
struct board {
	SSL *client, *server;
	void **blocks;
	int nblocks;
	pid_t creator;
};
static struct board *board;
/* a_to_b: the creator is ready; b_to_a: the user is done. */
static int a_to_b[2], b_to_a[2];

static void
setup(unsigned flags)
{
	struct ossl_proc_arena *arena = ossl_proc_arena_new(64 << 20);

	ck_assert_ptr_nonnull(arena);
	tl_init(TL_CONFIG(.flags = flags,
			  .allocator = ossl_proc_arena_allocator(arena)));
	pki = tls_pki_new();
	ck_assert_ptr_nonnull(pki);
	sctx = tls_server_ctx(pki);
	cctx = tls_client_ctx(pki);
	ck_assert(sctx && cctx);
	board = mmap(NULL, sizeof(*board), PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(board, MAP_FAILED);
	ck_assert_int_eq(pipe(a_to_b), 0);
	ck_assert_int_eq(pipe(b_to_a), 0);
}

static void
say(int fd)
{
	char c = 1;

	if (write(fd, &c, 1) != 1)
		_exit(90);
}

/* Wait (at most 20 s) for the other worker; exits the worker if it
 * never comes. */
static void
hear(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char c;

	if (poll(&p, 1, 20000) != 1 || read(fd, &c, 1) != 1)
		_exit(91);
}

static struct ossl_proc_stats
stats(void)
{
	struct ossl_proc_stats st = { .size = sizeof(st) };

	ossl_proc_get_stats(&st);
	return st;
}

static void
destroy_ssl(void *obj)
{
	SSL_free(obj);
}

static int destroyed;

static void
destroy_block(void *obj)
{
	OPENSSL_free(obj);
	destroyed++;
}

static char not_ours[64] __attribute__((aligned(16)));
static int calls;

static void
count_call(void *obj)
{
	(void)obj;
	calls++;
}

/* Worker failures as exit codes: the test reports which check failed. */
#define CHECK(cond, code) do { if (!(cond)) _exit(code); } while (0)

/*
 * The creator: makes the pair and handshakes it, as a host's worker
 * accepts the connection it read first; lets the other worker use it,
 * then destroys what comes back at its drain.  Its own SSL_CTX copies
 * must be intact, and its books even: every block of the pair freed,
 * here or elsewhere.  (A handshake finished in another worker would tie
 * the objects it makes to that worker's private OpenSSL state: its
 * EVP_KEYMGMT copies, counted there, freed here.  Hosts keep the
 * handshake in the worker that began it; so does this test.)
 */
static void
creator(int expect_back)
{
	struct tls_conn c;
	uint64_t live;
	int n;

	CHECK(tls_handshake(cctx, sctx) == 0, 10); /* OpenSSL's lazy state */
	live = stats().live_blocks;
	CHECK(tls_pair_new(cctx, sctx, &c) == 0, 11);
	CHECK(tls_pair_handshake(&c) == 0, 12);
	board->client = c.client;
	board->server = c.server;
	say(a_to_b[1]);
	hear(b_to_a[0]);
	n = ossl_proc_drain();
	CHECK(n == expect_back, 13);
	CHECK(stats().objects_destroyed == (uint64_t)expect_back, 14);
	if (expect_back)
		CHECK(stats().live_blocks == live, 15);
	CHECK(tls_handshake(cctx, sctx) == 0, 16);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
	CHECK(stats().double_frees == 0, 17);
	_exit(0);
}

/* The other worker: exchanges data on the creator's connection
 * (allocating inside its objects: the client takes the server's session
 * tickets), and hands both back, or frees them itself (@route false:
 * what the hosts do today).  Then it frees its copies of the contexts. */
static void
user(bool route)
{
	struct tls_conn c;

	hear(a_to_b[0]);
	c.client = board->client;
	c.server = board->server;
	CHECK(tls_exchange(&c) == 0, 21);
	if (route) {
		CHECK(ossl_proc_free_by_owner(destroy_ssl, c.client) == 1, 22);
		CHECK(ossl_proc_free_by_owner(destroy_ssl, c.server) == 1, 23);
		CHECK(stats().objects_queued == 2, 24);
	} else {
		SSL_free(c.client);
		SSL_free(c.server);
	}
	say(b_to_a[1]);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
	_exit(stats().double_frees || stats().invalid_frees ? 30 : 0);
}

static void
run_pair(bool route, int *creator_rc, int *user_rc)
{
	pid_t a, b;

	a = fork();
	ck_assert_int_ge(a, 0);
	if (a == 0)
		creator(route ? 2 : 0);
	b = fork();
	ck_assert_int_ge(b, 0);
	if (b == 0)
		user(route);
	*creator_rc = tl_reap(a);
	*user_rc = tl_reap(b);
}

START_TEST(objects_destroyed_by_creator)
{
	int a, b;

	setup(OSSL_PROC_F_SHARED_OBJECTS);
	run_pair(true, &a, &b);
	ck_assert_int_eq(a, 0);
	ck_assert_int_eq(b, 0);
}
END_TEST

/* Negative control: the user frees the creator's SSLs itself.  Each
 * drops a reference on the user's copy of a context the creator's SSL
 * counted in the creator's copy: the user's copy is freed under it, and
 * its own SSL_CTX_free() frees it again. */
START_TEST(objects_freed_elsewhere_double_free_the_context)
{
	int a, b;

	setup(OSSL_PROC_F_SHARED_OBJECTS);
	tl_expect(OSSL_PROC_LOG_WARNING, "not released");
	run_pair(false, &a, &b);
	ck_assert_int_eq(a, 0);
	ck_assert_msg(b == 30 || b > 128, "the user's contexts were not "
		      "freed twice (exit %d)", b);
}
END_TEST

/* Without OSSL_PROC_F_SHARED_OBJECTS the creator's frees of the blocks
 * the user allocated in its objects are refused, and counted. */
START_TEST(objects_without_the_flag_refuse_cross_frees)
{
	pid_t a, b;
	int status_a;

	setup(0);
	tl_expect(OSSL_PROC_LOG_WARNING, "a shared block allocated by");
	a = fork();
	ck_assert_int_ge(a, 0);
	if (a == 0) {
		struct tls_conn c;

		CHECK(tls_pair_new(cctx, sctx, &c) == 0, 11);
		CHECK(tls_pair_handshake(&c) == 0, 12);
		board->client = c.client;
		board->server = c.server;
		say(a_to_b[1]);
		hear(b_to_a[0]);
		CHECK(ossl_proc_drain() == 2, 13);
		_exit(stats().inherited_frees > 0 ? 0 : 40);
	}
	b = fork();
	ck_assert_int_ge(b, 0);
	if (b == 0)
		user(true);
	status_a = tl_reap(a);
	ck_assert_int_eq(tl_reap(b), 0);
	ck_assert_int_eq(status_a, 0);
}
END_TEST

START_TEST(free_by_owner_in_one_process)
{
	void *p;

	setup(OSSL_PROC_F_SHARED_OBJECTS);
	/* Before any fork: private, destroyed at once. */
	p = OPENSSL_malloc(64);
	ck_assert_ptr_nonnull(p);
	ck_assert_int_eq(ossl_proc_free_by_owner(destroy_block, p), 0);
	ck_assert_int_eq(destroyed, 1);
	ck_assert_int_eq(ossl_proc_free_by_owner(destroy_block, NULL), 0);
	ck_assert_int_eq(destroyed, 1);
	/* Not a block of ours at all: destroyed at once too. */
	ck_assert_int_eq(ossl_proc_free_by_owner(count_call, not_ours + 32),
			 0);
	ck_assert_int_eq(calls, 1);
	tl_expect(OSSL_PROC_LOG_ERROR, "destroy is NULL");
	ck_assert_int_eq(ossl_proc_free_by_owner(NULL, p), -EINVAL);
	ck_assert_int_eq(ossl_proc_drain(), 0);
}
END_TEST

/* In a worker, its own shared block is destroyed at once; the queue is
 * bounded, and past the bound an object stays alive (-ENOSPC), never
 * destroyed by the wrong process. */
#define MANY 65537

START_TEST(queue_bounded_and_drained_in_order)
{
	pid_t a, b;

	setup(OSSL_PROC_F_SHARED_OBJECTS);
	a = fork();
	ck_assert_int_ge(a, 0);
	if (a == 0) {
		void *own = OPENSSL_malloc(16);

		CHECK(own && ossl_proc_free_by_owner(destroy_block, own) == 0,
		      50);
		CHECK(destroyed == 1, 51);
		board->blocks = OPENSSL_malloc(sizeof(void *) * MANY);
		CHECK(board->blocks != NULL, 52);
		for (int i = 0; i < MANY; i++) {
			board->blocks[i] = OPENSSL_malloc(8);
			CHECK(board->blocks[i] != NULL, 53);
		}
		board->nblocks = MANY;
		say(a_to_b[1]);
		hear(b_to_a[0]);
		CHECK(ossl_proc_drain() == MANY - 1, 54);
		CHECK(destroyed == MANY, 55);
		/* The one refused is still live, and ours to free. */
		OPENSSL_free(board->blocks[MANY - 1]);
		OPENSSL_free(board->blocks);
		CHECK(stats().objects_destroyed == MANY - 1, 56);
		CHECK(stats().double_frees == 0, 57);
		_exit(0);
	}
	tl_expect(OSSL_PROC_LOG_ERROR, "are queued already");
	b = fork();
	ck_assert_int_ge(b, 0);
	if (b == 0) {
		hear(a_to_b[0]);
		for (int i = 0; i < MANY - 1; i++)
			CHECK(ossl_proc_free_by_owner(destroy_block,
						      board->blocks[i]) == 1,
			      60);
		CHECK(ossl_proc_free_by_owner(destroy_block,
					      board->blocks[MANY - 1]) ==
		      -ENOSPC, 61);
		CHECK(destroyed == 0, 62);
		say(b_to_a[1]);
		_exit(0);
	}
	ck_assert_int_eq(tl_reap(b), 0);
	ck_assert_int_eq(tl_reap(a), 0);
}
END_TEST

/* A creator that exits: what is handed to it afterwards is refused
 * (-ESRCH), what waited for it is dropped by reclaim, once reaped. */
START_TEST(dead_creator)
{
	pid_t a, b;

	setup(OSSL_PROC_F_SHARED_OBJECTS);
	a = fork();
	ck_assert_int_ge(a, 0);
	if (a == 0) {
		board->blocks = OPENSSL_malloc(sizeof(void *) * 2);
		board->blocks[0] = OPENSSL_malloc(32);
		board->blocks[1] = OPENSSL_malloc(32);
		board->creator = getpid();
		say(a_to_b[1]);
		hear(b_to_a[0]);
		_exit(0); /* without draining */
	}
	b = fork();
	ck_assert_int_ge(b, 0);
	if (b == 0) {
		hear(a_to_b[0]);
		CHECK(ossl_proc_free_by_owner(destroy_block,
					      board->blocks[0]) == 1, 70);
		say(b_to_a[1]);
		hear(a_to_b[0]); /* the parent: the creator is reaped */
		CHECK(ossl_proc_free_by_owner(destroy_block,
					      board->blocks[1]) == -ESRCH, 71);
		CHECK(stats().objects_dropped == 1, 72);
		CHECK(destroyed == 0, 73);
		_exit(0);
	}
	tl_expect(OSSL_PROC_LOG_ERROR, "still exists");
	ck_assert_int_eq(ossl_proc_reclaim_objects(getpid()), -EBUSY);
	ck_assert_int_eq(tl_reap(a), 0);
	ck_assert_int_eq(ossl_proc_reclaim_objects(a), 1);
	ck_assert_int_eq(ossl_proc_reclaim_objects(a), 0);
	ck_assert_int_eq(stats().objects_dropped, 1);
	say(a_to_b[1]);
	ck_assert_int_eq(tl_reap(b), 0);
	tl_expect(OSSL_PROC_LOG_ERROR, "client bug");
	ck_assert_int_eq(ossl_proc_reclaim_objects(0), -EINVAL);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("objects");
	TCase *tc = tcase_create("objects");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, objects_destroyed_by_creator);
	tcase_add_test(tc, objects_freed_elsewhere_double_free_the_context);
	tcase_add_test(tc, objects_without_the_flag_refuse_cross_frees);
	tcase_add_test(tc, free_by_owner_in_one_process);
	tcase_add_test(tc, queue_bounded_and_drained_in_order);
	tcase_add_test(tc, dead_creator);
	suite_add_tcase(s, tc);
	return tl_run(s);
}
