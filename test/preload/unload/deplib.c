/* The dependency of plugins (b) and (f): its info callback is what the
 * plugin registers, so its unmapping, not the plugin's, is the one that
 * matters. */
#include <openssl/ssl.h>

__attribute__((visibility("default"))) void dep_info(const SSL *ssl,
						      int where, int ret);

static int calls;

void
dep_info(const SSL *ssl, int where, int ret)
{
	(void)ssl, (void)where, (void)ret;
	calls++;
}
