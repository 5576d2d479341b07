/* (p) PSK callbacks: the client's, which TLS 1.3 calls at every client
 * hello (no PSK offered: 0), and the server's. */
#include "plugin.h"

static int calls;

static unsigned int
on_psk_client(SSL *ssl, const char *hint, char *identity,
	      unsigned int max_identity_len, unsigned char *psk,
	      unsigned int max_psk_len)
{
	(void)ssl, (void)hint, (void)identity, (void)max_identity_len;
	(void)psk, (void)max_psk_len;
	calls++;
	return 0;
}

static unsigned int
on_psk_server(SSL *ssl, const char *identity, unsigned char *psk,
	      unsigned int max_psk_len)
{
	(void)ssl, (void)identity, (void)psk, (void)max_psk_len;
	calls++;
	return 0;
}

int
plug_register(SSL_CTX *client, SSL_CTX *server, int times)
{
	for (int i = 0; i < times; i++) {
		SSL_CTX_set_psk_client_callback(client, on_psk_client);
		SSL_CTX_set_psk_server_callback(server, on_psk_server);
	}
	return 0;
}
