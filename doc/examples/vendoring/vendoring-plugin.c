/*
 * A plugin that vendors osslproc: the static archive linked into the
 * plugin, its symbols kept private.
 *
 * Vendor when the plugin cannot rely on the host: the host does not use
 * osslproc, or uses another version, or several plugins ship their own
 * copy.  A host that links libosslproc.so itself should hand its plugins
 * that one instead (one copy, nothing to pin).
 *
 * Link flags: link libosslproc.a (meson: link_with the static library,
 * or `pkg-config --static --libs osslproc`), libssl and libcrypto as the
 * host has them (shared), and -Wl,--exclude-libs,ALL so that the
 * archive's symbols are not exported from the plugin: the host's copy, or
 * another plugin's, never binds to this one's.  Each copy then finds the
 * others at run time through OpenSSL's memory functions: the first to
 * initialise owns the allocator, the others attach to it.
 *
 * This file is built twice, as two plugins; VPLUG_NAME tells them apart
 * in the log.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "vendoring-plugin.h"

#ifndef VPLUG_NAME
#define VPLUG_NAME "plugin"
#endif

#define VPLUG_API __attribute__((visibility("default")))

VPLUG_API vplug_load_fn vplug_load;
VPLUG_API vplug_status_fn vplug_status;
VPLUG_API vplug_unload_fn vplug_unload;
VPLUG_API vplug_osslproc_fn vplug_osslproc;

static vplug_log_fn *host_log;
static struct ossl_proc_module *scope;

/* The plugin's own error strings, registered through its scope so that
 * they are unloaded before the table is unmapped. */
static ERR_STRING_DATA errors[] = {
	{ ERR_PACK(0, 0, 1), VPLUG_NAME ": request refused" },
	{ 0, NULL },
};

/* osslproc may log from inside OpenSSL's allocator: no OpenSSL here. */
static void
forward_log(enum ossl_proc_log_level level, const char *msg, void *arg)
{
	static const char *const names[] = { "ERROR", "WARNING", "INFO",
					     "DEBUG" };
	char line[640];
	int i = level / 10 - 1;

	(void)arg;
	snprintf(line, sizeof(line), "osslproc %s: %s",
		 i >= 0 && i < 4 ? names[i] : "?", msg);
	if (host_log)
		host_log(VPLUG_NAME, line);
}

int
vplug_load(vplug_log_fn *log)
{
	struct ossl_proc_config c = OSSL_PROC_CONFIG_INIT;
	int lib, rc;

	host_log = log;
	c.log = forward_log;
	c.log_level = OSSL_PROC_LOG_INFO;
	rc = ossl_proc_init(&c);
	if (rc < 0)
		return rc;
	scope = ossl_proc_module_open(VPLUG_NAME);
	if (!scope) {
		rc = -errno;
		ossl_proc_teardown();
		return rc;
	}
	lib = ERR_get_next_error_library();
	for (ERR_STRING_DATA *e = errors; e->string; e++)
		e->error = ERR_PACK(lib, 0, ERR_GET_REASON(e->error));
	rc = ossl_proc_module_load_strings(scope, lib, errors);
	if (rc < 0) {
		ossl_proc_module_close(scope);
		ossl_proc_teardown();
	}
	return rc;
}

/* The "allocator owner: " line of the report names the owning object. */
static void
find_owner(char *owner, size_t len)
{
	static const char tag[] = "allocator owner: ";
	char buf[4096] = "";
	FILE *f = fmemopen(buf, sizeof(buf) - 1, "w");
	const char *p;

	snprintf(owner, len, "(unknown)");
	if (!f)
		return;
	ossl_proc_report(f);
	fclose(f);
	p = strstr(buf, tag);
	if (p)
		snprintf(owner, len, "%.*s", (int)strcspn(p + sizeof(tag) - 1,
			 "\n"), p + sizeof(tag) - 1);
}

int
vplug_status(struct vplug_status *st)
{
	int rc;

	memset(st, 0, sizeof(*st));
	st->stats.size = sizeof(st->stats);
	rc = ossl_proc_get_stats(&st->stats);
	if (rc == 0)
		find_owner(st->owner, sizeof(st->owner));
	return rc;
}

void
vplug_unload(struct vplug_unload *out)
{
	out->close_rc = ossl_proc_module_close(scope);
	scope = NULL;
	out->teardown_rc = ossl_proc_teardown();
}

void *
vplug_osslproc(void)
{
	return (void *)ossl_proc_init;
}
