/* (h) A client hello callback, with its argument. */
#include "plugin.h"

static int seen;

static int
on_hello(SSL *ssl, int *al, void *arg)
{
	(void)ssl, (void)al;
	if (arg != &seen)
		return SSL_CLIENT_HELLO_ERROR;
	seen++;
	return SSL_CLIENT_HELLO_SUCCESS;
}

int
plug_register(SSL_CTX *client, SSL_CTX *server, int times)
{
	(void)client;
	for (int i = 0; i < times; i++)
		SSL_CTX_set_client_hello_cb(server, on_hello, &seen);
	return 0;
}
