/*
 * Integrating osslproc, case (b): the host side.  The host initialises
 * osslproc before its own OpenSSL use, loads the plugin, and at unload
 * calls the plugin's unload function before dlclose().
 */
#include <dlfcn.h>
#include <stdio.h>

#include <osslproc.h>

typedef int (*load_fn)(SSL_CTX *ctx);
typedef int (*unload_fn)(void);

int
main(int argc, char **argv)
{
	const char *path = argc > 1 ? argv[1] : "./libtls-plugin.so";
	load_fn load;
	unload_fn unload;
	SSL_CTX *ctx;
	SSL *live;
	void *h;
	int rc;

	if (ossl_proc_init(NULL) < 0)
		return 1;
	ctx = SSL_CTX_new(TLS_client_method());
	h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!ctx || !h) {
		fprintf(stderr, "host: %s\n", h ? "SSL_CTX_new failed" :
			dlerror());
		return 1;
	}
	load = (load_fn)dlsym(h, "plugin_load");
	unload = (unload_fn)dlsym(h, "plugin_unload");
	if (!load || !unload || load(ctx) < 0)
		return 1;

	/* A connection made while the plugin is loaded copies the
	 * context's callbacks: osslproc's trampolines, not the plugin's. */
	live = SSL_new(ctx);

	/* From the host's main loop, never from inside an OpenSSL
	 * callback. */
	rc = unload();
	if (rc == OSSL_PROC_UNLOAD_PINNED)
		fprintf(stderr, "host: the plugin stays mapped until exit\n");
	dlclose(h);

	/* Safe: its ex_data free callback is a no-op now, and its info
	 * and verify callbacks are gone from ctx and from live. */
	SSL_free(live);
	SSL_CTX_free(ctx);
	ossl_proc_teardown();
	return rc < 0;
}
