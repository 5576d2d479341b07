/* (l) The other per-SSL setters: a verify callback on the client's
 * connection, a message callback on the server's. */
#include "plugin.h"

static int calls;

static int
on_verify(int ok, X509_STORE_CTX *store)
{
	(void)store;
	calls++;
	return ok;
}

static void
on_msg(int write_p, int version, int type, const void *buf, size_t len,
       SSL *ssl, void *arg)
{
	(void)write_p, (void)version, (void)type, (void)buf, (void)len;
	(void)ssl, (void)arg;
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
		SSL_set_verify(client, SSL_VERIFY_PEER, on_verify);
		SSL_set_msg_callback(server, on_msg);
	}
	return 0;
}
