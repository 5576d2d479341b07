/* The environment: read once at init, never written; CA paths resolved in
 * a documented order and loaded without getenv.  Built with ENV_INTERPOSE
 * (not under sanitizers), this executable also replaces getenv and
 * friends to count who calls them. */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/testlog.h"
#include "common/tls-util.h"

static SSL_CTX *shared_server;

#ifdef ENV_INTERPOSE
enum env_op { OP_GET, OP_SECURE_GET, OP_SET, OP_PUT, OP_UNSET, OP_COUNT };

/* Calls made from libosslproc, and from libcrypto/libssl. */
static atomic_int from_osslproc[OP_COUNT], from_openssl[OP_COUNT];

extern char **environ;

static void
count(enum env_op op, void *caller)
{
	Dl_info info;

	if (!dladdr(caller, &info) || !info.dli_fname)
		return;
	if (strstr(info.dli_fname, "libosslproc"))
		atomic_fetch_add(&from_osslproc[op], 1);
	else if (strstr(info.dli_fname, "libcrypto") ||
		 strstr(info.dli_fname, "libssl"))
		atomic_fetch_add(&from_openssl[op], 1);
}

/* A plain scan of environ: no dependency on the real getenv. */
static char *
scan(const char *name)
{
	size_t n = strlen(name);

	for (char **e = environ; e && *e; e++)
		if (!strncmp(*e, name, n) && (*e)[n] == '=')
			return *e + n + 1;
	return NULL;
}

char *
getenv(const char *name)
{
	count(OP_GET, __builtin_return_address(0));
	return scan(name);
}

char *
secure_getenv(const char *name)
{
	count(OP_SECURE_GET, __builtin_return_address(0));
	return getauxval(AT_SECURE) ? NULL : scan(name);
}

int
setenv(const char *name, const char *value, int overwrite)
{
	count(OP_SET, __builtin_return_address(0));
	return ((int (*)(const char *, const char *, int))dlsym(RTLD_NEXT,
		"setenv"))(name, value, overwrite);
}

int
putenv(char *string)
{
	count(OP_PUT, __builtin_return_address(0));
	return ((int (*)(char *))dlsym(RTLD_NEXT, "putenv"))(string);
}

int
unsetenv(const char *name)
{
	count(OP_UNSET, __builtin_return_address(0));
	return ((int (*)(const char *))dlsym(RTLD_NEXT, "unsetenv"))(name);
}
#endif

/* ---- fixtures: a PKI written to a temporary directory ---- */

static char dir[64];
static char ca_pem[128], other_pem[128], junk_pem[128];

static void
write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
}

/* The CA files must exist at init, and OpenSSL must not allocate in this
 * process before init: a child makes the two PKIs and writes them. */
static void
write_pkis(void)
{
	pid_t pid = fork();
	int status;

	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		struct tls_pki *a = tls_pki_new(), *b = tls_pki_new();
		char sub[128];
		int ok;

		snprintf(sub, sizeof(sub), "%s/other", dir);
		ok = a && b && !tls_pki_write(a, dir) && !tls_pki_write(b, sub);
		tls_pki_free(a);
		tls_pki_free(b);
		_exit(ok ? 0 : 1);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void
setup(void)
{
	char sub[128];

	snprintf(dir, sizeof(dir), "/tmp/osslproc-env-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(ca_pem, sizeof(ca_pem), "%s/ca.pem", dir);
	snprintf(other_pem, sizeof(other_pem), "%s/other/ca.pem", dir);
	snprintf(junk_pem, sizeof(junk_pem), "%s/junk.pem", dir);
	snprintf(sub, sizeof(sub), "%s/other", dir);
	ck_assert_int_eq(mkdir(sub, 0700), 0);
	write_file(junk_pem, "not a certificate\n");
	write_pkis();
}

static void
teardown(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	ck_assert_int_eq(system(cmd), 0);
}

/* The server of the test PKI, from its files (TLS 1.3). */
static SSL_CTX *
server_ctx(void)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	char cert[128], key[128];

	snprintf(cert, sizeof(cert), "%s/server.pem", dir);
	snprintf(key, sizeof(key), "%s/server.key", dir);
	ck_assert_ptr_nonnull(ctx);
	SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	ck_assert_int_eq(SSL_CTX_use_certificate_file(ctx, cert,
						      SSL_FILETYPE_PEM), 1);
	ck_assert_int_eq(SSL_CTX_use_PrivateKey_file(ctx, key,
						     SSL_FILETYPE_PEM), 1);
	return ctx;
}

/*
 * A client that trusts only what ossl_proc_load_verify_paths loads; 0 or
 * -1.  It asserts nothing: Check's assertions read the environment, which
 * the stress test below must leave to osslproc and OpenSSL alone.
 */
static int
verified_handshake(SSL_CTX *server)
{
	SSL_CTX *client = SSL_CTX_new(TLS_client_method());
	int rc = -1;

	if (client && SSL_CTX_set_min_proto_version(client, TLS1_3_VERSION) &&
	    ossl_proc_load_verify_paths(client) == 0) {
		SSL_CTX_set_verify(client, SSL_VERIFY_PEER, NULL);
		rc = tls_handshake(client, server);
	}
	SSL_CTX_free(client);
	return rc;
}

/* ---- resolution ---- */

START_TEST(config_file_first)
{
	setenv("SSL_CERT_FILE", junk_pem, 1);
	tl_init(TL_CONFIG(.ca_file = ca_pem, .ca_dir = dir));
	ck_assert_str_eq(ossl_proc_ca_file(), ca_pem);
	ck_assert_str_eq(ossl_proc_ca_dir(), dir);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_INFO, "from the configuration"),
			 2);
	ossl_proc_teardown();
	ck_assert_ptr_null(ossl_proc_ca_file());
}
END_TEST

START_TEST(environment_second)
{
	char list[256];

	snprintf(list, sizeof(list), "/nonexistent:%s", dir);
	setenv("SSL_CERT_FILE", junk_pem, 1);
	setenv("SSL_CERT_DIR", list, 1);
	tl_init(TL_CONFIG());
	/* Copied at init: changing the environment later changes nothing. */
	setenv("SSL_CERT_FILE", "/elsewhere", 1);
	ck_assert_str_eq(ossl_proc_ca_file(), junk_pem);
	ck_assert_str_eq(ossl_proc_ca_dir(), list);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_INFO, "(from SSL_CERT_FILE)"),
			 1);
	ossl_proc_teardown();
}
END_TEST

/* A configured file that does not exist: WARNING, next source. */
START_TEST(missing_config_falls_back)
{
	setenv("SSL_CERT_FILE", junk_pem, 1);
	tl_expect(OSSL_PROC_LOG_WARNING, "is not a readable file");
	tl_init(TL_CONFIG(.ca_file = "/nonexistent/ca.pem"));
	ck_assert_str_eq(ossl_proc_ca_file(), junk_pem);
	ossl_proc_teardown();
}
END_TEST

/* Nothing configured: OpenSSL's compiled-in default when it exists. */
START_TEST(openssl_default_third)
{
	const char *def = X509_get_default_cert_file();
	struct stat st;

	unsetenv("SSL_CERT_FILE");
	unsetenv("SSL_CERT_DIR");
	tl_init(TL_CONFIG());
	if (stat(def, &st) == 0 && S_ISREG(st.st_mode)) {
		ck_assert_str_eq(ossl_proc_ca_file(), def);
	} else if (ossl_proc_ca_file()) {
		char want[512];

		snprintf(want, sizeof(want), "CA file: %s (from the "
			 "distribution)", ossl_proc_ca_file());
		ck_assert_int_eq(tl_count(OSSL_PROC_LOG_INFO, want), 1);
	}
	ossl_proc_teardown();
}
END_TEST

/* ---- loading ---- */

/* A handshake whose client trusts only @ca, resolved at init. */
static int
handshake_trusting(const char *ca)
{
	SSL_CTX *server;
	int rc;

	tl_init(TL_CONFIG(.ca_file = ca));
	server = server_ctx();
	rc = verified_handshake(server);
	SSL_CTX_free(server);
	ossl_proc_teardown();
	return rc;
}

START_TEST(load_verify_paths_verifies)
{
	ck_assert_int_eq(handshake_trusting(ca_pem), 0);
}
END_TEST

/* The wrong CA: the handshake must fail verification. */
START_TEST(load_verify_paths_wrong_ca)
{
	ck_assert_int_ne(handshake_trusting(other_pem), 0);
}
END_TEST

START_TEST(load_errors)
{
	SSL_CTX *ctx;
	int not_a_ctx;

	tl_stderr_begin();
	ck_assert_int_eq(ossl_proc_load_verify_paths(NULL), -EINVAL);
	ck_assert_ptr_nonnull(strstr(tl_stderr_end(), "argument is NULL"));
	/* Before init (the pointer is never dereferenced). */
	tl_stderr_begin();
	ck_assert_int_eq(ossl_proc_load_verify_paths((SSL_CTX *)&not_a_ctx),
			 -EINVAL);
	ck_assert_ptr_nonnull(strstr(tl_stderr_end(), "call ossl_proc_init"));
	tl_init(TL_CONFIG(.ca_file = junk_pem));
	ctx = SSL_CTX_new(TLS_method());
	tl_expect(OSSL_PROC_LOG_ERROR, "could not load the CA");
	ck_assert_int_eq(ossl_proc_load_verify_paths(ctx), -EIO);
	tl_expect(OSSL_PROC_LOG_ERROR, "argument is NULL");
	ck_assert_int_eq(ossl_proc_load_verify_store(NULL), -EINVAL);
	tl_expect(0, NULL);
	SSL_CTX_free(ctx);
	ossl_proc_teardown();
}
END_TEST

#ifdef ENV_INTERPOSE
/* ---- who touches the environment ---- */

#define WORKERS 2
#define CTX_PER_WORKER 1000

static atomic_int verified;

static void *
worker(void *arg)
{
	(void)arg;
	for (int i = 0; i < CTX_PER_WORKER; i++) {
		SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

		ck_assert_int_eq(ossl_proc_load_verify_paths(ctx), 0);
		SSL_CTX_free(ctx);
		if (i % 5 == 0)
			atomic_fetch_add(&verified,
					 verified_handshake(shared_server) == 0);
	}
	return NULL;
}

static void
run_workers(void)
{
	pthread_t t[WORKERS];

	for (int i = 0; i < WORKERS; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, worker, NULL), 0);
	for (int i = 0; i < WORKERS; i++)
		pthread_join(t[i], NULL);
}

static int
total(atomic_int *ops)
{
	int n = 0;

	for (int i = 0; i < OP_COUNT; i++)
		n += atomic_load(&ops[i]);
	return n;
}

START_TEST(env_read_only_at_init)
{
	struct ossl_proc_stats st = { .size = sizeof(st) };
	FILE *devnull = fopen("/dev/null", "w");

	tl_init(TL_CONFIG(.ca_file = ca_pem));
	/* Init read the environment, with secure_getenv, and wrote none. */
	ck_assert_int_ge(atomic_load(&from_osslproc[OP_SECURE_GET]), 4);
	ck_assert_int_eq(atomic_load(&from_osslproc[OP_GET]), 0);
	shared_server = server_ctx();
	for (int i = 0; i < OP_COUNT; i++) {
		atomic_store(&from_osslproc[i], 0);
		atomic_store(&from_openssl[i], 0);
	}
	run_workers();
	ossl_proc_get_stats(&st);
	ossl_proc_report(devnull);
	ossl_proc_ca_file();
	fclose(devnull);
	ck_assert_int_eq(atomic_load(&verified),
			 WORKERS * CTX_PER_WORKER / 5);
	ck_assert_int_eq(total(from_osslproc), 0);
	/* Nor does OpenSSL, once its paths were given explicitly. */
	ck_assert_int_eq(total(from_openssl), 0);
	SSL_CTX_free(shared_server);
	ossl_proc_teardown();
	ck_assert_int_eq(atomic_load(&from_osslproc[OP_SET]) +
			 atomic_load(&from_osslproc[OP_PUT]) +
			 atomic_load(&from_osslproc[OP_UNSET]), 0);
}
END_TEST
#endif

/* One thread churns the environment (forcing environ to be reallocated)
 * while two threads create contexts, load verify paths and handshake. */
#define CHURN_VARS 400

static atomic_bool churning;

static void *
churner(void *arg)
{
	char name[32];

	(void)arg;
	for (int round = 0; round < 5; round++) {
		for (int i = 0; i < CHURN_VARS; i++) {
			snprintf(name, sizeof(name), "OSSLPROC_CHURN_%d", i);
			setenv(name, "x", 1);
		}
		for (int i = 0; i < CHURN_VARS; i++) {
			snprintf(name, sizeof(name), "OSSLPROC_CHURN_%d", i);
			unsetenv(name);
		}
	}
	atomic_store(&churning, false);
	return NULL;
}

struct tally {
	int ok, failed;
};

static void *
handshaker(void *arg)
{
	struct tally *t = arg;

	/* Bounded: at least 50 rounds, at most 2000, while the churn runs. */
	for (int i = 0; i < 2000 && (i < 50 || atomic_load(&churning)); i++) {
		if (verified_handshake(shared_server) == 0)
			t->ok++;
		else
			t->failed++;
	}
	return NULL;
}

START_TEST(setenv_churn_stress)
{
	pthread_t churn, hs[2];
	struct tally done[2] = { { 0, 0 }, { 0, 0 } };

	tl_init(TL_CONFIG(.ca_file = ca_pem));
	shared_server = server_ctx();
	atomic_store(&churning, true);
	pthread_create(&churn, NULL, churner, NULL);
	for (int i = 0; i < 2; i++)
		pthread_create(&hs[i], NULL, handshaker, &done[i]);
	pthread_join(churn, NULL);
	for (int i = 0; i < 2; i++)
		pthread_join(hs[i], NULL);
	/* Every handshake verified. */
	for (int i = 0; i < 2; i++) {
		ck_assert_int_ge(done[i].ok, 50);
		ck_assert_int_eq(done[i].failed, 0);
	}
	SSL_CTX_free(shared_server);
	ossl_proc_teardown();
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("env");
	TCase *tc = tcase_create("resolve");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, config_file_first);
	tcase_add_test(tc, environment_second);
	tcase_add_test(tc, missing_config_falls_back);
	tcase_add_test(tc, openssl_default_third);
	suite_add_tcase(s, tc);

	tc = tcase_create("load");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, load_verify_paths_verifies);
	tcase_add_test(tc, load_verify_paths_wrong_ca);
	tcase_add_test(tc, load_errors);
	suite_add_tcase(s, tc);

	tc = tcase_create("threads");
	tcase_set_timeout(tc, 300);
	tcase_add_checked_fixture(tc, setup, teardown);
#ifdef ENV_INTERPOSE
	tcase_add_test(tc, env_read_only_at_init);
#endif
	tcase_add_test(tc, setenv_churn_stress);
	suite_add_tcase(s, tc);
	return tl_run(s);
}
