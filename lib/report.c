/*
 * Observability: ossl_proc_report() and the leak count at exit
 * (OSSL_PROC_F_EXIT_LEAKS); the counters they print are the allocator's
 * (ossl_proc_get_stats(), alloc/install.c).
 */
#include <string.h>
#include <unistd.h>

#include "osslproc-int.h"
#include "alloc/alloc.h"

static const char *const mode_names[] = {
	[OSSL_PROC_ALLOC_NONE] = "none (not initialised)",
	[OSSL_PROC_ALLOC_TRACKED] = "tracked",
	[OSSL_PROC_ALLOC_DISABLED] = "disabled (OSSL_PROC_F_NO_ALLOCATOR)",
	[OSSL_PROC_ALLOC_UNTRACKED] = "untracked (OpenSSL allocated before "
				      "ossl_proc_init)",
	[OSSL_PROC_ALLOC_ATTACHED] = "attached to another osslproc copy",
	[OSSL_PROC_ALLOC_REPLACED] = "replaced by someone else's functions",
};

static void
print_counters(FILE *out, const struct ossl_proc_stats *st)
{
	fprintf(out, "allocs %llu, frees %llu, reallocs %llu\n"
		"live %llu blocks, %llu bytes (peak %llu bytes)\n"
		"quarantined %llu blocks, %llu bytes; cached %llu bytes\n"
		"bad frees: double %llu, invalid %llu, foreign %llu, "
		"inherited %llu; passed to the previous allocator %llu\n"
		"fork generation %llu\n"
		"OpenSSL locks: %llu registered, %llu taken at the last fork "
		"in %llu us; %llu forks without every lock\n"
		"shared objects: %llu handed to their creator, %llu destroyed "
		"for others, %llu dropped; %llu blocks of others freed\n",
		(unsigned long long)st->allocs, (unsigned long long)st->frees,
		(unsigned long long)st->reallocs,
		(unsigned long long)st->live_blocks,
		(unsigned long long)st->live_bytes,
		(unsigned long long)st->peak_bytes,
		(unsigned long long)st->quarantined_blocks,
		(unsigned long long)st->quarantined_bytes,
		(unsigned long long)st->cached_bytes,
		(unsigned long long)st->double_frees,
		(unsigned long long)st->invalid_frees,
		(unsigned long long)st->foreign_frees,
		(unsigned long long)st->inherited_frees,
		(unsigned long long)st->prior_frees,
		(unsigned long long)st->generation,
		(unsigned long long)st->locks_registered,
		(unsigned long long)st->locks_taken_last_fork,
		(unsigned long long)(st->fork_prepare_ns / 1000),
		(unsigned long long)st->fork_quiesce_give_ups,
		(unsigned long long)st->objects_queued,
		(unsigned long long)st->objects_destroyed,
		(unsigned long long)st->objects_dropped,
		(unsigned long long)st->shared_frees);
}

OSSL_PROC_EXPORT int
ossl_proc_report(FILE *out)
{
	struct ossl_proc_stats st = { .size = sizeof(st) };

	if (!out) {
		log_bug_client("ossl_proc_report: out is NULL");
		return -EINVAL;
	}
	ossl_proc_get_stats(&st);
	fprintf(out, "osslproc %d.%d.%d, %s, pid %ld\n",
		OSSL_PROC_VERSION_MAJOR, OSSL_PROC_VERSION_MINOR,
		OSSL_PROC_VERSION_MICRO, OpenSSL_version(OPENSSL_VERSION),
		(long)getpid());
	fprintf(out, "allocator: %s\n", st.allocator < ARRAY_SIZE(mode_names) ?
		mode_names[st.allocator] : "?");
	alloc_report(out);
	print_counters(out, &st);
	/* OpenSSL 4.0's OPENSSL_cleanup() frees nothing itself: its
	 * destructor does, after main returns, so its own state is still
	 * allocated at any report a process can make. */
	if (st.live_blocks && OpenSSL_version_num() >= 0x40000000L)
		fprintf(out, "still allocated: %llu blocks, %llu bytes (OpenSSL "
			"4 frees its own state only after main returns, even "
			"after OPENSSL_cleanup(): not all of these are leaks; "
			"OSSL_PROC_F_EXIT_LEAKS counts them after it)\n",
			(unsigned long long)st.live_blocks,
			(unsigned long long)st.live_bytes);
	else if (st.live_blocks)
		fprintf(out, "leaks: %llu blocks, %llu bytes still allocated\n",
			(unsigned long long)st.live_blocks,
			(unsigned long long)st.live_bytes);
	return fflush(out) == 0 && !ferror(out) ? 0 : -EIO;
}

/*
 * The leaks at exit.  What is still allocated is a leak only once OpenSSL
 * has freed its own state: on 3.x in the atexit handler it registers at
 * init, which runs before any library destructor; on 4.0 in libcrypto's
 * destructor, when OPENSSL_cleanup() was called, and that destructor runs
 * after this object's (this object depends on libcrypto), so no
 * destructor of ours can count after it.  An exit handler registered
 * while the destructors run can: glibc's exit() runs the destructors from
 * an exit handler, and then the handlers registered meanwhile.  It is
 * registered without a DSO handle, or this object's own destructor
 * (__cxa_finalize) would run it at once.  Only the copy that owns the
 * allocator arms it: that object stays mapped until exit (it is pinned at
 * the last teardown), so the handler's code is still there.
 */
extern int __cxa_atexit(void (*fn)(void *), void *arg, void *dso);

/* OpenSSL's internal "base initialisation only" option, whose bit its
 * public header reserves (crypto.h): after the cleanup it returns 0 with
 * no error raised (any other option would raise one, into an error queue
 * that is gone). */
#define INIT_BASE_ONLY UINT64_C(0x00040000)

static void
exit_leaks(void *unused)
{
	struct ossl_proc_stats st = { .size = sizeof(st) };
	bool freed;

	(void)unused;
	/* OpenSSL refuses to initialise again once its cleanup has run, on
	 * every version: the one way to know that its state is gone. */
	freed = OPENSSL_init_crypto(INIT_BASE_ONLY, NULL) == 0;
	ossl_proc_get_stats(&st);
	if (!freed) {
		fprintf(stderr, "osslproc: pid %ld at exit: %llu blocks, %llu "
			"bytes still allocated; OpenSSL kept its own state "
			"(4.0: no OPENSSL_cleanup() call; 3.x: "
			"OPENSSL_INIT_NO_ATEXIT), so leaks cannot be told "
			"from it\n", (long)getpid(),
			(unsigned long long)st.live_blocks,
			(unsigned long long)st.live_bytes);
		return;
	}
	fprintf(stderr, "osslproc: pid %ld at exit, after OpenSSL freed its "
		"state: leaks: %llu blocks, %llu bytes\n", (long)getpid(),
		(unsigned long long)st.live_blocks,
		(unsigned long long)st.live_bytes);
	if (st.live_blocks)
		alloc_leak_sites(stderr);
}

__attribute__((destructor)) static void
exit_leaks_arm(void)
{
	if (alloc_exit_leaks_wanted())
		__cxa_atexit(exit_leaks, NULL, NULL);
}
