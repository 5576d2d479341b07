/*
 * A TLS plugin as a host would load it: it registers an ex_data index with
 * a free function, error strings and every SSL_CTX callback osslproc
 * scopes (on the client and server contexts, so that each one fires in a
 * handshake), either through a module scope or directly with OpenSSL (to
 * show the crash the scope prevents).  Built twice: against the shared
 * libosslproc, and with its own vendored static copy.
 */
#include <string.h>

#include <osslproc.h>

#define PLUGIN_API __attribute__((visibility("default")))

/* Which callbacks ran, one bit each. */
enum { K_FREE, K_INFO, K_VERIFY, K_MSG, K_KEYLOG, K_ALPN, K_SERVERNAME,
       K_SESS_NEW, K_SESS_REMOVE, K_CLIENT_CERT, K_PSK_CLIENT, K_PSK_SERVER,
       K_COUNT };

PLUGIN_API int plug_attach(SSL_CTX *client, SSL_CTX *server, int scoped);
PLUGIN_API int plug_detach(void);
PLUGIN_API int plug_index(void);
PLUGIN_API unsigned plug_seen(void);
PLUGIN_API unsigned plug_all(void);
PLUGIN_API int plug_init_vendored(void);
PLUGIN_API int plug_teardown_vendored(void);

static struct ossl_proc_module *scope;
static int ex_index = -1;
static unsigned seen;

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
		seen |= 1u << K_FREE;
}

static void
on_info(const SSL *ssl, int where, int ret)
{
	(void)ssl, (void)where, (void)ret;
	seen |= 1u << K_INFO;
}

static int
on_verify(int ok, X509_STORE_CTX *store)
{
	(void)store;
	seen |= 1u << K_VERIFY;
	return ok;
}

static void
on_msg(int write_p, int version, int content_type, const void *buf,
       size_t len, SSL *ssl, void *arg)
{
	(void)write_p, (void)version, (void)content_type, (void)buf;
	(void)len, (void)ssl, (void)arg;
	seen |= 1u << K_MSG;
}

static void
on_keylog(const SSL *ssl, const char *line)
{
	(void)ssl, (void)line;
	seen |= 1u << K_KEYLOG;
}

static int
on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
	const unsigned char *in, unsigned int inlen, void *arg)
{
	(void)ssl, (void)out, (void)outlen, (void)in, (void)inlen;
	if (arg == &seen)
		seen |= 1u << K_ALPN;
	return SSL_TLSEXT_ERR_NOACK;
}

static int
on_servername(SSL *ssl, int *al, void *arg)
{
	(void)ssl, (void)al;
	if (arg == &seen)
		seen |= 1u << K_SERVERNAME;
	return SSL_TLSEXT_ERR_OK;
}

static int
on_sess_new(SSL *ssl, SSL_SESSION *sess)
{
	(void)ssl, (void)sess;
	seen |= 1u << K_SESS_NEW;
	return 0;
}

static void
on_sess_remove(SSL_CTX *ctx, SSL_SESSION *sess)
{
	(void)ctx, (void)sess;
	seen |= 1u << K_SESS_REMOVE;
}

static int
on_client_cert(SSL *ssl, X509 **x509, EVP_PKEY **pkey)
{
	(void)ssl, (void)x509, (void)pkey;
	seen |= 1u << K_CLIENT_CERT;
	return 0;
}

static unsigned int
on_psk_client(SSL *ssl, const char *hint, char *identity,
	      unsigned int max_identity_len, unsigned char *psk,
	      unsigned int max_psk_len)
{
	(void)ssl, (void)hint;
	seen |= 1u << K_PSK_CLIENT;
	/* Offer a PSK the server does not know: it declines, and the
	 * handshake goes on with certificates. */
	if (max_identity_len < 5 || max_psk_len < 32)
		return 0;
	memcpy(identity, "plug", 5);
	memset(psk, 0x42, 32);
	return 32;
}

static unsigned int
on_psk_server(SSL *ssl, const char *identity, unsigned char *psk,
	      unsigned int max_psk_len)
{
	(void)ssl, (void)identity, (void)psk, (void)max_psk_len;
	seen |= 1u << K_PSK_SERVER;
	return 0;
}

static int
attach_raw(SSL_CTX *client, SSL_CTX *server)
{
	ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, plug_free);
	SSL_CTX_set_info_callback(client, on_info);
	SSL_CTX_set_verify(client, SSL_VERIFY_PEER, on_verify);
	SSL_CTX_set_msg_callback(client, on_msg);
	SSL_CTX_set_keylog_callback(client, on_keylog);
	SSL_CTX_set_alpn_select_cb(server, on_alpn, &seen);
	SSL_CTX_set_tlsext_servername_callback(server, on_servername);
	SSL_CTX_set_tlsext_servername_arg(server, &seen);
	SSL_CTX_sess_set_new_cb(client, on_sess_new);
	SSL_CTX_sess_set_remove_cb(server, on_sess_remove);
	SSL_CTX_set_client_cert_cb(client, on_client_cert);
	SSL_CTX_set_psk_client_callback(client, on_psk_client);
	SSL_CTX_set_psk_server_callback(server, on_psk_server);
	return ex_index < 0 ? -1 : 0;
}

static int
attach_scoped(SSL_CTX *client, SSL_CTX *server)
{
	struct ossl_proc_module *m = ossl_proc_module_open("tlsplug");
	int lib = ERR_get_next_error_library();

	scope = m;
	if (!m)
		return -1;
	ex_index = ossl_proc_module_ex_new_index(m, CRYPTO_EX_INDEX_SSL, 0,
						 NULL, NULL, NULL, plug_free);
	if (ex_index < 0 ||
	    ossl_proc_module_set_info_callback(m, client, on_info) ||
	    ossl_proc_module_set_verify(m, client, SSL_VERIFY_PEER,
					on_verify) ||
	    ossl_proc_module_set_msg_callback(m, client, on_msg) ||
	    ossl_proc_module_set_keylog_callback(m, client, on_keylog) ||
	    ossl_proc_module_set_alpn_select_cb(m, server, on_alpn, &seen) ||
	    ossl_proc_module_set_servername_callback(m, server,
						     on_servername, &seen) ||
	    ossl_proc_module_sess_set_new_cb(m, client, on_sess_new) ||
	    ossl_proc_module_sess_set_remove_cb(m, server, on_sess_remove) ||
	    ossl_proc_module_set_client_cert_cb(m, client, on_client_cert) ||
	    ossl_proc_module_set_psk_client_callback(m, client,
						     on_psk_client) ||
	    ossl_proc_module_set_psk_server_callback(m, server,
						     on_psk_server) ||
	    ossl_proc_module_load_strings(m, lib, strings))
		return -1;
	return 0;
}

int
plug_attach(SSL_CTX *client, SSL_CTX *server, int scoped)
{
	return scoped ? attach_scoped(client, server)
		      : attach_raw(client, server);
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

unsigned
plug_seen(void)
{
	return seen;
}

unsigned
plug_all(void)
{
	return (1u << K_COUNT) - 1;
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
