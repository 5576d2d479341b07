/* A throwaway PKI and TLS 1.3 handshakes over BIO pairs, for the tests.
 * Only OpenSSL allocates what OpenSSL frees: the tests install their own
 * allocator with CRYPTO_set_mem_functions(). */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "tls-util.h"

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

/* A TLS 1.3 handshake, a message or a close over a BIO pair needs a few
 * rounds at most; far more means both ends wait on each other. */
#define PUMP_LIMIT 64

struct tls_pki {
	EVP_PKEY *ca_key, *leaf_key;
	X509 *ca, *leaf;
};

/* ---- certificates ---- */

static int
add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;
	int ok;

	/* The issuer is needed for authorityKeyIdentifier, the subject for
	 * subjectKeyIdentifier. */
	X509V3_set_ctx(&v3, issuer, cert, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
	if (!ext)
		return 0;
	ok = X509_add_ext(cert, ext, -1);
	X509_EXTENSION_free(ext);
	return ok;
}

static int
set_serial(X509 *cert)
{
	BIGNUM *bn = BN_new();
	int ok;

	/* 63 random bits with the top one set: positive, never zero, and
	 * the CA's and the leaf's differ except with negligible odds. */
	ok = bn && BN_rand(bn, 63, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) &&
	     BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) != NULL;
	BN_free(bn);
	return ok;
}

/* A subject of CN=@cn.  Built apart and copied in: OpenSSL 4.0's
 * X509_get_subject_name() returns a name that may not be changed. */
static int
set_subject(X509 *cert, const char *cn)
{
	X509_NAME *name = X509_NAME_new();
	int ok = name && X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
					(const unsigned char *)cn, -1, -1, 0) &&
		 X509_set_subject_name(cert, name);

	X509_NAME_free(name);
	return ok;
}

/* What the CA and the leaf share: version, serial, validity, subject and
 * public key. */
static X509 *
cert_new(EVP_PKEY *key, const char *cn)
{
	X509 *cert = X509_new();

	if (cert && X509_set_version(cert, X509_VERSION_3) &&
	    set_serial(cert) &&
	    X509_gmtime_adj(X509_getm_notBefore(cert), -3600) &&
	    X509_gmtime_adj(X509_getm_notAfter(cert), 86400) &&
	    set_subject(cert, cn) && X509_set_pubkey(cert, key))
		return cert;
	X509_free(cert);
	return NULL;
}

static X509 *
make_ca(EVP_PKEY *key)
{
	X509 *ca = cert_new(key, "osslproc test CA");

	if (ca && X509_set_issuer_name(ca, X509_get_subject_name(ca)) &&
	    add_ext(ca, ca, NID_basic_constraints, "critical,CA:TRUE") &&
	    add_ext(ca, ca, NID_key_usage, "critical,keyCertSign,cRLSign") &&
	    add_ext(ca, ca, NID_subject_key_identifier, "hash") &&
	    X509_sign(ca, key, EVP_sha256()) > 0)
		return ca;
	X509_free(ca);
	return NULL;
}

static X509 *
make_leaf(EVP_PKEY *key, X509 *ca, EVP_PKEY *ca_key)
{
	X509 *leaf = cert_new(key, "localhost");

	/* digitalSignature: an EC server key signs the TLS 1.3
	 * CertificateVerify. */
	if (leaf && X509_set_issuer_name(leaf, X509_get_subject_name(ca)) &&
	    add_ext(leaf, ca, NID_basic_constraints, "critical,CA:FALSE") &&
	    add_ext(leaf, ca, NID_key_usage, "critical,digitalSignature") &&
	    add_ext(leaf, ca, NID_ext_key_usage, "serverAuth,clientAuth") &&
	    add_ext(leaf, ca, NID_subject_alt_name,
		    "DNS:localhost,IP:127.0.0.1") &&
	    add_ext(leaf, ca, NID_subject_key_identifier, "hash") &&
	    add_ext(leaf, ca, NID_authority_key_identifier, "keyid:always") &&
	    X509_sign(leaf, ca_key, EVP_sha256()) > 0)
		return leaf;
	X509_free(leaf);
	return NULL;
}

struct tls_pki *
tls_pki_new(void)
{
	struct tls_pki *pki = OPENSSL_zalloc(sizeof(*pki));

	if (pki) {
		pki->ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
		pki->leaf_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	}
	if (pki && pki->ca_key && pki->leaf_key)
		pki->ca = make_ca(pki->ca_key);
	if (pki && pki->ca)
		pki->leaf = make_leaf(pki->leaf_key, pki->ca, pki->ca_key);
	if (pki && pki->leaf)
		return pki;
	fprintf(stderr, "tls_pki_new: cannot build the PKI\n");
	ERR_print_errors_fp(stderr);
	tls_pki_free(pki);
	return NULL;
}

void
tls_pki_free(struct tls_pki *pki)
{
	if (!pki)
		return;
	X509_free(pki->leaf);
	X509_free(pki->ca);
	EVP_PKEY_free(pki->leaf_key);
	EVP_PKEY_free(pki->ca_key);
	OPENSSL_free(pki);
}

X509 *
tls_pki_ca(const struct tls_pki *pki)
{
	return pki ? pki->ca : NULL;
}

/* ---- files ---- */

static int
write_all(const char *path, const char *data, size_t len, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	int rc = 0;

	if (fd < 0)
		return -errno;
	while (len > 0 && rc == 0) {
		ssize_t n = write(fd, data, len);

		if (n < 0 && errno != EINTR) {
			rc = -errno;
		} else if (n == 0) {
			rc = -EIO;
		} else if (n > 0) {
			data += n;
			len -= (size_t)n;
		}
	}
	if (close(fd) != 0 && rc == 0)
		rc = -errno;
	return rc;
}

/* PEM goes to memory first so that a failing write(2) gives a real errno,
 * which OpenSSL's FILE-based writers would not. */
static int
write_pem(const char *dir, const char *name, X509 *cert, EVP_PKEY *key)
{
	char path[PATH_MAX];
	BIO *mem;
	char *data;
	long len;
	int n, rc = -ENOMEM;

	n = snprintf(path, sizeof(path), "%s/%s", dir, name);
	if (n < 0 || (size_t)n >= sizeof(path))
		return -ENAMETOOLONG;
	mem = BIO_new(BIO_s_mem());
	if (mem && (cert ? PEM_write_bio_X509(mem, cert)
			 : PEM_write_bio_PrivateKey(mem, key, NULL, NULL, 0,
						    NULL, NULL))) {
		len = BIO_get_mem_data(mem, &data);
		/* Only the owner may read the key. */
		rc = len > 0 ? write_all(path, data, (size_t)len,
					 cert ? 0644 : 0600)
			     : -EIO;
	}
	if (rc == -ENOMEM)
		ERR_print_errors_fp(stderr);
	BIO_free(mem);
	return rc;
}

int
tls_pki_write(const struct tls_pki *pki, const char *dir)
{
	int rc;

	if (!pki || !dir)
		return -EINVAL;
	rc = write_pem(dir, "ca.pem", pki->ca, NULL);
	if (!rc)
		rc = write_pem(dir, "server.pem", pki->leaf, NULL);
	if (!rc)
		rc = write_pem(dir, "server.key", NULL, pki->leaf_key);
	return rc;
}

/* ---- contexts ---- */

static SSL_CTX *
ctx_new(const SSL_METHOD *method)
{
	SSL_CTX *ctx = SSL_CTX_new(method);

	if (ctx && SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) &&
	    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION))
		return ctx;
	SSL_CTX_free(ctx);
	return NULL;
}

static SSL_CTX *
ctx_failed(SSL_CTX *ctx, const char *what)
{
	fprintf(stderr, "%s: cannot build the context\n", what);
	ERR_print_errors_fp(stderr);
	SSL_CTX_free(ctx);
	return NULL;
}

SSL_CTX *
tls_server_ctx(const struct tls_pki *pki)
{
	SSL_CTX *ctx = pki ? ctx_new(TLS_server_method()) : NULL;

	if (ctx && SSL_CTX_use_certificate(ctx, pki->leaf) == 1 &&
	    SSL_CTX_use_PrivateKey(ctx, pki->leaf_key) == 1 &&
	    SSL_CTX_check_private_key(ctx) == 1)
		return ctx;
	return ctx_failed(ctx, "tls_server_ctx");
}

SSL_CTX *
tls_client_ctx(const struct tls_pki *pki)
{
	SSL_CTX *ctx = pki ? ctx_new(TLS_client_method()) : NULL;

	/* A fresh store holds nothing else: this CA is all it trusts. */
	if (!ctx ||
	    X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), pki->ca) != 1)
		return ctx_failed(ctx, "tls_client_ctx");
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	return ctx;
}

/* ---- pumping both ends ---- */

static const char *
side(const SSL *ssl)
{
	return SSL_is_server(ssl) ? "server" : "client";
}

static const char *
error_name(int err)
{
	switch (err) {
	case SSL_ERROR_NONE:		return "SSL_ERROR_NONE";
	case SSL_ERROR_SSL:		return "SSL_ERROR_SSL";
	case SSL_ERROR_WANT_READ:	return "SSL_ERROR_WANT_READ";
	case SSL_ERROR_WANT_WRITE:	return "SSL_ERROR_WANT_WRITE";
	case SSL_ERROR_SYSCALL:		return "SSL_ERROR_SYSCALL";
	case SSL_ERROR_ZERO_RETURN:	return "SSL_ERROR_ZERO_RETURN";
	default:			return "other";
	}
}

/* Classify the result @ret of an I/O call on @ssl: 0 if it only waits for
 * its peer, -1 (reported) on a real failure.  The caller cleared the
 * error queue before the call, so SSL_get_error() sees only its errors. */
static int
io_result(SSL *ssl, int ret, const char *op)
{
	int err = SSL_get_error(ssl, ret);

	if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
		return 0;
	fprintf(stderr, "tls: %s %s failed: ret %d, SSL_get_error %d (%s)\n",
		side(ssl), op, ret, err, error_name(err));
	ERR_print_errors_fp(stderr);
	return -1;
}

/* Each step returns 1 when that end is done, 0 when it waits for its
 * peer, -1 on failure. */
typedef int (*step_fn)(SSL *ssl);

static int
handshake_step(SSL *ssl)
{
	int r;

	ERR_clear_error();
	r = SSL_do_handshake(ssl);
	return r == 1 ? 1 : io_result(ssl, r, "handshake");
}

static int
shutdown_step(SSL *ssl)
{
	int r;

	ERR_clear_error();
	r = SSL_shutdown(ssl);
	/* 0: our close_notify is out, the peer's not read yet. */
	if (r >= 0)
		return r == 1;
	return io_result(ssl, r, "shutdown");
}

/* Alternate the two ends until both are done.  Bounded, so that a broken
 * exchange fails instead of spinning. */
static int
pump(struct tls_conn *c, step_fn step, const char *what)
{
	int cdone = 0, sdone = 0;

	for (int i = 0; i < PUMP_LIMIT && !(cdone && sdone); i++) {
		if (!cdone && (cdone = step(c->client)) < 0)
			return -1;
		if (!sdone && (sdone = step(c->server)) < 0)
			return -1;
	}
	if (cdone && sdone)
		return 0;
	fprintf(stderr, "tls: %s unfinished after %d rounds (client %s, "
		"server %s)\n", what, PUMP_LIMIT, cdone ? "done" : "waiting",
		sdone ? "done" : "waiting");
	return -1;
}

/* ---- connections ---- */

void
tls_conn_free(struct tls_conn *c)
{
	if (!c)
		return;
	SSL_free(c->client);
	SSL_free(c->server);
	c->client = c->server = NULL;
}

int
tls_pair_new(SSL_CTX *client, SSL_CTX *server, struct tls_conn *out)
{
	BIO *cb = NULL, *sb = NULL;

	out->client = client ? SSL_new(client) : NULL;
	out->server = server ? SSL_new(server) : NULL;
	if (!out->client || !out->server ||
	    !BIO_new_bio_pair(&cb, 0, &sb, 0))
		goto fail;
	/* One reference each, owned by the SSL from here on. */
	SSL_set_bio(out->client, cb, cb);
	SSL_set_bio(out->server, sb, sb);
	SSL_set_connect_state(out->client);
	SSL_set_accept_state(out->server);
	/* Per connection, so that clients not from tls_client_ctx() check
	 * the name too (SSL_set1_host() is deprecated in OpenSSL 4.0). */
	if (X509_VERIFY_PARAM_set1_host(SSL_get0_param(out->client),
					"localhost", 0) == 1 &&
	    SSL_set_tlsext_host_name(out->client, "localhost") == 1)
		return 0;
fail:
	fprintf(stderr, "tls_pair_new: cannot create the pair\n");
	ERR_print_errors_fp(stderr);
	tls_conn_free(out);
	return -1;
}

/* Without a peer certificate X509_V_OK would prove nothing. */
static int
check_verified(SSL *client)
{
	long v = SSL_get_verify_result(client);
	int peer = SSL_get0_peer_certificate(client) != NULL;

	if (v == X509_V_OK && peer)
		return 0;
	if (v != X509_V_OK)
		fprintf(stderr, "tls: client verify result %ld (%s)\n", v,
			X509_verify_cert_error_string(v));
	else
		fprintf(stderr, "tls: client got no server certificate\n");
	return -1;
}

int
tls_pair_handshake(struct tls_conn *c)
{
	int rc = pump(c, handshake_step, "handshake");

	/* Checked after a failure too: a rejected chain is the usual
	 * reason, and the verify result names it. */
	if (check_verified(c->client))
		rc = -1;
	return rc;
}

int
tls_connect(SSL_CTX *client, SSL_CTX *server, struct tls_conn *out)
{
	if (tls_pair_new(client, server, out))
		return -1;
	if (tls_pair_handshake(out) == 0)
		return 0;
	tls_conn_free(out);
	return -1;
}

static int
read_msg(SSL *to, const char *msg, size_t len)
{
	char buf[64];
	size_t got = 0;

	/* The bytes are already in the pair, but the reader may first have
	 * to get through records that carry no data (TLS 1.3 tickets). */
	for (int i = 0; i < PUMP_LIMIT && got < len; i++) {
		int n;

		ERR_clear_error();
		n = SSL_read(to, buf + got, (int)(sizeof(buf) - got));
		if (n > 0)
			got += (size_t)n;
		else if (io_result(to, n, "read") < 0)
			return -1;
	}
	if (got == len && memcmp(buf, msg, len) == 0)
		return 0;
	fprintf(stderr, "tls: %s got %zu bytes, not \"%s\"\n", side(to), got,
		msg);
	return -1;
}

static int
transfer(SSL *from, SSL *to, const char *msg)
{
	size_t len = strlen(msg);
	int n;

	ERR_clear_error();
	n = SSL_write(from, msg, (int)len);
	/* The pair's buffer dwarfs the message: a short or postponed write
	 * means a broken channel. */
	if (n != (int)len) {
		if (n <= 0)
			io_result(from, n, "write");
		fprintf(stderr, "tls: %s could not send \"%s\"\n", side(from),
			msg);
		return -1;
	}
	return read_msg(to, msg, len);
}

int
tls_exchange(struct tls_conn *c)
{
	if (transfer(c->client, c->server, "ping") ||
	    transfer(c->server, c->client, "pong"))
		return -1;
	return 0;
}

int
tls_handshake(SSL_CTX *client, SSL_CTX *server)
{
	struct tls_conn c;
	int rc = tls_connect(client, server, &c);

	if (rc == 0)
		rc = tls_exchange(&c);
	/* Both close_notify alerts exchanged: the close works too. */
	if (rc == 0)
		rc = pump(&c, shutdown_step, "shutdown");
	tls_conn_free(&c);
	return rc;
}

int
tls_handshakes(SSL_CTX *client, SSL_CTX *server, int n)
{
	int ok = 0;

	for (int i = 0; i < n; i++)
		ok += tls_handshake(client, server) == 0;
	return ok;
}
