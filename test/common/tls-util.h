/* A throwaway PKI and verified TLS 1.3 handshakes over memory BIO pairs,
 * for tests and benchmarks. */
#ifndef TLS_UTIL_H
#define TLS_UTIL_H

#include <openssl/ssl.h>
#include <openssl/x509.h>

/* A CA and a leaf for "localhost" / 127.0.0.1 signed by it (EC P-256). */
struct tls_pki;

struct tls_pki *tls_pki_new(void);
void tls_pki_free(struct tls_pki *pki);
/* Write ca.pem, server.pem and server.key into @dir; 0 or -errno. */
int tls_pki_write(const struct tls_pki *pki, const char *dir);
X509 *tls_pki_ca(const struct tls_pki *pki);

/* TLS 1.3 only.  The client verifies the peer against the PKI's CA and
 * checks the host name "localhost". */
SSL_CTX *tls_server_ctx(const struct tls_pki *pki);
SSL_CTX *tls_client_ctx(const struct tls_pki *pki);

struct tls_conn {
	SSL *client, *server;
};

/* Two SSL objects joined by a BIO pair, not yet connected; 0 or -1. */
int tls_pair_new(SSL_CTX *client, SSL_CTX *server, struct tls_conn *out);
/* Handshake a pair from tls_pair_new() and check verification; 0 or -1
 * (the pair stays the caller's to free). */
int tls_pair_handshake(struct tls_conn *c);
/* Connect a verified pair over a BIO pair; 0 or -1 (reason on stderr). */
int tls_connect(SSL_CTX *client, SSL_CTX *server, struct tls_conn *out);
/* Exchange "ping"/"pong" over a connected pair; 0 or -1. */
int tls_exchange(struct tls_conn *c);
void tls_conn_free(struct tls_conn *c);
/* Connect, exchange, shut down, free; 0 or -1. */
int tls_handshake(SSL_CTX *client, SSL_CTX *server);
/* Run @n handshakes; returns how many succeeded. */
int tls_handshakes(SSL_CTX *client, SSL_CTX *server, int n);

#endif
