/*
 * Process state, the layer every other part stands on: what a process
 * knows of itself (its pid, its fork generation, whether osslproc is
 * initialised), the locks a fork must hold, and how a child is
 * re-initialised.  The re-initialisation runs the child handlers that
 * the allocator and the fork point register here, so this layer calls
 * nothing above it but through them (proc.c).
 */
#ifndef OSSLPROC_PROC_H
#define OSSLPROC_PROC_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "osslproc.h"

#pragma GCC visibility push(hidden)

/*
 * Code a child runs in ossl_proc_child_reinit().  A fork copies no page
 * table entries for code, so each page of it the child runs costs a page
 * fault: these functions are kept together, the linker grouping
 * .text.hot.* sections at the start of .text, so the child faults in one
 * page of osslproc rather than several.
 */
#define CHILD_PATH __attribute__((section(".text.hot.osslproc_child")))

/*
 * What a part of osslproc does in a new child, in two steps.
 *
 * @locked runs first, before osslproc's locks are released (or
 * re-created after a fork nobody prepared): only the calling thread
 * exists, so it takes no lock, and it may run inside OpenSSL's allocator,
 * so it calls nothing outside osslproc.  What it returns is passed to
 * @callout.
 *
 * @callout (may be NULL) runs after the locks are released and outside
 * OpenSSL's allocator: when the fork is noticed inside an allocation, at
 * the next library call that checks for forks, in whichever thread makes
 * it.  @forker: the calling thread is the one that forked; @raw: the
 * fork bypassed osslproc's prepare handler.
 */
struct proc_child_handler {
	uintptr_t (*locked)(void);
	void (*callout)(uintptr_t arg, bool forker, bool raw);
};

#define PROC_CHILD_HANDLERS 3

/*
 * Everything a forked child must write to re-initialise osslproc, in one
 * cache line and one page: each page a child writes is copied on write,
 * which costs more than the rest of the re-initialisation together.
 */
/* What a fork writes of the lock registry (alloc/locks.c), kept in
 * proc_mut's page, which the fork writes anyway. */
struct proc_lk {
	pthread_mutex_t slab_lock;     /* the free lists, the chunk list */
	pthread_mutex_t quiesce_mutex; /* one prepare at a time */
	char *pending;                 /* frees deferred while quiescing */
	pid_t quiesce_tid;             /* the thread that quiesces */
	bool quiescing;                /* a prepare is taking the locks */
	bool held;                     /* ... and holds them for the fork */
	bool armed;                    /* the slab bodies are marked
					  MADV_WIPEONFORK */
	_Atomic uint64_t taken_last, prep_ns_last;
};

struct proc_mut {
	_Atomic pid_t pid;                /* this process, as last set up */
	_Atomic uint64_t generation;      /* forks since init, this lineage */
	pthread_mutex_t hooks_lock;       /* fork.c: ossl_proc_on_child */
	pthread_mutex_t reg_lock;         /* alloc/thread.c: thread registry */
	pthread_mutex_t site_lock;        /* alloc/block.c: live list, sites */
	pthread_mutex_t large_lock;       /* alloc/large.c: large blocks */
	/* The thread that holds the locks above for a fork, and how deeply
	 * its prepare calls nest.  Here rather than thread-local: the child
	 * inherits both, and resets them without a page fault of their
	 * own. */
	_Atomic uintptr_t prep_owner;
	int prep_depth;
	/* What a re-initialisation inside the allocator left to do: the
	 * handlers' callouts, with the values their locked steps returned,
	 * the thread that forked (its anchor) and whether the fork was raw.
	 * Here because the prepared child's path reads them. */
	_Atomic bool pending;
	bool pending_raw;
	uintptr_t pending_forker;
	uintptr_t child_arg[PROC_CHILD_HANDLERS];
	/* The process-wide event counters at this process's start: each
	 * process reports its own events (alloc/install.c). */
	struct ossl_proc_stats base;
	/* The caches' budget not yet drawn by a thread (alloc/cache.c);
	 * a child, whose other threads are gone, starts it afresh. */
	_Atomic int64_t cache_pool;
	/* alloc/thread.c: in a child, the registry still lists threads that
	 * do not exist here; forgotten at its next walk (reg_settle). */
	bool reg_stale;
	void *reg_survivor;
	struct proc_lk lk;
	/* fork.c: the forking thread's error queue held errors at the last
	 * prepare, so the child must empty its copy (most forks have none,
	 * and leave the child's re-initialisation the cheaper for it). */
	bool errors_at_fork;
} __attribute__((aligned(1024)));     /* 1,024 at most: one page */
_Static_assert(sizeof(struct proc_mut) <= 1024, "proc_mut spans two pages");

extern struct proc_mut proc_mut;

/* 0 in a child whose fork osslproc did not see (MADV_WIPEONFORK); the
 * allocator reads it on every call. */
extern volatile unsigned char *proc_fork_flag;

/* At first init: this process's pid, and the flag page mapped. */
void proc_init(void);
/* Register @h (once; handlers run in registration order). */
void proc_on_child(const struct proc_child_handler *h);

/* The reference count of ossl_proc_init(); written under init.c's lock. */
bool proc_initialised(void);
unsigned proc_refs(void);
void proc_refs_set(unsigned n);

/* This process's pid as of its last (re-)initialisation: no syscall. */
pid_t proc_self(void);
/* Outside osslproc's own fork handling (not initialised): a child forgets
 * the pid it inherited, read again by the next proc_self(). */
void proc_pid_forget(void);
/* Forks this lineage went through since init. */
uint64_t proc_generation(void);

/*
 * Take and release one of proc_mut's locks.  The thread that holds them
 * all for a fork (between ossl_proc_fork_prepare() and the parent or
 * child handler) neither takes nor releases them: pthread_atfork
 * handlers that the host registered before osslproc's run inside that
 * span, and may call OpenSSL or osslproc.
 */
void proc_lock(pthread_mutex_t *m);
void proc_unlock(pthread_mutex_t *m);

/* The fork point's steps (fork.c).  proc_prepare_nested() is true, and
 * counts one more level, when this thread prepared already. */
bool proc_prepare_nested(void);
void proc_prepare(void);
bool proc_parent(void); /* true: the outermost prepare was matched */
/* pthread_atfork's child handler. */
void proc_atfork_child(void);
/* ossl_proc_child_reinit(): idempotent per process. */
int proc_child_reinit(void);

/* A fork went unnoticed: re-initialise now, with a WARNING.  From the
 * allocator (@in_allocator), only the handlers' locked steps run: the
 * callouts wait for the next proc_check_fork(). */
void proc_unnoticed_fork(bool in_allocator);
/* For library calls: notice a fork by the flag page or the pid, and run
 * what a re-initialisation in the allocator left pending. */
void proc_check_fork(void);

#pragma GCC visibility pop

#endif /* OSSLPROC_PROC_H */
