/* (c) ex_data indexes whose free function is in the plugin: on SSL
 * (through the SSL_get_ex_new_index macro) and on SSL_CTX (directly).
 * OpenSSL calls a free function for every object freed, set or not. */
#include "plugin.h"

static int frees;

static void
on_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
	void *argp)
{
	(void)parent, (void)ptr, (void)ad, (void)idx, (void)argl, (void)argp;
	frees++;
}

int
plug_register(SSL_CTX *client, SSL_CTX *server, int times)
{
	(void)client, (void)server;
	for (int i = 0; i < times; i++) {
		if (SSL_get_ex_new_index(0, NULL, NULL, NULL, on_free) < 0 ||
		    CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL_CTX, 0, NULL,
					    NULL, NULL, on_free) < 0)
			return -1;
	}
	return 0;
}
