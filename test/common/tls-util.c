#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "tls-util.h"

struct tls_pki {
	EVP_PKEY *ca_key, *leaf_key;
	X509 *ca, *leaf;
};

static int
add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;
	int ok;

	X509V3_set_ctx(&v3, issuer, cert, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
	if (!ext)
		return 0;
	ok = X509_add_ext(cert, ext, -1);
	X509_EXTENSION_free(ext);
	return ok;
}

static X509 *
make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key)
{
	X509 *cert = X509_new();
	X509_NAME *name;
	unsigned char serial[8];
	BIGNUM *bn = NULL;
	int ok;

	if (!cert || RAND_bytes(serial, sizeof(serial)) != 1)
		goto fail;
	serial[0] &= 0x7f;
	bn = BN_bin2bn(serial, sizeof(serial), NULL);
	ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) &&
	     X509_set_version(cert, X509_VERSION_3) &&
	     X509_gmtime_adj(X509_getm_notBefore(cert), -3600) &&
	     X509_gmtime_adj(X509_getm_notAfter(cert), 86400) &&
	     X509_set_pubkey(cert, key);
	name = X509_get_subject_name(cert);
	ok = ok && X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
					      (const unsigned char *)cn, -1,
					      -1, 0) &&
	     X509_set_issuer_name(cert, issuer ? X509_get_subject_name(issuer)
					       : name);
	if (!issuer) {
		ok = ok && add_ext(cert, cert, NID_basic_constraints,
				   "critical,CA:TRUE") &&
		     add_ext(cert, cert, NID_key_usage,
			     "critical,keyCertSign,cRLSign") &&
		     add_ext(cert, cert, NID_subject_key_identifier, "hash");
	} else {
		ok = ok && add_ext(cert, issuer, NID_basic_constraints,
				   "CA:FALSE") &&
		     add_ext(cert, issuer, NID_subject_alt_name,
			     "DNS:localhost,IP:127.0.0.1") &&
		     add_ext(cert, issuer, NID_ext_key_usage,
			     "serverAuth,clientAuth") &&
		     add_ext(cert, issuer, NID_authority_key_identifier,
			     "keyid");
	}
	ok = ok && X509_sign(cert, issuer_key ? issuer_key : key,
			     EVP_sha256()) > 0;
	BN_free(bn);
	if (ok)
		return cert;
fail:
	ERR_print_errors_fp(stderr);
	X509_free(cert);
	return NULL;
}

struct tls_pki *
tls_pki_new(void)
{
	struct tls_pki *pki = OPENSSL_zalloc(sizeof(*pki));

	if (!pki)
		return NULL;
	pki->ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	pki->leaf_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	if (pki->ca_key && pki->leaf_key)
		pki->ca = make_cert(pki->ca_key, "osslproc test CA", NULL,
				    NULL);
	if (pki->ca)
		pki->leaf = make_cert(pki->leaf_key, "localhost", pki->ca,
				      pki->ca_key);
	if (!pki->leaf) {
		ERR_print_errors_fp(stderr);
		tls_pki_free(pki);
		return NULL;
	}
	return pki;
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
	return pki->ca;
}

static int
write_pem(const char *dir, const char *name, X509 *cert, EVP_PKEY *key)
{
	char path[4096];
	FILE *f;
	int ok;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	if (!f)
		return -errno;
	ok = cert ? PEM_write_X509(f, cert)
		  : PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
	if (fclose(f) != 0 || !ok)
		return -EIO;
	return 0;
}

int
tls_pki_write(const struct tls_pki *pki, const char *dir)
{
	int rc = write_pem(dir, "ca.pem", pki->ca, NULL);

	if (!rc)
		rc = write_pem(dir, "server.pem", pki->leaf, NULL);
	if (!rc)
		rc = write_pem(dir, "server.key", NULL, pki->leaf_key);
	return rc;
}

static SSL_CTX *
ctx_new(void)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());

	if (ctx && (!SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
		    !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION))) {
		SSL_CTX_free(ctx);
		ctx = NULL;
	}
	return ctx;
}

SSL_CTX *
tls_server_ctx(const struct tls_pki *pki)
{
	SSL_CTX *ctx = ctx_new();

	if (ctx && (SSL_CTX_use_certificate(ctx, pki->leaf) != 1 ||
		    SSL_CTX_use_PrivateKey(ctx, pki->leaf_key) != 1)) {
		ERR_print_errors_fp(stderr);
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

SSL_CTX *
tls_client_ctx(const struct tls_pki *pki)
{
	SSL_CTX *ctx = ctx_new();

	if (!ctx)
		return NULL;
	if (X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), pki->ca) != 1) {
		ERR_print_errors_fp(stderr);
		SSL_CTX_free(ctx);
		return NULL;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	return ctx;
}

void
tls_conn_free(struct tls_conn *c)
{
	SSL_free(c->client);
	SSL_free(c->server);
	c->client = c->server = NULL;
}

static int
wants_more(SSL *ssl, int ret)
{
	int err = SSL_get_error(ssl, ret);

	return err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE;
}

/* Pump both ends until both finished the handshake. */
static int
pump_handshake(struct tls_conn *c)
{
	int cdone = 0, sdone = 0;

	for (int i = 0; i < 100 && !(cdone && sdone); i++) {
		int r;

		if (!cdone) {
			r = SSL_do_handshake(c->client);
			if (r == 1)
				cdone = 1;
			else if (!wants_more(c->client, r))
				return -1;
		}
		if (!sdone) {
			r = SSL_do_handshake(c->server);
			if (r == 1)
				sdone = 1;
			else if (!wants_more(c->server, r))
				return -1;
		}
	}
	return cdone && sdone ? 0 : -1;
}

int
tls_pair_new(SSL_CTX *client, SSL_CTX *server, struct tls_conn *out)
{
	BIO *cb = NULL, *sb = NULL;

	out->client = SSL_new(client);
	out->server = SSL_new(server);
	if (!out->client || !out->server ||
	    !BIO_new_bio_pair(&cb, 0, &sb, 0))
		goto fail;
	SSL_set_bio(out->client, cb, cb);
	SSL_set_bio(out->server, sb, sb);
	SSL_set_connect_state(out->client);
	SSL_set_accept_state(out->server);
	if (SSL_set1_host(out->client, "localhost") &&
	    SSL_set_tlsext_host_name(out->client, "localhost") == 1)
		return 0;
fail:
	ERR_print_errors_fp(stderr);
	tls_conn_free(out);
	return -1;
}

int
tls_pair_handshake(struct tls_conn *c)
{
	if (pump_handshake(c) == 0 &&
	    SSL_get_verify_result(c->client) == X509_V_OK &&
	    SSL_get0_peer_certificate(c->client))
		return 0;
	fprintf(stderr, "tls: handshake failed (verify: %s)\n",
		X509_verify_cert_error_string(
			SSL_get_verify_result(c->client)));
	ERR_print_errors_fp(stderr);
	return -1;
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
transfer(SSL *from, SSL *to, const char *msg)
{
	char buf[16];
	size_t len = strlen(msg);
	int n = -1;

	if (SSL_write(from, msg, (int)len) != (int)len)
		return -1;
	/* The TLS 1.3 tickets may come first: read until data arrives. */
	for (int i = 0; i < 10 && n <= 0; i++) {
		n = SSL_read(to, buf, sizeof(buf));
		if (n <= 0 && !wants_more(to, n))
			return -1;
		if (n <= 0)
			SSL_read(from, buf, 0);
	}
	return n == (int)len && !memcmp(buf, msg, len) ? 0 : -1;
}

int
tls_exchange(struct tls_conn *c)
{
	if (transfer(c->client, c->server, "ping") ||
	    transfer(c->server, c->client, "pong")) {
		fprintf(stderr, "tls_exchange: application data failed\n");
		ERR_print_errors_fp(stderr);
		return -1;
	}
	return 0;
}

int
tls_handshake(SSL_CTX *client, SSL_CTX *server)
{
	struct tls_conn c;
	int rc;

	if (tls_connect(client, server, &c))
		return -1;
	rc = tls_exchange(&c);
	SSL_shutdown(c.client);
	SSL_shutdown(c.server);
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
