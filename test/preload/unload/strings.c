/* (d) Error strings in the plugin's data: OpenSSL keeps pointers to
 * them (the table and the text) in its error string hash. */
#include "plugin.h"

static ERR_STRING_DATA strings[] = {
	{ 0, "unload-strings plugin" },
	{ 0, "the plugin's error" },
	{ 0, NULL },
};

int
plug_register(SSL_CTX *client, SSL_CTX *server, int times)
{
	static int lib;

	(void)client, (void)server;
	if (!lib)
		lib = ERR_get_next_error_library();
	strings[0].error = ERR_PACK(lib, 0, 0);
	strings[1].error = ERR_PACK(lib, 0, 1);
	for (int i = 0; i < times; i++)
		if (!ERR_load_strings(lib, strings))
			return -1;
	return lib;
}
