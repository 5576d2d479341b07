/*
 * Installing the tracked allocator into OpenSSL, and living with whoever
 * else has: OpenSSL's default (install refused once it allocated), a
 * host's custom functions (we stack on them), another copy of osslproc
 * (we attach to it), or someone replacing ours later (we report it).
 * Also the statistics this copy answers with (ossl_proc_get_stats()).
 */
#include <dlfcn.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "alloc-int.h"

struct alloc_conf aconf;

static bool installed;   /* our functions went into OpenSSL, ever */
static _Atomic int mode; /* enum ossl_proc_alloc_mode */
static const struct owner_record *attached;

static uint64_t
draw_secret(void)
{
	uint64_t s = 0;
	struct timespec ts;

	if (getrandom(&s, sizeof(s), GRND_NONBLOCK) == sizeof(s) && s)
		return s;
	/* No entropy yet (early boot): weaker, but still per process tree. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((uint64_t)ts.tv_nsec << 32) ^ (uint64_t)ts.tv_sec ^
	       (uint64_t)getpid() << 16 ^ (uintptr_t)&s;
}

/* The words of the fast paths for the backend in aconf.host: none with
 * site records or a shared backend (placement() then changes at the
 * first fork); without one placement() never changes. */
static void
fast_words_set(void)
{
	aconf.fast_word = 0;
	if (!(aconf.flags & OSSL_PROC_F_TRACK_SITES) && !shared_backend())
		aconf.fast_word = ST_LIVE | (uint32_t)placement() << BK_SHIFT;
	aconf.free_word = aconf.fast_word && !(aconf.flags & OSSL_PROC_F_SCRUB) ?
		aconf.fast_word : FREE_WORD_NONE;
}

static void
conf_set(const struct init_config *cfg, CRYPTO_malloc_fn m,
	 CRYPTO_realloc_fn r, CRYPTO_free_fn f)
{
	aconf.flags = cfg->flags;
	aconf.on_bad_free = cfg->on_bad_free;
	aconf.quarantine_bytes = cfg->quarantine_bytes;
	aconf.quarantine_high = cfg->quarantine_bytes +
		(cfg->quarantine_bytes / 8 < UINT64_MAX - cfg->quarantine_bytes ?
		 cfg->quarantine_bytes / 8 : UINT64_MAX - cfg->quarantine_bytes);
	aconf.cache_bytes = cfg->cache_bytes;
	aconf.cache_total_bytes = cfg->cache_total_bytes;
	atomic_store(&proc_mut.cache_pool, (int64_t)(cfg->cache_total_bytes <
						     INT64_MAX ?
						     cfg->cache_total_bytes :
						     INT64_MAX));
	if (cfg->has_allocator)
		aconf.host = cfg->allocator;
	if (m != CRYPTO_malloc) {
		aconf.prior_m = m;
		aconf.prior_r = r;
		aconf.prior_f = f;
	}
	aconf.secret = draw_secret();
	aconf.secret2 = draw_secret() * 0x9e3779b97f4a7c15ull;
	aconf.secret3 = draw_secret() * 0xd6e8feb86659fd93ull | 1;
	fast_words_set();
}

static int
install(const struct init_config *cfg, CRYPTO_malloc_fn m,
	CRYPTO_realloc_fn r, CRYPTO_free_fn f)
{
	conf_set(cfg, m, r, f);
	if (!CRYPTO_set_mem_functions(om_malloc, om_realloc, om_free)) {
		memset(&aconf, 0, sizeof(aconf));
		atomic_store(&mode, OSSL_PROC_ALLOC_UNTRACKED);
		log_warn("OpenSSL had already allocated memory, so the tracked "
			 "allocator is not installed and frees are not "
			 "guarded; call ossl_proc_init() before any other "
			 "OpenSSL function");
		return 0;
	}
	installed = true;
	owner_name_object();
	if (cfg->has_allocator)
		arena_set_in_use(&aconf.host, true,
				 aconf.quarantine_high + aconf.cache_bytes);
	if (aconf.prior_m)
		log_info("custom memory functions were already installed: "
			 "osslproc tracks on top of them, and blocks they "
			 "allocated before are freed by them");
	atomic_store(&mode, OSSL_PROC_ALLOC_TRACKED);
	return 0;
}

/*
 * The program's own CRYPTO_set_mem_functions(), made after osslproc
 * installed its allocator (the preload, which interposes that call):
 * the program's functions become the backend, as cfg->allocator would
 * have been.  Its functions get osslproc's file and line, not the
 * caller's.
 */
static CRYPTO_malloc_fn adopted_m;
static CRYPTO_free_fn adopted_f;

static void *
adopted_malloc(size_t n, void *arg)
{
	(void)arg;
	return adopted_m(n, OPENSSL_FILE, OPENSSL_LINE);
}

static void
adopted_free(void *p, void *arg)
{
	(void)arg;
	adopted_f(p, OPENSSL_FILE, OPENSSL_LINE);
}

static int
adopt_check(CRYPTO_malloc_fn m, CRYPTO_free_fn f)
{
	if (!installed || atomic_load(&mode) != OSSL_PROC_ALLOC_TRACKED)
		return -ENOTSUP;
	if (!m || !f) {
		log_bug_client("CRYPTO_set_mem_functions: a NULL malloc or "
			       "free function; OpenSSL's own functions stay "
			       "the backend");
		return -EINVAL;
	}
	if (aconf.host.malloc || aconf.prior_m) {
		log_warn("CRYPTO_set_mem_functions: osslproc already stacks "
			 "on the %s; the new functions are ignored (install "
			 "them once, before any other OpenSSL call)",
			 adopted_m ? "program's functions" : "host allocator");
		return -EBUSY;
	}
	return 0;
}

/*
 * Blocks already allocated keep their backend (libc); what this thread
 * has cached goes back first, and other threads' caches keep libc blocks
 * (so their new blocks bypass them: cache_holds()).  The program calls
 * this at start, before its threads use OpenSSL.
 */
int
alloc_adopt(CRYPTO_malloc_fn m, CRYPTO_free_fn f, bool shared)
{
	int rc = adopt_check(m, f);

	if (rc)
		return rc;
	ossl_proc_thread_release();
	aconf.fast_word = 0;
	aconf.free_word = FREE_WORD_NONE;
	atomic_thread_fence(memory_order_seq_cst);
	adopted_m = m;
	adopted_f = f;
	aconf.host = (struct ossl_proc_allocator){
		.malloc = adopted_malloc,
		.free = adopted_free,
		.shared = shared,
	};
	fast_words_set();
	atomic_thread_fence(memory_order_seq_cst);
	if (tls_state)
		tls_state->cache_bk = (uint8_t)placement();
	log_info("the program installed its own memory functions: osslproc "
		 "tracks on top of them%s", shared ? " (shared between "
		 "processes after the first fork)" : "");
	return 0;
}

/* Settings are frozen once blocks exist: say so if a new init differs. */
static void
warn_frozen(const struct init_config *cfg)
{
	bool host_differs = cfg->has_allocator != (aconf.host.malloc != NULL) ||
		(cfg->has_allocator &&
		 memcmp(&cfg->allocator, &aconf.host, sizeof(aconf.host)));

	if (host_differs || cfg->on_bad_free != aconf.on_bad_free ||
	    cfg->quarantine_bytes != aconf.quarantine_bytes ||
	    cfg->cache_bytes != aconf.cache_bytes ||
	    cfg->cache_total_bytes != aconf.cache_total_bytes ||
	    (cfg->flags ^ aconf.flags) & (OSSL_PROC_F_SCRUB |
					  OSSL_PROC_F_TRACK_SITES))
		log_warn("the tracked allocator keeps the settings it was "
			 "installed with until the process exits; the new "
			 "allocator settings are ignored");
}

int
alloc_init(const struct init_config *cfg)
{
	CRYPTO_malloc_fn m;
	CRYPTO_realloc_fn r;
	CRYPTO_free_fn f;

	proc_on_child(&alloc_child_handler);
	CRYPTO_get_mem_functions(&m, &r, &f);
	if (m == om_malloc) {
		/* This copy installed it in an earlier init/teardown cycle. */
		warn_frozen(cfg);
		atomic_store(&mode, OSSL_PROC_ALLOC_TRACKED);
		return 0;
	}
	if (cfg->flags & OSSL_PROC_F_NO_ALLOCATOR) {
		atomic_store(&mode, OSSL_PROC_ALLOC_DISABLED);
		return 0;
	}
	if (m != CRYPTO_malloc) {
		attached = owner_find(m);
		if (attached) {
			atomic_store(&mode, OSSL_PROC_ALLOC_ATTACHED);
			log_info("OpenSSL's allocator belongs to the osslproc "
				 "copy in %s; this copy uses its statistics "
				 "and bad-free policy", attached->object);
			return 0;
		}
	}
	return install(cfg, m, r, f);
}

bool
alloc_teardown(void)
{
	attached = NULL;
	/* The functions stay installed: OpenSSL frees through them until
	 * exit, atexit handlers included. */
	if (!installed)
		atomic_store(&mode, OSSL_PROC_ALLOC_NONE);
	return installed;
}

/*
 * Someone may call CRYPTO_set_mem_functions after us: OpenSSL refuses it
 * only once its own default allocator ran, so osslproc cannot.  What it
 * can do is say so, once, at the next library call, naming the object
 * whose functions OpenSSL now calls.
 */
void
alloc_check(void)
{
	CRYPTO_malloc_fn m;
	CRYPTO_realloc_fn r;
	CRYPTO_free_fn f;
	int expected = OSSL_PROC_ALLOC_TRACKED;
	Dl_info info = { 0 };
	const char *who = "an object dladdr() does not know";

	if (!installed || atomic_load(&mode) != OSSL_PROC_ALLOC_TRACKED)
		return;
	CRYPTO_get_mem_functions(&m, &r, &f);
	if (m == om_malloc && r == om_realloc && f == om_free)
		return;
	if (!atomic_compare_exchange_strong(&mode, &expected,
					    OSSL_PROC_ALLOC_REPLACED))
		return;
	if (dladdr((void *)m, &info) && info.dli_fname && info.dli_fname[0])
		who = info.dli_fname;
	log_error("OpenSSL's memory functions were replaced after osslproc "
		  "installed its allocator, with a malloc at %p (%s, in %s): "
		  "blocks osslproc allocated will reach the new free function, "
		  "which is likely to abort.  Remove that "
		  "CRYPTO_set_mem_functions() call, or make it before "
		  "ossl_proc_init() (osslproc then stacks on it)", (void *)m,
		  info.dli_sname ? info.dli_sname : "?", who);
}

enum ossl_proc_alloc_mode
alloc_mode(void)
{
	alloc_check();
	return (enum ossl_proc_alloc_mode)atomic_load(&mode);
}

/* Counters since install, whatever process counted them; @in_child: the
 * caller is alloc_child(), where the registry needs no lock. */
CHILD_PATH static void
lineage_stats(struct ossl_proc_stats *st, bool in_child)
{
	if (in_child)
		tstate_sum_unlocked(st);
	else
		tstate_sum(st);
	st->double_frees = atomic_load(&bad_double);
	st->invalid_frees = atomic_load(&bad_invalid);
	st->foreign_frees = atomic_load(&bad_foreign);
	st->inherited_frees = atomic_load(&bad_inherited);
	st->generation = atomic_load(&proc_mut.generation);
}

CHILD_PATH void
alloc_stats_rebase(void)
{
	struct ossl_proc_stats now = { .size = sizeof(now) };

	lineage_stats(&now, true);
	proc_mut.base = now;
}

/* This process's events; live blocks and bytes include what it inherited.
 * (live_blocks was computed from the lineage's totals.) */
static void
own_stats(struct ossl_proc_stats *st)
{
	const struct ossl_proc_stats *b = &proc_mut.base;

	lineage_stats(st, false);
	st->allocs -= b->allocs;
	st->frees -= b->frees;
	st->reallocs -= b->reallocs;
	st->prior_frees -= b->prior_frees;
	st->double_frees -= b->double_frees;
	st->invalid_frees -= b->invalid_frees;
	st->foreign_frees -= b->foreign_frees;
	st->inherited_frees -= b->inherited_frees;
	lk_stats(st);
	handoff_stats(st);
}

/* Fill every field this version knows; the caller copies the prefix. */
static void
get_stats(struct ossl_proc_stats *st)
{
	enum ossl_proc_alloc_mode m = alloc_mode();
	struct ossl_proc_stats theirs;

	if (m == OSSL_PROC_ALLOC_ATTACHED) {
		memset(&theirs, 0, sizeof(theirs));
		theirs.size = sizeof(theirs);
		if (attached->get_stats(&theirs) == 0)
			*st = theirs;
	} else if (installed) {
		own_stats(st);
	}
	st->allocator = m;
}

OSSL_PROC_EXPORT int
ossl_proc_get_stats(struct ossl_proc_stats *out)
{
	struct ossl_proc_stats st;
	size_t n;

	if (!out || out->size < STATS_V0_SIZE) {
		log_bug_client("ossl_proc_get_stats: set out->size to "
			       "sizeof(struct ossl_proc_stats)");
		return -EINVAL;
	}
	proc_check_fork();
	memset(&st, 0, sizeof(st));
	get_stats(&st);
	n = out->size < sizeof(st) ? out->size : sizeof(st);
	memcpy((char *)out + sizeof(size_t), (char *)&st + sizeof(size_t),
	       n - sizeof(size_t));
	return 0;
}

void
alloc_report(FILE *out)
{
	if (alloc_mode() == OSSL_PROC_ALLOC_ATTACHED) {
		attached->report(out);
		return;
	}
	if (!installed)
		return;
	owner_report(out);
	fprintf(out, "backend: %s%s, quarantine %zu bytes and cache %zu "
		"bytes per thread, %zu bytes of cache for all threads\n",
		adopted_m ? "the program's memory functions" :
		aconf.host.malloc ? "host allocator" :
		aconf.prior_m ? "previously installed functions" : "malloc",
		aconf.host.shared ? " (shared after the first fork)" : "",
		aconf.quarantine_bytes, aconf.cache_bytes,
		aconf.cache_total_bytes);
}

bool
alloc_exit_leaks_wanted(void)
{
	return installed && atomic_load(&mode) == OSSL_PROC_ALLOC_TRACKED &&
	       (aconf.flags & OSSL_PROC_F_EXIT_LEAKS);
}

void
alloc_leak_sites(FILE *out)
{
	if (installed)
		sites_report(out, "leak");
}
