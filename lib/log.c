/*
 * Logging.  Messages can be produced inside OpenSSL's allocator (a bad
 * free), inside fork handlers and in any thread, so this file never
 * allocates: lines are formatted into a stack buffer and handed to the
 * host's callback, or written to stderr with one write(2).
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "osslproc-int.h"

#define LOG_LINE_MAX 1024

/*
 * The sink is read on every message without a lock; a host changes it
 * only through ossl_proc_init(), but a message racing with that must see
 * a matching function and argument, so both live in one struct that is
 * swapped through an atomic pointer.  Two slots suffice: a slot is
 * rewritten only when the other one is current, and init is serialised.
 */
struct log_sink {
	ossl_proc_log_fn fn;
	void *arg;
};

static struct log_sink sinks[2];
static _Atomic(struct log_sink *) current_sink = &sinks[0];
static atomic_int current_level = OSSL_PROC_LOG_WARNING;

void
log_configure(ossl_proc_log_fn fn, void *arg, enum ossl_proc_log_level level)
{
	struct log_sink *cur = atomic_load(&current_sink);
	struct log_sink *next = cur == &sinks[0] ? &sinks[1] : &sinks[0];

	next->fn = fn;
	next->arg = arg;
	atomic_store(&current_sink, next);
	atomic_store_explicit(&current_level,
			      level ? (int)level : OSSL_PROC_LOG_WARNING,
			      memory_order_relaxed);
}

CHILD_PATH bool
log_enabled(enum ossl_proc_log_level level)
{
	return (int)level <= atomic_load_explicit(&current_level,
						  memory_order_relaxed);
}

static const char *
level_name(enum ossl_proc_log_level level)
{
	if (level <= OSSL_PROC_LOG_ERROR)
		return "error";
	if (level <= OSSL_PROC_LOG_WARNING)
		return "warning";
	if (level <= OSSL_PROC_LOG_INFO)
		return "info";
	return "debug";
}

static void
write_stderr(enum ossl_proc_log_level level, const char *msg)
{
	char line[LOG_LINE_MAX + 64];
	int n = snprintf(line, sizeof(line), "osslproc[%ld] %s: %s\n",
			 (long)getpid(), level_name(level), msg);

	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	/* One write keeps lines from concurrent processes whole. */
	if (write(STDERR_FILENO, line, (size_t)n) < 0)
		return;
}

void
log_vmsg(enum ossl_proc_log_level level, const char *fmt, va_list ap)
{
	char msg[LOG_LINE_MAX];
	struct log_sink *sink;
	int saved_errno;

	if (!log_enabled(level))
		return;
	saved_errno = errno;
	if (vsnprintf(msg, sizeof(msg), fmt, ap) < 0)
		msg[0] = '\0';
	sink = atomic_load(&current_sink);
	if (sink->fn)
		sink->fn(level, msg, sink->arg);
	else
		write_stderr(level, msg);
	errno = saved_errno;
}

void
log_msg(enum ossl_proc_log_level level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(level, fmt, ap);
	va_end(ap);
}

/* Keys already logged, open addressing with a short probe sequence: a
 * key that finds no free slot among its 8 is logged every time. */
static _Atomic uintptr_t logged_keys[256];

bool
log_once_key(uintptr_t key)
{
	size_t i;

	key |= 1; /* 0 marks a free slot */
	i = (key * 0x9e3779b97f4a7c15ull) >> 56;
	for (size_t probe = 0; probe < 8; probe++, i = (i + 1) & 255) {
		uintptr_t cur = 0;

		if (atomic_compare_exchange_strong(&logged_keys[i], &cur, key))
			return true;
		if (cur == key)
			return false;
	}
	return true;
}
