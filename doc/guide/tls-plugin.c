/*
 * Integrating osslproc, case (b): a TLS plugin that its host loads and
 * unloads at run time (tcl-tls inside Irssi).  Everything the plugin
 * gives OpenSSL goes through its module scope, and plugin_unload() takes
 * it all back before the host calls dlclose().
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include <osslproc.h>

#define PLUGIN_API __attribute__((visibility("default")))

PLUGIN_API int plugin_load(SSL_CTX *ctx);
PLUGIN_API int plugin_unload(void);

struct conn_state {
	unsigned long handshakes;
};

static struct ossl_proc_module *scope;
static int conn_index = -1;

/* Called by SSL_free() while the plugin is loaded; after the scope is
 * closed OpenSSL calls a no-op instead (the state of connections still
 * open at that moment is leaked, never freed by unmapped code). */
static void
conn_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
	  void *argp)
{
	(void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
	free(ptr);
}

static void
on_info(const SSL *ssl, int where, int ret)
{
	struct conn_state *cs;

	(void)ret;
	if (!(where & SSL_CB_HANDSHAKE_DONE))
		return;
	cs = SSL_get_ex_data(ssl, conn_index);
	if (!cs) {
		cs = calloc(1, sizeof(*cs));
		if (!cs || !SSL_set_ex_data((SSL *)ssl, conn_index, cs)) {
			free(cs);
			return;
		}
	}
	cs->handshakes++;
}

static int
on_verify(int ok, X509_STORE_CTX *store)
{
	if (!ok)
		fprintf(stderr, "tls-plugin: certificate rejected: %s\n",
			X509_verify_cert_error_string(
				X509_STORE_CTX_get_error(store)));
	return ok;
}

int
plugin_unload(void)
{
	int rc = 0;

	if (scope) {
		/* Waits for this scope's callbacks in flight; from one of
		 * them it would wait for itself, and returns -EDEADLK. */
		rc = ossl_proc_module_close(scope);
		scope = NULL;
	}
	ossl_proc_teardown();
	return rc;
}

int
plugin_load(SSL_CTX *ctx)
{
	/* A reference on the host's initialisation (1), or the first
	 * initialisation if the host did not make one (0). */
	int rc = ossl_proc_init(NULL);

	if (rc < 0)
		return rc;
	scope = ossl_proc_module_open("tls-plugin");
	if (!scope) {
		rc = -errno;
		ossl_proc_teardown();
		return rc;
	}
	conn_index = ossl_proc_module_ex_new_index(scope, CRYPTO_EX_INDEX_SSL,
						   0, NULL, NULL, NULL,
						   conn_free);
	rc = conn_index < 0 ? conn_index : 0;
	if (!rc)
		rc = ossl_proc_module_set_info_callback(scope, ctx, on_info);
	if (!rc)
		rc = ossl_proc_module_set_verify(scope, ctx, SSL_VERIFY_PEER,
						 on_verify);
	if (rc < 0)
		plugin_unload();
	return rc;
}
