/*
 * demo-plugin.so: the TLS plugin osslproc-demo loads with dlopen() and
 * unloads while connections it has seen are still open.
 *
 * Everything it gives OpenSSL goes through one osslproc module scope, so
 * that ossl_proc_module_close() can take it all back before dlclose():
 *
 *  - an SSL ex_data index whose new function tags every connection with a
 *    pointer into this plugin and whose free function counts them: after
 *    unload, a connection freed by the host must not call it;
 *  - an info callback (handshakes, alerts), a msg callback (records) and
 *    a keylog callback on the server's SSL_CTX: SSL_new() copies the msg
 *    callback into each connection, so open connections would jump into
 *    unmapped code on their next record without the scope's trampolines;
 *  - error strings for its own OpenSSL error library: OpenSSL's string
 *    table would otherwise point into the unmapped plugin.
 *
 * The counters live in this plugin's data; each process (the parent and
 * every worker) has its own copy after fork.
 */
#include <errno.h>
#include <string.h>

#include <osslproc.h>

#include "demo-plugin.h"

#define PLUGIN_EXPORT __attribute__((visibility("default")))

/* The reason code of the plugin's one error; far above OpenSSL's common
 * ERR_R_ codes, which ERR_reason_error_string() falls back to. */
#define R_POLICY 4001

PLUGIN_EXPORT const struct demo_plugin *demo_plugin_entry(void);

static struct ossl_proc_module *scope;
static int unscoped;            /* the negative control: no scope */
static int ex_index = -1;
static int err_lib;
static struct demo_plugin_counters counters;

/* What each connection's ex_data slot points to: plugin memory, which is
 * exactly what must not be followed after the plugin is gone. */
static const char conn_tag[] = "demo-plugin";

/* ERR_load_strings() patches the library number into these entries, so
 * the table cannot be const. */
static ERR_STRING_DATA strings[] = {
	{ ERR_PACK(0, 0, R_POLICY),
	  "demo-plugin: the server context allows TLS below 1.3" },
	{ 0, NULL },
};

static void
tag_new(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
	void *argp)
{
	if (CRYPTO_set_ex_data(ad, idx, (void *)conn_tag))
		counters.conns_tagged++;
}

static void
tag_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
	 void *argp)
{
	if (ptr == conn_tag)
		counters.conns_freed++;
}

static void
on_info(const SSL *ssl, int where, int ret)
{
	/* Servers only: the host gives this callback to its server
	 * context, and a client's HANDSHAKE_DONE would count twice. */
	if ((where & SSL_CB_HANDSHAKE_DONE) && SSL_is_server(ssl))
		counters.handshakes++;
	if (where & SSL_CB_ALERT)
		counters.alerts++;
}

static void
on_msg(int write_p, int version, int content_type, const void *buf,
       size_t len, SSL *ssl, void *arg)
{
	if (content_type == SSL3_RT_HEADER)
		counters.records++;
}

static void
on_keylog(const SSL *ssl, const char *line)
{
	/* A real plugin would write SSLKEYLOGFILE here; the demo only
	 * counts, so no secret leaves the process. */
	counters.keylog_lines++;
}

/* Without osslproc: what the plugin would do on its own, and what
 * nothing undoes before dlclose(). */
static int
load_unscoped(void)
{
	unscoped = 1;
	ex_index = SSL_get_ex_new_index(0, NULL, tag_new, NULL, tag_free);
	err_lib = ERR_get_next_error_library();
	if (ex_index < 0 || !ERR_load_strings(err_lib, strings))
		return -EIO;
	return 0;
}

static int
plugin_load(int scoped)
{
	int rc;

	if (!scoped)
		return load_unscoped();
	scope = ossl_proc_module_open("demo-plugin");
	if (!scope)
		return -errno;
	rc = ossl_proc_module_ex_new_index(scope, CRYPTO_EX_INDEX_SSL, 0, NULL,
					   tag_new, NULL, tag_free);
	if (rc >= 0) {
		ex_index = rc;
		err_lib = ERR_get_next_error_library();
		rc = ossl_proc_module_load_strings(scope, err_lib, strings);
	}
	if (rc < 0) {
		/* Undo what was registered before the failure. */
		ossl_proc_module_close(scope);
		scope = NULL;
		return rc;
	}
	return 0;
}

static int
configure_unscoped(SSL_CTX *ctx)
{
	SSL_CTX_set_info_callback(ctx, on_info);
	SSL_CTX_set_msg_callback(ctx, on_msg);
	SSL_CTX_set_keylog_callback(ctx, on_keylog);
	return 0;
}

static int
plugin_configure(SSL_CTX *ctx)
{
	int rc;

	if (SSL_CTX_get_min_proto_version(ctx) != TLS1_3_VERSION) {
		ERR_raise(err_lib, R_POLICY);
		return -EPROTO;
	}
	if (unscoped)
		return configure_unscoped(ctx);
	if (!scope)
		return -EINVAL;
	rc = ossl_proc_module_set_info_callback(scope, ctx, on_info);
	if (!rc)
		rc = ossl_proc_module_set_msg_callback(scope, ctx, on_msg);
	if (!rc)
		rc = ossl_proc_module_set_keylog_callback(scope, ctx,
							  on_keylog);
	return rc;
}

static int
plugin_unload(void)
{
	int rc;

	/* Unscoped: nothing to undo, which is the whole problem. */
	if (unscoped)
		return OSSL_PROC_UNLOAD_SAFE;
	if (!scope)
		return -EINVAL;
	rc = ossl_proc_module_close(scope);
	scope = NULL;
	ex_index = -1;
	return rc;
}

static void
plugin_counters(struct demo_plugin_counters *out)
{
	*out = counters;
}

static unsigned long
plugin_sample_error(void)
{
	return ERR_PACK(err_lib, 0, R_POLICY);
}

static const struct demo_plugin plugin = {
	.abi = DEMO_PLUGIN_ABI,
	.name = "demo-plugin",
	.load = plugin_load,
	.configure = plugin_configure,
	.unload = plugin_unload,
	.counters = plugin_counters,
	.sample_error = plugin_sample_error,
};

const struct demo_plugin *
demo_plugin_entry(void)
{
	return &plugin;
}
