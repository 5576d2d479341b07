/*
 * vendoring-host: a plugin host that knows nothing of osslproc, loading two
 * plugins that each vendor their own static copy of it (see
 * vendoring-plugin.c for when to vendor and how to link).
 *
 *     vendoring-host PLUGIN_A PLUGIN_B
 *
 * It loads both plugins (each initialises its copy and opens a module
 * scope), does a verified TLS 1.3 handshake, unloads them (scope close,
 * teardown, dlclose), handshakes again, and prints what happened: which
 * copy owns OpenSSL's allocator, which plugin stayed mapped and why.
 * Exit status 0 only if every claim it prints held.
 *
 * Call order matters: the plugins initialise osslproc before the host's
 * first OpenSSL call, so that the tracked allocator can be installed.
 */
#include <dlfcn.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "vendoring-plugin.h"

#define HOST_NAME "vendoring.example"

struct plugin {
	const char *path;
	char name;
	void *handle;
	vplug_load_fn *load;
	vplug_status_fn *status;
	vplug_unload_fn *unload;
	vplug_osslproc_fn *osslproc;
};

static int failures;

/* Print one claim and remember whether it held. */
static bool
claim(bool held, const char *fmt, ...)
{
	va_list ap;

	printf("  [%s] ", held ? "ok" : "FAILED");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	if (!held)
		failures++;
	return held;
}

/* The plugins' osslproc log lines. */
static void
plugin_log(const char *plugin, const char *line)
{
	printf("    (%s) %s\n", plugin, line);
}

/* ---- TLS: a throwaway CA and server certificate, made in memory ---- */

struct pki {
	EVP_PKEY *ca_key, *key;
	X509 *ca, *cert;
};

static bool
add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value)
{
	X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, v3, nid, value);
	bool ok = ext && X509_add_ext(x, ext, -1);

	X509_EXTENSION_free(ext);
	return ok;
}

static bool
ca_extensions(X509 *x, X509V3_CTX *v3)
{
	return add_ext(x, v3, NID_basic_constraints, "critical,CA:TRUE") &&
	       add_ext(x, v3, NID_key_usage, "critical,keyCertSign,cRLSign");
}

static bool
server_extensions(X509 *x, X509V3_CTX *v3)
{
	return add_ext(x, v3, NID_basic_constraints, "critical,CA:FALSE") &&
	       add_ext(x, v3, NID_key_usage, "critical,digitalSignature") &&
	       add_ext(x, v3, NID_ext_key_usage, "serverAuth") &&
	       add_ext(x, v3, NID_subject_alt_name, "DNS:" HOST_NAME);
}

/* A CA certificate when @issuer is NULL, else a server certificate for
 * HOST_NAME signed by @issuer. */
static X509 *
make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *signer)
{
	X509 *x = X509_new();
	X509_NAME *subject = X509_NAME_new();
	X509V3_CTX v3;
	bool ok = x != NULL;

	ok = ok && X509_set_version(x, X509_VERSION_3) &&
	     ASN1_INTEGER_set(X509_get_serialNumber(x), issuer ? 2 : 1) &&
	     X509_gmtime_adj(X509_getm_notBefore(x), -300) &&
	     X509_gmtime_adj(X509_getm_notAfter(x), 3600) &&
	     X509_set_pubkey(x, key) &&
	     /* Built apart: OpenSSL 4.0's X509_get_subject_name() returns
	      * a name that may not be changed. */
	     subject && X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
					(const unsigned char *)cn, -1, -1, 0) &&
	     X509_set_subject_name(x, subject) &&
	     X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer)
					    : subject);
	X509_NAME_free(subject);
	X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
	ok = ok && (issuer ? server_extensions(x, &v3)
			   : ca_extensions(x, &v3));
	if (ok && X509_sign(x, signer, EVP_sha256()) > 0)
		return x;
	X509_free(x);
	return NULL;
}

static void
pki_free(struct pki *p)
{
	X509_free(p->cert);
	X509_free(p->ca);
	EVP_PKEY_free(p->key);
	EVP_PKEY_free(p->ca_key);
}

static bool
pki_make(struct pki *p)
{
	memset(p, 0, sizeof(*p));
	p->ca_key = EVP_EC_gen("P-256");
	p->key = EVP_EC_gen("P-256");
	if (p->ca_key && p->key)
		p->ca = make_cert(p->ca_key, "vendoring example CA", NULL,
				  p->ca_key);
	if (p->ca)
		p->cert = make_cert(p->key, HOST_NAME, p->ca, p->ca_key);
	if (p->cert)
		return true;
	pki_free(p);
	return false;
}

/* One step of one side: 1 done, 0 wants the other side, -1 failed. */
static int
step(SSL *ssl)
{
	int rc = SSL_do_handshake(ssl);

	if (rc == 1)
		return 1;
	rc = SSL_get_error(ssl, rc);
	return rc == SSL_ERROR_WANT_READ || rc == SSL_ERROR_WANT_WRITE ? 0
									 : -1;
}

/* Send @msg from @from to @to through the BIO pair. */
static bool
exchange(SSL *from, SSL *to, const char *msg)
{
	char buf[16];
	int n = (int)strlen(msg);

	return SSL_write(from, msg, n) == n &&
	       SSL_read(to, buf, sizeof(buf)) == n && memcmp(buf, msg, n) == 0;
}

/* A client and a server in this process, joined by a BIO pair: the
 * client verifies the server's chain and name; both speak TLS 1.3. */
static bool
handshake_over(SSL *c, SSL *s)
{
	BIO *cb, *sb;
	int cs = 0, ss = 0;

	if (!BIO_new_bio_pair(&cb, 0, &sb, 0))
		return false;
	SSL_set_bio(c, cb, cb);
	SSL_set_bio(s, sb, sb);
	SSL_set_connect_state(c);
	SSL_set_accept_state(s);
	if (!SSL_set_tlsext_host_name(c, HOST_NAME) ||
	    !X509_VERIFY_PARAM_set1_host(SSL_get0_param(c), HOST_NAME, 0))
		return false;
	for (int i = 0; i < 32 && (cs != 1 || ss != 1); i++) {
		if (cs != 1)
			cs = step(c);
		if (ss != 1)
			ss = step(s);
		if (cs < 0 || ss < 0)
			return false;
	}
	return cs == 1 && ss == 1 &&
	       SSL_get_verify_result(c) == X509_V_OK &&
	       SSL_version(c) == TLS1_3_VERSION &&
	       exchange(c, s, "ping") && exchange(s, c, "pong");
}

static SSL_CTX *
context(bool server, const struct pki *p)
{
	SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method()
					  : TLS_client_method());
	bool ok = ctx && SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);

	if (ok && server)
		ok = SSL_CTX_use_certificate(ctx, p->cert) == 1 &&
		     SSL_CTX_use_PrivateKey(ctx, p->key) == 1;
	else if (ok) {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
		ok = X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), p->ca);
	}
	if (ok)
		return ctx;
	SSL_CTX_free(ctx);
	return NULL;
}

/* Everything a handshake needs, made and freed here. */
static bool
verified_handshake(void)
{
	struct pki p;
	SSL_CTX *cctx = NULL, *sctx = NULL;
	SSL *c = NULL, *s = NULL;
	bool ok = pki_make(&p);

	if (ok) {
		cctx = context(false, &p);
		sctx = context(true, &p);
		c = cctx ? SSL_new(cctx) : NULL;
		s = sctx ? SSL_new(sctx) : NULL;
		ok = c && s && handshake_over(c, s);
		SSL_free(c);
		SSL_free(s);
		SSL_CTX_free(cctx);
		SSL_CTX_free(sctx);
		pki_free(&p);
	}
	if (!ok)
		ERR_print_errors_fp(stdout);
	ERR_clear_error();
	return ok;
}

/* ---- plugins ---- */

static bool
plugin_open(struct plugin *p)
{
	p->handle = dlopen(p->path, RTLD_NOW | RTLD_LOCAL);
	if (!p->handle) {
		printf("  cannot load %s: %s\n", p->path, dlerror());
		return false;
	}
	p->load = (vplug_load_fn *)dlsym(p->handle, "vplug_load");
	p->status = (vplug_status_fn *)dlsym(p->handle, "vplug_status");
	p->unload = (vplug_unload_fn *)dlsym(p->handle, "vplug_unload");
	p->osslproc = (vplug_osslproc_fn *)dlsym(p->handle, "vplug_osslproc");
	return claim(p->load && p->status && p->unload && p->osslproc,
		     "plugin %c loaded from %s", p->name, p->path);
}

static bool
still_mapped(const char *path)
{
	void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);

	if (h)
		dlclose(h);
	return h != NULL;
}

static bool
same_file(const char *a, const char *b)
{
	char ra[PATH_MAX], rb[PATH_MAX];

	if (!realpath(a, ra) || !realpath(b, rb))
		return strcmp(a, b) == 0;
	return strcmp(ra, rb) == 0;
}

/* Whether OpenSSL's malloc is code of the object at @path. */
static bool
allocator_in(const char *path)
{
	CRYPTO_malloc_fn m;
	CRYPTO_realloc_fn r;
	CRYPTO_free_fn f;
	Dl_info info;

	CRYPTO_get_mem_functions(&m, &r, &f);
	return dladdr((void *)m, &info) && info.dli_fname &&
	       same_file(info.dli_fname, path);
}

static const char *
unload_name(int rc)
{
	switch (rc) {
	case OSSL_PROC_UNLOAD_SAFE:
		return "safe";
	case OSSL_PROC_UNLOAD_PINNED:
		return "pinned";
	case OSSL_PROC_UNLOAD_IN_USE:
		return "in use";
	default:
		return "error";
	}
}

static void
plugin_close(struct plugin *p, int want_teardown, const char *why)
{
	struct vplug_unload u;

	printf("unloading plugin %c\n", p->name);
	p->unload(&u);
	dlclose(p->handle);
	claim(u.close_rc == OSSL_PROC_UNLOAD_SAFE,
	      "plugin %c: module scope closed: %s (its error strings "
	      "unloaded; it left OpenSSL no callback)", p->name,
	      unload_name(u.close_rc));
	claim(u.teardown_rc == want_teardown,
	      "plugin %c: osslproc teardown: %s, %s", p->name,
	      unload_name(u.teardown_rc), why);
	if (want_teardown == OSSL_PROC_UNLOAD_PINNED)
		claim(still_mapped(p->path), "plugin %c stays mapped after "
		      "dlclose", p->name);
	else
		claim(!still_mapped(p->path), "plugin %c is unmapped by "
		      "dlclose", p->name);
}

/* Both plugins loaded: A owns the allocator, B attached to it, and both
 * read the same counters. */
static void
check_ownership(struct plugin *a, struct plugin *b)
{
	struct vplug_status sa, sb;

	if (!claim(a->status(&sa) == 0 && b->status(&sb) == 0,
		   "both copies report their state"))
		return;
	claim(sa.stats.allocator == OSSL_PROC_ALLOC_TRACKED &&
	      same_file(sa.owner, a->path),
	      "plugin a's copy installed the tracked allocator and owns it");
	claim(sb.stats.allocator == OSSL_PROC_ALLOC_ATTACHED &&
	      same_file(sb.owner, a->path),
	      "plugin b's copy attached to it; its report names the owner: "
	      "%s", sb.owner);
	claim(sa.stats.allocs == sb.stats.allocs &&
	      sa.stats.live_blocks == sb.stats.live_blocks,
	      "one set of statistics: %llu allocations, %llu live blocks, "
	      "seen alike by both copies",
	      (unsigned long long)sa.stats.allocs,
	      (unsigned long long)sa.stats.live_blocks);
}

static void
handshake_counted(struct plugin *a)
{
	struct vplug_status before, after;
	bool ok;

	a->status(&before);
	ok = verified_handshake();
	a->status(&after);
	claim(ok, "verified TLS 1.3 handshake with the plugins loaded");
	claim(after.stats.allocs > before.stats.allocs &&
	      after.stats.double_frees + after.stats.invalid_frees +
	      after.stats.foreign_frees == 0,
	      "its %llu allocations went through the tracked allocator; no "
	      "bad frees", (unsigned long long)(after.stats.allocs -
						before.stats.allocs));
}

int
main(int argc, char **argv)
{
	struct plugin a = { .name = 'a' }, b = { .name = 'b' };

	if (argc != 3) {
		fprintf(stderr, "usage: %s PLUGIN_A PLUGIN_B\n", argv[0]);
		return 2;
	}
	a.path = argv[1];
	b.path = argv[2];
	printf("loading two plugins, each vendoring its own osslproc\n");
	if (!plugin_open(&a) || !plugin_open(&b))
		return 1;
	claim(a.osslproc() != b.osslproc() &&
	      !dlsym(a.handle, "ossl_proc_init") &&
	      !dlsym(b.handle, "ossl_proc_init"),
	      "two distinct copies of osslproc, neither exported");
	claim(a.load(plugin_log) == 0, "plugin a initialised its copy");
	claim(b.load(plugin_log) == 0, "plugin b initialised its copy");
	check_ownership(&a, &b);
	handshake_counted(&a);

	/* The attached copy holds nothing OpenSSL calls; the owner's
	 * allocator stays installed until exit. */
	plugin_close(&b, OSSL_PROC_UNLOAD_SAFE, "its copy only attached, "
		     "OpenSSL holds no pointer into it");
	plugin_close(&a, OSSL_PROC_UNLOAD_PINNED, "OpenSSL's memory "
		     "functions point into its copy until the process exits");

	printf("after unloading\n");
	claim(allocator_in(a.path), "OpenSSL's memory functions are still "
	      "plugin a's");
	claim(verified_handshake(), "verified TLS 1.3 handshake through "
	      "them");
	printf("%s\n", failures ? "vendoring: some claims did not hold"
				: "vendoring: every claim held");
	return failures ? 1 : 0;
}
