/*
 * A TLS client for real servers (test/preload/test-nginx.sh): for a
 * number of seconds, threads each connect to 127.0.0.1:PORT, make a
 * verified TLS 1.3 handshake (no resumption), send one HTTP request, read
 * the answer and close.  Prints "handshakes N rate R/s failures F".
 *
 *   tls-client PORT CAFILE SECONDS THREADS
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>

#define MAX_PORTS 8

static SSL_CTX *ctx;
static int ports[MAX_PORTS], n_ports;
static double seconds;
static atomic_ulong done[MAX_PORTS], failures[MAX_PORTS];

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
one(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons((uint16_t)port) };
	const char req[] = "GET / HTTP/1.0\r\n\r\n";
	char buf[512];
	int fd = socket(AF_INET, SOCK_STREAM, 0), ok = 0;
	SSL *ssl = NULL;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		goto out;
	ssl = SSL_new(ctx);
	if (!ssl || !SSL_set_fd(ssl, fd) ||
	    /* SSL_set1_host() is deprecated in OpenSSL 4.0. */
	    X509_VERIFY_PARAM_set1_host(SSL_get0_param(ssl), "localhost",
					0) != 1 ||
	    !SSL_set_tlsext_host_name(ssl, "localhost") ||
	    SSL_connect(ssl) != 1 ||
	    SSL_get_verify_result(ssl) != X509_V_OK ||
	    SSL_write(ssl, req, sizeof(req) - 1) <= 0)
		goto out;
	ok = SSL_read(ssl, buf, sizeof(buf)) > 0 &&
	     !strncmp(buf, "HTTP/1.1 200", 12);
	SSL_shutdown(ssl);
out:
	SSL_free(ssl);
	if (fd >= 0)
		close(fd);
	return ok;
}

static void *
worker(void *arg)
{
	double end = now() + seconds;
	/* Threads start on different ports. */
	int p = (int)(intptr_t)arg % n_ports;

	while (now() < end) {
		atomic_fetch_add(one(ports[p]) ? &done[p] : &failures[p], 1);
		p = (p + 1) % n_ports;
	}
	return NULL;
}

int
main(int argc, char **argv)
{
	pthread_t t[64];
	unsigned long all = 0, bad = 0;
	char *next = NULL;
	int n;
	double start, took;

	if (argc != 5) {
		fprintf(stderr, "usage: tls-client PORT[,PORT...] CAFILE "
			"SECONDS THREADS\n");
		return 2;
	}
	for (char *s = argv[1]; n_ports < MAX_PORTS && *s; s = next) {
		ports[n_ports++] = (int)strtol(s, &next, 10);
		if (*next != ',')
			break;
		next++;
	}
	seconds = atof(argv[3]);
	n = atoi(argv[4]);
	if (n < 1 || n > 64)
		n = 1;
	ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx || !SSL_CTX_load_verify_locations(ctx, argv[2], NULL))
		return 1;
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	start = now();
	for (int i = 0; i < n; i++)
		pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i);
	for (int i = 0; i < n; i++)
		pthread_join(t[i], NULL);
	took = now() - start;
	for (int i = 0; i < n_ports; i++) {
		all += atomic_load(&done[i]);
		bad += atomic_load(&failures[i]);
	}
	printf("handshakes %lu rate %.1f/s failures %lu\n", all,
	       (double)all / took, bad);
	for (int i = 0; n_ports > 1 && i < n_ports; i++)
		printf("port %d handshakes %lu failures %lu\n", ports[i],
		       atomic_load(&done[i]), atomic_load(&failures[i]));
	SSL_CTX_free(ctx);
	return bad ? 1 : 0;
}
