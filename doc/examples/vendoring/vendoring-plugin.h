/*
 * The interface between vendoring-host and its plugins, as any plugin host
 * defines one.  The host includes osslproc.h only for the types it reads
 * back (struct ossl_proc_stats, enum ossl_proc_unload); it neither links
 * nor calls osslproc.
 */
#ifndef VENDORING_PLUGIN_H
#define VENDORING_PLUGIN_H

#include <osslproc.h>

/* Where a plugin's log lines go: the host prints them. */
typedef void vplug_log_fn(const char *plugin, const char *line);

struct vplug_status {
	/* This copy's view of the counters (the owner's when attached). */
	struct ossl_proc_stats stats;
	/* The object whose osslproc copy owns OpenSSL's allocator, from
	 * ossl_proc_report(). */
	char owner[512];
};

struct vplug_unload {
	int close_rc;           /* ossl_proc_module_close() */
	int teardown_rc;        /* ossl_proc_teardown() */
};

/* Load hook: 0 or a negative errno. */
typedef int vplug_load_fn(vplug_log_fn *log);
/* 0 or a negative errno. */
typedef int vplug_status_fn(struct vplug_status *st);
/* Unload hook, called right before dlclose. */
typedef void vplug_unload_fn(struct vplug_unload *out);
/* The address of this copy's ossl_proc_init, to tell the copies apart. */
typedef void *vplug_osslproc_fn(void);

#endif
