/*
 * A host that unloads a plugin while another thread is inside one of
 * its callbacks (mt.c): the callback must have returned by the time
 * dlclose() does.
 *
 *   unload-mt-host PLUGIN
 *
 * Exit 0: the callback finished before dlclose() returned; a signal
 * (SIGSEGV): it had not, and ran on in the unmapped object; 3: it had
 * not, and did not crash.  An alarm bounds it.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#include "common/tls-util.h"

typedef int (*register_fn)(SSL_CTX *client, SSL_CTX *server, int times);
typedef void (*mt_fn)(const int fds[5]);

struct run {
	SSL_CTX *client, *server;
	int rc;
};

static void *
handshake(void *arg)
{
	struct run *r = arg;

	r->rc = tls_handshake(r->client, r->server);
	return NULL;
}

/* Pipes: in flight (plugin to host), closing (destructor to callback),
 * after (host to callback), done (callback to host, non-blocking). */
static int
pipes(int fds[5], int ends[8])
{
	for (int i = 0; i < 4; i++)
		if (pipe(ends + 2 * i))
			return -1;
	fds[0] = ends[1];
	fds[1] = ends[2];
	fds[2] = ends[3];
	fds[3] = ends[4];
	fds[4] = ends[7];
	return fcntl(ends[6], F_SETFL, O_NONBLOCK);
}

static void *
load(const char *path, struct run *r, const int fds[5])
{
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	register_fn reg = h ? (register_fn)dlsym(h, "plug_register") : NULL;
	mt_fn mt = h ? (mt_fn)dlsym(h, "plug_mt") : NULL;

	if (!reg || !mt) {
		fprintf(stderr, "unload-mt-host: %s\n", dlerror());
		return NULL;
	}
	mt(fds);
	return reg(r->client, r->server, 1) ? NULL : h;
}

int
main(int argc, char **argv)
{
	struct tls_pki *pki = tls_pki_new();
	int fds[5], ends[8];
	struct run r;
	pthread_t t;
	char c = 'x';
	void *h;

	alarm(20);
	if (argc != 2 || !pki || pipes(fds, ends)) {
		fprintf(stderr, "usage: unload-mt-host PLUGIN\n");
		return 2;
	}
	r = (struct run){ tls_client_ctx(pki), tls_server_ctx(pki), -1 };
	h = load(argv[1], &r, fds);
	if (!h || pthread_create(&t, NULL, handshake, &r))
		return 1;
	if (read(ends[0], &c, 1) != 1)
		return 1;
	/* The callback is in flight: it waits for the destructor. */
	if (dlclose(h)) {
		fprintf(stderr, "unload-mt-host: dlclose: %s\n", dlerror());
		return 1;
	}
	(void)!write(ends[5], &c, 1);
	if (read(ends[6], &c, 1) != 1) {
		/* It goes on in the unmapped object: what the user sees is
		 * the crash that follows. */
		fprintf(stderr, "unload-mt-host: dlclose() returned with "
			"the callback still running\n");
		pthread_join(t, NULL);
		return 3;
	}
	pthread_join(t, NULL);
	if (r.rc) {
		fprintf(stderr, "unload-mt-host: handshake failed\n");
		return 1;
	}
	SSL_CTX_free(r.client);
	SSL_CTX_free(r.server);
	tls_pki_free(pki);
	return 0;
}
