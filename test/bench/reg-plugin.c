/*
 * reg-bench's plugin: an info callback that lives in a dlopen'ed object,
 * so that under osslproc-run a registration of it belongs to this
 * object's implicit scope.  It links only OpenSSL, as a plugin that does
 * not know osslproc does.
 */
#include <openssl/ssl.h>

static int calls;

__attribute__((visibility("default"))) void
reg_plugin_info(const SSL *ssl, int where, int ret);

__attribute__((visibility("default"))) void
reg_plugin_info(const SSL *ssl, int where, int ret)
{
	(void)ssl, (void)where, (void)ret;
	calls++;
}
