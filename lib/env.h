/* The environment snapshot and the CA locations (env.c). */
#ifndef OSSLPROC_ENV_H
#define OSSLPROC_ENV_H

#include "osslproc-int.h"

#pragma GCC visibility push(hidden)

/* The environment values OpenSSL would read later, copied at init. */
enum env_var {
	ENV_SSL_CERT_FILE,
	ENV_SSL_CERT_DIR,
	ENV_OPENSSL_CONF,
	ENV_OPENSSL_MODULES,
	ENV_COUNT,
};

/* Snapshot the environment and resolve the CA locations (first init). */
int env_init(const struct init_config *cfg);
/* After OpenSSL's init: pin the provider directory. */
int env_pin_openssl(void);
void env_teardown(void);
/* A snapshot value, or NULL when the variable was unset. */
const char *env_get(enum env_var v);
/* The provider directory given to OpenSSL, or NULL. */
const char *env_modules_dir(void);

#pragma GCC visibility pop

#endif /* OSSLPROC_ENV_H */
