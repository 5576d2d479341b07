/* (j) A certificate status callback on the server
 * (SSL_CTX_callback_ctrl), which the client asks for from now on. */
#include <openssl/tls1.h>

#include "plugin.h"

static int seen;

/* No OCSP response to staple: none is sent. */
static int
on_status(SSL *ssl, void *arg)
{
	(void)ssl;
	if (arg != &seen)
		return SSL_TLSEXT_ERR_ALERT_FATAL;
	seen++;
	return SSL_TLSEXT_ERR_NOACK;
}

int
plug_register(SSL_CTX *client, SSL_CTX *server, int times)
{
	SSL_CTX_set_tlsext_status_type(client, TLSEXT_STATUSTYPE_ocsp);
	for (int i = 0; i < times; i++) {
		SSL_CTX_set_tlsext_status_cb(server, on_status);
		SSL_CTX_set_tlsext_status_arg(server, &seen);
	}
	return 0;
}
