/* A white-box copy of the arena: lib/arena.c compiled into the test (see
 * arena-wb.c) with a hook at each of its commit steps, its public
 * functions renamed wb_arena_*, and what the test needs to look inside.
 * It shares nothing with the shared library's arenas. */
#ifndef ARENA_WB_H
#define ARENA_WB_H

#include <stdint.h>
#include <sys/types.h>

#include <osslproc.h>

/* The copy's public API: the same contract as ossl_proc_arena_*. */
struct ossl_proc_arena *wb_arena_new(size_t capacity);
const struct ossl_proc_allocator *
wb_arena_allocator(struct ossl_proc_arena *a);
int wb_arena_get_stats(struct ossl_proc_arena *a,
		       struct ossl_proc_arena_stats *out);
int wb_arena_reclaim(struct ossl_proc_arena *a, pid_t pid);
void wb_arena_free(struct ossl_proc_arena *a);

/* What the hook does when a process reaches step number @at. */
enum wb_action {
	WB_NOTHING,     /* count the steps only */
	WB_KILL,        /* SIGKILL itself: a crash at that step */
	WB_STOP,        /* SIGSTOP itself, inside the arena's lock */
};

/* Per process (a forked child sets its own); the step the hook acted at
 * and its line in arena.c are also stored in *@seen, which the test may
 * point into shared memory. */
struct wb_hook {
	enum wb_action action;
	unsigned at;             /* 1: the first step after arming */
	unsigned steps;          /* steps passed since arming */
	struct wb_seen {
		unsigned passed; /* steps passed since arming */
		unsigned step;   /* the step acted at; 0: none yet */
		int line;        /* its line in arena.c */
	} *seen;
};
extern struct wb_hook wb_hook;

/* Arms the hook in this process: @action at the @at-th step from now. */
void wb_arm(enum wb_action action, unsigned at, struct wb_seen *seen);
/* What STEP() calls, with its line in arena.c. */
void wb_step(int line);

#define WB_NCLASSES 168
#define WB_GRAIN 16

/*
 * A walk of the whole arena, taken without its lock (call it only while
 * no other process uses the arena).  wb_chain() checks the chain of
 * headers only (what must hold even right after a process died inside
 * the lock); wb_census() also what is derived from it: back sizes, the
 * start bitmap (exactly the block starts), no two free blocks side by
 * side, and the lists (each free block once, on its class's list, links
 * agreeing both ways).  @error is the first inconsistency, NULL if none.
 */
struct wb_census {
	const char *error;
	uint64_t blocks;             /* headers in the chain */
	uint64_t live, live_bytes;   /* live blocks, their payload bytes */
	uint64_t free, free_bytes, largest_free;
	uint64_t quick;              /* freed, on the quick lists */
	uint64_t listed;             /* free blocks on the lists */
	uint64_t listed_in[WB_NCLASSES];
	uint64_t heap_bytes;         /* usable bytes (the stats' capacity) */
	/* Private counters. */
	uint64_t live_counter, owner_deaths, rebuilds, lost_bytes;
};
void wb_chain(struct ossl_proc_arena *a, struct wb_census *out);
void wb_census(struct ossl_proc_arena *a, struct wb_census *out);
/* Live blocks that record @pid as their owner. */
uint64_t wb_owned_by(struct ossl_proc_arena *a, pid_t pid);
/* The owner a live block @p records; 0 if it is not a live block. */
pid_t wb_owner(struct ossl_proc_arena *a, const void *p);
/* Overwrites the header of the block @p points to (an overflow). */
void wb_smash_header(void *p);
/* Adds @grains to the size in the header of the block @p points to (an
 * overflow that forges a plausible header). */
void wb_forge_size(void *p, int32_t grains);
/* Points the next link of free block @p (its last 16 bytes) at block
 * @to (a use after free that writes a freed block's tail). */
void wb_forge_next(struct ossl_proc_arena *a, void *p, void *to);
/* pthread_mutex_trylock() on the arena's lock, released again if taken:
 * EBUSY while another process or thread holds it. */
int wb_lock_busy(struct ossl_proc_arena *a);

/* The lines of arena.c that call STEP() (its commit steps), at most
 * @max of them; -1 if the source cannot be read. */
int wb_step_lines(int *lines, int max);

#endif
