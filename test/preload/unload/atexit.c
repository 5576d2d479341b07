/* (e) An OPENSSL_atexit() handler in the plugin (OpenSSL 3.x: 4.0 has
 * no OPENSSL_atexit), run by OPENSSL_cleanup() when the host exits. */
#include "plugin.h"

static int ran;

static void
on_exit_handler(void)
{
	ran++;
}

int
plug_register(SSL_CTX *client, SSL_CTX *server, int times)
{
	(void)client, (void)server;
#if OPENSSL_VERSION_MAJOR < 4
	for (int i = 0; i < times; i++)
		if (!OPENSSL_atexit(on_exit_handler))
			return -1;
#else
	(void)times, (void)on_exit_handler;
#endif
	return 0;
}
