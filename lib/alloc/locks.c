/*
 * OpenSSL's locks, quiesced around a fork.
 *
 * Forking while another thread is inside an OpenSSL critical section
 * leaves the child a lock that nobody will release (on 3.0, 7-17% of
 * children of a threaded parent hang in CRYPTO_THREAD_write_lock).  Every
 * OpenSSL lock on Linux is allocated through the tracked allocator at one
 * of a few sites, one size each (the shapes below), so the allocator
 * recognises them: a size compare on every allocation, then a pointer
 * compare of the file name, learnt at the first match.  Such blocks live
 * in slabs of their own: the registry is the slabs.  A fork writes each
 * lock three times (take, release in the parent, re-create in the
 * child), and each page written after a fork costs a page fault in each
 * process: so the slabs are wiped in the child instead (MADV_WIPEONFORK,
 * below), and then neither process writes them after the fork.
 *
 * Prepare takes every lock with try-locks only (OpenSSL nests some, so
 * blocking on one while holding others could deadlock): on a busy one it
 * releases all, backs off and retries, until a deadline; then it forks
 * with what it could take and says which lock it could not.
 */
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "alloc-int.h"

/* What an OpenSSL lock is made of, by allocation site. */
enum lk_kind {
	LK_RWLOCK, /* CRYPTO_THREAD_lock_new: a pthread_rwlock_t */
	LK_MUTEX,  /* ossl_crypto_mutex_new (3.2+): a pthread_mutex_t */
	LK_COND,   /* ossl_crypto_condvar_new (3.2+): re-created only */
	LK_RCU,    /* ossl_rcu_lock_new (3.3+): struct rcu_lock_st */
};

/* OpenSSL's struct rcu_lock_st (crypto/threads_pthread.c), the same in
 * 3.5.7, 3.6.3 and 4.0.2: its write side's mutexes and condvars. */
struct rcu_mirror {
	void *cb_items, *ctx, *qp_group;
	uint32_t id_ctr, group_count, reader_idx, next_to_retire;
	uint32_t current_alloc_idx, writers_alloced;
	pthread_mutex_t write_lock, alloc_lock;
	pthread_cond_t alloc_signal;
	pthread_mutex_t prior_lock;
	pthread_cond_t prior_signal;
};

struct lk_shape {
	size_t size;           /* what OpenSSL asks for */
	const char *tail;      /* the end of the allocation's file name */
	const char *func;      /* for the log */
	enum lk_kind kind;
	_Atomic(const char *) file; /* learnt at the first match */
	_Atomic int line;
};

static struct lk_shape shapes[] = {
	{ sizeof(pthread_rwlock_t), "threads_pthread.c",
	  "CRYPTO_THREAD_lock_new", LK_RWLOCK, NULL, 0 },
	{ sizeof(pthread_mutex_t), "thread_posix.c", "ossl_crypto_mutex_new",
	  LK_MUTEX, NULL, 0 },
	{ sizeof(pthread_cond_t), "thread_posix.c",
	  "ossl_crypto_condvar_new", LK_COND, NULL, 0 },
	{ sizeof(struct rcu_mirror), "threads_pthread.c", "ossl_rcu_lock_new",
	  LK_RCU, NULL, 0 },
};
#define NSHAPES ARRAY_SIZE(shapes)

/*
 * A slab: one mapping of CHUNK_BYTES holding slots of one shape, in two
 * parts.  The head, struct chunk then each slot's free-list link and
 * whether it is in use, is written only when a lock is created or freed.
 * The body is the slots' fork states (enum lk_state), then the slots,
 * [struct blk][payload], 16-aligned: everything a fork writes.  A fork
 * write-protects every page it copies, and the first write to one after
 * it costs a page fault in each process (3-30 us on a VM): so when
 * prepare took every lock the body is marked MADV_WIPEONFORK for that
 * fork only.  The parent's pages are then not write-protected, so its
 * release costs no fault, and the child's body reads as zeroes, which
 * is what pthread_rwlock_init(), pthread_mutex_init() and
 * pthread_cond_init() with default attributes write: the locks prepare
 * took arrive re-created, with no write and no fault in the child (and
 * none at all in one that never uses them).  Slots whose user pointer
 * would be at a reserved page offset (alloc-int.h) stay unused.
 */
#define CHUNK_BYTES ((size_t)256 * 1024)
#define HEAD_BYTES 64

/* A slot's fork state, in the body: 0 (LS_LIVE) when no fork is being
 * prepared, and in a child whose body was wiped. */
enum lk_state {
	LS_LIVE,    /* not held by prepare */
	LS_TAKEN,   /* taken by prepare */
	LS_SELF,    /* write-held by the forking thread itself */
	LS_NEW,     /* allocated while prepare runs: maybe not initialised
		       yet, so not taken */
	LS_DEAD,    /* freed while prepare runs, or not a lock any more
		       (glibc's destroy marks a mutex): left alone */
};

/* A slot's use, in the head; the free list's links are there too, out
 * of the payload, so that a freed lock keeps its bytes (a use after free
 * of a destroyed lock behaves as without osslproc). */
enum { SLOT_FREE, SLOT_USED };

struct chunk {
	struct chunk *next;
	unsigned shape;
	unsigned stride;
	unsigned nslots;
	unsigned body;  /* offset of the body (a page boundary) */
	unsigned first; /* offset of slot 0's user pointer */
	bool wipe;      /* the body may be wiped at a fork: not an RCU
			   lock's (it holds more than locks) */
};
_Static_assert(sizeof(struct chunk) <= HEAD_BYTES, "links start at 64");

/*
 * slab_lock guards the free lists and the chunk list; its holders wait
 * for nothing.  Prepare's passes run without it: a thread inside an
 * OpenSSL critical section may create or free a lock (a fetch builds a
 * method under its store's lock), and must not wait for prepare, which
 * waits for it.  While prepare runs (@quiescing) a free is deferred to
 * @pending, so no slot a pass may touch is reused, and a new lock is
 * LS_NEW, which passes leave alone.  Slot states and uses are atomic: a
 * pass reads them while lk_new() marks new ones.
 */
static _Atomic(struct chunk *) chunks;
/* Free slots by shape, first in first out: a freed lock is reused last,
 * which keeps a double free of it detectable (the slab's quarantine). */
static char *free_head[NSHAPES], *free_tail[NSHAPES];
static _Atomic uint64_t registered;  /* live locks */
static _Atomic uint64_t give_ups;
/*
 * The rest, what each fork writes (slab_lock, quiesce_mutex, @pending,
 * and whether a prepare runs, holds the locks, armed the bodies), is in
 * proc_mut (proc.h), whose page the fork writes anyway.  quiesce_mutex:
 * one prepare at a time, as two threads forking at once would each take
 * for busy what the other holds; taken before any OpenSSL lock and only
 * by forking threads, so waiting for it cannot deadlock.  Prepare holds
 * slab_lock and the locks it took, for the fork.
 */
static struct proc_lk *const lkf = &proc_mut.lk;

/* What lk_new() stamps, and lk_heal() again. */
#define LOCK_WORD (ST_LIVE | (uint32_t)BK_LIBC << BK_SHIFT | W_LOCK)

static inline size_t
stride_of(const struct lk_shape *s)
{
	return (sizeof(struct blk) + s->size + 15) & ~(size_t)15;
}

static inline char *
slot_user(const struct chunk *ch, unsigned i)
{
	return (char *)ch + ch->first + (size_t)i * ch->stride;
}

static inline unsigned
slot_index(const struct chunk *ch, const char *user)
{
	return (unsigned)((size_t)(user - (const char *)ch - ch->first) /
			  ch->stride);
}

static inline char **
slot_link(struct chunk *ch, unsigned i)
{
	return (char **)((char *)ch + HEAD_BYTES) + i;
}

static inline uint8_t *
slot_use(struct chunk *ch, unsigned i)
{
	return (uint8_t *)slot_link(ch, ch->nslots) + i;
}

static inline uint8_t *
slot_state(struct chunk *ch, unsigned i)
{
	return (uint8_t *)ch + ch->body + i;
}

static inline bool
slot_used(struct chunk *ch, unsigned i)
{
	return __atomic_load_n(slot_use(ch, i), __ATOMIC_ACQUIRE) ==
	       SLOT_USED;
}

static inline enum lk_state
st_get(const uint8_t *st)
{
	return (enum lk_state)__atomic_load_n(st, __ATOMIC_ACQUIRE);
}

static inline void
st_set(uint8_t *st, enum lk_state v)
{
	__atomic_store_n(st, (uint8_t)v, __ATOMIC_RELEASE);
}

static void unlock_one(enum lk_kind kind, char *u, pid_t tid);

/* A pass's verdict on a slot it found LS_LIVE: unless a free marked it
 * LS_DEAD meanwhile (then what was taken of it is given back). */
static enum lk_state
st_settle(uint8_t *state, enum lk_kind kind, char *u, enum lk_state st,
	  pid_t tid)
{
	uint8_t live = LS_LIVE;

	if (__atomic_compare_exchange_n(state, &live, (uint8_t)st, false,
					__ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		return st;
	if (st == LS_TAKEN)
		unlock_one(kind, u, tid);
	return LS_DEAD;
}

/* The chunk a slot's user pointer lies in: chunks are CHUNK_BYTES
 * aligned. */
static inline struct chunk *
chunk_of(const void *user)
{
	return (struct chunk *)((uintptr_t)user & ~(uintptr_t)(CHUNK_BYTES - 1));
}

static inline uint8_t *
state_of(const void *user)
{
	struct chunk *ch = chunk_of(user);

	return slot_state(ch, slot_index(ch, user));
}

/* The link that chains a free (or pending) slot to the next one. */
static inline char **
free_link(const char *user)
{
	struct chunk *ch = chunk_of(user);

	return slot_link(ch, slot_index(ch, user));
}

/* ---- recognising a lock ---- */

/*
 * Files that end in no shape's tail (alloc-int.h: lk_rejected).
 */
_Atomic(const char *) lk_rejected_files[LK_REJECT_SLOTS];

/* Whether @file ends in some shape's tail. */
static bool
tail_of_a_shape(const char *file)
{
	size_t fl = strlen(file);

	for (unsigned i = 0; i < NSHAPES; i++) {
		size_t tl = strlen(shapes[i].tail);

		if (fl >= tl && strcmp(file + fl - tl, shapes[i].tail) == 0)
			return true;
	}
	return false;
}

/* Slow half of lk_shape_of(): the first match, by name. */
static int
shape_learn(size_t n, const char *file, int line)
{
	/* om_malloc() checked the rejected files already. */
	if (!file)
		return -1;
	for (unsigned i = 0; i < NSHAPES; i++) {
		struct lk_shape *s = &shapes[i];
		size_t fl, tl;

		if (s->size != n || atomic_load(&s->file))
			continue;
		fl = strlen(file);
		tl = strlen(s->tail);
		if (fl < tl || strcmp(file + fl - tl, s->tail) != 0)
			continue;
		atomic_store(&s->line, line);
		atomic_store(&s->file, file);
		return (int)i;
	}
	if (!tail_of_a_shape(file))
		atomic_store_explicit(&lk_rejected_files[lk_reject_slot(file)],
				      file, memory_order_relaxed);
	return -1;
}

int
lk_shape_of(size_t n, const char *file, int line)
{
	for (unsigned i = 0; i < NSHAPES; i++) {
		const struct lk_shape *s = &shapes[i];

		if (s->size == n && atomic_load_explicit(&s->file,
				memory_order_relaxed) == file)
			return atomic_load_explicit(&s->line,
					memory_order_relaxed) == line ?
			       (int)i : -1;
	}
	return shape_learn(n, file, line);
}

/* ---- the slabs ---- */

/* Append a free slot, under slab_lock. */
static void
slot_push(struct chunk *ch, char *u)
{
	char *tail = free_tail[ch->shape];

	__atomic_store_n(slot_use(ch, slot_index(ch, u)), SLOT_FREE,
			 __ATOMIC_RELEASE);
	*free_link(u) = NULL;
	if (tail)
		*free_link(tail) = u;
	else
		free_head[ch->shape] = u;
	free_tail[ch->shape] = u;
}

static inline size_t
round_up(size_t n, size_t to)
{
	return (n + to - 1) / to * to;
}

/* The most slots of @ch->stride that fit with their head and body. */
static void
chunk_layout(struct chunk *ch, size_t page)
{
	size_t n = CHUNK_BYTES / (ch->stride + sizeof(char *) + 2);

	for (;; n--) {
		size_t body = round_up(HEAD_BYTES + n * (sizeof(char *) + 1),
				       page);
		size_t first = round_up(body + n, 16) + sizeof(struct blk);

		if (first - sizeof(struct blk) + n * ch->stride <= CHUNK_BYTES) {
			ch->nslots = (unsigned)n;
			ch->body = (unsigned)body;
			ch->first = (unsigned)first;
			return;
		}
	}
}

/* Whether the kernel can wipe @ch's body at a fork (Linux 4.14). */
static bool
wipe_supported(struct chunk *ch)
{
#ifdef MADV_WIPEONFORK
	char *body = (char *)ch + ch->body;
	size_t len = CHUNK_BYTES - ch->body;

	return madvise(body, len, MADV_WIPEONFORK) == 0 &&
	       madvise(body, len, MADV_KEEPONFORK) == 0;
#else
	(void)ch;
	return false;
#endif
}

/* CHUNK_BYTES of fresh memory, CHUNK_BYTES aligned, so that a slot finds
 * its chunk by masking. */
static void *
chunk_map(void)
{
	void *p = mmap(NULL, 2 * CHUNK_BYTES, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uintptr_t a;

	if (p == MAP_FAILED)
		return NULL;
	a = ((uintptr_t)p + CHUNK_BYTES - 1) & ~(uintptr_t)(CHUNK_BYTES - 1);
	if (a > (uintptr_t)p)
		munmap(p, a - (uintptr_t)p);
	munmap((char *)a + CHUNK_BYTES, (uintptr_t)p + CHUNK_BYTES - a);
	return (void *)a;
}

static struct chunk *
chunk_new(unsigned shape)
{
	long page = sysconf(_SC_PAGESIZE);
	struct chunk *ch = chunk_map();

	if (!ch)
		return NULL;
	if (page < 4096 || (size_t)page > CHUNK_BYTES / 8)
		page = 4096;
	ch->shape = shape;
	ch->stride = (unsigned)stride_of(&shapes[shape]);
	chunk_layout(ch, (size_t)page);
	ch->wipe = shapes[shape].kind != LK_RCU &&
		   ch->body % (size_t)page == 0 && wipe_supported(ch);
	for (unsigned i = 0; i < ch->nslots; i++) {
		char *u = slot_user(ch, i);

		if (!page_reserved(u))
			slot_push(ch, u);
	}
	ch->next = atomic_load(&chunks);
	atomic_store(&chunks, ch);
	return ch;
}

/* A slot for a lock of shape @shape, under slab_lock. */
static char *
slot_take(unsigned shape)
{
	char *u = free_head[shape];

	if (!u && chunk_new(shape))
		u = free_head[shape];
	if (u) {
		free_head[shape] = *free_link(u);
		if (!free_head[shape])
			free_tail[shape] = NULL;
	}
	return u;
}

static void
count(size_t n, bool alloc)
{
	struct tstate *t = tstate_get();

	if (t->busy)
		t = &tstate_retired;
	if (alloc)
		tstate_count_alloc(t, n);
	else
		tstate_count_free(t, n);
}

void *
lk_new(int shape, size_t n, const char *file, int line)
{
	struct chunk *ch;
	char *u;

	(void)file;
	(void)line;
	proc_lock(&lkf->slab_lock);
	u = slot_take((unsigned)shape);
	if (u) {
		ch = chunk_of(u);
		/* The state first: a pass that sees the slot used sees it
		 * new. */
		if (lkf->quiescing)
			st_set(state_of(u), LS_NEW);
		__atomic_store_n(slot_use(ch, slot_index(ch, u)), SLOT_USED,
				 __ATOMIC_RELEASE);
		atomic_fetch_add_explicit(&registered, 1, memory_order_relaxed);
	}
	proc_unlock(&lkf->slab_lock);
	if (!u)
		return NULL;
	blk_stamp(u, n, 0, LOCK_WORD);
	count(n, true);
	return u;
}

/* The rest of a free of a lock, claimed (quarantined) already: a lock
 * slot is reused at once, the slab being its own quarantine no more. */
void
lk_free(void *user)
{
	struct chunk *ch = chunk_of(user);
	struct blk *h = hdr_of(user);
	size_t n = blk_size(h);

	atomic_store_explicit(&h->word, (atomic_load_explicit(&h->word,
			      memory_order_relaxed) & ~ST_MASK) | ST_RELEASED,
			      memory_order_release);
	count(n, false);
	proc_lock(&lkf->slab_lock);
	if (lkf->quiescing) {
		st_set(state_of(user), LS_DEAD);
		*free_link(user) = lkf->pending;
		lkf->pending = user;
	} else {
		slot_push(ch, user);
	}
	atomic_fetch_sub_explicit(&registered, 1, memory_order_relaxed);
	proc_unlock(&lkf->slab_lock);
}

/*
 * In a child whose bodies were wiped, a live lock's header reads as
 * zeroes: it is written again when first checked (a free), rather than
 * in the child handler, where it would cost a fault per page.  Any
 * other pointer is left to the caller's verdict.
 */
bool
lk_heal(void *p)
{
	for (struct chunk *ch = atomic_load(&chunks); ch; ch = ch->next) {
		uintptr_t off = (uintptr_t)p - (uintptr_t)ch;
		struct blk *h = hdr_of(p);
		unsigned i;

		if (off >= CHUNK_BYTES)
			continue;
		if (!ch->wipe || off < ch->first ||
		    (off - ch->first) % ch->stride)
			return false;
		i = slot_index(ch, p);
		if (i >= ch->nslots || !slot_used(ch, i) ||
		    atomic_load(&h->word) || h->magic || h->size_gen)
			return false;
		blk_stamp(p, shapes[ch->shape].size, 0, LOCK_WORD);
		return true;
	}
	return false;
}

/* ---- one lock, by kind ---- */

#ifdef __GLIBC__
/* glibc records a write lock's owner; a lock this thread holds for
 * writing is ours to keep, not to wait for. */
static bool
rw_mine(pthread_rwlock_t *l, pid_t tid)
{
	return __atomic_load_n(&l->__data.__cur_writer, __ATOMIC_RELAXED) ==
	       tid;
}
#else
static bool
rw_mine(pthread_rwlock_t *l, pid_t tid)
{
	(void)l;
	(void)tid;
	return false;
}
#endif

/* Take @u's locks: LS_TAKEN, LS_SELF, or LS_LIVE when busy. */
static enum lk_state
lock_one(enum lk_kind kind, char *u, pid_t tid)
{
	struct rcu_mirror *r = (struct rcu_mirror *)u;
	int rc;

	switch (kind) {
	case LK_RWLOCK:
		rc = pthread_rwlock_trywrlock((pthread_rwlock_t *)u);
		if (rc == 0)
			return LS_TAKEN;
		if (rc != EBUSY)
			return LS_DEAD;
		return rw_mine((pthread_rwlock_t *)u, tid) ? LS_SELF : LS_LIVE;
	case LK_MUTEX:
		rc = pthread_mutex_trylock((pthread_mutex_t *)u);
		return rc == 0 ? LS_TAKEN : rc == EBUSY ? LS_LIVE : LS_DEAD;
	case LK_COND:
		return LS_TAKEN;
	case LK_RCU:
		rc = pthread_mutex_trylock(&r->write_lock);
		if (rc)
			return rc == EBUSY ? LS_LIVE : LS_DEAD;
		if (pthread_mutex_trylock(&r->alloc_lock))
			goto unlock_write;
		if (pthread_mutex_trylock(&r->prior_lock))
			goto unlock_alloc;
		return LS_TAKEN;
unlock_alloc:
		pthread_mutex_unlock(&r->alloc_lock);
unlock_write:
		pthread_mutex_unlock(&r->write_lock);
		return LS_LIVE;
	}
	return LS_LIVE;
}

/*
 * Whether this thread (@tid) still write-holds @u.  A lock's block is
 * handed to OpenSSL before OpenSSL initialises it, and initialising an
 * rwlock or mutex with default attributes writes the zeroes of an
 * unlocked one: a pass that took a lock whose creator had not finished
 * initialising it holds nothing afterwards, and unlocking it then would
 * corrupt it (glibc would count a reader leaving).  glibc records the
 * owner of a write lock and of a mutex; elsewhere the lock is trusted.
 */
#ifdef __GLIBC__
static bool
rw_held(pthread_rwlock_t *l, pid_t tid)
{
	return __atomic_load_n(&l->__data.__cur_writer, __ATOMIC_RELAXED) ==
	       tid;
}

static bool
mutex_held(pthread_mutex_t *m, pid_t tid)
{
	return __atomic_load_n(&m->__data.__owner, __ATOMIC_RELAXED) == tid;
}
#else
static bool
rw_held(pthread_rwlock_t *l, pid_t tid)
{
	(void)l;
	(void)tid;
	return true;
}

static bool
mutex_held(pthread_mutex_t *m, pid_t tid)
{
	(void)m;
	(void)tid;
	return true;
}
#endif

static void
mutex_release(pthread_mutex_t *m, pid_t tid)
{
	if (mutex_held(m, tid))
		pthread_mutex_unlock(m);
}

static void
unlock_one(enum lk_kind kind, char *u, pid_t tid)
{
	struct rcu_mirror *r = (struct rcu_mirror *)u;

	switch (kind) {
	case LK_RWLOCK:
		if (rw_held((pthread_rwlock_t *)u, tid))
			pthread_rwlock_unlock((pthread_rwlock_t *)u);
		break;
	case LK_MUTEX:
		mutex_release((pthread_mutex_t *)u, tid);
		break;
	case LK_COND:
		break;
	case LK_RCU:
		mutex_release(&r->prior_lock, tid);
		mutex_release(&r->alloc_lock, tid);
		mutex_release(&r->write_lock, tid);
		break;
	}
}

/* In the child, which has one thread: a lock prepare took is made anew
 * (glibc's unlock checks the owner's thread id, which changed), as
 * OpenSSL created it; one the forker holds gets the child's id. */
CHILD_PATH static void
renew_one(enum lk_kind kind, char *u, enum lk_state st, pid_t tid)
{
	struct rcu_mirror *r = (struct rcu_mirror *)u;

	switch (kind) {
	case LK_RWLOCK:
#ifdef __GLIBC__
		if (st == LS_SELF) {
			__atomic_store_n(&((pthread_rwlock_t *)u)->__data
					 .__cur_writer, tid, __ATOMIC_RELAXED);
			break;
		}
#endif
		pthread_rwlock_init((pthread_rwlock_t *)u, NULL);
		break;
	case LK_MUTEX:
		pthread_mutex_init((pthread_mutex_t *)u, NULL);
		break;
	case LK_COND:
		pthread_cond_init((pthread_cond_t *)u, NULL);
		break;
	case LK_RCU:
		pthread_mutex_init(&r->write_lock, NULL);
		pthread_mutex_init(&r->alloc_lock, NULL);
		pthread_mutex_init(&r->prior_lock, NULL);
		pthread_cond_init(&r->alloc_signal, NULL);
		pthread_cond_init(&r->prior_signal, NULL);
		break;
	}
	(void)tid;
}

/* ---- the whole registry ---- */

/* Each slot in use, with its chunk and fork state. */
#define FOR_EACH_SLOT(ch, i, u, st)                                         \
	for (struct chunk *ch = atomic_load(&chunks); ch; ch = ch->next)    \
		FOR_EACH_SLOT_OF(ch, i, u, st)

#define FOR_EACH_SLOT_OF(ch, i, u, st)                                      \
	for (unsigned i = 0; i < ch->nslots; i++)                           \
		for (char *u = slot_used(ch, i) ? slot_user(ch, i) : NULL;  \
		     u; u = NULL)                                           \
			for (uint8_t *st = slot_state(ch, i); st; st = NULL)

/* Release what prepare took; @done: prepare is over, new locks become
 * ordinary ones. */
static void
release_all(bool done)
{
	FOR_EACH_SLOT(ch, i, u, state) {
		enum lk_state st = st_get(state);
		uint8_t from = (uint8_t)st;

		/* Most slots: no write, so no page touched for nothing. */
		if (st == LS_LIVE)
			continue;
		if (st == LS_TAKEN)
			unlock_one(shapes[ch->shape].kind, u,
				   lkf->quiesce_tid);
		/* Not over a free's LS_DEAD, which only the end undoes. */
		if (done || (st != LS_NEW && st != LS_DEAD))
			__atomic_compare_exchange_n(state, &from, LS_LIVE,
						    false, __ATOMIC_ACQ_REL,
						    __ATOMIC_ACQUIRE);
	}
}

/* The end of prepare, under slab_lock: the frees it deferred. */
static void
quiesce_end(void)
{
	lkf->quiescing = false;
	while (lkf->pending) {
		char *u = lkf->pending;

		lkf->pending = *free_link(u);
		slot_push(chunk_of(u), u);
	}
}

static uint64_t now_ns(void);

/*
 * A busy lock's holder is most often in a short critical section that
 * needs none of the locks taken so far: wait for it a little, yielding,
 * before giving all back (which lets a holder that waits for one of
 * them go on).  Giving all back at once instead livelocks under load:
 * with eight threads in OpenSSL some hot lock is nearly always held.
 */
#define SPIN_NS 2000000u

static enum lk_state
lock_wait(enum lk_kind kind, char *u, pid_t tid, uint64_t *spin_end)
{
	enum lk_state st = lock_one(kind, u, tid);

	if (st != LS_LIVE || !*spin_end)
		return st;
	while (st == LS_LIVE && now_ns() < *spin_end) {
		sched_yield();
		st = lock_one(kind, u, tid);
	}
	/* The next busy lock in this pass waits no more. */
	if (st == LS_LIVE)
		*spin_end = 0;
	return st;
}

/*
 * Locks that stayed busy in an earlier pass, most recent first, taken
 * before the others: OpenSSL nests some locks, and a thread that holds
 * an outer one while it waits for an inner one this pass took never
 * lets go of it.  Taken first, with little held, an outer lock is only
 * waited for; after a few passes this order approximates OpenSSL's.
 */
#define FRONT 32
static char *front[FRONT];

static void
front_add(char *u)
{
	unsigned i = 0;

	while (i < FRONT - 1 && front[i] != u)
		i++;
	memmove(&front[1], &front[0], i * sizeof(front[0]));
	front[0] = u;
}

/* Take the front locks: false (with @busy set) when one stays busy. */
static bool
take_front(pid_t tid, uint64_t *spin_end, uint64_t *n, char **busy)
{
	for (unsigned i = 0; i < FRONT && front[i]; i++) {
		struct chunk *ch = chunk_of(front[i]);
		uint8_t *state = state_of(front[i]);
		enum lk_state st;

		if (!slot_used(ch, slot_index(ch, front[i])) ||
		    st_get(state) != LS_LIVE)
			continue;
		st = lock_wait(shapes[ch->shape].kind, front[i], tid,
			       spin_end);
		st = st_settle(state, shapes[ch->shape].kind, front[i], st,
			       tid);
		if (st == LS_TAKEN)
			(*n)++;
		else if (st == LS_LIVE && !*busy)
			*busy = front[i];
	}
	return !*busy;
}

/* One pass: take every lock; with @keep_busy skip the busy ones, else
 * stop at the first that stays busy (returned, with nothing held).
 * Counts into @n. */
static char *
take_all(bool keep_busy, pid_t tid, uint64_t *n)
{
	uint64_t spin_end = keep_busy ? 0 : now_ns() + SPIN_NS;
	char *busy = NULL;

	*n = 0;
	if (!take_front(tid, &spin_end, n, &busy) && !keep_busy) {
		release_all(false);
		front_add(busy);
		return busy;
	}
	FOR_EACH_SLOT(ch, i, u, state) {
		enum lk_state st;

		if (st_get(state) != LS_LIVE || u == busy)
			continue;
		st = lock_wait(shapes[ch->shape].kind, u, tid, &spin_end);
		st = st_settle(state, shapes[ch->shape].kind, u, st, tid);
		if (st == LS_TAKEN) {
			(*n)++;
		} else if (st == LS_LIVE) {
			if (!busy)
				busy = u;
			if (!keep_busy) {
				release_all(false);
				front_add(busy);
				return busy;
			}
		}
	}
	return busy;
}

static uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void
back_off(uint64_t ns)
{
	struct timespec ts = { 0, (long)ns };

	nanosleep(&ts, NULL);
}

static void
warn_busy(char *u, uint64_t budget_ns)
{
	const struct lk_shape *s = &shapes[chunk_of(u)->shape];
	const char *file = atomic_load(&s->file);

	log_warn("fork: OpenSSL lock %p (allocated at %s:%d, %s) stayed "
		 "held by another thread for %llu ms; forking without it: "
		 "the child hangs if it needs that lock.  Fork while no "
		 "other thread is inside OpenSSL, or raise fork_quiesce_ms",
		 (void *)u, file ? file : "?", atomic_load(&s->line), s->func,
		 (unsigned long long)(budget_ns / 1000000));
}

/* Mark (MADV_WIPEONFORK) or unmark (MADV_KEEPONFORK) the bodies that may
 * be wiped; false when one could not be marked. */
static bool
bodies_advise(int advice)
{
	bool ok = true;

	for (struct chunk *ch = atomic_load(&chunks); ch; ch = ch->next)
		if (ch->wipe && madvise((char *)ch + ch->body,
					CHUNK_BYTES - ch->body, advice) != 0)
			ok = false;
	return ok;
}

/*
 * After prepare took every lock, the bodies are wiped in the child (the
 * head of this file).  Not when the forking thread holds a lock itself:
 * the child must get it held, by its own thread id.  Unmarked after the
 * fork (alloc_fork_disarm()), as a fork nobody prepared (one that
 * bypasses pthread_atfork, or from a single-threaded process, which
 * takes no lock) must not wipe a lock its forking thread holds: right
 * away in the parent, in the child at its first allocation or fork.  A
 * child's fork that bypasses pthread_atfork before its first allocation
 * still wipes them, and gives its own child its locks unlocked.
 */
static bool
arm(void)
{
#ifdef MADV_WIPEONFORK
	for (struct chunk *ch = atomic_load(&chunks); ch; ch = ch->next)
		if (ch->wipe && memchr(slot_state(ch, 0), LS_SELF, ch->nslots))
			return false;
	if (bodies_advise(MADV_WIPEONFORK))
		return true;
	bodies_advise(MADV_KEEPONFORK);
#endif
	return false;
}

void
alloc_fork_disarm(void)
{
	if (!lkf->armed)
		return;
#ifdef MADV_WIPEONFORK
	bodies_advise(MADV_KEEPONFORK);
#endif
	lkf->armed = false;
}

/*
 * Take every registered lock, retrying until @budget_ns passed (none:
 * one pass).  True when all were taken; otherwise the child inherits the
 * locks it could not take, and one WARNING says which.
 */
bool
alloc_fork_quiesce(uint64_t budget_ns)
{
	uint64_t start = now_ns(), delay = 2000, n;
	pid_t tid = gettid();
	char *busy;

	pthread_mutex_lock(&lkf->quiesce_mutex);
	/* Frees wait from here (under the lock: one that saw the flag
	 * clear has finished). */
	pthread_mutex_lock(&lkf->slab_lock);
	lkf->quiescing = true;
	lkf->quiesce_tid = tid;
	pthread_mutex_unlock(&lkf->slab_lock);
	for (;;) {
		busy = take_all(false, tid, &n);
		if (!busy)
			break;
		if (now_ns() - start >= budget_ns) {
			busy = take_all(true, tid, &n);
			break;
		}
		back_off(delay);
		delay = delay < 1000000 ? delay * 2 : delay;
	}
	/* Held until the fork is over: its holders wait for nothing, and a
	 * thread that would create or free a lock now waits for the fork. */
	pthread_mutex_lock(&lkf->slab_lock);
	lkf->held = true;
	atomic_store(&lkf->taken_last, n);
	atomic_store(&lkf->prep_ns_last, now_ns() - start);
	if (busy) {
		atomic_fetch_add(&give_ups, 1);
		warn_busy(busy, budget_ns);
	} else {
		lkf->armed = arm();
	}
	return !busy;
}

void
alloc_fork_parent(void)
{
	if (!lkf->held)
		return;
	lkf->held = false;
	alloc_fork_disarm();
	release_all(true);
	quiesce_end();
	pthread_mutex_unlock(&lkf->slab_lock);
	pthread_mutex_unlock(&lkf->quiesce_mutex);
}

/* In the child, a chunk whose body was not wiped: the locks prepare took
 * are made anew.  @tid: the child's thread id, read when first needed. */
CHILD_PATH static void
renew_chunk(struct chunk *ch, pid_t *tid)
{
	FOR_EACH_SLOT_OF(ch, i, u, state) {
		enum lk_state st = st_get(state);

		if (st == LS_LIVE)
			continue;
		if (st == LS_SELF && !*tid)
			*tid = gettid();
		if (st == LS_TAKEN || st == LS_SELF)
			renew_one(shapes[ch->shape].kind, u, st, *tid);
		st_set(state, LS_LIVE);
	}
}

/* In the child, before anything else: one thread, so no lock is
 * taken. */
CHILD_PATH void
lk_child(void)
{
	pid_t tid = 0;

	pthread_mutex_init(&lkf->slab_lock, NULL);
	pthread_mutex_init(&lkf->quiesce_mutex, NULL);
	if (!lkf->held)
		return;
	lkf->held = false;
	for (struct chunk *ch = atomic_load(&chunks); ch; ch = ch->next)
		if (!lkf->armed || !ch->wipe)
			renew_chunk(ch, &tid);
	/* The marks stay until this process forks or first allocates
	 * (alloc_fork_disarm()): a child that only execs or exits makes
	 * no system call for them, nor faults on their code. */
	quiesce_end();
}

void
lk_stats(struct ossl_proc_stats *st)
{
	st->locks_registered = atomic_load(&registered);
	st->locks_taken_last_fork = atomic_load(&lkf->taken_last);
	st->fork_prepare_ns = atomic_load(&lkf->prep_ns_last);
	st->fork_quiesce_give_ups = atomic_load(&give_ups);
}

uint64_t
alloc_locks_registered(void)
{
	return atomic_load(&registered);
}
