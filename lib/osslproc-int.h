/*
 * What every part of libosslproc shares: its conventions and the
 * configuration of the first ossl_proc_init().  Each part's interface is
 * a header of its own: log.h and proc.h (included here: every part stands
 * on them), alloc/alloc.h, env.h, fork.h, pin.h.  Not installed.
 */
#ifndef OSSLPROC_INT_H
#define OSSLPROC_INT_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "osslproc.h"
#include "log.h"
#include "proc.h"

#pragma GCC visibility push(hidden)

#define OSSL_PROC_EXPORT __attribute__((visibility("default")))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* The contract's first struct ossl_proc_stats ended at .generation. */
#define STATS_V0_SIZE (offsetof(struct ossl_proc_stats, generation) + \
		       sizeof(uint64_t))

/* The configuration of the first ossl_proc_init(), normalised (init.c). */
struct init_config {
	unsigned int flags;
	struct ossl_proc_allocator allocator; /* copy; .malloc NULL: libc */
	bool has_allocator;
	enum ossl_proc_bad_free on_bad_free;
	size_t quarantine_bytes;
	size_t cache_bytes;
	size_t cache_total_bytes;
	uint64_t fork_quiesce_ns;
	const char *ca_file; /* owned copies (libc malloc) */
	const char *ca_dir;
};

#pragma GCC visibility pop

#endif /* OSSLPROC_INT_H */
