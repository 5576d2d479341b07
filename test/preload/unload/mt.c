/*
 * (n) A callback still running in another thread while its object is
 * being unloaded (mt-host.c).  The server's info callback, at its first
 * call, tells the host it is in flight, waits for the destructor (so
 * dlclose() has started), then waits a bounded time for the host to say
 * dlclose() returned: without osslproc-run that comes, and the callback
 * goes on in unmapped code; with it, dlclose() cannot return before the
 * callback did.  The destructor frees a context of the plugin's own,
 * with a callback of its own on it: OpenSSL called from a destructor
 * while the close waits.  The callback calls an interposed getter for
 * the first time while the close waits for it (with the loader's lock
 * held).
 */
#include <poll.h>
#include <stdatomic.h>
#include <unistd.h>

#include "plugin.h"

static int in_flight = -1, closing_r = -1, closing_w = -1, after = -1;
static int done = -1;
static atomic_int first = 1;
static SSL_CTX *own;

PLUGIN_API void plug_mt(const int fds[5]);

void
plug_mt(const int fds[5])
{
	in_flight = fds[0];
	closing_r = fds[1];
	closing_w = fds[2];
	after = fds[3];
	done = fds[4];
}

static void
on_info(const SSL *ssl, int where, int ret)
{
	struct pollfd p = { .fd = after, .events = POLLIN };
	char c = 'x';

	(void)where, (void)ret;
	if (!atomic_exchange(&first, 0))
		return;
	if (write(in_flight, &c, 1) != 1 || read(closing_r, &c, 1) != 1)
		return;
	/* A plugin chaining to the previous callback, with dlclose() under
	 * way: the first call of this interposed getter in the process. */
	(void)SSL_CTX_sess_get_get_cb(SSL_get_SSL_CTX(ssl));
	/* 1 s is not a race being hidden: under osslproc-run the host
	 * cannot write before this returns, so this always times out. */
	(void)poll(&p, 1, 1000);
	(void)!write(done, &c, 1);
}

int
plug_register(SSL_CTX *client, SSL_CTX *server, int times)
{
	(void)client, (void)times;
	own = SSL_CTX_new(TLS_method());
	if (!own)
		return -1;
	SSL_CTX_set_info_callback(own, on_info);
	SSL_CTX_set_info_callback(server, on_info);
	return 0;
}

__attribute__((destructor)) static void
unload(void)
{
	char c = 'x';

	SSL_CTX_free(own);
	(void)!write(closing_w, &c, 1);
}
