/*
 * Logging, the bottom of the library: every part logs, and a message can
 * be produced inside OpenSSL's allocator, inside fork handlers and in any
 * thread, so nothing here allocates (log.c).
 */
#ifndef OSSLPROC_LOG_H
#define OSSLPROC_LOG_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "osslproc.h"

#pragma GCC visibility push(hidden)

#define OSSL_PROC_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* Set the sink; fn NULL means stderr.  Safe to call at any time. */
void log_configure(ossl_proc_log_fn fn, void *arg,
		   enum ossl_proc_log_level level);
/* True when a message at this level would be delivered. */
bool log_enabled(enum ossl_proc_log_level level);
/* Formats into a stack buffer; never allocates, safe inside the allocator. */
void log_msg(enum ossl_proc_log_level level, const char *fmt, ...)
	OSSL_PROC_PRINTF(2, 3);
void log_vmsg(enum ossl_proc_log_level level, const char *fmt, va_list ap);

#define log_error(...) log_msg(OSSL_PROC_LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(OSSL_PROC_LOG_WARNING, __VA_ARGS__)
#define log_info(...) log_msg(OSSL_PROC_LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(OSSL_PROC_LOG_DEBUG, __VA_ARGS__)
/* Caller misuse: logged as a client bug. */
#define log_bug_client(...) \
	log_msg(OSSL_PROC_LOG_ERROR, "client bug: " __VA_ARGS__)

/*
 * Logging an event once: true for the first caller only, in any thread
 * (and in any process, for a flag in shared memory: the atomics are
 * lock-free).  Storing false re-arms it.
 */
static inline bool
log_once(atomic_bool *once)
{
	return !atomic_load_explicit(once, memory_order_relaxed) &&
	       !atomic_exchange(once, true);
}

/* The same for events keyed by a value (a call site): true the first
 * time for @key.  256 keys are remembered; past that, always true. */
bool log_once_key(uintptr_t key);

#pragma GCC visibility pop

#endif /* OSSLPROC_LOG_H */
