/*
 * The tracked allocator as the rest of the library sees it: installed at
 * init, asked about threads at a fork, read for statistics and reports.
 * Its internals are in alloc-int.h.
 */
#ifndef OSSLPROC_ALLOC_H
#define OSSLPROC_ALLOC_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "osslproc-int.h"

#pragma GCC visibility push(hidden)

/* Default quarantine windows and cache budget (doc/benchmarks.md has the
 * measurements behind them).  With a shared backend the window is
 * larger: a worker that frees another worker's SSL (a host bug the shared
 * mode must survive) frees the SSL_CTX's private objects it reaches
 * twice, farther apart than 16 KiB of frees. */
#define QUARANTINE_DEFAULT ((size_t)16 * 1024)
#define QUARANTINE_SHARED_DEFAULT ((size_t)64 * 1024)
/* Enough for a thread that does verified handshakes to make no backend
 * call once warm. */
#define CACHE_DEFAULT ((size_t)512 * 1024)
/* What all threads' caches hold together at most: an idle thread keeps
 * its cache until it exits, and a pool of a thousand would otherwise pin
 * cache_bytes each. */
#define CACHE_TOTAL_DEFAULT ((size_t)8 * 1024 * 1024)

/* Install (or attach, or fall back to untracked) at first init. */
int alloc_init(const struct init_config *cfg);
/* Last teardown: the functions stay installed; returns true when OpenSSL
 * can still call into this copy's code. */
bool alloc_teardown(void);
/* The program's CRYPTO_set_mem_functions() after install: its functions
 * become the backend (@shared: between processes).  0, -ENOTSUP when
 * the tracked allocator is not installed by this copy, -EBUSY when a
 * backend is already stacked on, -EINVAL. */
int alloc_adopt(CRYPTO_malloc_fn m, CRYPTO_free_fn f, bool shared);
enum ossl_proc_alloc_mode alloc_mode(void);
/* Called by the library's entry points (not a child's re-init, which
 * must run no OpenSSL code): logs one ERROR if someone
 * replaced OpenSSL's memory functions since osslproc installed them. */
void alloc_check(void);
/* The threads other than the caller that used the allocator. */
unsigned alloc_other_threads(void);
/* This process is a worker of a shared backend (generation > 0). */
bool alloc_shared_worker(void);
/* Fork prepare: take every OpenSSL lock the allocator registered, with
 * try-locks, retrying for up to @budget_ns.  True when all were taken
 * (or there were none); false when some stayed busy (logged, counted).
 * Either way the parent handler must call alloc_fork_parent(); the child
 * re-creates the locks in the allocator's child handler. */
bool alloc_fork_quiesce(uint64_t budget_ns);
void alloc_fork_parent(void);
/* Before any fork, and at a child's first allocation: the lock slabs
 * lose the mark the prepared fork that made this process left, lest a
 * fork nobody prepared wipe them. */
void alloc_fork_disarm(void);
/* Fork prepare: with a shared backend, make the queues of shared live
 * objects (handoff.c) before the first worker exists. */
void handoff_prepare(void);
/* Destroy the objects other processes queued for this one; how many. */
int handoff_drain(void);
/* The OpenSSL locks registered now (locks.c). */
uint64_t alloc_locks_registered(void);
/* The part of ossl_proc_report() that is the allocator's. */
void alloc_report(FILE *out);
/* This copy installed the allocator (it is the owner, not attached) with
 * OSSL_PROC_F_EXIT_LEAKS. */
bool alloc_exit_leaks_wanted(void);
/* The allocation sites of the live blocks (OSSL_PROC_F_TRACK_SITES). */
void alloc_leak_sites(FILE *out);

#pragma GCC visibility pop

#endif /* OSSLPROC_ALLOC_H */
