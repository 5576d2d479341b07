/*
 * The public header on its own: check-header.sh compiles this file as C99
 * and as C++11 with warnings as errors.  osslproc.h comes first, so it
 * must include what its declarations need.  Compiled, never run.
 */
#include <osslproc.h>

#include <string.h>

static void
log_nothing(enum ossl_proc_log_level level, const char *msg, void *arg)
{
	(void)level;
	(void)msg;
	(void)arg;
}

int
main(void)
{
#ifndef __cplusplus
	struct ossl_proc_config cfg = OSSL_PROC_CONFIG_INIT;
#else
	/* OSSL_PROC_CONFIG_INIT is a designated initialiser: C only (C++
	 * has them from C++20, and warns there about the fields it omits). */
	struct ossl_proc_config cfg;

	memset(&cfg, 0, sizeof(cfg));
	cfg.size = sizeof(cfg);
#endif
	struct ossl_proc_stats st;

	cfg.flags = OSSL_PROC_F_SCRUB | OSSL_PROC_F_TRACK_SITES;
	cfg.on_bad_free = OSSL_PROC_BAD_FREE_LOG;
	cfg.log = log_nothing;
	cfg.log_level = OSSL_PROC_LOG_INFO;
	memset(&st, 0, sizeof(st));
	st.size = sizeof(st);
	return ossl_proc_init(&cfg) < 0 || ossl_proc_get_stats(&st) < 0 ||
	       st.allocator != OSSL_PROC_ALLOC_TRACKED ||
	       ossl_proc_teardown() < 0;
}
