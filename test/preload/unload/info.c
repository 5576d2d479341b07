/* (a) An info callback, in the plugin, on both contexts. */
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
	for (int i = 0; i < times; i++) {
		SSL_CTX_set_info_callback(client, on_info);
		SSL_CTX_set_info_callback(server, on_info);
	}
	return 0;
}
