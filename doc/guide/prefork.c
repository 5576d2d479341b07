/*
 * Integrating osslproc, case (a): a prefork daemon.
 *
 * The parent initialises osslproc before any other OpenSSL call, checks
 * its TLS configuration once, then forks workers from a single thread.
 * Each worker builds its own SSL_CTX through ossl_proc_ctx_get() and
 * resets its own host state in an ossl_proc_on_child() hook.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <osslproc.h>

#define WORKERS 4

struct server_conf {
	const char *cert;
	const char *key;
};

/* Connections this process has served: each worker counts its own. */
static unsigned long served;

/* May run inside OpenSSL's allocator and in fork handlers, in any
 * thread: no OpenSSL, no osslproc, no allocation. */
static void
log_line(enum ossl_proc_log_level level, const char *msg, void *arg)
{
	(void)arg;
	dprintf(STDERR_FILENO, "daemon: tls %s: %s\n",
		level <= OSSL_PROC_LOG_ERROR ? "error" : "notice", msg);
}

/* Called once in each process that asks for the context, so no worker
 * uses the parent's session cache or ticket keys. */
static SSL_CTX *
build_ctx(void *arg)
{
	const struct server_conf *conf = arg;
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (!ctx)
		return NULL;
	if (SSL_CTX_use_certificate_chain_file(ctx, conf->cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, conf->key,
					SSL_FILETYPE_PEM) != 1) {
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

/* Runs in every child before fork() returns there. */
static void
reset_counters(void *arg)
{
	unsigned long *counter = arg;

	*counter = 0;
}

static int
listen_on(unsigned short port)
{
	struct sockaddr_in sa = {
		.sin_family = AF_INET,
		.sin_port = htons(port),
		.sin_addr.s_addr = htonl(INADDR_ANY),
	};
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0)
		return -1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(fd, 64) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int
serve(struct ossl_proc_ctx *pc, int listen_fd)
{
	/* Built here, in this worker, on first use. */
	SSL_CTX *ctx = ossl_proc_ctx_get(pc);

	if (!ctx)
		return 1;
	for (;;) {
		int fd = accept(listen_fd, NULL, NULL);
		SSL *ssl;

		if (fd < 0) {
			if (errno == EINTR)
				continue;
			return 1;
		}
		ssl = SSL_new(ctx);
		if (ssl && SSL_set_fd(ssl, fd) == 1 && SSL_accept(ssl) == 1) {
			served++;
			SSL_write(ssl, "hello\n", 6);
			SSL_shutdown(ssl);
		}
		SSL_free(ssl);
		close(fd);
	}
}

int
main(int argc, char **argv)
{
	struct ossl_proc_config cfg = OSSL_PROC_CONFIG_INIT;
	struct server_conf conf = { "server.pem", "server.key" };
	struct ossl_proc_ctx *pc;
	int listen_fd, rc;

	/* First thing, while the process has one thread. */
	cfg.log = log_line;
	cfg.log_level = OSSL_PROC_LOG_INFO;
	rc = ossl_proc_init(&cfg);
	if (rc < 0) {
		fprintf(stderr, "ossl_proc_init: %s\n", strerror(-rc));
		return 1;
	}
	if (argc > 2) {
		conf.cert = argv[1];
		conf.key = argv[2];
	}
	pc = ossl_proc_ctx_new(build_ctx, &conf);
	/* Building once in the parent reports a bad certificate before
	 * any worker starts; each worker drops this copy and builds its
	 * own. */
	if (!pc || !ossl_proc_ctx_get(pc) ||
	    ossl_proc_on_child(reset_counters, &served) < 0)
		return 1;
	listen_fd = listen_on(8443);
	if (listen_fd < 0)
		return 1;
	/* Nothing buffered may be written twice by the children. */
	fflush(NULL);
	for (int i = 0; i < WORKERS; i++) {
		pid_t pid = fork();

		if (pid == 0)
			exit(serve(pc, listen_fd));
		if (pid < 0)
			perror("fork");
	}
	while (wait(NULL) > 0)
		;
	ossl_proc_ctx_free(pc);
	ossl_proc_report(stderr);
	ossl_proc_teardown();
	return 0;
}
