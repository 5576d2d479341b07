/*
 * The environment, read once.  OpenSSL reads SSL_CERT_FILE/SSL_CERT_DIR on
 * every SSL_CTX_set_default_verify_paths(), OPENSSL_MODULES on every
 * provider load and OPENSSL_CONF at its first configuration load, any of
 * which may happen in a worker thread while another thread calls setenv()
 * (which can move the environ array under a reader: glibc before 2.41).
 * So ossl_proc_init() copies those values in the host's start-up, hands
 * OpenSSL explicit values instead, and resolves the CA locations once;
 * nothing else in osslproc touches the environment, and nothing ever
 * writes it.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/provider.h>
#include <openssl/x509.h>

#include "osslproc-int.h"
#include "env.h"
#include "alloc/alloc.h"

static const char *const snapshot_names[ENV_COUNT] = {
	[ENV_SSL_CERT_FILE] = "SSL_CERT_FILE",
	[ENV_SSL_CERT_DIR] = "SSL_CERT_DIR",
	[ENV_OPENSSL_CONF] = "OPENSSL_CONF",
	[ENV_OPENSSL_MODULES] = "OPENSSL_MODULES",
};

static char *snapshot[ENV_COUNT];
static char *ca_file, *ca_dir;
static char modules_dir[4096];

/* Distribution bundles, most common first. */
static const char *const known_files[] = {
	"/etc/ssl/certs/ca-certificates.crt",            /* Debian, Ubuntu */
	"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", /* Fedora, RHEL */
	"/etc/pki/tls/certs/ca-bundle.crt",              /* older RHEL */
	"/etc/ssl/ca-bundle.pem",                        /* openSUSE */
	"/etc/ssl/cert.pem",                             /* Alpine, others */
};

const char *
env_get(enum env_var v)
{
	return snapshot[v];
}

static bool
readable(const char *path, bool want_dir)
{
	struct stat st;

	if (!path || !*path || stat(path, &st) != 0)
		return false;
	if (want_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode))
		return false;
	return access(path, want_dir ? R_OK | X_OK : R_OK) == 0;
}

/* SSL_CERT_DIR may list several directories: usable if one of them is. */
static bool
dir_list_usable(const char *list)
{
	char one[4096];
	const char *p = list;

	while (p && *p) {
		const char *end = strchr(p, ':');
		size_t n = end ? (size_t)(end - p) : strlen(p);

		if (n < sizeof(one)) {
			memcpy(one, p, n);
			one[n] = '\0';
			if (readable(one, true))
				return true;
		}
		p = end ? end + 1 : NULL;
	}
	return false;
}

struct candidate {
	const char *path;
	const char *source;
};

/* The first usable candidate, logged with where it came from. */
static int
pick(const struct candidate *c, size_t n, bool want_dir, char **out)
{
	for (size_t i = 0; i < n; i++) {
		bool ok;

		if (!c[i].path)
			continue;
		ok = want_dir ? dir_list_usable(c[i].path)
			      : readable(c[i].path, false);
		if (!ok) {
			log_info("CA %s %s (%s) is not readable; trying the "
				 "next source", want_dir ? "directory" : "file",
				 c[i].path, c[i].source);
			continue;
		}
		*out = strdup(c[i].path);
		if (!*out)
			return -ENOMEM;
		log_info("CA %s: %s (from %s)", want_dir ? "directory" : "file",
			 *out, c[i].source);
		return 0;
	}
	log_info("no CA %s found", want_dir ? "directory" : "file");
	return 0;
}

static int
resolve_ca(const struct init_config *cfg)
{
	struct candidate files[3 + ARRAY_SIZE(known_files)] = {
		{ cfg->ca_file, "the configuration" },
		{ snapshot[ENV_SSL_CERT_FILE], "SSL_CERT_FILE" },
		{ X509_get_default_cert_file(), "OpenSSL's default" },
	};
	struct candidate dirs[] = {
		{ cfg->ca_dir, "the configuration" },
		{ snapshot[ENV_SSL_CERT_DIR], "SSL_CERT_DIR" },
		{ X509_get_default_cert_dir(), "OpenSSL's default" },
		{ "/etc/ssl/certs", "the distribution" },
	};
	int rc;

	for (size_t i = 0; i < ARRAY_SIZE(known_files); i++)
		files[3 + i] = (struct candidate){ known_files[i],
						   "the distribution" };
	if (cfg->ca_file && !readable(cfg->ca_file, false))
		log_warn("cfg->ca_file %s is not a readable file; using the "
			 "next source", cfg->ca_file);
	if (cfg->ca_dir && !dir_list_usable(cfg->ca_dir))
		log_warn("cfg->ca_dir %s is not a readable directory; using "
			 "the next source", cfg->ca_dir);
	rc = pick(files, ARRAY_SIZE(files), false, &ca_file);
	if (!rc)
		rc = pick(dirs, ARRAY_SIZE(dirs), true, &ca_dir);
	return rc;
}

int
env_init(const struct init_config *cfg)
{
	/*
	 * OpenSSL's certificate time checks call gmtime_r(), and glibc reads
	 * TZ with getenv() the first time a process converts a time: in a
	 * worker thread, racing any setenv().  Do that first read here.
	 */
	tzset();
	for (int i = 0; i < ENV_COUNT; i++) {
		const char *v = secure_getenv(snapshot_names[i]);

		if (v && !(snapshot[i] = strdup(v))) {
			env_teardown();
			log_error("out of memory copying the environment");
			return -ENOMEM;
		}
	}
	if (resolve_ca(cfg)) {
		env_teardown();
		log_error("out of memory resolving the CA paths");
		return -ENOMEM;
	}
	return 0;
}

/*
 * After OpenSSL is initialised: give the default library context an
 * explicit provider directory, so that loading a provider later (in any
 * thread) does not read OPENSSL_MODULES.
 */
int
env_pin_openssl(void)
{
	const char *dir = snapshot[ENV_OPENSSL_MODULES];

	if (!dir)
		dir = OpenSSL_version(OPENSSL_MODULES_DIR);
	if (dir && !strncmp(dir, "MODULESDIR: ", 12))
		dir += 12;
	snprintf(modules_dir, sizeof(modules_dir), "%s", dir ? dir : "");
	if (modules_dir[0] &&
	    !OSSL_PROVIDER_set_default_search_path(NULL, modules_dir)) {
		log_error("cannot set OpenSSL's provider directory to %s",
			  modules_dir);
		return -EIO;
	}
	return 0;
}

const char *
env_modules_dir(void)
{
	return modules_dir[0] ? modules_dir : NULL;
}

void
env_teardown(void)
{
	for (int i = 0; i < ENV_COUNT; i++) {
		free(snapshot[i]);
		snapshot[i] = NULL;
	}
	free(ca_file);
	free(ca_dir);
	ca_file = ca_dir = NULL;
}

OSSL_PROC_EXPORT const char *
ossl_proc_ca_file(void)
{
	return ca_file;
}

OSSL_PROC_EXPORT const char *
ossl_proc_ca_dir(void)
{
	return ca_dir;
}

static int
check_ready(const char *fn, const void *arg)
{
	alloc_check();
	if (!arg) {
		log_bug_client("%s: argument is NULL", fn);
		return -EINVAL;
	}
	if (!proc_initialised()) {
		log_bug_client("%s: call ossl_proc_init() first", fn);
		return -EINVAL;
	}
	if (!ca_file && !ca_dir) {
		log_error("%s: no CA bundle or directory was found at init; "
			  "set ca_file or ca_dir in the configuration, or "
			  "SSL_CERT_FILE before ossl_proc_init()", fn);
		return -ENOENT;
	}
	return 0;
}

static int
load_failed(const char *fn)
{
	log_error("%s: OpenSSL could not load the CA locations (file %s, "
		  "directory %s): error %lu", fn, ca_file ? ca_file : "none",
		  ca_dir ? ca_dir : "none", ERR_peek_last_error());
	return -EIO;
}

OSSL_PROC_EXPORT int
ossl_proc_load_verify_paths(SSL_CTX *ctx)
{
	int rc = check_ready(__func__, ctx);

	if (rc)
		return rc;
	if (SSL_CTX_load_verify_locations(ctx, ca_file, ca_dir) != 1)
		return load_failed(__func__);
	return 0;
}

OSSL_PROC_EXPORT int
ossl_proc_load_verify_store(X509_STORE *store)
{
	int rc = check_ready(__func__, store);

	if (rc)
		return rc;
	if (X509_STORE_load_locations(store, ca_file, ca_dir) != 1)
		return load_failed(__func__);
	return 0;
}
