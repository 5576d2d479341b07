/* (k) An info callback set on one connection (SSL_set_info_callback),
 * both ends. */
#include "plugin.h"

static int calls;

static void
on_info(const SSL *ssl, int where, int ret)
{
	(void)ssl, (void)where, (void)ret;
	calls++;
}

int
plug_register(SSL_CTX *client, SSL_CTX *server, int times)
{
	(void)client, (void)server, (void)times;
	return 0;
}

int
plug_register_ssl(SSL *client, SSL *server, int times)
{
	for (int i = 0; i < times; i++) {
		SSL_set_info_callback(client, on_info);
		SSL_set_info_callback(server, on_info);
	}
	return 0;
}
