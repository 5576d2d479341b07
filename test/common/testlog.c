#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testlog.h"

#define TL_MAX 64
#define TL_LEN 512

/* Fixed storage: the handler may run inside OpenSSL's allocator. */
static struct {
	int level;
	char msg[TL_LEN];
} captured[TL_MAX];
static int ncaptured;
static int expect_level;
static const char *expect_needle;
static int saved_stderr = -1;
static char stderr_buf[8192];
static FILE *stderr_file;

struct ossl_proc_config
tl_config(void)
{
	return TL_CONFIG();
}

void
tl_init(struct ossl_proc_config c)
{
	ck_assert_int_eq(ossl_proc_init(&c), 0);
}

static int
expected(enum ossl_proc_log_level level, const char *msg)
{
	return expect_needle && (int)level == expect_level &&
	       strstr(msg, expect_needle);
}

void
tl_log(enum ossl_proc_log_level level, const char *msg, void *arg)
{
	(void)arg;
	if (ncaptured < TL_MAX) {
		captured[ncaptured].level = level;
		snprintf(captured[ncaptured].msg, TL_LEN, "%s", msg);
		ncaptured++;
	}
	if (level <= OSSL_PROC_LOG_WARNING && !expected(level, msg))
		ck_abort_msg("unexpected log (level %d): %s", level, msg);
}

void
tl_expect(enum ossl_proc_log_level level, const char *needle)
{
	expect_level = level;
	expect_needle = needle;
}

int
tl_count(enum ossl_proc_log_level level, const char *needle)
{
	int n = 0;

	for (int i = 0; i < ncaptured; i++)
		if (captured[i].level == (int)level &&
		    (!needle || strstr(captured[i].msg, needle)))
			n++;
	return n;
}

void
tl_reset(void)
{
	ncaptured = 0;
}

void
tl_stderr_begin(void)
{
	fflush(stderr);
	stderr_file = tmpfile();
	ck_assert_ptr_nonnull(stderr_file);
	saved_stderr = dup(STDERR_FILENO);
	dup2(fileno(stderr_file), STDERR_FILENO);
}

const char *
tl_stderr_end(void)
{
	size_t n;

	fflush(stderr);
	dup2(saved_stderr, STDERR_FILENO);
	close(saved_stderr);
	rewind(stderr_file);
	n = fread(stderr_buf, 1, sizeof(stderr_buf) - 1, stderr_file);
	stderr_buf[n] = '\0';
	fclose(stderr_file);
	return stderr_buf;
}

int
tl_run(Suite *s)
{
	SRunner *sr = srunner_create(s);
	int failed;

	srunner_run_all(sr, CK_ENV);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

int
tl_reap(pid_t pid)
{
	int status;

	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	return WIFEXITED(status) ? WEXITSTATUS(status)
				 : 128 + WTERMSIG(status);
}
