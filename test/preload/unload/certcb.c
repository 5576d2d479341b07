/* (i) A certificate callback on the server, and a certificate verify
 * callback on the client, each with its argument. */
#include <openssl/x509_vfy.h>

#include "plugin.h"

static int seen;

static int
on_cert(SSL *ssl, void *arg)
{
	(void)ssl;
	seen++;
	return arg == &seen;
}

static int
on_cert_verify(X509_STORE_CTX *store, void *arg)
{
	if (arg != &seen)
		return 0;
	seen++;
	return X509_verify_cert(store);
}

int
plug_register(SSL_CTX *client, SSL_CTX *server, int times)
{
	for (int i = 0; i < times; i++) {
		SSL_CTX_set_cert_cb(server, on_cert, &seen);
		SSL_CTX_set_cert_verify_callback(client, on_cert_verify,
						 &seen);
	}
	return 0;
}
