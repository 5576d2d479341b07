/*
 * A TLS plugin as a host would load it: it registers an ex_data index with
 * a free function, info, verify and msg callbacks and error strings,
 * either through an osslproc module scope or directly with OpenSSL (to
 * show the crash the scope prevents).  Built twice: against the shared
 * libosslproc, and with its own vendored static copy.
 */
#include <osslproc.h>

#define PLUGIN_API __attribute__((visibility("default")))

PLUGIN_API int plug_attach(SSL_CTX *ctx, int scoped);
PLUGIN_API int plug_detach(void);
PLUGIN_API int plug_index(void);
PLUGIN_API int plug_calls(void);
PLUGIN_API int plug_init_vendored(void);
PLUGIN_API int plug_teardown_vendored(void);

static struct ossl_proc_module *scope;
static int ex_index = -1;
static int calls;

static ERR_STRING_DATA strings[] = {
	{ ERR_PACK(0, 0, 1), "tlsplug: something went wrong" },
	{ 0, NULL },
};

static void
plug_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
	  void *argp)
{
	(void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
	if (ptr)
		calls++;
}

static void
plug_info(const SSL *ssl, int where, int ret)
{
	(void)ssl, (void)where, (void)ret;
	calls++;
}

static int
plug_verify(int ok, X509_STORE_CTX *store)
{
	(void)store;
	calls++;
	return ok;
}

static void
plug_msg(int write_p, int version, int content_type, const void *buf,
	 size_t len, SSL *ssl, void *arg)
{
	(void)write_p, (void)version, (void)content_type, (void)buf;
	(void)len, (void)ssl, (void)arg;
	calls++;
}

static int
attach_raw(SSL_CTX *ctx)
{
	ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, plug_free);
	SSL_CTX_set_info_callback(ctx, plug_info);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, plug_verify);
	SSL_CTX_set_msg_callback(ctx, plug_msg);
	return ex_index < 0 ? -1 : 0;
}

static int
attach_scoped(SSL_CTX *ctx)
{
	int lib = ERR_get_next_error_library();

	scope = ossl_proc_module_open("tlsplug");
	if (!scope)
		return -1;
	ex_index = ossl_proc_module_ex_new_index(scope, CRYPTO_EX_INDEX_SSL,
						 0, NULL, NULL, NULL,
						 plug_free);
	if (ex_index < 0 ||
	    ossl_proc_module_set_info_callback(scope, ctx, plug_info) ||
	    ossl_proc_module_set_verify(scope, ctx, SSL_VERIFY_PEER,
					plug_verify) ||
	    ossl_proc_module_set_msg_callback(scope, ctx, plug_msg) ||
	    ossl_proc_module_load_strings(scope, lib, strings))
		return -1;
	return 0;
}

int
plug_attach(SSL_CTX *ctx, int scoped)
{
	return scoped ? attach_scoped(ctx) : attach_raw(ctx);
}

int
plug_detach(void)
{
	int rc = scope ? ossl_proc_module_close(scope) : 0;

	scope = NULL;
	return rc;
}

int
plug_index(void)
{
	return ex_index;
}

int
plug_calls(void)
{
	return calls;
}

/* Only meaningful in the vendored build: this plugin's own copy. */
int
plug_init_vendored(void)
{
	return ossl_proc_init(NULL);
}

int
plug_teardown_vendored(void)
{
	return ossl_proc_teardown();
}
