/*
 * The load and unload points of the library itself: ossl_proc_init() and
 * ossl_proc_teardown(), the reference count and the configuration of the
 * first init.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "osslproc-int.h"
#include "alloc/alloc.h"
#include "env.h"
#include "fork.h"
#include "pin.h"

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static struct init_config active;
/* The first init's raw settings, to tell conflicting later calls. */
static struct ossl_proc_config first;

/* Smallest struct a caller can pass: size and flags. */
#define CONFIG_MIN_SIZE (offsetof(struct ossl_proc_config, flags) + \
			 sizeof(unsigned int))
/* Larger than any version of the struct will be: a size beyond it is
 * garbage (an uninitialised field), not a newer caller, and the tail it
 * claims is not read. */
#define CONFIG_MAX_SIZE ((size_t)4096)

static bool
tail_is_zero(const struct ossl_proc_config *in)
{
	const unsigned char *p = (const unsigned char *)in;

	for (size_t i = sizeof(*in); i < in->size; i++)
		if (p[i])
			return false;
	return true;
}

/* Copy what the caller's struct covers over the defaults. */
static int
config_copy(const struct ossl_proc_config *in, struct ossl_proc_config *out)
{
	*out = (struct ossl_proc_config)OSSL_PROC_CONFIG_INIT;
	if (!in)
		return 0;
	if (in->size < CONFIG_MIN_SIZE) {
		log_bug_client("ossl_proc_init: cfg->size is %zu; set it to "
			       "sizeof(struct ossl_proc_config) or start from "
			       "OSSL_PROC_CONFIG_INIT", in->size);
		return -EINVAL;
	}
	if (in->size > CONFIG_MAX_SIZE) {
		log_bug_client("ossl_proc_init: cfg->size is %zu, larger than "
			       "any struct ossl_proc_config; set it to "
			       "sizeof(struct ossl_proc_config) or start from "
			       "OSSL_PROC_CONFIG_INIT", in->size);
		return -EINVAL;
	}
	if (in->size > sizeof(*in) && !tail_is_zero(in)) {
		log_bug_client("ossl_proc_init: cfg->size is %zu but this "
			       "osslproc knows only %zu bytes and the rest is "
			       "not zero; link against a newer osslproc",
			       in->size, sizeof(*in));
		return -EINVAL;
	}
	memcpy(out, in, in->size < sizeof(*in) ? in->size : sizeof(*in));
	out->size = sizeof(*out);
	return 0;
}

static int
config_check(const struct ossl_proc_config *c)
{
	if (c->flags & ~OSSL_PROC_F_ALL) {
		log_bug_client("ossl_proc_init: unknown flags 0x%x (this "
			       "osslproc knows 0x%x)", c->flags & ~OSSL_PROC_F_ALL,
			       OSSL_PROC_F_ALL);
		return -EINVAL;
	}
	if ((unsigned)c->on_bad_free > OSSL_PROC_BAD_FREE_ABORT) {
		log_bug_client("ossl_proc_init: on_bad_free %d is not an "
			       "enum ossl_proc_bad_free value", c->on_bad_free);
		return -EINVAL;
	}
	if ((int)c->log_level < 0 || c->log_level > OSSL_PROC_LOG_DEBUG) {
		log_bug_client("ossl_proc_init: log_level %d is neither 0 (the "
			       "default) nor a level up to OSSL_PROC_LOG_DEBUG",
			       c->log_level);
		return -EINVAL;
	}
	if (c->allocator && (!c->allocator->malloc || !c->allocator->free)) {
		log_bug_client("ossl_proc_init: cfg->allocator needs both "
			       "malloc and free");
		return -EINVAL;
	}
	return 0;
}

static bool
str_differs(const char *a, const char *b)
{
	if (!a || !b)
		return a != b;
	return strcmp(a, b) != 0;
}

static bool
allocator_differs(const struct ossl_proc_allocator *a,
		  const struct ossl_proc_allocator *b)
{
	if (!a || !b)
		return a != b;
	return a->malloc != b->malloc || a->free != b->free ||
	       a->realloc != b->realloc || a->arg != b->arg ||
	       a->shared != b->shared;
}

/* A later init may not change anything: say what it tried to change. */
static void
config_warn_conflicts(const struct ossl_proc_config *c)
{
	const char *what = NULL;

	if (c->flags != first.flags)
		what = "flags";
	else if (allocator_differs(c->allocator, first.allocator))
		what = "allocator";
	else if (c->on_bad_free != first.on_bad_free)
		what = "on_bad_free";
	else if (c->quarantine_bytes != first.quarantine_bytes)
		what = "quarantine_bytes";
	else if (c->cache_bytes != first.cache_bytes)
		what = "cache_bytes";
	else if (c->cache_total_bytes != first.cache_total_bytes)
		what = "cache_total_bytes";
	else if (c->fork_quiesce_ms != first.fork_quiesce_ms)
		what = "fork_quiesce_ms";
	else if (c->openssl_init_opts != first.openssl_init_opts)
		what = "openssl_init_opts";
	else if (c->log != first.log || c->log_arg != first.log_arg ||
		 c->log_level != first.log_level)
		what = "log settings";
	else if (str_differs(c->ca_file, active.ca_file) ||
		 str_differs(c->ca_dir, active.ca_dir))
		what = "CA paths";
	if (what)
		log_warn("ossl_proc_init: already initialised; the %s of this "
			 "call differ from the first call's and are ignored",
			 what);
}

static int
dup_str(const char *in, const char **out)
{
	*out = NULL;
	if (!in)
		return 0;
	*out = strdup(in);
	return *out ? 0 : -ENOMEM;
}

static void
active_clear(void)
{
	free((void *)active.ca_file);
	free((void *)active.ca_dir);
	memset(&active, 0, sizeof(active));
}

static int
active_set(const struct ossl_proc_config *c)
{
	active_clear();
	active.flags = c->flags;
	active.has_allocator = c->allocator != NULL;
	if (c->allocator)
		active.allocator = *c->allocator;
	active.on_bad_free = c->on_bad_free;
	active.quarantine_bytes = c->quarantine_bytes;
	if (!c->quarantine_bytes)
		active.quarantine_bytes = c->allocator && c->allocator->shared ?
			QUARANTINE_SHARED_DEFAULT : QUARANTINE_DEFAULT;
	active.cache_bytes = c->cache_bytes ? c->cache_bytes : CACHE_DEFAULT;
	active.cache_total_bytes = c->cache_total_bytes ? c->cache_total_bytes
							: CACHE_TOTAL_DEFAULT;
	active.fork_quiesce_ns = (uint64_t)(c->fork_quiesce_ms ?
		c->fork_quiesce_ms : FORK_QUIESCE_MS_DEFAULT) * 1000000u;
	if (dup_str(c->ca_file, &active.ca_file) ||
	    dup_str(c->ca_dir, &active.ca_dir)) {
		active_clear();
		log_error("ossl_proc_init: out of memory copying the CA paths");
		return -ENOMEM;
	}
	return 0;
}

#define SSL_INIT_OPTS (OPENSSL_INIT_LOAD_SSL_STRINGS | \
		       OPENSSL_INIT_NO_LOAD_SSL_STRINGS)

/* Initialise OpenSSL with the host's options (cfg->openssl_init_opts).
 * By default it loads its configuration now, from the snapshot's
 * OPENSSL_CONF, rather than lazily in some worker thread. */
static int
openssl_load(uint64_t opts)
{
	OPENSSL_INIT_SETTINGS *settings = NULL;
	const char *conf = env_get(ENV_OPENSSL_CONF);
	int ok = 1;

	if (opts == OSSL_PROC_OPENSSL_INIT_NONE)
		return env_pin_openssl();
	if (!opts)
		opts = OPENSSL_INIT_LOAD_CONFIG | OPENSSL_INIT_LOAD_SSL_STRINGS |
		       OPENSSL_INIT_LOAD_CRYPTO_STRINGS;
	if ((opts & OPENSSL_INIT_LOAD_CONFIG) && conf) {
		settings = OPENSSL_INIT_new();
		if (!settings)
			return -ENOMEM;
		ok = OPENSSL_INIT_set_config_filename(settings, conf);
	}
	if (ok)
		ok = (opts & SSL_INIT_OPTS ? OPENSSL_init_ssl(opts, settings)
		      : OPENSSL_init_crypto(opts, settings)) == 1;
	OPENSSL_INIT_free(settings);
	if (ok)
		return env_pin_openssl();
	log_error("ossl_proc_init: OpenSSL's initialisation with options "
		  "0x%llx failed (%lu); check the options and OpenSSL's "
		  "configuration file (OPENSSL_CONF)",
		  (unsigned long long)opts, ERR_peek_last_error());
	return -EIO;
}

static int
first_init(const struct ossl_proc_config *c)
{
	int rc;

	log_configure(c->log, c->log_arg, c->log_level);
	proc_init();
	rc = config_check(c);
	if (!rc)
		rc = active_set(c);
	if (!rc)
		rc = alloc_init(&active);
	if (!rc)
		rc = env_init(&active);
	if (!rc)
		rc = openssl_load(c->openssl_init_opts);
	if (!rc)
		rc = fork_init(&active);
	if (rc) {
		env_teardown();
		active_clear();
		log_configure(NULL, NULL, 0);
		return rc;
	}
	first = *c;
	proc_refs_set(1);
	log_debug("initialised (allocator mode %d)", alloc_mode());
	return 0;
}

/* A later call with a NULL config asks for a reference, not settings. */
static int
add_reference(const struct ossl_proc_config *c, bool has_cfg)
{
	int rc = config_check(c);

	if (rc)
		return rc;
	if (has_cfg)
		config_warn_conflicts(c);
	proc_refs_set(proc_refs() + 1);
	return 1;
}

OSSL_PROC_EXPORT int
ossl_proc_init(const struct ossl_proc_config *cfg)
{
	struct ossl_proc_config c;
	int rc;

	alloc_check();
	pthread_mutex_lock(&init_lock);
	rc = config_copy(cfg, &c);
	if (!rc)
		rc = proc_initialised() ? add_reference(&c, cfg != NULL)
					 : first_init(&c);
	pthread_mutex_unlock(&init_lock);
	return rc;
}

static int
last_teardown(void)
{
	bool reachable = alloc_teardown();
	int rc = OSSL_PROC_UNLOAD_SAFE;

	if (reachable && pin_self("OpenSSL's memory functions point "
				       "into it until the process exits"))
		rc = OSSL_PROC_UNLOAD_PINNED;
	else if (pin_own_libcrypto())
		rc = OSSL_PROC_UNLOAD_PINNED;
	fork_teardown();
	env_teardown();
	active_clear();
	memset(&first, 0, sizeof(first));
	proc_refs_set(0);
	/* The host's callback may live in code about to be unloaded. */
	log_configure(NULL, NULL, 0);
	return rc;
}

OSSL_PROC_EXPORT int
ossl_proc_teardown(void)
{
	int rc = OSSL_PROC_UNLOAD_IN_USE;

	alloc_check();
	pthread_mutex_lock(&init_lock);
	if (!proc_initialised()) {
		log_bug_client("ossl_proc_teardown: called without a matching "
			       "ossl_proc_init");
		rc = -EINVAL;
	} else if (proc_refs() == 1) {
		rc = last_teardown();
	} else {
		proc_refs_set(proc_refs() - 1);
	}
	pthread_mutex_unlock(&init_lock);
	return rc;
}
