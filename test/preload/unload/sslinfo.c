/* (k) An info callback set on one connection (SSL_set_info_callback),
 * both ends; the client's end duplicated and freed (SSL_dup). */
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

/* A copy of a connection with our callback on it (SSL_dup() copies the
 * info callback, and every ex_data pointer), freed at once. */
static int
dup_free(SSL *ssl)
{
	SSL *copy = SSL_dup(ssl);

	if (!copy)
		return -1;
	SSL_free(copy);
	return 0;
}

int
plug_register_ssl(SSL *client, SSL *server, int times)
{
	for (int i = 0; i < times; i++) {
		SSL_set_info_callback(client, on_info);
		SSL_set_info_callback(server, on_info);
	}
	return dup_free(client);
}
