/*
 * Observability: ossl_proc_report(); the counters it prints are the
 * allocator's (ossl_proc_get_stats(), alloc/install.c).
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
		"fork generation %llu\n",
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
		(unsigned long long)st->generation);
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
			"after OPENSSL_cleanup(): not all of these are leaks)\n",
			(unsigned long long)st.live_blocks,
			(unsigned long long)st.live_bytes);
	else if (st.live_blocks)
		fprintf(out, "leaks: %llu blocks, %llu bytes still allocated\n",
			(unsigned long long)st.live_blocks,
			(unsigned long long)st.live_bytes);
	return fflush(out) == 0 && !ferror(out) ? 0 : -EIO;
}
