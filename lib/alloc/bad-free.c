/*
 * Bad frees: classifying a pointer that is not a live block of this
 * process (a double free, a pointer osslproc never returned, a foreign
 * page-aligned one, another process's shared block), counting it and
 * applying the host's policy (on_bad_free).  A refused free never
 * reaches a backend; a pointer that the allocator installed before
 * osslproc returned goes back to it.
 */
#include <stdlib.h>

#include "alloc-int.h"

_Atomic uint64_t bad_double, bad_invalid, bad_foreign, bad_inherited;

static const char *const bad_names[] = {
	[BAD_DOUBLE] = "double free",
	[BAD_INVALID] = "free of a pointer osslproc never returned",
	[BAD_FOREIGN] = "free of a page-aligned foreign pointer",
	[BAD_INHERITED] = "free of a shared block owned by another process",
};

/* A bad free of @kind at file:line is logged the first time only. */
static bool
site_first_time(const char *file, int line, enum bad_kind kind)
{
	return log_once_key((uintptr_t)file ^ ((uintptr_t)line << 3) ^
			    (uintptr_t)kind);
}

/* What the header @h (NULL: none valid) tells of the block: "; allocated
 * at f:l, first freed at f:l" while its site record is still ours
 * (quarantined or cached), then the fork generation that allocated it
 * (a double free across a fork is a freed inheritance). */
static const char *
sites_text(char *buf, size_t len, struct blk *h, uint32_t word)
{
	struct blk_site *s;
	int n = 0;

	buf[0] = '\0';
	if (!h)
		return buf;
	if ((word & W_SITES) && ((word & ST_MASK) == ST_QUAR ||
				 (word & ST_MASK) == ST_CACHED)) {
		s = site_of(h);
		n = snprintf(buf, len, "; allocated at %s:%d, first freed at "
			     "%s:%d", s->alloc_file ? s->alloc_file : "?",
			     s->alloc_line, s->free_file ? s->free_file : "?",
			     s->free_line);
		if (n < 0 || (size_t)n >= len)
			return buf;
	}
	snprintf(buf + n, len - (size_t)n, "; allocated in fork generation %u",
		 (unsigned)(h->size_gen >> BLK_GEN_SHIFT));
	return buf;
}

void
bad_free(enum bad_kind kind, void *p, struct blk *h, uint32_t word,
	 const char *file, int line)
{
	static _Atomic uint64_t *const counters[] = {
		&bad_double, &bad_invalid, &bad_foreign, &bad_inherited,
	};
	char sites[512];

	atomic_fetch_add_explicit(counters[kind], 1, memory_order_relaxed);
	if (aconf.on_bad_free == OSSL_PROC_BAD_FREE_IGNORE)
		return;
	if (aconf.on_bad_free == OSSL_PROC_BAD_FREE_ABORT) {
		log_error("%s: %p at %s:%d%s; aborting as configured "
			  "(OSSL_PROC_BAD_FREE_ABORT)", bad_names[kind], p,
			  file ? file : "?", line,
			  sites_text(sites, sizeof(sites), h, word));
		abort();
	}
	if (!site_first_time(file, line, kind))
		return;
	log_warn("%s: %p at %s:%d%s; not released (logged once per call "
		 "site)", bad_names[kind], p, file ? file : "?", line,
		 sites_text(sites, sizeof(sites), h, word));
}

/* Where a pointer without our header goes: the previous allocator, or
 * the bad-free path. */
void
not_ours(enum bad_kind kind, void *p, const char *file, int line)
{
	if (aconf.prior_f) {
		struct tstate *t = tstate_get();

		aconf.prior_f(p, file, line);
		counter_add(t, &t->prior_frees, 1);
		return;
	}
	bad_free(kind, p, NULL, 0, file, line);
}

/* Classify @p; returns true with its word when it is a valid block. */
bool
blk_check(void *p, uint32_t *word, const char *file, int line)
{
	if ((uintptr_t)p & ALIGN_MASK) {
		not_ours(BAD_INVALID, p, file, line);
		return false;
	}
	if (!((uintptr_t)p & PAGE_MASK)) {
		not_ours(BAD_FOREIGN, p, file, line);
		return false;
	}
	/* A large block's offset (large.c decides, without reading). */
	if (((uintptr_t)p & PAGE_MASK) == LARGE_OFF) {
		not_ours(BAD_INVALID, p, file, line);
		return false;
	}
	if (!blk_peek_healed(p, word)) {
		not_ours(BAD_INVALID, p, file, line);
		return false;
	}
	return true;
}

/* A block of a shared backend may be freed only by the process that
 * allocated it, unless the host declared that it shares live objects
 * (OSSL_PROC_F_SHARED_OBJECTS): anything else means live OpenSSL objects
 * are shared between processes, which OpenSSL 3 cannot support. */
bool
owned_here(void *p, uint32_t word, const char *file, int line)
{
	pid_t owner, self;

	if (!blk_foreign(word) || aconf.flags & OSSL_PROC_F_SHARED_OBJECTS)
		return true;
	owner = (pid_t)(word >> OWNER_SHIFT);
	self = proc_self();
	atomic_fetch_add_explicit(&bad_inherited, 1, memory_order_relaxed);
	if (site_first_time(NULL, 0, BAD_INHERITED))
		log_warn("process %ld freed %p, a shared block allocated by "
			 "process %ld (at %s:%d); it is not released.  Keep "
			 "each SSL object in the process that created it, or "
			 "declare OSSL_PROC_F_SHARED_OBJECTS and destroy them "
			 "with ossl_proc_free_by_owner() (logged once)", (long)self, p, (long)owner,
			 file ? file : "?", line);
	return false;
}
