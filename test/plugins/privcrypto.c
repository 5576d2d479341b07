/*
 * A plugin that carries everything itself: a vendored static osslproc and
 * static copies of libssl and libcrypto, all private to it
 * (-Wl,--exclude-libs,ALL).  OpenSSL's shared libcrypto is linked with
 * -z nodelete and never leaves the process; a static copy inside a plugin
 * is unmapped by dlclose like the rest of the plugin, together with the
 * destructors of the thread-local keys it created.
 *
 * Without calling pc_init() it is the same plugin without osslproc: the
 * negative control of test-versions.
 */
#include <errno.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <osslproc.h>

#define PLUGIN_API __attribute__((visibility("default")))

PLUGIN_API int pc_init(unsigned flags, ossl_proc_log_fn log);
PLUGIN_API int pc_close(void);
PLUGIN_API int pc_teardown(void);
PLUGIN_API int pc_use_openssl(void);
PLUGIN_API unsigned long pc_version(void);
PLUGIN_API void *pc_version_address(void);

static struct ossl_proc_module *scope;

int
pc_init(unsigned flags, ossl_proc_log_fn log)
{
	struct ossl_proc_config c = OSSL_PROC_CONFIG_INIT;
	int rc;

	c.flags = flags;
	c.log = log;
	c.log_level = OSSL_PROC_LOG_INFO;
	rc = ossl_proc_init(&c);
	if (rc < 0)
		return rc;
	scope = ossl_proc_module_open("privcrypto");
	return scope ? rc : -errno;
}

int
pc_close(void)
{
	int rc = ossl_proc_module_close(scope);

	scope = NULL;
	return rc;
}

int
pc_teardown(void)
{
	return ossl_proc_teardown();
}

/* What a plugin thread does with OpenSSL: each call leaves thread-local
 * state behind (an error queue, the thread's DRBGs). */
int
pc_use_openssl(void)
{
	unsigned char buf[32], md[EVP_MAX_MD_SIZE];
	unsigned int len;

	ERR_raise_data(ERR_LIB_USER, 1, "privcrypto");
	return RAND_bytes(buf, sizeof(buf)) == 1 &&
	       EVP_Digest(buf, sizeof(buf), md, &len, EVP_sha256(), NULL);
}

/* The version of the plugin's own libcrypto. */
unsigned long
pc_version(void)
{
	return OpenSSL_version_num();
}

/* Lets the host check that this libcrypto is not its own. */
void *
pc_version_address(void)
{
	return (void *)OpenSSL_version_num;
}
