/* (g) A servername callback (SSL_CTX_callback_ctrl), its argument set
 * apart through SSL_CTX_ctrl, before the callback. */
#include "plugin.h"

static int seen;

/* A wrong argument fails the handshake made while the plugin is loaded. */
static int
on_servername(SSL *ssl, int *al, void *arg)
{
	(void)ssl, (void)al;
	if (arg != &seen)
		return SSL_TLSEXT_ERR_ALERT_FATAL;
	seen++;
	return SSL_TLSEXT_ERR_OK;
}

int
plug_register(SSL_CTX *client, SSL_CTX *server, int times)
{
	(void)client;
	for (int i = 0; i < times; i++) {
		SSL_CTX_set_tlsext_servername_arg(server, &seen);
		SSL_CTX_set_tlsext_servername_callback(server, on_servername);
	}
	return 0;
}
