/*
 * A program that knows nothing of osslproc (it links only OpenSSL), run
 * by test-preload.sh with and without osslproc-run.  Each mode exits 0
 * when what it checks holds and says what failed otherwise:
 *
 *   tls       real handshakes over memory BIOs
 *   memfn     installs its own memory functions first, as OpenSIPS or
 *             Kamailio do (every other block only 8-byte aligned), then
 *             handshakes: its functions must be the ones called
 *   memfn-shared  the same, a shared backend: checked in a child
 *   verify CN changes SSL_CERT_FILE after start; the default verify
 *             paths must still hold the CA named CN (the start's file)
 *   badfree   frees one block twice
 *   fork      threads do handshakes, are joined, then the main thread
 *             forks children that handshake too
 *   fork-threads  the same, forking while the threads run
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "common/tls-util.h"

static int
fail(const char *what)
{
	fprintf(stderr, "plain: %s\n", what);
	return 1;
}

static int
handshakes(int n)
{
	struct tls_pki *pki = tls_pki_new();
	SSL_CTX *s = pki ? tls_server_ctx(pki) : NULL;
	SSL_CTX *c = pki ? tls_client_ctx(pki) : NULL;
	int ok = s && c && tls_handshakes(c, s, n) == n;

	SSL_CTX_free(s);
	SSL_CTX_free(c);
	tls_pki_free(pki);
	return ok ? 0 : fail("handshakes failed");
}

/* ---- memfn ---- */

static atomic_ulong my_mallocs, my_frees;

static void *
my_malloc(size_t n, const char *file, int line)
{
	unsigned long k = atomic_fetch_add(&my_mallocs, 1);
	char *base = malloc(n + 32), *p;

	(void)file;
	(void)line;
	if (!base)
		return NULL;
	p = base + (k & 1 ? 8 : 16);
	((char **)p)[-1] = base;
	return p;
}

static void
my_free(void *p, const char *file, int line)
{
	(void)file;
	(void)line;
	if (!p)
		return;
	atomic_fetch_add(&my_frees, 1);
	free(((char **)p)[-1]);
}

static void *
my_realloc(void *p, size_t n, const char *file, int line)
{
	void *np;

	if (!p)
		return my_malloc(n, file, line);
	if (!n) {
		my_free(p, file, line);
		return NULL;
	}
	/* The tests never grow a block through the program's realloc
	 * under osslproc: it moves blocks itself. */
	np = my_malloc(n, file, line);
	if (np)
		memcpy(np, p, n);
	my_free(p, file, line);
	return np;
}

static int
memfn_child(void)
{
	if (handshakes(3))
		return 1;
	if (atomic_load(&my_mallocs) < 100)
		return fail("the program's malloc was hardly called in the "
			    "child");
	return 0;
}

/* With @shared the functions are a shared backend, which osslproc uses
 * after the first fork: the check is in a forked child. */
static int
memfn(int shared)
{
	pid_t pid;
	int st;

	if (!CRYPTO_set_mem_functions(my_malloc, my_realloc, my_free))
		return fail("CRYPTO_set_mem_functions refused");
	if (handshakes(3))
		return 1;
	if (shared) {
		pid = fork();
		if (pid == 0)
			exit(memfn_child());
		if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
			return fail("the child did not exit");
		return WEXITSTATUS(st);
	}
	if (atomic_load(&my_mallocs) < 100)
		return fail("the program's malloc was hardly called");
	printf("memfn: %lu mallocs, %lu frees through the program's "
	       "functions\n", atomic_load(&my_mallocs),
	       atomic_load(&my_frees));
	return 0;
}

/* ---- verify ---- */

/* Whether @x's subject common name is @cn. */
static int
cn_is(X509 *x, const char *cn)
{
	const X509_NAME *name = X509_get_subject_name(x);
	int i = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
	const ASN1_STRING *s;

	if (i < 0)
		return 0;
	s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
	return (size_t)ASN1_STRING_length(s) == strlen(cn) &&
	       !memcmp(ASN1_STRING_get0_data(s), cn, strlen(cn));
}

/* OpenSSL 4.0 deprecates X509_STORE_get0_objects(): a copy there. */
static int
store_has(X509_STORE *st, const char *cn)
{
#if OPENSSL_VERSION_NUMBER >= 0x30300000L
	STACK_OF(X509_OBJECT) *objs = X509_STORE_get1_objects(st);
#else
	STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(st);
#endif
	int found = 0;

	for (int i = 0; !found && i < sk_X509_OBJECT_num(objs); i++) {
		X509 *x = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, i));

		found = x && cn_is(x, cn);
	}
#if OPENSSL_VERSION_NUMBER >= 0x30300000L
	sk_X509_OBJECT_pop_free(objs, X509_OBJECT_free);
#endif
	return found;
}

static int
verify(const char *cn)
{
	SSL_CTX *ctx;
	X509_STORE *st;
	int rc = 0;

	/* Another part of the program changes the environment. */
	setenv("SSL_CERT_FILE", "/nonexistent/changed-after-start.pem", 1);
	ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx || SSL_CTX_set_default_verify_paths(ctx) != 1)
		return fail("SSL_CTX_set_default_verify_paths failed");
	if (!store_has(SSL_CTX_get_cert_store(ctx), cn))
		rc = fail("SSL_CTX_set_default_verify_paths: the start's CA "
			  "is not in the store");
	SSL_CTX_free(ctx);
	st = X509_STORE_new();
	if (!st || X509_STORE_set_default_paths(st) != 1)
		rc = fail("X509_STORE_set_default_paths failed");
	else if (!store_has(st, cn))
		rc = fail("X509_STORE_set_default_paths: the start's CA is "
			  "not in the store");
	X509_STORE_free(st);
	return rc;
}

/* ---- badfree ---- */

static int
badfree(void)
{
	char *p = OPENSSL_malloc(64);

	memset(p, 1, 64);
	OPENSSL_free(p);
	OPENSSL_free(p);
	return 0;
}

/* ---- fork ---- */

#define FORK_THREADS 3
#define FORK_CHILDREN 10

static atomic_bool stop;

static void *
busy(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop))
		if (handshakes(1))
			return (void *)1;
	return NULL;
}

/* Children forked while the threads run, with @threads; else after
 * they ran and were joined. */
static int
forks(int threads)
{
	pthread_t t[FORK_THREADS];
	int rc = 0;

	if (handshakes(1))
		return 1;
	for (int i = 0; i < FORK_THREADS; i++)
		pthread_create(&t[i], NULL, busy, NULL);
	if (!threads) {
		usleep(200 * 1000);
		atomic_store(&stop, true);
		for (int i = 0; i < FORK_THREADS; i++)
			pthread_join(t[i], NULL);
	}
	for (int i = 0; i < FORK_CHILDREN && !rc; i++) {
		pid_t pid = fork();
		int st;

		if (pid == 0) {
			alarm(30);
			exit(handshakes(2));
		}
		if (pid < 0 || waitpid(pid, &st, 0) != pid ||
		    !WIFEXITED(st) || WEXITSTATUS(st))
			rc = fail("a forked child failed or hung");
	}
	if (!threads)
		return rc;
	atomic_store(&stop, true);
	for (int i = 0; i < FORK_THREADS; i++) {
		void *r;

		pthread_join(t[i], &r);
		if (r)
			rc = fail("a thread's handshake failed");
	}
	return rc;
}

int
main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";

	if (!strcmp(mode, "tls"))
		return handshakes(5);
	if (!strcmp(mode, "memfn"))
		return memfn(0);
	if (!strcmp(mode, "memfn-shared"))
		return memfn(1);
	if (!strcmp(mode, "verify") && argc > 2)
		return verify(argv[2]);
	if (!strcmp(mode, "badfree"))
		return badfree();
	if (!strcmp(mode, "fork"))
		return forks(0);
	if (!strcmp(mode, "fork-threads"))
		return forks(1);
	fprintf(stderr, "usage: plain tls|memfn|memfn-shared|verify CN|badfree|fork|fork-threads\n");
	return 2;
}
