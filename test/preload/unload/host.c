/*
 * A plugin host that knows nothing of osslproc: it loads a plugin with
 * dlopen, lets it register with OpenSSL (on the contexts, and on one
 * connection not yet made when the plugin sets per-SSL callbacks),
 * handshakes once with the plugin loaded, unloads it, then uses OpenSSL
 * as any host goes on doing: handshakes (callbacks; the connection the
 * plugin saw among them), SSL_free (ex_data free functions),
 * ERR_print_errors (error strings), exit (atexit handlers).  Without osslproc-run each case dies of SIGSEGV in OpenSSL;
 * with it, it exits 0.
 *
 *   unload-host PLUGIN [CYCLES [TIMES]]
 *
 * CYCLES load/unload rounds (default 1), each plugin registration made
 * TIMES times (default 1).  With more than 10 cycles it prints the
 * growth of the resident set from round 10 to the last ("rss-growth-kb
 * N"), which test-unload.sh bounds.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/tls-util.h"

typedef int (*register_fn)(SSL_CTX *client, SSL_CTX *server, int times);
typedef int (*register_ssl_fn)(SSL *client, SSL *server, int times);

static long
rss_kb(void)
{
	char line[256];
	long kb = -1;
	FILE *f = fopen("/proc/self/status", "r");

	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, "VmRSS:", 6))
			kb = strtol(line + 6, NULL, 10);
	if (f)
		fclose(f);
	return kb;
}

/* Let the plugin of @h register on the contexts, and on @conn when it
 * sets per-SSL callbacks: the error library it used, or -1. */
static int
plugin_register(void *h, SSL_CTX *client, SSL_CTX *server,
		struct tls_conn *conn, int times)
{
	register_fn reg = (register_fn)dlsym(h, "plug_register");
	register_ssl_fn reg_ssl = (register_ssl_fn)dlsym(h,
							 "plug_register_ssl");
	int lib = reg ? reg(client, server, times) : -1;

	if (lib >= 0 && reg_ssl && reg_ssl(conn->client, conn->server, times))
		lib = -1;
	return lib;
}

/* Load @path, let it register, handshake while it is loaded, unload it:
 * the error library it used. */
static int
load_register_unload(const char *path, SSL_CTX *client, SSL_CTX *server,
		     struct tls_conn *conn, int times)
{
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	int lib;

	if (!h) {
		fprintf(stderr, "unload-host: %s\n", dlerror());
		return -1;
	}
	lib = plugin_register(h, client, server, conn, times);
	if (lib >= 0 && tls_handshake(client, server)) {
		fprintf(stderr, "unload-host: handshake with the plugin "
			"loaded failed\n");
		lib = -1;
	}
	if (dlclose(h)) {
		fprintf(stderr, "unload-host: dlclose: %s\n", dlerror());
		return -1;
	}
	return lib;
}

/* What the host does once the plugin is gone. */
static int
use_openssl(SSL_CTX *client, SSL_CTX *server, struct tls_conn *conn,
	    int lib)
{
	BIO *out = BIO_new(BIO_s_mem());
	int rc = tls_pair_handshake(conn) || tls_exchange(conn);

	tls_conn_free(conn);
	if (rc) {
		fprintf(stderr, "unload-host: handshake of the connection "
			"made before the unload failed\n");
		return -1;
	}
	if (tls_handshake(client, server)) {
		fprintf(stderr, "unload-host: handshake failed\n");
		return -1;
	}
	if (lib > 0)
		ERR_raise(lib, 1);
	ERR_print_errors(out);
	BIO_free(out);
	return 0;
}

int
main(int argc, char **argv)
{
	int cycles = argc > 2 ? atoi(argv[2]) : 1;
	int times = argc > 3 ? atoi(argv[3]) : 1;
	struct tls_pki *pki = tls_pki_new();
	SSL_CTX *client, *server;
	long rss10 = 0;

	if (argc < 2 || !pki) {
		fprintf(stderr, "usage: unload-host PLUGIN [CYCLES [TIMES]]\n");
		return 2;
	}
	client = tls_client_ctx(pki);
	server = tls_server_ctx(pki);
	for (int i = 0; i < cycles; i++) {
		struct tls_conn conn;
		int lib = -1;

		if (!tls_pair_new(client, server, &conn))
			lib = load_register_unload(argv[1], client, server,
						   &conn, times);
		if (lib < 0 || use_openssl(client, server, &conn, lib))
			return 1;
		if (i == 9)
			rss10 = rss_kb();
	}
	if (cycles > 10)
		printf("rss-growth-kb %ld\n", rss_kb() - rss10);
	SSL_CTX_free(client);
	SSL_CTX_free(server);
	tls_pki_free(pki);
	return 0;
}
