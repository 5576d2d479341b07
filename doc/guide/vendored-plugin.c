/*
 * Integrating osslproc, case (c): a plugin that carries its own static
 * copy of osslproc.  It is linked with
 *
 *     cc -shared -o vendored-plugin.so vendored-plugin.c libosslproc.a \
 *         -Wl,--exclude-libs,ALL $(pkg-config --libs libssl libcrypto)
 *
 * so that its ossl_proc_* symbols stay private and never bind to another
 * copy in the process.  If another copy already installed OpenSSL's
 * allocator, this one attaches to it; if this copy's code must stay
 * reachable after unload, it pins the plugin and says so.
 */
#include <errno.h>
#include <stdio.h>

#include <osslproc.h>

#define PLUGIN_API __attribute__((visibility("default")))

PLUGIN_API int vplugin_load(SSL_CTX *ctx);
PLUGIN_API int vplugin_unload(void);

static struct ossl_proc_module *scope;

static void
on_keylog(const SSL *ssl, const char *line)
{
	(void)ssl;
	fprintf(stderr, "vendored-plugin: %s\n", line);
}

int
vplugin_load(SSL_CTX *ctx)
{
	struct ossl_proc_config cfg = OSSL_PROC_CONFIG_INIT;
	struct ossl_proc_stats st = { .size = sizeof(st) };
	int rc;

	cfg.on_bad_free = OSSL_PROC_BAD_FREE_LOG;
	/* This copy's state is its own: its first init returns 0 even when
	 * the host initialised its own copy. */
	rc = ossl_proc_init(&cfg);
	if (rc < 0)
		return rc;
	if (ossl_proc_get_stats(&st) == 0 &&
	    st.allocator == OSSL_PROC_ALLOC_ATTACHED)
		fprintf(stderr, "vendored-plugin: OpenSSL's allocator belongs "
			"to another osslproc copy; sharing its statistics\n");
	scope = ossl_proc_module_open("vendored-plugin");
	if (!scope) {
		rc = -errno;
		ossl_proc_teardown();
		return rc;
	}
	rc = ossl_proc_module_set_keylog_callback(scope, ctx, on_keylog);
	if (rc < 0)
		vplugin_unload();
	return rc;
}

/* The worse of the two verdicts: PINNED means the plugin stays mapped
 * after dlclose(), which the host should know. */
int
vplugin_unload(void)
{
	int closed = scope ? ossl_proc_module_close(scope) : 0;
	int lib = ossl_proc_teardown();

	scope = NULL;
	if (closed < 0 || lib < 0)
		return closed < 0 ? closed : lib;
	return closed == OSSL_PROC_UNLOAD_PINNED ||
	       lib == OSSL_PROC_UNLOAD_PINNED ? OSSL_PROC_UNLOAD_PINNED
					      : OSSL_PROC_UNLOAD_SAFE;
}
