/* A throwaway PKI and verified TLS 1.3 handshakes over memory BIO pairs,
 * for tests and benchmarks.  Everything runs in the calling thread. */
#ifndef TLS_UTIL_H
#define TLS_UTIL_H

#include <openssl/ssl.h>
#include <openssl/x509.h>

/* A CA (CA:TRUE, keyCertSign) and a leaf for "localhost" / 127.0.0.1
 * (serverAuth + clientAuth) signed by it, EC P-256, generated in memory
 * and valid from an hour ago to a day from now. */
struct tls_pki;

/* NULL on failure, with the OpenSSL errors printed to stderr. */
struct tls_pki *tls_pki_new(void);
void tls_pki_free(struct tls_pki *pki);
/* Write ca.pem, server.pem (the leaf) and server.key into the existing
 * directory @dir; 0 or -errno. */
int tls_pki_write(const struct tls_pki *pki, const char *dir);
/* The CA certificate, borrowed from @pki. */
X509 *tls_pki_ca(const struct tls_pki *pki);

/* Fresh contexts, TLS 1.3 only; the caller frees them.  The server uses
 * the leaf and its key; the client trusts only the PKI's CA and verifies
 * the peer (the host name "localhost" is set on each connection). */
SSL_CTX *tls_server_ctx(const struct tls_pki *pki);
SSL_CTX *tls_client_ctx(const struct tls_pki *pki);

struct tls_conn {
	SSL *client, *server;
};

/* Two SSL objects joined by a BIO pair, not yet connected, the client
 * set to check "localhost"; 0 or -1. */
int tls_pair_new(SSL_CTX *client, SSL_CTX *server, struct tls_conn *out);
/* Handshake a pair from tls_pair_new() and require the client to have
 * verified the server; 0 or -1 (the pair stays the caller's to free). */
int tls_pair_handshake(struct tls_conn *c);
/* tls_pair_new() and tls_pair_handshake(): a live, verified pair in @out;
 * 0, or -1 with @out cleared. */
int tls_connect(SSL_CTX *client, SSL_CTX *server, struct tls_conn *out);
/* Client sends "ping", server answers "pong"; 0 or -1. */
int tls_exchange(struct tls_conn *c);
/* SSL_free() both ends and clear @c. */
void tls_conn_free(struct tls_conn *c);
/* Connect, exchange, shut down both ends, free; 0, or -1 with the reason
 * (SSL error, OpenSSL error queue, verify result) on stderr. */
int tls_handshake(SSL_CTX *client, SSL_CTX *server);
/* Run @n handshakes; returns how many succeeded. */
int tls_handshakes(SSL_CTX *client, SSL_CTX *server, int n);

#endif
