/*
 * osslproc - make OpenSSL 3.x safe across fork, plugin unload and host
 * allocators.
 *
 * A host calls osslproc at three points:
 *
 *  - load:   ossl_proc_init() before any other OpenSSL use;
 *  - fork:   ossl_proc_fork_prepare() / ossl_proc_fork_parent() /
 *            ossl_proc_child_reinit(), registered with pthread_atfork() by
 *            default;
 *  - unload: ossl_proc_module_close() for every plugin scope and
 *            ossl_proc_teardown() for the library itself.
 *
 * Conventions: functions return 0 (or a documented non-negative value) on
 * success and a negative errno on failure; every failure is also logged
 * with the reason through the log callback.  Structs that cross the ABI
 * start with a size field that the caller sets to sizeof() the struct it
 * was compiled with.
 *
 * The declarations below are grouped by point of use: load, fork, the
 * shared arena, the per-process SSL_CTX, unload (module scopes), the
 * environment and CA paths, statistics.  Each function's man page (see
 * osslproc(7)) has the full reference, with examples.
 */
#ifndef OSSLPROC_H
#define OSSLPROC_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#ifdef __cplusplus
extern "C" {
#endif

#define OSSL_PROC_VERSION_MAJOR 0
#define OSSL_PROC_VERSION_MINOR 3
#define OSSL_PROC_VERSION_MICRO 0

/* ------------------------------------------------------------------ */
/* Load: initialisation, teardown and the configuration               */
/* ------------------------------------------------------------------ */

/**
 * A memory backend that the tracked allocator places its blocks on.
 *
 * The tracked allocator adds a 16-byte header to every block it hands to
 * OpenSSL and asks the backend for the header plus the payload.  All
 * functions must be thread-safe; with @c shared set they must also be safe
 * to call from several processes at once.
 */
struct ossl_proc_allocator {
	/** Returns @p size bytes aligned to alignof(max_align_t), or NULL.
	 * Blocks only 8-byte aligned are accepted too (since 0.3): each is
	 * replaced by one 40 bytes larger and padded, which costs a second
	 * call and keeps that block out of the per-thread cache. */
	void *(*malloc)(size_t size, void *arg);
	/** Reserved: osslproc moves reallocated blocks itself so that the old
	 * address is quarantined; may be NULL. */
	void *(*realloc)(void *ptr, size_t size, void *arg);
	/** Releases a block returned by @c malloc. */
	void (*free)(void *ptr, void *arg);
	/** Passed unchanged to the three functions. */
	void *arg;
	/** Non-zero when the memory is shared between processes. */
	int shared;
};

/** Log levels; a message is delivered when its level <= the configured one. */
enum ossl_proc_log_level {
	OSSL_PROC_LOG_ERROR = 10,
	OSSL_PROC_LOG_WARNING = 20,
	OSSL_PROC_LOG_INFO = 30,
	OSSL_PROC_LOG_DEBUG = 40,
};

/**
 * Log callback.  @p msg is a NUL-terminated line without a trailing
 * newline, valid only during the call.  The callback may be called from
 * inside OpenSSL's allocator, from fork handlers and from any thread: it
 * must not call back into OpenSSL or osslproc and should not allocate.
 */
typedef void (*ossl_proc_log_fn)(enum ossl_proc_log_level level,
				 const char *msg, void *arg);

/** What the tracked allocator does with a free it must refuse. */
enum ossl_proc_bad_free {
	/** Log once per call site (pointer and reason), skip the free. */
	OSSL_PROC_BAD_FREE_LOG = 0,
	/** Count it and skip the free silently. */
	OSSL_PROC_BAD_FREE_IGNORE,
	/** Log an ERROR, then abort(). */
	OSSL_PROC_BAD_FREE_ABORT,
};

/** Do not install the tracked allocator. */
#define OSSL_PROC_F_NO_ALLOCATOR (1u << 0)
/** Do not register pthread_atfork() handlers; the host calls the fork
 * functions itself. */
#define OSSL_PROC_F_NO_ATFORK (1u << 1)
/** Zero every block when OpenSSL frees it. */
#define OSSL_PROC_F_SCRUB (1u << 2)
/** Remember file:line of each allocation and of its first free (costs 48
 * bytes per block). */
#define OSSL_PROC_F_TRACK_SITES (1u << 3)
/** At exit, once OpenSSL has freed its own state, print to stderr what
 * is still allocated: the process's leaks (with their sites under
 * OSSL_PROC_F_TRACK_SITES).  Added in 0.3; see ossl_proc_report(). */
#define OSSL_PROC_F_EXIT_LEAKS (1u << 4)
/** Do not quiesce OpenSSL's locks in ossl_proc_fork_prepare() (see
 * there): a fork then behaves as without osslproc.  Added in 0.3. */
#define OSSL_PROC_F_NO_FORK_QUIESCE (1u << 5)
/** The host shares live OpenSSL objects between processes and
 * serialises access to each (the OpenSIPS/Kamailio model): a block of the
 * shared backend freed by a process other than the one that allocated it
 * is released, after this process's quarantine, instead of refused as an
 * inherited free.  Destroy such objects with ossl_proc_free_by_owner().
 * Without a shared allocator it changes nothing.  Added in 0.3. */
#define OSSL_PROC_F_SHARED_OBJECTS (1u << 6)
/** All flags this version knows. */
#define OSSL_PROC_F_ALL (OSSL_PROC_F_NO_ALLOCATOR | OSSL_PROC_F_NO_ATFORK | \
			 OSSL_PROC_F_SCRUB | OSSL_PROC_F_TRACK_SITES | \
			 OSSL_PROC_F_EXIT_LEAKS | OSSL_PROC_F_NO_FORK_QUIESCE | \
			 OSSL_PROC_F_SHARED_OBJECTS)

/**
 * Configuration for ossl_proc_init().  Start from OSSL_PROC_CONFIG_INIT so
 * that @c size is right and every other field has its default.
 */
struct ossl_proc_config {
	/** sizeof(struct ossl_proc_config) as the caller compiled it. */
	size_t size;
	/** OSSL_PROC_F_* flags. */
	unsigned int flags;
	/** Backend for the tracked allocator; NULL: malloc/free.  Must stay
	 * valid until the process exits. */
	const struct ossl_proc_allocator *allocator;
	/** Policy for double, invalid and foreign frees. */
	enum ossl_proc_bad_free on_bad_free;
	/** Bytes of freed blocks (headers and size-class rounding
	 * included) each thread holds back before releasing them (the
	 * double-free detection window); 0: 16 KiB, or 64 KiB with a
	 * shared allocator. */
	size_t quarantine_bytes;
	/** Log callback; NULL: lines go to stderr. */
	ossl_proc_log_fn log;
	/** Passed to @c log. */
	void *log_arg;
	/** Most verbose level delivered; 0: OSSL_PROC_LOG_WARNING. */
	enum ossl_proc_log_level log_level;
	/** CA bundle and directory; NULL: resolved at init (see
	 * ossl_proc_ca_file()). */
	const char *ca_file;
	const char *ca_dir;
	/* Added in 0.2. */
	/** Bytes of freed blocks, past the quarantine, each thread keeps
	 * for reuse instead of returning them to the backend; 0: 512 KiB;
	 * 1: none (every block goes back).  A worker of a shared
	 * allocator keeps its own shared blocks (since 0.3). */
	size_t cache_bytes;
	/* Added in 0.3. */
	/** The options ossl_proc_init() initialises OpenSSL with; 0:
	 * OPENSSL_INIT_LOAD_CONFIG and the error strings (OpenSSL loads its
	 * configuration now, from the snapshot's OPENSSL_CONF or its default
	 * file).  Otherwise exactly these OPENSSL_INIT_* options, given to
	 * OPENSSL_init_crypto(), or to OPENSSL_init_ssl() when they contain
	 * OPENSSL_INIT_LOAD_SSL_STRINGS or OPENSSL_INIT_NO_LOAD_SSL_STRINGS
	 * (which then loads the configuration unless
	 * OPENSSL_INIT_NO_LOAD_CONFIG is among them).  The snapshot's
	 * OPENSSL_CONF is the file name only when
	 * OPENSSL_INIT_LOAD_CONFIG is.  OSSL_PROC_OPENSSL_INIT_NONE: no
	 * OPENSSL_init_* call at all, so the program's first one decides
	 * everything (OPENSSL_INIT_NO_ATEXIT, OPENSSL_INIT_NO_LOAD_CONFIG,
	 * ...; OpenSSL applies each such choice once, at the first call that
	 * makes it). */
	uint64_t openssl_init_opts;
	/** Bytes all threads' caches may hold together: each thread's
	 * cache (at most cache_bytes) draws from this process-wide budget,
	 * and gives its share back when the thread exits or calls
	 * ossl_proc_thread_release(); 0: 8 MiB. */
	size_t cache_total_bytes;
	/** How long ossl_proc_fork_prepare() tries to take every OpenSSL
	 * lock before it forks without the busy ones (one WARNING names
	 * the lock), in milliseconds; 0: 200.  Added in 0.3. */
	unsigned int fork_quiesce_ms;
};

/** openssl_init_opts: osslproc does not initialise OpenSSL itself. */
#define OSSL_PROC_OPENSSL_INIT_NONE (UINT64_C(1) << 63)

#define OSSL_PROC_CONFIG_INIT { .size = sizeof(struct ossl_proc_config) }

/** Result of ossl_proc_teardown() and ossl_proc_module_close(). */
enum ossl_proc_unload {
	/** Nothing can reach the unloaded code any more. */
	OSSL_PROC_UNLOAD_SAFE = 0,
	/** OpenSSL can still call into this object; it was made
	 * RTLD_NODELETE and stays mapped (the log says why). */
	OSSL_PROC_UNLOAD_PINNED = 1,
	/** Other references remain; nothing was undone yet. */
	OSSL_PROC_UNLOAD_IN_USE = 2,
};

/**
 * Initialise osslproc, or take one more reference.
 *
 * The first call copies @p cfg, installs the tracked allocator with
 * CRYPTO_set_mem_functions() (unless OSSL_PROC_F_NO_ALLOCATOR), copies
 * the environment values OpenSSL reads later and resolves the CA paths
 * (see "Environment and CA paths" below), makes OpenSSL load its
 * configuration now (OPENSSL_init_ssl() with OPENSSL_INIT_LOAD_CONFIG),
 * gives the default library context an explicit provider directory, and
 * registers the fork handlers with pthread_atfork() (unless
 * OSSL_PROC_F_NO_ATFORK; see ossl_proc_fork_prepare()).
 *
 * Call it before any other OpenSSL function: once OpenSSL has allocated
 * with its default allocator the tracked one cannot be installed; init
 * then still succeeds, untracked, with a WARNING (ossl_proc_get_stats()
 * reports OSSL_PROC_ALLOC_UNTRACKED).  If custom memory functions are
 * installed already, the tracked allocator stacks on them: they are the
 * backend (unless @c cfg->allocator is set) and free what they allocated
 * before.  If they belong to another copy of osslproc in the process (a
 * statically vendored one), this copy attaches to it instead: one set of
 * statistics and one bad-free policy cover the process.  The allocator's
 * settings are frozen once it is installed, across init/teardown cycles.
 *
 * Later calls take a reference and return 1; their @p cfg is checked
 * (an invalid one takes no reference), and settings that differ from the
 * first call's are logged and ignored (a NULL @p cfg asks for a reference
 * only and is never a conflict).
 *
 * @param cfg Configuration, or NULL for the defaults.  A @c size smaller
 *        than this version's struct is accepted if it covers @c size and
 *        @c flags (the fields it covers are used, the others keep their
 *        defaults); a larger one only if the unknown tail is zero.
 * @return 0 on the first initialisation, 1 if a reference was added;
 *         -EINVAL for a bad configuration (a @c size as above, unknown
 *         flags, @c on_bad_free outside its enum, @c log_level outside 0
 *         to OSSL_PROC_LOG_DEBUG, an allocator without @c malloc or
 *         @c free); -ENOMEM; -EIO if OpenSSL's initialisation failed or
 *         it refused the provider directory.
 *
 * Thread-safety: safe; concurrent calls are serialised.  Call it in the
 * host's single-threaded initialisation phase if at all possible: OpenSSL's
 * configuration and the environment are read here.
 * Fork-safety: do not call between fork() and exec() in a child of a
 * multi-threaded process.
 */
int ossl_proc_init(const struct ossl_proc_config *cfg);

/**
 * Drop one reference taken by ossl_proc_init().
 *
 * The last reference undoes what init did: the CA paths and the copy of
 * the environment are freed, the ossl_proc_on_child() hooks cleared, the
 * log callback forgotten (lines go to stderr again, at WARNING).  The
 * statistics are not reset, and an installed allocator keeps counting.
 * It does not close module scopes, free ossl_proc_ctx handles or unmap
 * arenas.  The tracked
 * allocator cannot be removed (OpenSSL frees through it until exit,
 * atexit included), so it stays installed; if the code implementing it
 * lives in an object that could be dlclose'd, that object is made
 * RTLD_NODELETE and OSSL_PROC_UNLOAD_PINNED is returned.  So is an object
 * that holds its own static libcrypto beside this copy of osslproc.
 *
 * @return OSSL_PROC_UNLOAD_IN_USE if references remain,
 *         OSSL_PROC_UNLOAD_SAFE or OSSL_PROC_UNLOAD_PINNED after the last
 *         one, -EINVAL if osslproc is not initialised.
 *
 * Thread-safety: safe; serialised with ossl_proc_init().
 * Fork-safety: as ossl_proc_init().
 */
int ossl_proc_teardown(void);

/* ------------------------------------------------------------------ */
/* Fork                                                                */
/* ------------------------------------------------------------------ */

/**
 * Fork prepare handler, registered with pthread_atfork() by the first
 * ossl_proc_init() unless OSSL_PROC_F_NO_ATFORK (then the host calls it
 * right before fork()).
 *
 * When other threads have used OpenSSL, takes every OpenSSL lock the
 * tracked allocator registered (try-locks, retried until fork_quiesce_ms
 * of the config, 200 ms by default) and holds them across the fork, so
 * that the child inherits none held by a thread it does not have; INFO
 * once when that succeeded, a WARNING naming the lock when one stayed
 * held (ossl_proc_fork_prepare(3) lists what is not quiesced).  Notes
 * whether the forking thread's error queue holds errors, and holds
 * osslproc's locks across the fork; touches none of the parent's OpenSSL
 * state.  Logs a WARNING when a worker of the shared backend forks
 * again.  Calls nest per thread: calling it by hand as well as
 * automatically is harmless, only the outermost pair does any work.  Does
 * nothing before init or after the last teardown.
 *
 * Thread-safety: safe; concurrent forks are serialised.  The host's own
 * pthread_atfork() handlers registered before ossl_proc_init() run while
 * these locks are held (prepare handlers run newest first, parent and
 * child handlers oldest first); the thread that holds them does not take
 * them again, so those handlers may call OpenSSL and osslproc.  They must
 * not wait for another thread that does.
 * Fork-safety: this is the fork point.  With OSSL_PROC_F_NO_ATFORK call
 * it right before fork(), ossl_proc_fork_parent() right after in the
 * parent and ossl_proc_child_reinit() in the child before any OpenSSL
 * call (the child's OpenSSL locks are held until then).
 */
void ossl_proc_fork_prepare(void);

/**
 * Fork parent handler: releases what the matching ossl_proc_fork_prepare()
 * held; without one, does nothing.  Call it in the parent after fork()
 * when OSSL_PROC_F_NO_ATFORK is set.
 *
 * Thread-safety: call it in the thread that called
 * ossl_proc_fork_prepare().
 */
void ossl_proc_fork_parent(void);

/**
 * Re-initialise the child after fork(): a new generation and pid, the
 * locks released (or re-created when no prepare ran), the allocator state
 * of threads that do not exist in the child and the shared blocks of
 * other processes forgotten (never released), the inherited error queue
 * cleared when no prepare ran, then the ossl_proc_on_child() hooks in
 * registration order.  OpenSSL's DRBGs reseed by themselves when the pid
 * changes.
 *
 * Runs automatically from the pthread_atfork() child handler.  A fork that
 * bypasses the handlers (syscall(SYS_fork), clone, _Fork) is noticed at
 * the child's next call into OpenSSL's allocator (a MADV_WIPEONFORK page;
 * without it, at the next osslproc call) and handled there with a WARNING
 * asking the host to call this function.  Noticed in the allocator, only
 * the allocator is re-initialised there; the error queue and the hooks,
 * which call OpenSSL and the host, wait for this function or the next
 * ossl_proc_ctx_get(), ossl_proc_get_stats() or ossl_proc_report(), in
 * whichever thread makes it (the inherited error queue is cleared only in
 * the thread that forked).
 *
 * @return 0, also when this process was already re-initialised (it is
 *         idempotent per process); -EINVAL before ossl_proc_init().
 *
 * Thread-safety: call in the child before it starts threads.
 * Fork-safety: this is the function to call after fork(); with a
 * multi-threaded parent only async-signal-safe hooks are safe.
 */
int ossl_proc_child_reinit(void);

/**
 * Number of forks between the initialised ancestor and this process:
 * 0 in the process that called ossl_proc_init(), 1 in its children, 2 in
 * theirs.  Not reset by ossl_proc_teardown().
 *
 * @return the generation; 0 before ossl_proc_init().
 *
 * Thread-safety: safe, async-signal-safe (one atomic load).
 * Fork-safety: safe in any process; a child whose fork bypassed the
 * handlers reads its parent's value until it is re-initialised.
 */
unsigned long ossl_proc_generation(void);

/**
 * Register a function that every child runs during its re-initialisation,
 * after osslproc's own work, in registration order: inside the
 * pthread_atfork() child handler, or in the host's call to
 * ossl_proc_child_reinit() with OSSL_PROC_F_NO_ATFORK.  Hooks are cleared
 * by the last ossl_proc_teardown(); there is no way to remove one.
 *
 * @param fn  Function to call; must not be NULL.  It may call OpenSSL and
 *            osslproc (osslproc's locks are released by then).
 * @param arg Passed to @p fn.
 * @return 0, -EINVAL for a NULL @p fn or before init, -ENOSPC after 32
 *         hooks.
 *
 * Thread-safety: safe.  The hooks run in the child's only thread.
 * Fork-safety: a hook runs in a freshly forked child: with a
 * multi-threaded parent, only async-signal-safe work is safe there.
 */
int ossl_proc_on_child(void (*fn)(void *arg), void *arg);

/* ------------------------------------------------------------------ */
/* Built-in process-shared arena                                       */
/* ------------------------------------------------------------------ */

struct ossl_proc_arena;

/**
 * Create an arena of @p capacity bytes in an anonymous MAP_SHARED mapping,
 * so that memory allocated from it by one process is visible, at the same
 * address, to every process forked afterwards.  Allocation is serialised
 * by a robust, process-shared mutex inside the mapping; when the arena is
 * full, allocation returns NULL and logs an ERROR (once, and again after a
 * quarter of the memory in use was freed).  Create it before
 * ossl_proc_init() and before forking.
 *
 * @param capacity Usable bytes, from 64 KiB to 2^35 (32 GiB), rounded up
 *                 to pages.
 * @return the arena, or NULL with errno set: EINVAL for a bad capacity or
 *         when the robust mutex cannot be created, ENOMEM when the mapping
 *         fails or 64 arenas exist already.
 *
 * Thread-safety: safe.
 * Fork-safety: the arena is shared by every process forked after it was
 * created.
 */
struct ossl_proc_arena *ossl_proc_arena_new(size_t capacity);

/**
 * The arena as a backend for ossl_proc_config.allocator (with @c shared
 * set).
 *
 * @param a The arena.
 * @return a pointer valid for the arena's lifetime, or NULL if @p a is
 *         NULL or not an arena that this copy of osslproc created in this
 *         process (or its parent) and has not freed.
 *
 * Thread-safety: safe.
 */
const struct ossl_proc_allocator *
ossl_proc_arena_allocator(struct ossl_proc_arena *a);

/** Arena counters, shared by every process using the arena. */
struct ossl_proc_arena_stats {
	/** Caller sets sizeof(struct ossl_proc_arena_stats). */
	size_t size;
	uint64_t capacity;      /**< usable bytes */
	uint64_t used_bytes;    /**< bytes in allocated blocks (rounded) */
	uint64_t peak_bytes;    /**< highest used_bytes seen */
	uint64_t allocs;        /**< successful allocations */
	uint64_t frees;         /**< successful frees */
	uint64_t failed;        /**< allocations refused: arena full */
	uint64_t bad_frees;     /**< frees refused: not a live arena block */
	/* Since 0.3: */
	uint64_t free_bytes;    /**< bytes in free blocks (payloads) */
	uint64_t free_blocks;   /**< free blocks (1 when all is free) */
	uint64_t largest_free;  /**< the largest request that can succeed
				     (within a quarter, above 1 KiB) */
	uint64_t lock_ops;      /**< times the arena's lock was taken */
	uint64_t lock_waits;    /**< of those, times it was held already */
};

/**
 * Read the arena's counters, shared by every process using the arena.
 *
 * @param a   The arena.
 * @param out Filled in; out->size must be set, at least to this version's
 *            sizeof(struct ossl_proc_arena_stats) (bytes past it are left
 *            untouched).
 * @return 0, or -EINVAL for a NULL argument, a smaller size or @p a not an
 *         arena of this process.
 *
 * Thread-safety: safe (takes the arena lock).
 */
int ossl_proc_arena_get_stats(struct ossl_proc_arena *a,
			      struct ossl_proc_arena_stats *out);

/**
 * Free every block that process @p pid allocated in the arena and never
 * freed: a worker that ended with _exit(), crashed or was killed.  Each
 * block records the process that allocated it.
 *
 * @param a   The arena.
 * @param pid A process that has exited and been reaped.
 * @return the number of blocks freed (0 when there were none); -EINVAL
 *         for a bad argument (@p a not an arena of this process, @p pid
 *         not positive); -EBUSY while @p pid still exists, also as an
 *         unreaped zombie or as another user's process (its blocks may be
 *         in use); -ENOTRECOVERABLE when the arena's lock cannot be taken
 *         any more.
 *
 * Thread-safety: safe (takes the arena lock; walks the whole arena).
 */
int ossl_proc_arena_reclaim(struct ossl_proc_arena *a, pid_t pid);

/**
 * Unmap the arena in this process (processes forked earlier keep their
 * mapping).  Refused (with an ERROR) while it is the backend of the
 * installed tracked allocator, because OpenSSL can still free into it.
 *
 * @param a The arena, or NULL.
 *
 * Thread-safety: no other thread may use the arena through this mapping.
 */
void ossl_proc_arena_free(struct ossl_proc_arena *a);

/* ------------------------------------------------------------------ */
/* Shared live objects                                                 */
/* ------------------------------------------------------------------ */

/**
 * Destroy @p obj in the process that created it: at once when that is
 * the caller, or when @p obj is not a live block of the shared backend
 * (made before the first fork, or with a private backend); otherwise
 * queued to its creator, which calls @p destroy(@p obj) at its next
 * drain point: ossl_proc_drain(), ossl_proc_free_by_owner(),
 * ossl_proc_ctx_get() and, under osslproc-run with
 * OSSLPROC_SHARED_OBJECTS=1, OpenSSL's SSL entry points (see
 * osslproc-run(1)).  Never inside the allocator.
 *
 * For hosts that share live objects between processes (an SSL made by
 * one worker, used by others, freed by a third): an object's destructor
 * drops references on the creator's private objects (its SSL_CTX), which
 * another process holds only as copies.  @p obj must be the pointer
 * OpenSSL allocated (an SSL *, SSL_CTX *, BIO *...), and nothing may use
 * it after this call.  Since 0.3.
 *
 * @param destroy Called with @p obj, in the creator (for example
 *        SSL_free, cast to void (*)(void *)).
 * @param obj The object; NULL is a no-op.
 * @return 0 when destroyed here, 1 when queued to its creator; -EINVAL
 *         for a NULL @p destroy; -ESRCH when the creator has exited (the
 *         object is not destroyed: nobody else can); -ENOSPC when 65,536
 *         objects wait already; -ENXIO when no queue exists (the worker
 *         was forked bypassing ossl_proc_fork_prepare()); -ERANGE for a
 *         pid above pid_max as read at the first fork; -ENOTSUP in a copy
 *         attached to another copy's allocator.  Every error is logged
 *         and leaves @p obj alive (its memory stays allocated).
 *
 * Thread-safety: safe; the host serialises all use of @p obj.
 * Fork-safety: the queues are made at the first fork with a shared
 * backend and shared by every process forked after it; a process starts
 * with an empty queue (what an exited process with the same pid left is
 * dropped).
 */
int ossl_proc_free_by_owner(void (*destroy)(void *obj), void *obj);

/**
 * Destroy the objects other processes queued for this one with
 * ossl_proc_free_by_owner(), oldest first, in the calling thread.
 *
 * @return how many were destroyed (0: none waited).
 *
 * Thread-safety: safe; each object is destroyed once, by the thread
 * whose drain took it.  Not from a signal handler, nor while holding a
 * lock a destructor may take.
 */
int ossl_proc_drain(void);

/**
 * Drop the queue of process @p pid, which has exited and been reaped:
 * the objects other processes queued for it are not destroyed (nobody
 * else can run their destructor correctly) and their memory stays
 * allocated.  ossl_proc_arena_reclaim() does this too; a new process
 * with the same pid drops it itself when it is forked.
 *
 * @param pid A process that has exited and been reaped.
 * @return how many objects were dropped; -EINVAL for a pid that is not
 *         positive; -EBUSY while @p pid still exists.
 *
 * Thread-safety: safe.
 */
int ossl_proc_reclaim_objects(pid_t pid);

/* ------------------------------------------------------------------ */
/* Per-process SSL_CTX                                                 */
/* ------------------------------------------------------------------ */

struct ossl_proc_ctx;

/**
 * A per-process SSL_CTX: @p build makes it the first time a process asks
 * for it, so every forked worker gets its own (its own session cache and
 * ticket keys) instead of sharing the parent's.  Nothing is built here.
 *
 * @param build Returns a new SSL_CTX, or NULL on failure; called with
 *        the handle's lock held, at most once per process at a time; it
 *        must not call ossl_proc_ctx_get() on the same handle.
 * @param arg   Passed to @p build.
 * @return the handle, or NULL with errno EINVAL (NULL @p build, or before
 *         ossl_proc_init()) or ENOMEM.
 *
 * Thread-safety: safe.
 */
struct ossl_proc_ctx *ossl_proc_ctx_new(SSL_CTX *(*build)(void *arg),
					void *arg);

/**
 * This process's SSL_CTX, built on first use in each process.  In a child
 * the parent's context is freed (the child's copy of it) and a new one
 * built.  If the builder fails, logs an ERROR and returns NULL; the next
 * call tries again.
 *
 * @param pc The handle.
 * @return a borrowed SSL_CTX, valid until ossl_proc_ctx_free() (in a
 *         child, the first call replaces the copy inherited from the
 *         parent); NULL if the builder failed or @p pc is NULL.
 *
 * Thread-safety: safe; concurrent first calls build once.
 * Fork-safety: call it in each worker; it also notices a fork that
 * bypassed the pthread_atfork() handlers and re-initialises the child
 * first.
 */
SSL_CTX *ossl_proc_ctx_get(struct ossl_proc_ctx *pc);

/**
 * Free the handle and this process's SSL_CTX (SSL objects holding a
 * reference keep it alive).
 *
 * @param pc The handle, or NULL.
 *
 * Thread-safety: no other thread may use @p pc during or after the call.
 */
void ossl_proc_ctx_free(struct ossl_proc_ctx *pc);

/* ------------------------------------------------------------------ */
/* Unload: module scopes                                               */
/* ------------------------------------------------------------------ */

struct ossl_proc_module;

/*
 * A module scope records what a plugin registers with OpenSSL, so that
 * ossl_proc_module_close() can undo it before the plugin is unloaded.
 *
 * Callbacks set on an SSL_CTX through a scope are installed as osslproc
 * trampolines: SSL_new() copies the context's callbacks into each SSL, so
 * connections created while the plugin was loaded keep calling the
 * trampoline, which calls the newest open module's callback, or, once all
 * modules that set one are closed, the callback that was on the context
 * before.  Closing waits for the scope's callbacks already in flight
 * (not for those of other scopes, nor for callbacks that start after it),
 * so after it returns no callback runs in the plugin.
 *
 * All module functions are thread-safe (one internal lock; they are meant
 * for load and unload time), and refuse a NULL or closed module with
 * -EINVAL and an ERROR, without dereferencing it: a handle is refused
 * after close even when the memory of its scope is reused.  Every
 * failure is logged.  No lock is held while a callback runs, so every
 * module function may be called from inside a callback, with one
 * exception: closing the scope whose callback is running returns
 * -EDEADLK.  Scopes and bindings are inherited by a child like any other
 * memory; only the process that closes a scope runs its undo steps, and
 * a child's close does not wait for callbacks that other threads of the
 * parent were in at the fork.
 */

/**
 * Open a scope.
 *
 * @param name Name used in log lines (copied, at most 63 bytes kept; NULL:
 *             "(unnamed)").
 * @return the scope, or NULL with errno EINVAL (before ossl_proc_init())
 *         or ENOMEM.
 *
 * Thread-safety: safe, from inside a callback too.
 */
struct ossl_proc_module *ossl_proc_module_open(const char *name);

/**
 * Undo everything registered through @p m, newest first, and free @p m:
 * the scope's callbacks are unlinked first (waiting for those in flight),
 * then put back where they are still osslproc's (where the host replaced
 * one since, its callback stays and a WARNING names it), ex_data indices
 * are freed (CRYPTO_free_ex_index: live objects get no-op callbacks),
 * error strings unloaded and on_close hooks run; the private library
 * context is freed last.
 *
 * @param m The scope.
 * @return OSSL_PROC_UNLOAD_SAFE when nothing can reach the plugin's code;
 *         OSSL_PROC_UNLOAD_PINNED when the plugin must stay mapped and was
 *         made RTLD_NODELETE (INFO line): osslproc itself lives in the
 *         plugin (a vendored static copy) and the scope set callbacks,
 *         whose trampolines live objects still reach, or the plugin holds
 *         its own static libcrypto; -EINVAL for a NULL or already closed
 *         module; -EDEADLK (logged, nothing undone) when called from
 *         inside one of @p m's own callbacks, or when the wait would close
 *         a cycle: another thread, inside a callback of @p m, is itself
 *         closing a scope whose callback this thread is in.
 *
 * Thread-safety: safe, from inside a callback of another scope too.
 * From the moment close starts, registrations through @p m are refused;
 * ossl_proc_module_libctx() still returns the context it created before,
 * for the callbacks in flight.  The wait holds no lock: it lasts as long
 * as the slowest of @p m's callbacks already running.
 */
int ossl_proc_module_close(struct ossl_proc_module *m);

/**
 * CRYPTO_get_ex_new_index() with the same arguments, freed with
 * CRYPTO_free_ex_index() at close.  OpenSSL never reuses an index: each
 * open/close cycle uses up one.  After close the plugin's @p free_func is
 * not called any more.
 *
 * @param m           The scope.
 * @param class_index A CRYPTO_EX_INDEX_* class.
 * @param argl        Passed to the three functions.
 * @param argp        Passed to the three functions.
 * @param new_func    Called when an object of the class is created, or
 *                    NULL.
 * @param dup_func    Called when one is duplicated, or NULL.
 * @param free_func   Called when one is freed, or NULL.
 * @return the index (>= 0); -EINVAL for a NULL or closed module; -ENOMEM
 *         (the index is freed again); -EIO if CRYPTO_get_ex_new_index()
 *         failed.
 *
 * Thread-safety: safe, from inside a callback too.
 */
int ossl_proc_module_ex_new_index(struct ossl_proc_module *m,
				  int class_index, long argl, void *argp,
				  CRYPTO_EX_new *new_func,
				  CRYPTO_EX_dup *dup_func,
				  CRYPTO_EX_free *free_func);

/**
 * SSL_CTX_set_info_callback() through the scope; at close the previous
 * callback comes back.
 *
 * @param m   The scope.
 * @param ctx The context.
 * @param cb  The plugin's callback; must not be NULL.
 * @return 0, -EINVAL (NULL @p ctx or @p cb, NULL or closed module) or
 *         -ENOMEM.
 *
 * Thread-safety: safe, also while connections of @p ctx run handshakes,
 * and from inside a callback (a servername callback setting up a context).
 */
int ossl_proc_module_set_info_callback(struct ossl_proc_module *m,
				       SSL_CTX *ctx,
				       void (*cb)(const SSL *ssl, int where,
						  int ret));

/**
 * SSL_CTX_set_verify() through the scope; at close the previous callback
 * and mode come back.
 *
 * @param m    The scope.
 * @param ctx  The context.
 * @param mode The verify mode, set on @p ctx.
 * @param cb   The plugin's callback; must not be NULL (to change only the
 *             mode, call SSL_CTX_set_verify()).
 * @return 0, -EINVAL (NULL @p ctx or @p cb, NULL or closed module) or
 *         -ENOMEM.
 *
 * Thread-safety: safe, also while connections of @p ctx run handshakes,
 * and from inside a callback (a servername callback setting up a context).
 */
int ossl_proc_module_set_verify(struct ossl_proc_module *m, SSL_CTX *ctx,
				int mode, SSL_verify_cb cb);

/**
 * SSL_CTX_set_msg_callback() through the scope.  OpenSSL has no way to
 * read a context's msg callback back, so the trampoline stays on the
 * context after close and calls nothing (the msg callback argument is the
 * context's, unchanged).
 *
 * @param m   The scope.
 * @param ctx The context.
 * @param cb  The plugin's callback; must not be NULL.
 * @return 0, -EINVAL (NULL @p ctx or @p cb, NULL or closed module) or
 *         -ENOMEM.
 *
 * Thread-safety: safe, also while connections of @p ctx run handshakes,
 * and from inside a callback (a servername callback setting up a context).
 */
int ossl_proc_module_set_msg_callback(struct ossl_proc_module *m,
				      SSL_CTX *ctx,
				      void (*cb)(int write_p, int version,
						 int content_type,
						 const void *buf, size_t len,
						 SSL *ssl, void *arg));

/**
 * SSL_CTX_set_keylog_callback() through the scope; at close the previous
 * callback comes back.
 *
 * @param m   The scope.
 * @param ctx The context.
 * @param cb  The plugin's callback; must not be NULL.
 * @return 0, -EINVAL (NULL @p ctx or @p cb, NULL or closed module) or
 *         -ENOMEM.
 *
 * Thread-safety: safe, also while connections of @p ctx run handshakes,
 * and from inside a callback (a servername callback setting up a context).
 */
int ossl_proc_module_set_keylog_callback(struct ossl_proc_module *m,
					 SSL_CTX *ctx,
					 SSL_CTX_keylog_cb_func cb);

/**
 * SSL_CTX_set_alpn_select_cb() through the scope.  OpenSSL cannot read
 * the callback back: after close the trampoline stays on the context and
 * selects no protocol (SSL_TLSEXT_ERR_NOACK), and a callback the host had
 * set before is not called again.
 *
 * @param m   The scope.
 * @param ctx The context.
 * @param cb  The plugin's callback; must not be NULL.
 * @param arg Kept by the scope and passed to @p cb (the context's own
 *            argument is not used).
 * @return 0, -EINVAL (NULL @p ctx or @p cb, NULL or closed module) or
 *         -ENOMEM.
 *
 * Thread-safety: safe, also while connections of @p ctx run handshakes,
 * and from inside a callback (a servername callback setting up a context).
 */
int ossl_proc_module_set_alpn_select_cb(struct ossl_proc_module *m,
					SSL_CTX *ctx,
					int (*cb)(SSL *ssl,
						  const unsigned char **out,
						  unsigned char *outlen,
						  const unsigned char *in,
						  unsigned int inlen,
						  void *arg),
					void *arg);

/**
 * SSL_CTX_set_tlsext_servername_callback() through the scope.  OpenSSL
 * cannot read the callback back: after close the trampoline stays on the
 * context and accepts the name (SSL_TLSEXT_ERR_OK), and a callback the
 * host had set before is not called again.
 *
 * @param m   The scope.
 * @param ctx The context.
 * @param cb  The plugin's callback; must not be NULL.
 * @param arg Kept by the scope and passed to @p cb (the context's
 *            servername argument is set to NULL).
 * @return 0, -EINVAL (NULL @p ctx or @p cb, NULL or closed module) or
 *         -ENOMEM.
 *
 * Thread-safety: safe, also while connections of @p ctx run handshakes,
 * and from inside a callback (a servername callback setting up a context).
 */
int ossl_proc_module_set_servername_callback(struct ossl_proc_module *m,
					     SSL_CTX *ctx,
					     int (*cb)(SSL *ssl, int *al,
						       void *arg),
					     void *arg);

/**
 * SSL_CTX_sess_set_new_cb() through the scope; at close the previous
 * callback comes back.
 *
 * @param m   The scope.
 * @param ctx The context.
 * @param cb  The plugin's callback; must not be NULL.
 * @return 0, -EINVAL (NULL @p ctx or @p cb, NULL or closed module) or
 *         -ENOMEM.
 *
 * Thread-safety: safe, also while connections of @p ctx run handshakes,
 * and from inside a callback (a servername callback setting up a context).
 */
int ossl_proc_module_sess_set_new_cb(struct ossl_proc_module *m,
				     SSL_CTX *ctx,
				     int (*cb)(SSL *ssl, SSL_SESSION *sess));

/**
 * SSL_CTX_sess_set_remove_cb() through the scope; at close the previous
 * callback comes back.
 *
 * @param m   The scope.
 * @param ctx The context.
 * @param cb  The plugin's callback; must not be NULL.
 * @return 0, -EINVAL (NULL @p ctx or @p cb, NULL or closed module) or
 *         -ENOMEM.
 *
 * Thread-safety: safe, also while connections of @p ctx run handshakes,
 * and from inside a callback (a servername callback setting up a context).
 */
int ossl_proc_module_sess_set_remove_cb(struct ossl_proc_module *m,
					SSL_CTX *ctx,
					void (*cb)(SSL_CTX *ctx,
						   SSL_SESSION *sess));

/**
 * SSL_CTX_set_client_cert_cb() through the scope; at close the previous
 * callback comes back.
 *
 * @param m   The scope.
 * @param ctx The context.
 * @param cb  The plugin's callback; must not be NULL.
 * @return 0, -EINVAL (NULL @p ctx or @p cb, NULL or closed module) or
 *         -ENOMEM.
 *
 * Thread-safety: safe, also while connections of @p ctx run handshakes,
 * and from inside a callback (a servername callback setting up a context).
 */
int ossl_proc_module_set_client_cert_cb(struct ossl_proc_module *m,
					SSL_CTX *ctx,
					int (*cb)(SSL *ssl, X509 **x509,
						  EVP_PKEY **pkey));

/**
 * SSL_CTX_set_psk_client_callback() through the scope.  OpenSSL cannot
 * read the callback back: after close the trampoline stays on the context
 * and finds no PSK, and a callback the host had set before is not called
 * again.
 *
 * @param m   The scope.
 * @param ctx The context.
 * @param cb  The plugin's callback; must not be NULL.
 * @return 0, -EINVAL (NULL @p ctx or @p cb, NULL or closed module) or
 *         -ENOMEM.
 *
 * Thread-safety: safe, also while connections of @p ctx run handshakes,
 * and from inside a callback (a servername callback setting up a context).
 */
int ossl_proc_module_set_psk_client_callback(struct ossl_proc_module *m,
					     SSL_CTX *ctx,
					     SSL_psk_client_cb_func cb);

/**
 * SSL_CTX_set_psk_server_callback() through the scope.  OpenSSL cannot
 * read the callback back: after close the trampoline stays on the context
 * and finds no PSK, and a callback the host had set before is not called
 * again.
 *
 * @param m   The scope.
 * @param ctx The context.
 * @param cb  The plugin's callback; must not be NULL.
 * @return 0, -EINVAL (NULL @p ctx or @p cb, NULL or closed module) or
 *         -ENOMEM.
 *
 * Thread-safety: safe, also while connections of @p ctx run handshakes,
 * and from inside a callback (a servername callback setting up a context).
 */
int ossl_proc_module_set_psk_server_callback(struct ossl_proc_module *m,
					     SSL_CTX *ctx,
					     SSL_psk_server_cb_func cb);

/**
 * ERR_load_strings(), unloaded with ERR_unload_strings() at close (the
 * table must stay valid until then).  Library numbers from
 * ERR_get_next_error_library() are never reused by OpenSSL.
 *
 * @param m   The scope.
 * @param lib The error library number.
 * @param str The table; must not be NULL.
 * @return 0; -EINVAL for a NULL @p str or a NULL or closed module; -EIO
 *         if ERR_load_strings() failed; -ENOMEM (the strings are
 *         unloaded again).
 *
 * Thread-safety: safe, from inside a callback too.
 */
int ossl_proc_module_load_strings(struct ossl_proc_module *m, int lib,
				  ERR_STRING_DATA *str);

/**
 * A private OSSL_LIB_CTX for the module's providers (OSSL_PROVIDER_add_
 * builtin has no remove; load them here instead), created on first call
 * with the provider directory determined at init, and freed at close,
 * after every other undo step, following OPENSSL_thread_stop_ex() for the
 * closing thread.  Later calls return the same context.
 *
 * @param m The scope.
 * @return the context (owned by the scope), or NULL (logged; errno not
 *         set) for a NULL or closed module or when OSSL_LIB_CTX_new()
 *         fails.  While the scope closes, the context created before is
 *         still returned (to its callbacks in flight), but none is
 *         created.
 *
 * Thread-safety: safe, from inside a callback too, also while another
 * thread closes the scope.  Other threads must have stopped using the
 * context before the scope's close returns.
 */
OSSL_LIB_CTX *ossl_proc_module_libctx(struct ossl_proc_module *m);

/**
 * Run @p undo(@p arg) at close, in reverse order of registration with the
 * other undo steps: for anything else the plugin gives OpenSSL.  The hook
 * runs in the closing thread, after the scope's callbacks were unlinked
 * and those in flight returned, and before its library context is freed,
 * with no lock of osslproc held (a hook may call any module function).
 *
 * @param m    The scope.
 * @param undo The function; must not be NULL.
 * @param arg  Passed to @p undo.
 * @return 0, -EINVAL (NULL @p undo, NULL or closed module) or -ENOMEM.
 *
 * Thread-safety: safe, from inside a callback too.
 */
int ossl_proc_module_on_close(struct ossl_proc_module *m,
			      void (*undo)(void *arg), void *arg);

/* ------------------------------------------------------------------ */
/* Environment and CA paths                                            */
/* ------------------------------------------------------------------ */

/*
 * ossl_proc_init() copies, with secure_getenv(), the environment values
 * OpenSSL would otherwise read later in any thread: SSL_CERT_FILE,
 * SSL_CERT_DIR, OPENSSL_CONF and OPENSSL_MODULES, and initialises the C
 * library's time zone (tzset(): glibc reads TZ on a process's first time
 * conversion, which OpenSSL's certificate checks make).  It loads OpenSSL's
 * configuration from the copied OPENSSL_CONF there and then, gives the
 * default library context an explicit provider directory (so provider
 * loads never read OPENSSL_MODULES), and resolves the CA bundle and
 * directory once, each from the first readable source in this order:
 * cfg->ca_file / cfg->ca_dir; SSL_CERT_FILE / SSL_CERT_DIR;
 * X509_get_default_cert_file() / _dir(); the distributions' locations
 * (/etc/ssl/certs/ca-certificates.crt,
 * /etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem,
 * /etc/pki/tls/certs/ca-bundle.crt, /etc/ssl/ca-bundle.pem,
 * /etc/ssl/cert.pem; directory /etc/ssl/certs).  The choice is logged at
 * INFO.  No other osslproc function reads the environment, and none ever
 * writes it (no setenv, putenv or unsetenv).
 */

/**
 * The CA bundle resolved at init.
 *
 * @return the path, or NULL when none was found or osslproc is not
 *         initialised.  Valid until the last ossl_proc_teardown().
 *
 * Thread-safety: safe between init and the last teardown.
 */
const char *ossl_proc_ca_file(void);

/**
 * The CA directory resolved at init (from SSL_CERT_DIR, possibly a
 * colon-separated list).
 *
 * @return the path, or NULL when none was found or osslproc is not
 *         initialised.  Valid until the last ossl_proc_teardown().
 *
 * Thread-safety: safe between init and the last teardown.
 */
const char *ossl_proc_ca_dir(void);

/**
 * Load the CA locations resolved at init into @p ctx, with explicit paths:
 * unlike SSL_CTX_set_default_verify_paths(), no environment is read.
 *
 * @param ctx The context whose verify store gets the locations.
 * @return 0; -EINVAL for NULL or when osslproc is not initialised;
 *         -ENOENT when no CA bundle or directory was found at init; -EIO
 *         when OpenSSL could not load them (the log names the paths and
 *         the error).
 *
 * Thread-safety: safe between init and the last teardown.
 */
int ossl_proc_load_verify_paths(SSL_CTX *ctx);

/**
 * Like ossl_proc_load_verify_paths(), for an X509_STORE.
 *
 * @param store The store to load into.
 * @return as ossl_proc_load_verify_paths().
 *
 * Thread-safety: safe between init and the last teardown.
 */
int ossl_proc_load_verify_store(X509_STORE *store);

/* ------------------------------------------------------------------ */
/* Statistics                                                          */
/* ------------------------------------------------------------------ */

/**
 * Counters, process-wide (every thread, every copy of osslproc in the
 * process).  Event counters (allocs, frees, reallocs, the bad frees,
 * prior_frees) count this process's events since the allocator was
 * installed, or since this process was forked; live_blocks and live_bytes
 * are what is allocated now, including blocks inherited from the parent;
 * peak_bytes is the highest live_bytes of the lineage.
 */
struct ossl_proc_stats {
	/** Caller sets sizeof(struct ossl_proc_stats). */
	size_t size;
	uint64_t allocs;          /**< blocks allocated (realloc moves count) */
	uint64_t frees;           /**< blocks freed by OpenSSL */
	uint64_t reallocs;        /**< realloc calls with a live block */
	uint64_t live_blocks;     /**< allocated and not yet freed */
	uint64_t live_bytes;      /**< payload bytes of live blocks */
	uint64_t peak_bytes;      /**< highest live_bytes seen (see docs) */
	uint64_t double_frees;    /**< frees of a block already freed */
	uint64_t invalid_frees;   /**< pointers osslproc never returned */
	uint64_t foreign_frees;   /**< page-aligned pointers not from us */
	uint64_t inherited_frees; /**< shared blocks of another process */
	uint64_t generation;      /**< ossl_proc_generation() */
	/* Added in 0.1, after the contract's fields. */
	uint64_t allocator;       /**< enum ossl_proc_alloc_mode */
	uint64_t prior_frees;     /**< frees handed to the allocator that was
				       installed before osslproc */
	uint64_t quarantined_blocks; /**< freed, held back, not released */
	uint64_t quarantined_bytes; /**< with headers and class rounding */
	/* Added in 0.2. */
	uint64_t cached_bytes;    /**< freed, past the quarantine, kept by
				       their thread for reuse (at most
				       cache_bytes per thread) */
	/* Added in 0.3. */
	uint64_t locks_registered; /**< live OpenSSL locks the allocator
					recognised (quiesced at a fork) */
	uint64_t locks_taken_last_fork; /**< how many of them the last
					     ossl_proc_fork_prepare() took */
	uint64_t fork_prepare_ns; /**< how long that prepare spent taking
				       them (0: no quiesce ran) */
	uint64_t fork_quiesce_give_ups; /**< prepares that forked with a
					     lock still held elsewhere */
	uint64_t objects_queued;  /**< objects ossl_proc_free_by_owner()
				       handed to the process that made them */
	uint64_t objects_destroyed; /**< objects other processes handed to
					 this one, destroyed at a drain */
	uint64_t objects_dropped; /**< objects not destroyed: the process
				       that made them exited */
	uint64_t shared_frees;    /**< blocks another process allocated,
				       freed and released here
				       (OSSL_PROC_F_SHARED_OBJECTS) */
};

/**
 * Read the counters.
 *
 * Callable at any time, also before init, after the last
 * ossl_proc_teardown() and after OPENSSL_cleanup(): an installed
 * allocator stays installed and keeps counting, which is how a host reads
 * what leaked at exit on OpenSSL 3.x.  On 4.0 OpenSSL's own state is
 * still live then (libcrypto's destructor frees it after main): see
 * ossl_proc_report() and OSSL_PROC_F_EXIT_LEAKS.
 *
 * @param out Filled in; out->size must be set by the caller.  A smaller
 *        size (an older caller) gets the prefix it knows; a larger one
 *        gets this version's fields and its tail is left untouched.
 * @return 0, -EINVAL for NULL or a size smaller than the contract's first
 *         version of the struct (which ends at @c generation).
 *
 * Thread-safety: safe.  It takes the registry lock that a thread's
 * first allocation and its exit take, never a lock of the allocator's
 * common path, so allocating threads do not wait for it.  The values are
 * a consistent-enough snapshot: counters updated concurrently may be read
 * mid-update by at most the operations in flight.
 * Fork-safety: safe in any process; it notices a fork that bypassed the
 * pthread_atfork() handlers and re-initialises the child first.
 */
int ossl_proc_get_stats(struct ossl_proc_stats *out);

/**
 * Print a human-readable state report, then flush @p out: versions and
 * pid, mode, allocator owner and backend, counters, leaks (count and
 * bytes, and with OSSL_PROC_F_TRACK_SITES the first 50 allocation sites).
 *
 * What is still allocated is a leak only once OpenSSL has freed its own
 * state.  On OpenSSL 3.x OPENSSL_cleanup() frees it, so a report after it
 * says "leaks".  On 4.0 OPENSSL_cleanup() only sets a flag and
 * libcrypto's destructor frees the state after main returns, so every
 * report a process can make still counts it ("still allocated", not
 * "leaks"); OSSL_PROC_F_EXIT_LEAKS counts again after that destructor
 * and prints the leaks themselves (glibc, which runs exit handlers
 * registered while the destructors run).
 *
 * @param out Stream to print to.
 * @return 0, -EINVAL for NULL, -EIO if writing or flushing failed.
 *
 * Thread-safety: safe.  Do not call from the log callback.
 * Fork-safety: as ossl_proc_get_stats().
 */
int ossl_proc_report(FILE *out);

/**
 * Give back what the calling thread holds in the tracked allocator: the
 * blocks in its quarantine and its cache go to the backend, and its share
 * of the caches' budget (cache_total_bytes) to the process.  For a host
 * that parks threads of a pool: an idle thread otherwise keeps them until
 * it exits.  The thread goes on working; its later frees are quarantined
 * and cached again.  The blocks given back leave the double-free window
 * early.
 *
 * @return 0 (also when the thread holds nothing, or when another copy of
 *         osslproc owns the allocator, whose thread state this copy does
 *         not hold).
 *
 * Thread-safety: safe; it touches the calling thread's state only.
 * Signal-safety: not async-signal-safe.
 */
int ossl_proc_thread_release(void);

/** State of the tracked allocator, in ossl_proc_stats.allocator. */
enum ossl_proc_alloc_mode {
	/** osslproc was never initialised in this process.  (After the
	 * last ossl_proc_teardown() an installed allocator stays installed,
	 * OpenSSL cannot take it back, and keeps reporting TRACKED.) */
	OSSL_PROC_ALLOC_NONE = 0,
	/** Installed and tracking every OpenSSL allocation. */
	OSSL_PROC_ALLOC_TRACKED = 1,
	/** Not installed: OSSL_PROC_F_NO_ALLOCATOR. */
	OSSL_PROC_ALLOC_DISABLED = 2,
	/** Not installed: OpenSSL had already allocated at init. */
	OSSL_PROC_ALLOC_UNTRACKED = 3,
	/** Another copy of osslproc owns the allocator; the counters are
	 * that copy's. */
	OSSL_PROC_ALLOC_ATTACHED = 4,
	/** Installed, but someone replaced OpenSSL's memory functions since
	 * (OpenSSL accepts that, osslproc cannot refuse it): blocks
	 * allocated by osslproc may now reach a foreign free.  The next
	 * osslproc call logs one ERROR naming the object whose functions
	 * OpenSSL now calls. */
	OSSL_PROC_ALLOC_REPLACED = 5,
};

#ifdef __cplusplus
}
#endif

#endif /* OSSLPROC_H */
