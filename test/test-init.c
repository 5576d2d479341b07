/* ossl_proc_init / ossl_proc_teardown: configuration, reference counting,
 * logging, statistics and the report. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/testlog.h"

static struct ossl_proc_stats
stats(void)
{
	struct ossl_proc_stats st = { .size = sizeof(st) };

	ck_assert_int_eq(ossl_proc_get_stats(&st), 0);
	return st;
}

/* The tracked allocator lives in libosslproc.so here: its last teardown
 * pins it. */
START_TEST(init_null_defaults)
{
	ck_assert_int_eq(ossl_proc_init(NULL), 0);
	ck_assert_int_eq(stats().allocator, OSSL_PROC_ALLOC_TRACKED);
	ck_assert_int_eq(ossl_proc_teardown(), OSSL_PROC_UNLOAD_PINNED);
}
END_TEST

START_TEST(refcount_sequence)
{
	struct ossl_proc_config c = tl_config();

	ck_assert_int_eq(ossl_proc_init(&c), 0);
	ck_assert_int_eq(ossl_proc_init(&c), 1);
	ck_assert_int_eq(ossl_proc_init(NULL), 1);
	ck_assert_int_eq(ossl_proc_teardown(), OSSL_PROC_UNLOAD_IN_USE);
	ck_assert_int_eq(ossl_proc_teardown(), OSSL_PROC_UNLOAD_IN_USE);
	ck_assert_int_eq(ossl_proc_teardown(), OSSL_PROC_UNLOAD_PINNED);
	/* The pin is announced at INFO with the reason. */
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_INFO, "stays mapped"), 1);
	tl_stderr_begin();
	ck_assert_int_eq(ossl_proc_teardown(), -EINVAL);
	ck_assert_ptr_nonnull(strstr(tl_stderr_end(),
				     "without a matching ossl_proc_init"));
}
END_TEST

#define RACERS 8
#define ROUNDS 2000

static atomic_int firsts, lasts, in_use, failures;

static void *
racer(void *arg)
{
	(void)arg;
	for (int i = 0; i < ROUNDS; i++) {
		int rc = ossl_proc_init(NULL);

		if (rc == 0)
			atomic_fetch_add(&firsts, 1);
		else if (rc != 1)
			atomic_fetch_add(&failures, 1);
		rc = ossl_proc_teardown();
		if (rc == OSSL_PROC_UNLOAD_IN_USE)
			atomic_fetch_add(&in_use, 1);
		else if (rc == OSSL_PROC_UNLOAD_PINNED)
			atomic_fetch_add(&lasts, 1);
		else
			atomic_fetch_add(&failures, 1);
	}
	return NULL;
}

static void
run_racers(void)
{
	pthread_t t[RACERS];

	for (int i = 0; i < RACERS; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, racer, NULL), 0);
	for (int i = 0; i < RACERS; i++)
		pthread_join(t[i], NULL);
	ck_assert_int_eq(atomic_load(&failures), 0);
}

/* Every first init is matched by exactly one last teardown. */
START_TEST(refcount_threads)
{
	run_racers();
	ck_assert_int_gt(atomic_load(&firsts), 0);
	ck_assert_int_eq(atomic_load(&firsts), atomic_load(&lasts));
	ck_assert_int_eq(atomic_load(&firsts) + atomic_load(&in_use),
			 RACERS * ROUNDS);
	tl_stderr_begin();
	ck_assert_int_eq(ossl_proc_teardown(), -EINVAL);
	tl_stderr_end();
}
END_TEST

/* With a reference held outside, no racer can be first or last. */
START_TEST(refcount_threads_held)
{
	ck_assert_int_eq(ossl_proc_init(NULL), 0);
	run_racers();
	ck_assert_int_eq(atomic_load(&firsts), 0);
	ck_assert_int_eq(atomic_load(&lasts), 0);
	ck_assert_int_eq(atomic_load(&in_use), RACERS * ROUNDS);
	ck_assert_int_eq(ossl_proc_teardown(), OSSL_PROC_UNLOAD_PINNED);
}
END_TEST

static void
assert_rejected(const struct ossl_proc_config *c, const char *why)
{
	tl_stderr_begin();
	ck_assert_int_eq(ossl_proc_init(c), -EINVAL);
	ck_assert_ptr_nonnull(strstr(tl_stderr_end(), why));
	/* Nothing was initialised. */
	tl_stderr_begin();
	ck_assert_int_eq(ossl_proc_teardown(), -EINVAL);
	tl_stderr_end();
}

START_TEST(bad_sizes)
{
	struct {
		struct ossl_proc_config c;
		char tail[16];
	} big;
	struct ossl_proc_config c = OSSL_PROC_CONFIG_INIT;

	c.size = 0;
	assert_rejected(&c, "cfg->size is 0");
	c.size = sizeof(size_t);
	assert_rejected(&c, "cfg->size is 8");
	memset(&big, 0, sizeof(big));
	big.c.size = sizeof(big);
	big.tail[3] = 1;
	assert_rejected(&big.c, "link against a newer osslproc");
	/* A newer caller whose extra fields are all zero is fine. */
	big.tail[3] = 0;
	ck_assert_int_eq(ossl_proc_init(&big.c), 0);
	ck_assert_int_eq(ossl_proc_teardown(), OSSL_PROC_UNLOAD_PINNED);
}
END_TEST

/* A size no struct can have (an uninitialised field) is refused before
 * the tail it claims is read: reading 2^40 bytes crashed init. */
START_TEST(absurd_size_refused)
{
	struct ossl_proc_config c = OSSL_PROC_CONFIG_INIT;

	c.size = (size_t)1 << 40;
	assert_rejected(&c, "larger than any struct ossl_proc_config");
	c.size = 4097;
	assert_rejected(&c, "cfg->size is 4097");
}
END_TEST

START_TEST(bad_values)
{
	struct ossl_proc_allocator half = { .malloc = NULL };
	struct ossl_proc_config c = OSSL_PROC_CONFIG_INIT;

	c.flags = 1u << 20;
	assert_rejected(&c, "unknown flags 0x100000");
	c = (struct ossl_proc_config)OSSL_PROC_CONFIG_INIT;
	c.on_bad_free = 7;
	assert_rejected(&c, "on_bad_free 7");
	c = (struct ossl_proc_config)OSSL_PROC_CONFIG_INIT;
	c.log_level = 99;
	assert_rejected(&c, "log_level 99");
	c = (struct ossl_proc_config)OSSL_PROC_CONFIG_INIT;
	c.allocator = &half;
	assert_rejected(&c, "needs both malloc and free");
}
END_TEST

/* A bad config is reported through the log callback it names. */
START_TEST(bad_flags_logged_to_callback)
{
	struct ossl_proc_config c = tl_config();

	c.flags = 1u << 30;
	tl_expect(OSSL_PROC_LOG_ERROR, "unknown flags");
	ck_assert_int_eq(ossl_proc_init(&c), -EINVAL);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_ERROR, "client bug"), 1);
}
END_TEST

/* An older caller knows only the first fields; the rest are defaults. */
START_TEST(older_caller_prefix)
{
	struct ossl_proc_config c = OSSL_PROC_CONFIG_INIT;

	c.flags = OSSL_PROC_F_NO_ALLOCATOR;
	c.size = offsetof(struct ossl_proc_config, allocator);
	/* Garbage beyond the size the caller knows is never read. */
	c.on_bad_free = 99;
	c.log_level = -5;
	ck_assert_int_eq(ossl_proc_init(&c), 0);
	ck_assert_int_eq(stats().allocator, OSSL_PROC_ALLOC_DISABLED);
	ck_assert_int_eq(ossl_proc_teardown(), OSSL_PROC_UNLOAD_SAFE);
}
END_TEST

START_TEST(second_init_conflict_logged)
{
	struct ossl_proc_config c = tl_config();
	struct ossl_proc_config d = tl_config();

	ck_assert_int_eq(ossl_proc_init(&c), 0);
	d.flags = OSSL_PROC_F_SCRUB;
	tl_expect(OSSL_PROC_LOG_WARNING, "flags of this call differ");
	ck_assert_int_eq(ossl_proc_init(&d), 1);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_WARNING, "ignored"), 1);
	tl_expect(0, NULL);
	/* The same settings again say nothing. */
	ck_assert_int_eq(ossl_proc_init(&c), 1);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_WARNING, NULL), 1);
	d = c;
	d.cache_bytes = 4096;
	tl_expect(OSSL_PROC_LOG_WARNING, "cache_bytes of this call differ");
	ck_assert_int_eq(ossl_proc_init(&d), 1);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_WARNING, "ignored"), 2);
	tl_expect(0, NULL);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(ossl_proc_teardown(), OSSL_PROC_UNLOAD_IN_USE);
	ck_assert_int_eq(ossl_proc_teardown(), OSSL_PROC_UNLOAD_PINNED);
}
END_TEST

START_TEST(cycles)
{
	struct ossl_proc_config c = tl_config();

	for (int i = 0; i < 200; i++) {
		void *p;

		ck_assert_int_eq(ossl_proc_init(&c), 0);
		ck_assert_int_eq(stats().allocator, OSSL_PROC_ALLOC_TRACKED);
		p = OPENSSL_malloc(100);
		ck_assert_ptr_nonnull(p);
		OPENSSL_free(p);
		ck_assert_int_eq(ossl_proc_teardown(),
				 OSSL_PROC_UNLOAD_PINNED);
	}
	/* The allocator kept counting across cycles. */
	ck_assert_uint_ge(stats().allocs, 200);
}
END_TEST

/* Init makes OpenSSL read its configuration file there and then. */
START_TEST(loads_openssl_config)
{
	char path[] = "/tmp/osslproc-conf-XXXXXX";
	int fd = mkstemp(path);
	FILE *f = fdopen(fd, "w");
	SSL_CTX *ctx;

	ck_assert_ptr_nonnull(f);
	fputs("openssl_conf = conf\n[conf]\nssl_conf = ssl\n"
	      "[ssl]\nsystem_default = sys\n[sys]\nMinProtocol = TLSv1.3\n",
	      f);
	fclose(f);
	setenv("OPENSSL_CONF", path, 1);
	ck_assert_int_eq(ossl_proc_init(NULL), 0);
	unlink(path);
	unsetenv("OPENSSL_CONF");
	ctx = SSL_CTX_new(TLS_method());
	ck_assert_ptr_nonnull(ctx);
	ck_assert_int_eq(SSL_CTX_get_min_proto_version(ctx), TLS1_3_VERSION);
	SSL_CTX_free(ctx);
	ossl_proc_teardown();
}
END_TEST

/* A configuration file that makes every SSL_CTX TLS 1.3 only: whether
 * OpenSSL loaded it shows in a new context. */
static char conf_path[64];

static void
conf_min_tls13(void)
{
	int fd;
	FILE *f;

	snprintf(conf_path, sizeof(conf_path), "/tmp/osslproc-conf-XXXXXX");
	fd = mkstemp(conf_path);
	f = fdopen(fd, "w");
	ck_assert_ptr_nonnull(f);
	fputs("openssl_conf = conf\n[conf]\nssl_conf = ssl\n"
	      "[ssl]\nsystem_default = sys\n[sys]\nMinProtocol = TLSv1.3\n",
	      f);
	fclose(f);
	setenv("OPENSSL_CONF", conf_path, 1);
}

static long
new_ctx_min_proto(void)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	long v;

	ck_assert_ptr_nonnull(ctx);
	v = SSL_CTX_get_min_proto_version(ctx);
	SSL_CTX_free(ctx);
	return v;
}

/* The host's OPENSSL_INIT_NO_LOAD_CONFIG reaches OpenSSL: the file
 * OPENSSL_CONF names is not loaded, by init or later. */
START_TEST(init_opts_no_load_config)
{
	conf_min_tls13();
	tl_init(TL_CONFIG(.openssl_init_opts = OPENSSL_INIT_NO_LOAD_CONFIG));
	ck_assert_int_ne(new_ctx_min_proto(), TLS1_3_VERSION);
	unlink(conf_path);
	unsetenv("OPENSSL_CONF");
	ossl_proc_teardown();
}
END_TEST

/* With OSSL_PROC_OPENSSL_INIT_NONE the program's own first choice
 * counts: here it declines the configuration after osslproc's init, and
 * OpenSSL honours that (it would not after an init that loaded it). */
START_TEST(init_opts_none_leaves_choice)
{
	conf_min_tls13();
	tl_init(TL_CONFIG(.openssl_init_opts = OSSL_PROC_OPENSSL_INIT_NONE));
	ck_assert_int_eq(OPENSSL_init_ssl(OPENSSL_INIT_NO_LOAD_CONFIG, NULL),
			 1);
	ck_assert_int_ne(new_ctx_min_proto(), TLS1_3_VERSION);
	unlink(conf_path);
	unsetenv("OPENSSL_CONF");
	ossl_proc_teardown();
}
END_TEST

/* And with the options given, exactly those: the file is loaded. */
START_TEST(init_opts_load_config_given)
{
	conf_min_tls13();
	tl_init(TL_CONFIG(.openssl_init_opts = OPENSSL_INIT_LOAD_CONFIG |
					       OPENSSL_INIT_NO_ATEXIT));
	unlink(conf_path);
	unsetenv("OPENSSL_CONF");
	ck_assert_int_eq(new_ctx_min_proto(), TLS1_3_VERSION);
	ossl_proc_teardown();
}
END_TEST

START_TEST(log_level_filtering)
{
	struct ossl_proc_config c = tl_config();

	c.log_level = OSSL_PROC_LOG_WARNING;
	ck_assert_int_eq(ossl_proc_init(&c), 0);
	ossl_proc_teardown();
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_INFO, NULL), 0);
	c.log_level = OSSL_PROC_LOG_DEBUG;
	ck_assert_int_eq(ossl_proc_init(&c), 0);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_DEBUG, "initialised"), 1);
	ossl_proc_teardown();
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_INFO, "stays mapped"), 1);
}
END_TEST

/* Without a callback, warnings go to stderr, prefixed and whole. */
START_TEST(log_default_stderr)
{
	struct ossl_proc_config c = OSSL_PROC_CONFIG_INIT;
	const char *out;
	char want[64];

	ck_assert_int_eq(ossl_proc_init(NULL), 0);
	c.flags = OSSL_PROC_F_SCRUB;
	tl_stderr_begin();
	ck_assert_int_eq(ossl_proc_init(&c), 1);
	ossl_proc_teardown();
	out = tl_stderr_end();
	snprintf(want, sizeof(want), "osslproc[%ld] warning: ",
		 (long)getpid());
	ck_assert_ptr_nonnull(strstr(out, want));
	/* INFO is below the default level. */
	tl_stderr_begin();
	ossl_proc_teardown();
	ck_assert_ptr_null(strstr(tl_stderr_end(), "stays mapped"));
}
END_TEST

START_TEST(stats_size_checked)
{
	struct {
		struct ossl_proc_stats st;
		unsigned char guard[32];
	} old;
	struct ossl_proc_stats st = { .size = 0 };
	size_t v0 = offsetof(struct ossl_proc_stats, generation) +
		    sizeof(uint64_t);

	ck_assert_int_eq(ossl_proc_init(NULL), 0);
	tl_stderr_begin();
	ck_assert_int_eq(ossl_proc_get_stats(&st), -EINVAL);
	ck_assert_int_eq(ossl_proc_get_stats(NULL), -EINVAL);
	tl_stderr_end();
	/* An older caller's struct ends at .generation: nothing beyond it
	 * is written. */
	memset(&old, 0xa5, sizeof(old));
	old.st.size = v0;
	ck_assert_int_eq(ossl_proc_get_stats(&old.st), 0);
	ck_assert_uint_gt(old.st.allocs, 0);
	for (size_t i = v0; i < sizeof(old.st); i++)
		ck_assert_uint_eq(((unsigned char *)&old.st)[i], 0xa5);
	ossl_proc_teardown();
}
END_TEST

START_TEST(report_prints_state)
{
	char buf[4096];
	FILE *f = tmpfile();
	size_t n;

	ck_assert_int_eq(ossl_proc_init(NULL), 0);
	ck_assert_int_eq(ossl_proc_report(f), 0);
	rewind(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	ck_assert_ptr_nonnull(strstr(buf, "allocator: tracked"));
	ck_assert_ptr_nonnull(strstr(buf, "allocs "));
	ck_assert_ptr_nonnull(strstr(buf, OpenSSL_version(OPENSSL_VERSION)));
	/* The defaults, as init resolved them. */
	ck_assert_ptr_nonnull(strstr(buf, "quarantine 16384 bytes and cache "
				     "524288 bytes per thread"));
	tl_stderr_begin();
	ck_assert_int_eq(ossl_proc_report(NULL), -EINVAL);
	tl_stderr_end();
	ossl_proc_teardown();
}
END_TEST

/* OpenSSL allocated before init: untracked, init still works. */
START_TEST(install_too_late)
{
	struct ossl_proc_config c = tl_config();
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());

	tl_expect(OSSL_PROC_LOG_WARNING, "OpenSSL had already allocated");
	ck_assert_int_eq(ossl_proc_init(&c), 0);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_WARNING,
				  "call ossl_proc_init() before"), 1);
	ck_assert_int_eq(stats().allocator, OSSL_PROC_ALLOC_UNTRACKED);
	ck_assert_uint_eq(stats().allocs, 0);
	SSL_CTX_free(ctx);
	/* Nothing of ours reachable from OpenSSL: nothing pinned. */
	ck_assert_int_eq(ossl_proc_teardown(), OSSL_PROC_UNLOAD_SAFE);
}
END_TEST

START_TEST(no_allocator_flag)
{
	struct ossl_proc_config c = tl_config();

	c.flags = OSSL_PROC_F_NO_ALLOCATOR;
	ck_assert_int_eq(ossl_proc_init(&c), 0);
	ck_assert_int_eq(stats().allocator, OSSL_PROC_ALLOC_DISABLED);
	ck_assert_int_eq(ossl_proc_teardown(), OSSL_PROC_UNLOAD_SAFE);
	ck_assert_int_eq(stats().allocator, OSSL_PROC_ALLOC_NONE);
}
END_TEST

static Suite *
init_suite(void)
{
	Suite *s = suite_create("init");
	TCase *tc = tcase_create("config");

	tcase_add_test(tc, init_null_defaults);
	tcase_add_test(tc, bad_sizes);
	tcase_add_test(tc, absurd_size_refused);
	tcase_add_test(tc, bad_values);
	tcase_add_test(tc, bad_flags_logged_to_callback);
	tcase_add_test(tc, older_caller_prefix);
	tcase_add_test(tc, second_init_conflict_logged);
	tcase_add_test(tc, loads_openssl_config);
	tcase_add_test(tc, init_opts_no_load_config);
	tcase_add_test(tc, init_opts_none_leaves_choice);
	tcase_add_test(tc, init_opts_load_config_given);
	tcase_add_test(tc, install_too_late);
	tcase_add_test(tc, no_allocator_flag);
	suite_add_tcase(s, tc);

	tc = tcase_create("refcount");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, refcount_sequence);
	tcase_add_test(tc, refcount_threads);
	tcase_add_test(tc, refcount_threads_held);
	tcase_add_test(tc, cycles);
	suite_add_tcase(s, tc);

	tc = tcase_create("observe");
	tcase_add_test(tc, log_level_filtering);
	tcase_add_test(tc, log_default_stderr);
	tcase_add_test(tc, stats_size_checked);
	tcase_add_test(tc, report_prints_state);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return tl_run(init_suite());
}
