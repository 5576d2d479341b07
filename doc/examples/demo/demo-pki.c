/*
 * osslproc-demo: a throwaway PKI when no --ca/--cert/--key is given, so the
 * demo (and its meson test) runs anywhere.  scripts/demo makes real files
 * with the openssl command instead.
 *
 * A CA and a server certificate for localhost and 127.0.0.1, EC P-256,
 * valid for a day, written to a fresh private directory that the parent
 * removes at the end.  Made after ossl_proc_init(), so that this is
 * OpenSSL memory osslproc tracks like any other.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "demo.h"

static int
add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;
	int ok;

	/* The issuer feeds authorityKeyIdentifier, the subject
	 * subjectKeyIdentifier. */
	X509V3_set_ctx(&v3, issuer, cert, NULL, NULL, 0);
	ext = X509V3_EXT_nconf_nid(NULL, &v3, nid, value);
	if (!ext)
		return 0;
	ok = X509_add_ext(cert, ext, -1);
	X509_EXTENSION_free(ext);
	return ok;
}

/* A subject of CN=@cn, built apart: OpenSSL 4.0's
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

/* Version, a random positive serial, a day of validity (from an hour ago,
 * for clocks that differ a little), subject and key. */
static X509 *
cert_base(EVP_PKEY *key, const char *cn)
{
	unsigned char serial[8];
	X509 *cert = X509_new();
	BIGNUM *bn = NULL;
	int ok;

	ok = cert && RAND_bytes(serial, sizeof(serial)) == 1;
	if (ok) {
		serial[0] = (serial[0] & 0x7f) | 0x40;
		bn = BN_bin2bn(serial, sizeof(serial), NULL);
	}
	ok = ok && bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) &&
	     X509_set_version(cert, X509_VERSION_3) &&
	     X509_gmtime_adj(X509_getm_notBefore(cert), -3600) &&
	     X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600) &&
	     set_subject(cert, cn) && X509_set_pubkey(cert, key);
	BN_free(bn);
	if (ok)
		return cert;
	X509_free(cert);
	return NULL;
}

static X509 *
make_ca(EVP_PKEY *key)
{
	X509 *ca = cert_base(key, "osslproc-demo throwaway CA");

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
make_server(EVP_PKEY *key, X509 *ca, EVP_PKEY *ca_key)
{
	X509 *srv = cert_base(key, "localhost");

	/* TLS 1.3 signs the handshake with this key: digitalSignature. */
	if (srv && X509_set_issuer_name(srv, X509_get_subject_name(ca)) &&
	    add_ext(srv, ca, NID_basic_constraints, "critical,CA:FALSE") &&
	    add_ext(srv, ca, NID_key_usage, "critical,digitalSignature") &&
	    add_ext(srv, ca, NID_ext_key_usage, "serverAuth") &&
	    add_ext(srv, ca, NID_subject_alt_name,
		    "DNS:localhost,IP:127.0.0.1") &&
	    add_ext(srv, ca, NID_authority_key_identifier, "keyid:always") &&
	    X509_sign(srv, ca_key, EVP_sha256()) > 0)
		return srv;
	X509_free(srv);
	return NULL;
}

/* Write @cert, or else @key, as PEM to @path; 0 or a negative errno. */
static int
write_pem(const char *path, X509 *cert, EVP_PKEY *key)
{
	FILE *f = fopen(path, "wx");
	int ok;

	if (!f)
		return -errno;
	ok = cert ? PEM_write_X509(f, cert)
		  : PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
	if (fclose(f) != 0 || !ok) {
		say("cannot write %s", path);
		return -EIO;
	}
	return 0;
}

static int
join(char *out, size_t len, const char *dir, const char *name)
{
	int n = snprintf(out, len, "%s/%s", dir, name);

	return n > 0 && (size_t)n < len ? 0 : -ENAMETOOLONG;
}

static int
write_all(const char *dir, X509 *ca, X509 *srv, EVP_PKEY *key, char *ca_path,
	  char *cert_path, char *key_path, size_t pathlen)
{
	int rc;

	rc = join(ca_path, pathlen, dir, "ca.pem");
	if (!rc)
		rc = join(cert_path, pathlen, dir, "server.pem");
	if (!rc)
		rc = join(key_path, pathlen, dir, "server.key");
	if (!rc)
		rc = write_pem(ca_path, ca, NULL);
	if (!rc)
		rc = write_pem(cert_path, srv, NULL);
	if (!rc)
		rc = write_pem(key_path, NULL, key);
	return rc;
}

static int
make_dir(char *dir, size_t dirlen)
{
	const char *tmp = getenv("TMPDIR");
	int n;

	n = snprintf(dir, dirlen, "%s/osslproc-demo.XXXXXX",
		     tmp && *tmp ? tmp : "/tmp");
	if (n < 0 || (size_t)n >= dirlen)
		return -ENAMETOOLONG;
	/* mkdtemp makes it 0700: the key stays private. */
	return mkdtemp(dir) ? 0 : -errno;
}

/*
 * Generate the PKI into a new directory: @dir gets its name, the three
 * paths their files.  0, or a negative errno (the directory is removed).
 */
int
pki_generate(char *dir, size_t dirlen, char *ca_path, char *cert_path,
	     char *key_path, size_t pathlen)
{
	EVP_PKEY *ca_key = EVP_EC_gen("P-256");
	EVP_PKEY *srv_key = EVP_EC_gen("P-256");
	X509 *ca = NULL, *srv = NULL;
	int rc = -EIO;

	ca_path[0] = cert_path[0] = key_path[0] = '\0';
	if (ca_key && srv_key)
		ca = make_ca(ca_key);
	if (ca)
		srv = make_server(srv_key, ca, ca_key);
	if (!srv)
		warn_openssl("cannot generate the throwaway PKI");
	else if ((rc = make_dir(dir, dirlen)) < 0)
		say("cannot create a directory for the PKI: %s", strerror(-rc));
	if (!rc) {
		rc = write_all(dir, ca, srv, srv_key, ca_path, cert_path,
			       key_path, pathlen);
		if (rc)
			pki_remove(dir, ca_path, cert_path, key_path);
	}
	X509_free(srv);
	X509_free(ca);
	EVP_PKEY_free(srv_key);
	EVP_PKEY_free(ca_key);
	if (rc)
		dir[0] = '\0';
	return rc;
}

void
pki_remove(const char *dir, const char *ca, const char *cert, const char *key)
{
	const char *files[] = { ca, cert, key };

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		if (files[i][0])
			unlink(files[i]);
	if (dir[0])
		rmdir(dir);
}
