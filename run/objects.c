/*
 * OSSLPROC_SHARED_OBJECTS=1: for programs that share live SSL objects
 * between their processes and serialise access to each (Kamailio,
 * OpenSIPS: an SSL made by the worker that first read a connection, used
 * by whichever worker reads it next, freed by the connection manager).
 * SSL_free() goes to the process that made the SSL
 * (ossl_proc_free_by_owner()), and the calls such a program makes on its
 * connections are the drain points where a process destroys what others
 * handed back to it: before the call, so never inside OpenSSL.  Without
 * the variable every one of them forwards at once.
 */
#include <dlfcn.h>
#include <stdbool.h>

#include <openssl/ssl.h>

#include "osslproc.h"

#include "preload-int.h"

static bool on;

static void (*real_free)(SSL *);
static SSL *(*real_new)(SSL_CTX *);
static int (*real_accept)(SSL *);
static int (*real_connect)(SSL *);
static int (*real_do_handshake)(SSL *);
static int (*real_read)(SSL *, void *, int);
static int (*real_read_ex)(SSL *, void *, size_t, size_t *);
static int (*real_peek)(SSL *, void *, int);
static int (*real_write)(SSL *, const void *, int);
static int (*real_write_ex)(SSL *, const void *, size_t, size_t *);
static int (*real_shutdown)(SSL *);

#define RESOLVE(var, name) \
	(*(void **)&(var) = dlsym(RTLD_NEXT, name))

void
objects_resolve(void)
{
	RESOLVE(real_free, "SSL_free");
	RESOLVE(real_new, "SSL_new");
	RESOLVE(real_accept, "SSL_accept");
	RESOLVE(real_connect, "SSL_connect");
	RESOLVE(real_do_handshake, "SSL_do_handshake");
	RESOLVE(real_read, "SSL_read");
	RESOLVE(real_read_ex, "SSL_read_ex");
	RESOLVE(real_peek, "SSL_peek");
	RESOLVE(real_write, "SSL_write");
	RESOLVE(real_write_ex, "SSL_write_ex");
	RESOLVE(real_shutdown, "SSL_shutdown");
}

void
objects_start(void)
{
	on = true;
}

static inline void
drain(void)
{
	if (on)
		ossl_proc_drain();
}

static void
destroy_ssl(void *obj)
{
	real_free(obj);
}

/* An SSL another process made waits for it; an error (logged) leaves
 * it alive rather than destroyed by the wrong process. */
PRELOAD_EXPORT void
SSL_free(SSL *s)
{
	if (on)
		ossl_proc_free_by_owner(destroy_ssl, s);
	else
		real_free(s);
}

PRELOAD_EXPORT SSL *
SSL_new(SSL_CTX *ctx)
{
	drain();
	return real_new(ctx);
}

PRELOAD_EXPORT int
SSL_accept(SSL *s)
{
	drain();
	return real_accept(s);
}

PRELOAD_EXPORT int
SSL_connect(SSL *s)
{
	drain();
	return real_connect(s);
}

PRELOAD_EXPORT int
SSL_do_handshake(SSL *s)
{
	drain();
	return real_do_handshake(s);
}

PRELOAD_EXPORT int
SSL_read(SSL *s, void *buf, int num)
{
	drain();
	return real_read(s, buf, num);
}

PRELOAD_EXPORT int
SSL_read_ex(SSL *s, void *buf, size_t num, size_t *got)
{
	drain();
	return real_read_ex(s, buf, num, got);
}

PRELOAD_EXPORT int
SSL_peek(SSL *s, void *buf, int num)
{
	drain();
	return real_peek(s, buf, num);
}

PRELOAD_EXPORT int
SSL_write(SSL *s, const void *buf, int num)
{
	drain();
	return real_write(s, buf, num);
}

PRELOAD_EXPORT int
SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *put)
{
	drain();
	return real_write_ex(s, buf, num, put);
}

PRELOAD_EXPORT int
SSL_shutdown(SSL *s)
{
	drain();
	return real_shutdown(s);
}
