/* A plugin that vendors its own static copy of osslproc, as a module of a
 * plugin host would.  Its osslproc symbols are private to it
 * (-Wl,--exclude-libs,ALL), so they never bind to the host's copy. */
#include <osslproc.h>

#define PLUGIN_API __attribute__((visibility("default")))

PLUGIN_API int vendored_init(unsigned flags);
PLUGIN_API int vendored_init_with(const struct ossl_proc_allocator *al);
PLUGIN_API int vendored_init_config(const struct ossl_proc_config *c);
PLUGIN_API int vendored_teardown(void);
PLUGIN_API int vendored_get_stats(struct ossl_proc_stats *st);
PLUGIN_API int vendored_report(FILE *out);
PLUGIN_API void *vendored_init_address(void);

int
vendored_init(unsigned flags)
{
	struct ossl_proc_config c = OSSL_PROC_CONFIG_INIT;

	c.flags = flags;
	return ossl_proc_init(&c);
}

int
vendored_init_with(const struct ossl_proc_allocator *al)
{
	struct ossl_proc_config c = OSSL_PROC_CONFIG_INIT;

	c.allocator = al;
	return ossl_proc_init(&c);
}

int
vendored_init_config(const struct ossl_proc_config *c)
{
	return ossl_proc_init(c);
}

int
vendored_teardown(void)
{
	return ossl_proc_teardown();
}

int
vendored_get_stats(struct ossl_proc_stats *st)
{
	return ossl_proc_get_stats(st);
}

int
vendored_report(FILE *out)
{
	return ossl_proc_report(out);
}

/* Lets the host check that the plugin's copy is not its own. */
void *
vendored_init_address(void)
{
	return (void *)ossl_proc_init;
}
