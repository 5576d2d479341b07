/* (f) All of them: its own info callback on the client, its dependency's
 * on the server, ex_data free functions, error strings, an atexit
 * handler (3.x). */
#include "plugin.h"

void dep_info(const SSL *ssl, int where, int ret);

static int calls;

static ERR_STRING_DATA strings[] = {
	{ 0, "unload-all plugin" },
	{ 0, "the plugin's error" },
	{ 0, NULL },
};

static void
on_info(const SSL *ssl, int where, int ret)
{
	(void)ssl, (void)where, (void)ret;
	calls++;
}

static void
on_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
	void *argp)
{
	(void)parent, (void)ptr, (void)ad, (void)idx, (void)argl, (void)argp;
	calls++;
}

static void
on_exit_handler(void)
{
	calls++;
}

static int
register_once(SSL_CTX *client, SSL_CTX *server, int lib)
{
	SSL_CTX_set_info_callback(client, on_info);
	SSL_CTX_set_info_callback(server, dep_info);
	if (SSL_get_ex_new_index(0, NULL, NULL, NULL, on_free) < 0 ||
	    SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, on_free) < 0 ||
	    !ERR_load_strings(lib, strings))
		return -1;
#if OPENSSL_VERSION_MAJOR < 4
	if (!OPENSSL_atexit(on_exit_handler))
		return -1;
#else
	(void)on_exit_handler;
#endif
	return 0;
}

int
plug_register(SSL_CTX *client, SSL_CTX *server, int times)
{
	static int lib;

	if (!lib)
		lib = ERR_get_next_error_library();
	strings[0].error = ERR_PACK(lib, 0, 0);
	strings[1].error = ERR_PACK(lib, 0, 1);
	for (int i = 0; i < times; i++)
		if (register_once(client, server, lib))
			return -1;
	return lib;
}
