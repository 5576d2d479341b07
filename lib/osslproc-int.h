/* Internals shared by the modules of libosslproc.  Not installed. */
#ifndef OSSLPROC_INT_H
#define OSSLPROC_INT_H

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "osslproc.h"
#include "log.h"

#define OSSL_PROC_EXPORT __attribute__((visibility("default")))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* The contract's first struct ossl_proc_stats ended at .generation. */
#define STATS_V0_SIZE (offsetof(struct ossl_proc_stats, generation) + \
		       sizeof(uint64_t))

/* ---- init.c ---- */

/* The configuration of the first ossl_proc_init(), normalised. */
struct proc_config {
	unsigned int flags;
	struct ossl_proc_allocator allocator; /* copy; .malloc NULL: libc */
	bool has_allocator;
	enum ossl_proc_bad_free on_bad_free;
	size_t quarantine_bytes;
	size_t cache_bytes;
	const char *ca_file; /* owned copies (libc malloc) */
	const char *ca_dir;
};

/* Non-zero while initialised (acquire load). */
bool proc_initialised(void);
/* Pin the object holding osslproc's code (RTLD_NODELETE) if it is not the
 * main program.  Returns true if it was pinned (or already is). */
bool proc_pin_self(const char *why);
/* Pin the object holding this code if it carries its own libcrypto. */
bool proc_pin_own_libcrypto(void);

/* ---- fork.c ---- */

/*
 * Everything a forked child must write to re-initialise osslproc, in one
 * cache line and one page: each page a child writes is copied on write,
 * which costs more than the rest of the re-initialisation together.
 */
struct proc_mut {
	_Atomic pid_t pid;                /* this process, as last set up */
	_Atomic uint64_t generation;      /* forks since init, this lineage */
	pthread_mutex_t hooks_lock;       /* fork.c: ossl_proc_on_child */
	pthread_mutex_t reg_lock;         /* alloc-thread.c: thread registry */
	pthread_mutex_t site_lock;        /* alloc.c: live list with sites */
	/* fork.c: the thread that holds the locks above for a fork, and how
	 * deeply its prepare calls nest.  Here rather than thread-local: the
	 * child inherits both, and resets them without a page fault of
	 * their own. */
	_Atomic uintptr_t prep_owner;
	int prep_depth;
	/* fork.c: what a re-initialisation inside the allocator left to
	 * do: run the first pending_hooks hooks, and clear the error queue
	 * of the thread that forked (pending_clear, that thread's anchor;
	 * 0: none).  Here because the prepared child's path reads them. */
	_Atomic bool pending;
	int pending_hooks;
	uintptr_t pending_clear;
	/* The process-wide event counters at this process's start: each
	 * process reports its own events (alloc-install.c). */
	struct ossl_proc_stats base;
} __attribute__((aligned(512)));      /* smaller than 512: one page */
_Static_assert(sizeof(struct proc_mut) <= 512, "proc_mut spans two pages");

extern struct proc_mut proc_mut;

enum fork_phase {
	FORK_PREPARE,        /* take the locks */
	FORK_PARENT,         /* release them */
	FORK_CHILD_PREPARED, /* release them: our prepare handler ran */
	FORK_CHILD_RAW,      /* re-create them: nobody prepared this fork */
};

/*
 * Code a child runs in ossl_proc_child_reinit().  A fork copies no page
 * table entries for code, so each page of it the child runs costs a page
 * fault (measured at 15-25 us on a virtual machine): these functions are
 * kept together, the linker grouping .text.hot.* sections at the start of
 * .text, so the child faults in one page of osslproc rather than several.
 */
#define CHILD_PATH __attribute__((section(".text.hot.osslproc_child")))

/* 0 in a child whose fork osslproc did not see (MADV_WIPEONFORK). */
extern volatile unsigned char *fork_flag;
/* At first init: map the flag page, register the atfork handlers. */
int fork_init(unsigned int flags);
void fork_teardown(void);
/* A fork went unnoticed: re-initialise now, with a WARNING.  From the
 * allocator (@in_allocator), only the allocator's part: the error queue
 * and the hooks wait for the next fork_check(). */
void fork_unnoticed(bool in_allocator);
/* For library calls: notice a fork by the flag page or the pid, and run
 * what a re-initialisation in the allocator left pending. */
void fork_check(void);
/* This process's pid as of its last (re-)initialisation: no syscall. */
pid_t proc_self(void);
/*
 * Take and release one of proc_mut's locks.  The thread that holds them
 * all for a fork (between ossl_proc_fork_prepare() and the parent or
 * child handler) neither takes nor releases them: pthread_atfork
 * handlers that the host registered before osslproc's run inside that
 * span, and may call OpenSSL or osslproc.
 */
void proc_lock(pthread_mutex_t *m);
void proc_unlock(pthread_mutex_t *m);

/* ---- alloc.c ---- */

/* 16 KiB: handshakes run at 1.01-1.04x the default allocator's speed,
 * 64 KiB at 1.00-1.01x, 256 KiB at 0.94-0.98x (doc/benchmarks.md).
 * With a shared backend, 64 KiB: a worker that frees another worker's SSL
 * (a host bug the shared mode must survive) frees the SSL_CTX's private
 * objects it reaches twice, farther apart than 16 KiB of frees. */
#define QUARANTINE_DEFAULT ((size_t)16 * 1024)
#define QUARANTINE_SHARED_DEFAULT ((size_t)64 * 1024)
/* Enough for a thread that does verified handshakes to make no backend
 * call once warm (measured: 256 KiB left 169 calls per handshake, 384 KiB
 * none); glibc's own per-thread cache can hold about 230 KiB. */
#define CACHE_DEFAULT ((size_t)512 * 1024)

/* Install (or attach, or fall back to untracked) at first init. */
int alloc_init(const struct proc_config *cfg);
/* Last teardown: the functions stay installed; returns true when OpenSSL
 * can still call into this copy's code. */
bool alloc_teardown(void);
enum ossl_proc_alloc_mode alloc_mode(void);
/* Fork support: the threads that used the allocator, and the child's
 * clean-up of what other threads and processes left behind. */
unsigned alloc_other_threads(void);
bool alloc_shared_worker(void);
/* In the child, with only the calling thread left and osslproc's locks
 * held by it or re-created: takes no lock. */
void alloc_child(void);
/* In a child: the counters so far become the baseline of its own. */
/* Called from alloc_child(): takes no lock. */
void alloc_stats_rebase(void);
uint64_t alloc_generation_get(void);
void alloc_get_stats(struct ossl_proc_stats *st);
void alloc_report(FILE *out);

/* ---- env.c ---- */

/* The environment values OpenSSL would read later, copied at init. */
enum env_var {
	ENV_SSL_CERT_FILE,
	ENV_SSL_CERT_DIR,
	ENV_OPENSSL_CONF,
	ENV_OPENSSL_MODULES,
	ENV_COUNT,
};

/* Snapshot the environment and resolve the CA locations (first init). */
int env_init(const struct proc_config *cfg);
/* After OpenSSL's init: pin the provider directory. */
int env_pin_openssl(void);
void env_teardown(void);
/* A snapshot value, or NULL when the variable was unset. */
const char *env_get(enum env_var v);
/* The provider directory given to OpenSSL, or NULL. */
const char *env_modules_dir(void);

/* ---- arena.c ---- */

/* True when @p al (or a copy of it) is the allocator of a live arena
 * created by this copy of osslproc. */
bool arena_owns_allocator(const struct ossl_proc_allocator *al);
/* Marks arenas in use as the tracked allocator's backend. */
void arena_set_in_use(const struct ossl_proc_allocator *al, bool in_use);

#endif /* OSSLPROC_INT_H */
