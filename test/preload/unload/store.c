/* (o) A verify callback on the client's certificate store
 * (X509_STORE_set_verify_cb): every verification copies it, so
 * osslproc-run keeps the plugin loaded. */
#include <openssl/x509_vfy.h>

#include "plugin.h"

static int calls;

static int
on_verify(int ok, X509_STORE_CTX *store)
{
	(void)store;
	calls++;
	return ok;
}

int
plug_register(SSL_CTX *client, SSL_CTX *server, int times)
{
	(void)server;
	for (int i = 0; i < times; i++)
		X509_STORE_set_verify_cb(SSL_CTX_get_cert_store(client),
					 on_verify);
	return 0;
}
