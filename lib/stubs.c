/*
 * Parts of the public contract that later releases implement (fork
 * handling, per-process SSL_CTX, module scopes, environment).  Each says
 * so in the log and returns -ENOSYS, as the header documents; none
 * pretends to work.
 */
#include "osslproc-int.h"

static void
not_yet(const char *fn)
{
	log_error("%s is not implemented in this version of osslproc", fn);
}

#define NOT_YET(ret) do { not_yet(__func__); return ret; } while (0)

OSSL_PROC_EXPORT struct ossl_proc_module *
ossl_proc_module_open(const char *name)
{
	(void)name;
	errno = ENOSYS;
	NOT_YET(NULL);
}

OSSL_PROC_EXPORT int
ossl_proc_module_close(struct ossl_proc_module *m)
{
	(void)m;
	NOT_YET(-ENOSYS);
}

OSSL_PROC_EXPORT int
ossl_proc_module_ex_new_index(struct ossl_proc_module *m, int class_index,
			      long argl, void *argp, CRYPTO_EX_new *new_func,
			      CRYPTO_EX_dup *dup_func, CRYPTO_EX_free *free_func)
{
	(void)m, (void)class_index, (void)argl, (void)argp;
	(void)new_func, (void)dup_func, (void)free_func;
	NOT_YET(-ENOSYS);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_info_callback(struct ossl_proc_module *m, SSL_CTX *ctx,
				   void (*cb)(const SSL *ssl, int where,
					      int ret))
{
	(void)m, (void)ctx, (void)cb;
	NOT_YET(-ENOSYS);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_verify(struct ossl_proc_module *m, SSL_CTX *ctx,
			    int mode, SSL_verify_cb cb)
{
	(void)m, (void)ctx, (void)mode, (void)cb;
	NOT_YET(-ENOSYS);
}

OSSL_PROC_EXPORT int
ossl_proc_module_set_msg_callback(struct ossl_proc_module *m, SSL_CTX *ctx,
				  void (*cb)(int write_p, int version,
					     int content_type, const void *buf,
					     size_t len, SSL *ssl, void *arg))
{
	(void)m, (void)ctx, (void)cb;
	NOT_YET(-ENOSYS);
}

OSSL_PROC_EXPORT int
ossl_proc_module_load_strings(struct ossl_proc_module *m, int lib,
			      ERR_STRING_DATA *str)
{
	(void)m, (void)lib, (void)str;
	NOT_YET(-ENOSYS);
}

OSSL_PROC_EXPORT OSSL_LIB_CTX *
ossl_proc_module_libctx(struct ossl_proc_module *m)
{
	(void)m;
	NOT_YET(NULL);
}

OSSL_PROC_EXPORT int
ossl_proc_module_on_close(struct ossl_proc_module *m,
			  void (*undo)(void *arg), void *arg)
{
	(void)m, (void)undo, (void)arg;
	NOT_YET(-ENOSYS);
}
