/* Logging never allocates: it may run inside OpenSSL's allocator.  This
 * executable interposes malloc and friends (through glibc's __libc_*
 * entry points) to count what the logging path allocates. */
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>

#include "common/testlog.h"

void *__libc_malloc(size_t n);
void *__libc_calloc(size_t n, size_t m);
void *__libc_realloc(void *p, size_t n);
void __libc_free(void *p);

static _Thread_local int watching;
static atomic_int allocations;

void *
malloc(size_t n)
{
	if (watching)
		atomic_fetch_add(&allocations, 1);
	return __libc_malloc(n);
}

void *
calloc(size_t n, size_t m)
{
	if (watching)
		atomic_fetch_add(&allocations, 1);
	return __libc_calloc(n, m);
}

void *
realloc(void *p, size_t n)
{
	if (watching)
		atomic_fetch_add(&allocations, 1);
	return __libc_realloc(p, n);
}

void
free(void *p)
{
	__libc_free(p);
}

static int delivered;
static char last[1100];

static void
count_log(enum ossl_proc_log_level level, const char *msg, void *arg)
{
	(void)level;
	(void)arg;
	delivered++;
	snprintf(last, sizeof(last), "%s", msg);
}

/* A long warning (a conflicting second init) through a callback and
 * through stderr: no allocation on either path. */
START_TEST(log_does_not_allocate)
{
	struct ossl_proc_config c = OSSL_PROC_CONFIG_INIT;
	struct ossl_proc_config d = OSSL_PROC_CONFIG_INIT;
	void *volatile probe;
	int rc;

	c.log = count_log;
	ck_assert_int_eq(ossl_proc_init(&c), 0);
	/* The counter works: a direct malloc is seen. */
	watching = 1;
	probe = malloc(10);
	watching = 0;
	free(probe);
	ck_assert_int_eq(atomic_load(&allocations), 1);
	atomic_store(&allocations, 0);

	d.log = count_log;
	d.flags = OSSL_PROC_F_SCRUB;
	watching = 1;
	rc = ossl_proc_init(&d);
	watching = 0;
	ck_assert_int_eq(rc, 1);
	ck_assert_int_eq(delivered, 1);
	ck_assert_ptr_nonnull(strstr(last, "differ"));
	ck_assert_int_eq(atomic_load(&allocations), 0);
	ossl_proc_teardown();
	ossl_proc_teardown();
}
END_TEST

START_TEST(stderr_does_not_allocate)
{
	struct ossl_proc_config d = OSSL_PROC_CONFIG_INIT;
	int rc;

	ck_assert_int_eq(ossl_proc_init(NULL), 0);
	d.flags = OSSL_PROC_F_SCRUB;
	tl_stderr_begin();
	watching = 1;
	rc = ossl_proc_init(&d);
	watching = 0;
	ck_assert_int_eq(rc, 1);
	ck_assert_ptr_nonnull(strstr(tl_stderr_end(), "differ"));
	ck_assert_int_eq(atomic_load(&allocations), 0);
	ossl_proc_teardown();
	ossl_proc_teardown();
}
END_TEST

/* A line longer than the buffer is cut, not overflowed or allocated: a
 * bad free whose call site names a 2 KiB file. */
START_TEST(long_line_truncated)
{
	struct ossl_proc_config c = OSSL_PROC_CONFIG_INIT;
	_Alignas(16) char not_ours[64] = { 0 };
	char path[2048];

	memset(path, 'x', sizeof(path) - 1);
	path[sizeof(path) - 1] = '\0';
	c.log = count_log;
	ck_assert_int_eq(ossl_proc_init(&c), 0);
	watching = 1;
	CRYPTO_free(not_ours + 16, path, 1);
	watching = 0;
	ck_assert_int_eq(atomic_load(&allocations), 0);
	ck_assert_int_eq(delivered, 1);
	ck_assert_ptr_nonnull(strstr(last, "never returned"));
	ck_assert_uint_eq(strlen(last), 1023);
	ossl_proc_teardown();
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("log");
	TCase *tc = tcase_create("no-allocation");

	tcase_add_test(tc, log_does_not_allocate);
	tcase_add_test(tc, stderr_does_not_allocate);
	tcase_add_test(tc, long_line_truncated);
	suite_add_tcase(s, tc);
	return tl_run(s);
}
