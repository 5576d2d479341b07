/*
 * osslproc-suite-preload.so: LD_PRELOADed into every process of OpenSSL's
 * test suite by scripts/test-openssl.  It links nothing of OpenSSL: a
 * test program that carries a static libcrypto (and was relinked with
 * osslproc and shim.c) must not get a shared libcrypto as well.  Every
 * other process gets osslproc-suite-shim.so, which links libosslproc and
 * the shared libcrypto under test and initialises osslproc from its
 * constructor, before the program's own constructors and main run.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#ifndef SHIM_PATH
#error "SHIM_PATH: the path of osslproc-suite-shim.so"
#endif

__attribute__((constructor))
static void preload(void)
{
	char line[1024];
	int n;

	if (dlsym(RTLD_DEFAULT, "osslproc_suite_static"))
		return;
	/* NODELETE: osslproc's allocator must stay mapped until exit. */
	if (dlopen(SHIM_PATH, RTLD_NOW | RTLD_NODELETE))
		return;
	n = snprintf(line, sizeof(line), "osslproc-suite: %s\n", dlerror());
	if (n > 0 && write(STDERR_FILENO, line, strlen(line)) < 0) {
		/* nowhere to report it */
	}
}
