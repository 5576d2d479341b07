/*
 * Shared live objects: destruction by the owner, and the books of the
 * blocks one process frees for another.
 *
 * A host that shares live OpenSSL objects between processes (an SSL made
 * in one worker, read and written by others, freed by a third) cannot let
 * any process but the creator destroy one: the destructor drops the
 * references the object holds on the creator's private objects (its
 * SSL_CTX, inherited copy-on-write), which in another process are that
 * process's copies.  ossl_proc_free_by_owner() hands such an object to
 * its creator, which destroys it at its next drain point, outside the
 * allocator.
 *
 * Everything lives in one anonymous shared mapping made at the first
 * fork that has a shared backend, so every worker inherits it: a pool of
 * entries and one slot per possible pid (pid_max of them, a page touched
 * only where pids are used), so no lookup and no lock.  A slot's queue is
 * a stack of entry indices pushed by compare-and-swap and taken whole by
 * its process with one exchange; the pool's free list carries a tag
 * against ABA.  Every change is one atomic store, so a process that dies
 * anywhere leaves the mapping consistent (at worst the entries it had
 * taken are lost to the pool).
 *
 * A pid's slot belongs to the process that has that pid now.  A new
 * process takes it over when it is forked, before it can own anything:
 * what is queued there was a dead namesake's, and is dropped, as is a
 * queue ossl_proc_reclaim_objects() or ossl_proc_arena_reclaim() is
 * asked to clear.  Objects dropped so are never destroyed: nobody else
 * can run their destructor correctly (their memory stays allocated).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "alloc-int.h"

#define POOL_ENTRIES 65536u
#define PID_SLOTS_MAX (1u << 22) /* Linux's PID_MAX_LIMIT */

struct entry {
	_Atomic uint32_t next;   /* index + 1; 0 ends a list */
	void (*destroy)(void *obj);
	void *obj;
};

struct slot {
	_Atomic uint32_t head;   /* this pid's queue: index + 1, or 0 */
	/* Blocks of this pid that other processes freed (under
	 * OSSL_PROC_F_SHARED_OBJECTS), for its live counts. */
	_Atomic uint64_t freed_blocks, freed_bytes;
};

struct region {
	_Atomic uint64_t pool;   /* free list: index + 1 | tag << 32 */
	_Atomic uint32_t bump;   /* entries handed out at least once */
	uint32_t nslots;
	struct entry entries[POOL_ENTRIES];
	struct slot slots[];
};

static struct region *region;
/* This process's books; a child starts its own (handoff_child). */
static _Atomic uint64_t n_queued, n_run, n_dropped, n_freed_others;
static uint64_t freed_base_blocks, freed_base_bytes;
static atomic_bool logged_full, logged_dead, logged_none;

/* ---- the region ---- */

static uint32_t
pid_slots(void)
{
	char buf[32] = "";
	unsigned long v = 0;
	int fd = open("/proc/sys/kernel/pid_max", O_RDONLY | O_CLOEXEC);

	if (fd >= 0) {
		ssize_t n = read(fd, buf, sizeof(buf) - 1);

		close(fd);
		if (n > 0)
			v = strtoul(buf, NULL, 10);
	}
	return v && v < PID_SLOTS_MAX ? (uint32_t)v : PID_SLOTS_MAX;
}

/* At a fork's prepare: made once, in the first process that forks with
 * a shared backend; no memory is touched but the header's page. */
void
handoff_prepare(void)
{
	uint32_t n;
	size_t len;
	void *p;

	static bool failed;

	if (region || failed || !shared_backend())
		return;
	n = pid_slots();
	len = sizeof(struct region) + (size_t)n * sizeof(struct slot);
	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED) {
		failed = true;
		log_error("cannot map %zu bytes for the queues of shared live "
			  "objects (%s): ossl_proc_free_by_owner() will refuse "
			  "objects of other processes", len, strerror(errno));
		return;
	}
	region = p;
	region->nslots = n;
}

static struct slot *
slot_of(pid_t pid)
{
	if (!region || pid <= 0 || (uint64_t)pid >= region->nslots)
		return NULL;
	return &region->slots[pid];
}

static struct entry *
entry_at(uint32_t i1)
{
	return &region->entries[i1 - 1];
}

static uint32_t
entry_get(void)
{
	uint64_t old = atomic_load(&region->pool), tag;
	uint32_t i1;

	while ((i1 = (uint32_t)old) != 0) {
		tag = (old >> 32) + 1;
		if (atomic_compare_exchange_weak(&region->pool, &old,
				atomic_load(&entry_at(i1)->next) | tag << 32))
			return i1;
	}
	i1 = atomic_fetch_add(&region->bump, 1) + 1;
	if (i1 <= POOL_ENTRIES)
		return i1;
	atomic_fetch_sub(&region->bump, 1);
	return 0;
}

static void
entry_put(uint32_t i1)
{
	uint64_t old = atomic_load(&region->pool), tag;

	do {
		atomic_store(&entry_at(i1)->next, (uint32_t)old);
		tag = (old >> 32) + 1;
	} while (!atomic_compare_exchange_weak(&region->pool, &old,
					       i1 | tag << 32));
}

static void
push(struct slot *s, uint32_t i1)
{
	uint32_t old = atomic_load(&s->head);

	do
		atomic_store(&entry_at(i1)->next, old);
	while (!atomic_compare_exchange_weak(&s->head, &old, i1));
}

/* Give a taken queue's entries back; how many there were. */
static uint64_t
drop_list(uint32_t i1)
{
	uint64_t n = 0;

	while (i1) {
		uint32_t next = atomic_load(&entry_at(i1)->next);

		entry_put(i1);
		i1 = next;
		n++;
	}
	return n;
}

/* ---- the owner's side ---- */

/* In a new process, before it can own a block: its pid's slot starts
 * empty.  A dead namesake's queue is set aside here and given back at
 * the next drain (the pool's atomics are not worth a fault here). */
static _Atomic uint32_t stale;

CHILD_PATH void
handoff_child(void)
{
	struct slot *s;

	if (!region)
		return;
	s = slot_of(proc_self());
	atomic_store_explicit(&n_queued, 0, memory_order_relaxed);
	atomic_store_explicit(&n_run, 0, memory_order_relaxed);
	atomic_store_explicit(&n_dropped, 0, memory_order_relaxed);
	atomic_store_explicit(&n_freed_others, 0, memory_order_relaxed);
	atomic_store_explicit(&stale, 0, memory_order_relaxed);
	freed_base_blocks = freed_base_bytes = 0;
	if (!s)
		return;
	if (atomic_load_explicit(&s->head, memory_order_relaxed))
		atomic_store(&stale, atomic_exchange(&s->head, 0));
	/* Counts a namesake left: this process's start from them. */
	freed_base_blocks = atomic_load(&s->freed_blocks);
	freed_base_bytes = atomic_load(&s->freed_bytes);
}

static void
drop_stale(void)
{
	uint32_t i1 = atomic_exchange(&stale, 0);
	uint64_t n;

	if (!i1)
		return;
	n = drop_list(i1);
	atomic_fetch_add(&n_dropped, n);
	log_warn("%llu shared object(s) queued for destruction by an earlier "
		 "process with this pid (%ld), which exited, were dropped, "
		 "not destroyed", (unsigned long long)n, (long)proc_self());
}

/* Destroy what other processes queued for this one, oldest first. */
int
handoff_drain(void)
{
	struct slot *s = slot_of(proc_self());
	uint32_t i1, rev = 0;
	int n = 0;

	if (unlikely(atomic_load_explicit(&stale, memory_order_relaxed)))
		drop_stale();
	if (!s || !atomic_load_explicit(&s->head, memory_order_relaxed))
		return 0;
	i1 = atomic_exchange(&s->head, 0);
	while (i1) {
		uint32_t next = atomic_load(&entry_at(i1)->next);

		atomic_store(&entry_at(i1)->next, rev);
		rev = i1;
		i1 = next;
	}
	while (rev) {
		struct entry *e = entry_at(rev);
		uint32_t next = atomic_load(&e->next);
		void (*destroy)(void *) = e->destroy;
		void *obj = e->obj;

		entry_put(rev);
		destroy(obj);
		n++;
		rev = next;
	}
	atomic_fetch_add(&n_run, (uint64_t)n);
	return n;
}

/* ---- the freeing side ---- */

/* Queue @obj to @owner; 1, or a negative errno (logged). */
static int
enqueue(pid_t owner, void (*destroy)(void *), void *obj)
{
	struct slot *s = slot_of(owner);
	uint32_t i1;

	if (!s) {
		if (log_once(&logged_none))
			log_error("ossl_proc_free_by_owner: %p belongs to "
				  "process %ld, but %s; it is not destroyed "
				  "(logged once)", obj, (long)owner, region ?
				  "that pid is above pid_max as read at the "
				  "first fork" : "no queue exists: the fork "
				  "that started this worker bypassed "
				  "ossl_proc_fork_prepare()");
		return region ? -ERANGE : -ENXIO;
	}
	if (kill(owner, 0) < 0 && errno == ESRCH) {
		atomic_fetch_add(&n_dropped, 1);
		/* Expected where a host frees what is left at shutdown,
		 * after its workers exited: not worth a WARNING. */
		if (log_once(&logged_dead))
			log_info("ossl_proc_free_by_owner: %p belongs to "
				 "process %ld, which exited; it is not "
				 "destroyed and its memory stays allocated "
				 "(logged once)", obj, (long)owner);
		return -ESRCH;
	}
	i1 = entry_get();
	if (!i1) {
		if (log_once(&logged_full))
			log_error("ossl_proc_free_by_owner: %u objects are "
				  "queued already, none destroyed yet; %p is "
				  "not destroyed.  Its owner, process %ld, must "
				  "reach a drain point (ossl_proc_drain()) "
				  "(logged once)", POOL_ENTRIES, obj,
				  (long)owner);
		return -ENOSPC;
	}
	entry_at(i1)->destroy = destroy;
	entry_at(i1)->obj = obj;
	push(s, i1);
	atomic_fetch_add(&n_queued, 1);
	return 1;
}

OSSL_PROC_EXPORT int
ossl_proc_free_by_owner(void (*destroy)(void *obj), void *obj)
{
	pid_t owner;

	if (!destroy) {
		log_bug_client("ossl_proc_free_by_owner: destroy is NULL");
		return -EINVAL;
	}
	if (alloc_mode() == OSSL_PROC_ALLOC_ATTACHED) {
		log_bug_client("ossl_proc_free_by_owner: this copy of osslproc "
			       "is attached to another copy's allocator; call "
			       "the function of the copy that installed it");
		return -ENOTSUP;
	}
	handoff_drain();
	if (!obj)
		return 0;
	owner = blk_shared_owner(obj);
	if (!owner || owner == proc_self()) {
		destroy(obj);
		return 0;
	}
	return enqueue(owner, destroy, obj);
}

OSSL_PROC_EXPORT int
ossl_proc_drain(void)
{
	return handoff_drain();
}

/* A block of @owner's that this process freed, under
 * OSSL_PROC_F_SHARED_OBJECTS: the owner's live counts drop by it. */
void
handoff_freed_for(pid_t owner, size_t bytes)
{
	struct slot *s = slot_of(owner);

	atomic_fetch_add_explicit(&n_freed_others, 1, memory_order_relaxed);
	if (!s)
		return;
	atomic_fetch_add_explicit(&s->freed_blocks, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->freed_bytes, bytes,
				  memory_order_relaxed);
}

/* Drop a dead process's queue (after waitpid()); how many objects. */
uint64_t
handoff_reclaim(pid_t pid)
{
	struct slot *s = slot_of(pid);
	uint64_t n;

	if (!s || !atomic_load(&s->head))
		return 0;
	n = drop_list(atomic_exchange(&s->head, 0));
	atomic_fetch_add(&n_dropped, n);
	log_info("%llu shared object(s) queued for destruction by process "
		 "%ld, which exited, were dropped, not destroyed",
		 (unsigned long long)n, (long)pid);
	return n;
}

OSSL_PROC_EXPORT int
ossl_proc_reclaim_objects(pid_t pid)
{
	uint64_t n;

	if (pid <= 0) {
		log_bug_client("ossl_proc_reclaim_objects: pid %ld",
			       (long)pid);
		return -EINVAL;
	}
	if (kill(pid, 0) == 0 || errno != ESRCH) {
		log_bug_client("ossl_proc_reclaim_objects: process %ld still "
			       "exists; reclaim only after waitpid() reaped it",
			       (long)pid);
		return -EBUSY;
	}
	n = handoff_reclaim(pid);
	return n > INT32_MAX ? INT32_MAX : (int)n;
}

/* This process's share of the statistics. */
void
handoff_stats(struct ossl_proc_stats *st)
{
	struct slot *s = slot_of(proc_self());

	st->objects_queued = atomic_load(&n_queued);
	st->objects_destroyed = atomic_load(&n_run);
	st->objects_dropped = atomic_load(&n_dropped);
	st->shared_frees = atomic_load(&n_freed_others);
	if (s) {
		st->live_blocks -= atomic_load(&s->freed_blocks) -
				   freed_base_blocks;
		st->live_bytes -= atomic_load(&s->freed_bytes) -
				  freed_base_bytes;
	}
}
