/* (b) An info callback that lives in the plugin's own dependency. */
#include "plugin.h"

void dep_info(const SSL *ssl, int where, int ret);

int
plug_register(SSL_CTX *client, SSL_CTX *server, int times)
{
	for (int i = 0; i < times; i++) {
		SSL_CTX_set_info_callback(client, dep_info);
		SSL_CTX_set_info_callback(server, dep_info);
	}
	return 0;
}
