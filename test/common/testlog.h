/* Log capture for tests: any ERROR or WARNING that a test did not announce
 * with tl_expect() fails it. */
#ifndef TESTLOG_H
#define TESTLOG_H

#include <check.h>
#include <sys/types.h>

#include <osslproc.h>

/* A config whose log goes to the capture handler, at INFO. */
struct ossl_proc_config tl_config(void);
/* The same as a compound literal, with the fields a test sets named at
 * the call site: TL_CONFIG(.allocator = &host, .quarantine_bytes = 64).
 * Fields left out keep their defaults (0); do not name log, log_level or
 * size again (set them on a copy instead). */
#define TL_CONFIG(...) \
	((struct ossl_proc_config){ \
		.size = sizeof(struct ossl_proc_config), \
		.log = tl_log, \
		.log_level = OSSL_PROC_LOG_INFO, \
		__VA_ARGS__ \
	})
/* ossl_proc_init(&c), asserting that it initialised (returned 0). */
void tl_init(struct ossl_proc_config c);
/* The capture handler itself, for configs built by hand. */
void tl_log(enum ossl_proc_log_level level, const char *msg, void *arg);
/* Announce that the next messages at @level containing @needle are
 * expected (any number); tl_expect(0, NULL) ends the announcement. */
void tl_expect(enum ossl_proc_log_level level, const char *needle);
/* Number of captured messages at @level containing @needle (NULL: all). */
int tl_count(enum ossl_proc_log_level level, const char *needle);
/* Forget captured messages. */
void tl_reset(void);
/* Redirect stderr to a temporary file; tl_stderr_end() restores it and
 * returns what was written (static buffer). */
void tl_stderr_begin(void);
const char *tl_stderr_end(void);
/* Wait for @pid; its exit status, or 128 + the signal that ended it. */
int tl_reap(pid_t pid);
/* Run a suite in fork mode with CK_ENV output; returns the exit code. */
int tl_run(Suite *s);

#endif
