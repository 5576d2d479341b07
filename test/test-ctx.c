/* The per-process SSL_CTX: built lazily, rebuilt in each child (real
 * fork()), configured alike, a failing builder retried, one build when
 * threads ask at once, misuse refused. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

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

static atomic_int *builds;   /* shared with children */
static atomic_int fail_next; /* the builder fails while set */

static SSL_CTX *
build_client(void *arg)
{
	SSL_CTX *ctx;

	(void)arg;
	atomic_fetch_add(builds, 1);
	if (atomic_exchange(&fail_next, 0))
		return NULL;
	ctx = tls_client_ctx(pki);
	return ctx;
}

static void
builds_map(void)
{
	builds = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(builds, MAP_FAILED);
	atomic_store(builds, 0);
}

/* The child gets its own context, built there, configured alike. */
START_TEST(ctx_rebuilt_in_child)
{
	struct ossl_proc_ctx *pc;
	SSL_CTX *mine;
	pid_t pid;

	tl_init(TL_CONFIG());
	make_tls();
	builds_map();
	pc = ossl_proc_ctx_new(build_client, NULL);
	ck_assert_ptr_nonnull(pc);
	ck_assert_int_eq(atomic_load(builds), 0); /* lazily */
	mine = ossl_proc_ctx_get(pc);
	ck_assert_ptr_nonnull(mine);
	ck_assert_ptr_eq(ossl_proc_ctx_get(pc), mine);
	ck_assert_int_eq(atomic_load(builds), 1);
	pid = fork();
	if (pid == 0) {
		SSL_CTX *theirs = ossl_proc_ctx_get(pc);

		_exit(theirs && ossl_proc_ctx_get(pc) == theirs &&
		      atomic_load(builds) == 2 &&
		      SSL_CTX_get_verify_mode(theirs) == SSL_VERIFY_PEER &&
		      SSL_CTX_get_min_proto_version(theirs) ==
		      TLS1_3_VERSION &&
		      tls_handshakes(theirs, server, 3) == 3 ? 0 : 1);
	}
	ck_assert_int_eq(tl_reap(pid), 0);
	/* The parent's is untouched. */
	ck_assert_ptr_eq(ossl_proc_ctx_get(pc), mine);
	ck_assert_int_eq(tls_handshakes(mine, server, 1), 1);
	ossl_proc_ctx_free(pc);
	free_tls();
	ossl_proc_teardown();
}
END_TEST

START_TEST(ctx_builder_failure_retried)
{
	struct ossl_proc_ctx *pc;

	tl_init(TL_CONFIG());
	make_tls();
	builds_map();
	pc = ossl_proc_ctx_new(build_client, NULL);
	atomic_store(&fail_next, 1);
	tl_expect(OSSL_PROC_LOG_ERROR, "builder failed");
	ck_assert_ptr_null(ossl_proc_ctx_get(pc));
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_ERROR, "tries again"), 1);
	tl_expect(0, NULL);
	ck_assert_ptr_nonnull(ossl_proc_ctx_get(pc));
	ck_assert_int_eq(atomic_load(builds), 2);
	ossl_proc_ctx_free(pc);
	free_tls();
	ossl_proc_teardown();
}
END_TEST

static struct ossl_proc_ctx *race_pc;
static SSL_CTX *race_got[4];

static void *
ctx_getter(void *arg)
{
	race_got[(intptr_t)arg] = ossl_proc_ctx_get(race_pc);
	return NULL;
}

/* Threads asking at once in a fresh child build once. */
START_TEST(ctx_concurrent_first_get)
{
	pid_t pid;

	tl_init(TL_CONFIG());
	make_tls();
	builds_map();
	race_pc = ossl_proc_ctx_new(build_client, NULL);
	pid = fork();
	if (pid == 0) {
		pthread_t t[4];
		int ok = 1;

		for (intptr_t i = 0; i < 4; i++)
			pthread_create(&t[i], NULL, ctx_getter, (void *)i);
		for (int i = 0; i < 4; i++)
			pthread_join(t[i], NULL);
		for (int i = 0; i < 4; i++)
			ok &= race_got[i] && race_got[i] == race_got[0];
		_exit(ok && atomic_load(builds) == 1 ? 0 : 1);
	}
	ck_assert_int_eq(tl_reap(pid), 0);
	ossl_proc_ctx_free(race_pc);
	free_tls();
	ossl_proc_teardown();
}
END_TEST

START_TEST(ctx_misuse)
{
	tl_init(TL_CONFIG());
	tl_expect(OSSL_PROC_LOG_ERROR, "client bug");
	ck_assert_ptr_null(ossl_proc_ctx_new(NULL, NULL));
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_ptr_null(ossl_proc_ctx_get(NULL));
	ossl_proc_ctx_free(NULL);
	ossl_proc_teardown();
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("ctx");
	TCase *tc = tcase_create("ctx");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, ctx_rebuilt_in_child);
	tcase_add_test(tc, ctx_builder_failure_retried);
	tcase_add_test(tc, ctx_concurrent_first_get);
	tcase_add_test(tc, ctx_misuse);
	suite_add_tcase(s, tc);
	return tl_run(s);
}
