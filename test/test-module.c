/* Module scopes: a real plugin, dlopen'ed and dlclose'd, registers
 * callbacks with OpenSSL; after its scope closes and it is unloaded the
 * host keeps working.  Without the scope the same plugin crashes the
 * host, which shows the test catches the bug. */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <limits.h>
#include <stdio.h>
#include <time.h>

#include "common/testlog.h"
#include "common/tls-util.h"

/* Expire every cached session of @ctx (the remove-session callback). */
static void
flush_all_sessions(SSL_CTX *ctx)
{
#if OPENSSL_VERSION_NUMBER >= 0x30400000L
	SSL_CTX_flush_sessions_ex(ctx, (time_t)LLONG_MAX);
#else
	SSL_CTX_flush_sessions(ctx, LONG_MAX);
#endif
}

struct plugin {
	void *handle;
	int (*attach)(SSL_CTX *client, SSL_CTX *server, int scoped);
	int (*detach)(void);
	int (*index)(void);
	unsigned (*seen)(void);
	unsigned (*all)(void);
	int (*init_vendored)(void);
	int (*teardown_vendored)(void);
};

static struct tls_pki *pki;
static SSL_CTX *server, *client;

static void
setup(void)
{
	struct ossl_proc_config c = tl_config();

	ck_assert_int_eq(ossl_proc_init(&c), 0);
	pki = tls_pki_new();
	server = tls_server_ctx(pki);
	client = tls_client_ctx(pki);
	ck_assert(pki && server && client);
	/* So that every callback kind has a reason to fire: the client
	 * offers ALPN and caches sessions, the server asks for a client
	 * certificate (optional) and caches sessions. */
	ck_assert_int_eq(SSL_CTX_set_alpn_protos(client,
			 (const unsigned char *)"\x02h2", 3), 0);
	SSL_CTX_set_session_cache_mode(client, SSL_SESS_CACHE_CLIENT);
	SSL_CTX_set_verify(server, SSL_VERIFY_PEER, NULL);
	ck_assert_int_eq(SSL_CTX_set_session_id_context(server,
			 (const unsigned char *)"t", 1), 1);
}

static void
teardown(void)
{
	SSL_CTX_free(client);
	SSL_CTX_free(server);
	tls_pki_free(pki);
	ossl_proc_teardown();
}

#define SYM(p, name) dlsym((p)->handle, name)

static struct plugin
plugin_load(const char *path)
{
	struct plugin p = { .handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) };

	ck_assert_msg(p.handle, "dlopen: %s", dlerror());
	*(void **)&p.attach = SYM(&p, "plug_attach");
	*(void **)&p.detach = SYM(&p, "plug_detach");
	*(void **)&p.index = SYM(&p, "plug_index");
	*(void **)&p.seen = SYM(&p, "plug_seen");
	*(void **)&p.all = SYM(&p, "plug_all");
	*(void **)&p.init_vendored = SYM(&p, "plug_init_vendored");
	*(void **)&p.teardown_vendored = SYM(&p, "plug_teardown_vendored");
	ck_assert(p.attach && p.detach && p.index && p.seen && p.all);
	return p;
}

static bool
mapped(const char *path)
{
	void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);

	if (h)
		dlclose(h);
	return h != NULL;
}

/*
 * The plugin registers everything on the client context; a connection is
 * created (and given plugin ex_data) before the unload, then after the
 * unload the host frees it, handshakes on it and on the context.
 */
struct unload_case {
	const char *plugin;     /* path to dlopen */
	bool scoped;            /* registers through a module scope */
	int expect_detach;      /* what closing the scope returns; 0 when
				   there is no scope to close */
};

static void
load_use_unload(struct unload_case uc)
{
	struct plugin p = plugin_load(uc.plugin);
	struct tls_conn live;

	ck_assert_int_eq(p.attach(client, server, uc.scoped), 0);
	ck_assert_int_eq(tls_handshakes(client, server, 2), 2);
	flush_all_sessions(server); /* remove-session */
	ck_assert_int_eq(tls_pair_new(client, server, &live), 0);
	ck_assert_int_eq(SSL_set_ex_data(live.client, p.index(), &live), 1);
	ck_assert_int_eq(SSL_set_ex_data(live.server, p.index(), NULL), 1);
	{
		struct tls_conn tmp;

		/* An SSL with plugin ex_data freed while it is loaded. */
		ck_assert_int_eq(tls_pair_new(client, server, &tmp), 0);
		SSL_set_ex_data(tmp.client, p.index(), &tmp);
		tls_conn_free(&tmp);
	}
	/* Every kind of callback ran in the plugin. */
	ck_assert_uint_eq(p.seen(), p.all());
	ck_assert_int_eq(p.detach(), uc.expect_detach);
	dlclose(p.handle);
	/* Each of these calls into the plugin without the scope. */
	ck_assert_int_eq(tls_pair_handshake(&live), 0);
	ck_assert_int_eq(tls_exchange(&live), 0);
	tls_conn_free(&live);
	ck_assert_int_eq(tls_handshakes(client, server, 2), 2);
	flush_all_sessions(server);
}

START_TEST(scoped_plugin_unloads_safely)
{
	load_use_unload((struct unload_case){
		.plugin = TLSPLUG,
		.scoped = true,
		.expect_detach = OSSL_PROC_UNLOAD_SAFE,
	});
	ck_assert(!mapped(TLSPLUG));
	/* The context's callbacks are back to what they were. */
	ck_assert_ptr_null(SSL_CTX_get_info_callback(client));
	ck_assert_ptr_null(SSL_CTX_get_verify_callback(client));
	ck_assert_int_eq(SSL_CTX_get_verify_mode(client), SSL_VERIFY_PEER);
	ck_assert_ptr_null(SSL_CTX_get_keylog_callback(client));
	ck_assert_ptr_null(SSL_CTX_sess_get_new_cb(client));
	ck_assert_ptr_null(SSL_CTX_sess_get_remove_cb(server));
	ck_assert_ptr_null(SSL_CTX_get_client_cert_cb(client));
}
END_TEST

/* The same plugin registering directly with OpenSSL: the host crashes. */
START_TEST(unscoped_plugin_crashes_host)
{
	load_use_unload((struct unload_case){
		.plugin = TLSPLUG,
		.scoped = false,
		.expect_detach = 0,
	});
}
END_TEST

/* Loaded and unloaded many times: every cycle works. */
START_TEST(reload_cycles)
{
	for (int i = 0; i < 20; i++)
		load_use_unload((struct unload_case){
			.plugin = TLSPLUG,
			.scoped = true,
			.expect_detach = OSSL_PROC_UNLOAD_SAFE,
		});
	ck_assert(!mapped(TLSPLUG));
}
END_TEST

/* dlopen, register everything, close, dlclose: what stays behind per
 * cycle is bounded (OpenSSL keeps an ex_data slot and an error library
 * number per cycle; nothing of osslproc's grows). */
START_TEST(thousand_cycles_bounded)
{
	struct ossl_proc_stats st = { .size = sizeof(st) };
	uint64_t after_10 = 0;

	for (int i = 0; i < 1000; i++) {
		struct plugin p = plugin_load(TLSPLUG);

		ck_assert_int_eq(p.attach(client, server, 1), 0);
		ck_assert_int_eq(p.detach(), OSSL_PROC_UNLOAD_SAFE);
		dlclose(p.handle);
		if (i == 9) {
			ossl_proc_get_stats(&st);
			after_10 = st.live_bytes;
		}
	}
	ossl_proc_get_stats(&st);
	fprintf(stderr, "growth over 990 cycles: %llu bytes\n",
		(unsigned long long)(st.live_bytes - after_10));
	ck_assert_uint_le(st.live_bytes - after_10, 990 * 128);
	ck_assert(!mapped(TLSPLUG));
	ck_assert_int_eq(tls_handshakes(client, server, 1), 1);
}
END_TEST

static int host_info_calls;

static void
host_info(const SSL *ssl, int where, int ret)
{
	(void)ssl, (void)where, (void)ret;
	host_info_calls++;
}

/* The host replaced a callback after the module set it: close keeps the
 * host's and says so. */
START_TEST(replaced_callback_kept)
{
	struct plugin p = plugin_load(TLSPLUG);

	ck_assert_int_eq(p.attach(client, server, 1), 0);
	SSL_CTX_set_info_callback(client, host_info);
	tl_expect(OSSL_PROC_LOG_WARNING, "info callback");
	ck_assert_int_eq(p.detach(), OSSL_PROC_UNLOAD_SAFE);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_WARNING, "was replaced"), 1);
	tl_expect(0, NULL);
	dlclose(p.handle);
	ck_assert_ptr_eq(SSL_CTX_get_info_callback(client), host_info);
	ck_assert_int_eq(tls_handshakes(client, server, 1), 1);
	ck_assert_int_gt(host_info_calls, 0);
}
END_TEST

static int calls_a, calls_b;

static void
info_a(const SSL *ssl, int where, int ret)
{
	(void)ssl, (void)where, (void)ret;
	calls_a++;
}

static void
info_b(const SSL *ssl, int where, int ret)
{
	(void)ssl, (void)where, (void)ret;
	calls_b++;
}

/* Two modules on one context: the newest open one is called; closing in
 * either order leaves the right one, then the original. */
static void
stacked(bool close_newest_first)
{
	struct ossl_proc_module *a = ossl_proc_module_open("a");
	struct ossl_proc_module *b = ossl_proc_module_open("b");

	SSL_CTX_set_info_callback(client, host_info);
	ck_assert_int_eq(ossl_proc_module_set_info_callback(a, client, info_a),
			 0);
	ck_assert_int_eq(ossl_proc_module_set_info_callback(b, client, info_b),
			 0);
	ck_assert_int_eq(tls_handshakes(client, server, 1), 1);
	ck_assert(calls_b > 0 && calls_a == 0);
	calls_a = calls_b = 0;
	ck_assert_int_eq(ossl_proc_module_close(close_newest_first ? b : a),
			 OSSL_PROC_UNLOAD_SAFE);
	ck_assert_int_eq(tls_handshakes(client, server, 1), 1);
	if (close_newest_first)
		ck_assert(calls_a > 0 && calls_b == 0);
	else
		ck_assert(calls_b > 0 && calls_a == 0);
	ck_assert_int_eq(ossl_proc_module_close(close_newest_first ? a : b),
			 OSSL_PROC_UNLOAD_SAFE);
	calls_a = calls_b = host_info_calls = 0;
	ck_assert_int_eq(tls_handshakes(client, server, 1), 1);
	ck_assert(calls_a == 0 && calls_b == 0 && host_info_calls > 0);
	ck_assert_ptr_eq(SSL_CTX_get_info_callback(client), host_info);
}

START_TEST(stacked_close_newest_first)
{
	stacked(true);
}
END_TEST

START_TEST(stacked_close_oldest_first)
{
	stacked(false);
}
END_TEST

/* A context freed before its module closes: the close skips it. */
START_TEST(context_freed_first)
{
	struct ossl_proc_module *m = ossl_proc_module_open("early");
	SSL_CTX *ctx = tls_client_ctx(pki);

	ck_assert_int_eq(ossl_proc_module_set_info_callback(m, ctx, info_a),
			 0);
	SSL_CTX_free(ctx);
	ck_assert_int_eq(ossl_proc_module_close(m), OSSL_PROC_UNLOAD_SAFE);
}
END_TEST

static int hook_order[4], hooks_run;

static void
undo_hook(void *arg)
{
	hook_order[hooks_run++] = (int)(intptr_t)arg;
}

START_TEST(on_close_lifo_and_libctx)
{
	struct ossl_proc_module *m = ossl_proc_module_open("hooks");
	OSSL_LIB_CTX *lc;
	EVP_MD *md;

	ck_assert_int_eq(ossl_proc_module_on_close(m, undo_hook, (void *)1),
			 0);
	ck_assert_int_eq(ossl_proc_module_on_close(m, undo_hook, (void *)2),
			 0);
	lc = ossl_proc_module_libctx(m);
	ck_assert_ptr_nonnull(lc);
	ck_assert_ptr_eq(ossl_proc_module_libctx(m), lc);
	md = EVP_MD_fetch(lc, "SHA256", NULL);
	ck_assert_ptr_nonnull(md);
	EVP_MD_free(md);
	ck_assert_int_eq(ossl_proc_module_close(m), OSSL_PROC_UNLOAD_SAFE);
	ck_assert_int_eq(hooks_run, 2);
	ck_assert_int_eq(hook_order[0], 2);
	ck_assert_int_eq(hook_order[1], 1);
}
END_TEST

static struct ossl_proc_module *racing;
static atomic_int refused, accepted;

static void *
registrar(void *arg)
{
	(void)arg;
	for (int i = 0; i < 2000; i++) {
		int rc = ossl_proc_module_set_info_callback(racing, client,
							    info_a);

		atomic_fetch_add(rc ? &refused : &accepted, 1);
	}
	return NULL;
}

/* Closing a module while another thread registers through it: every
 * registration is either recorded (and undone by the close) or refused. */
START_TEST(close_while_registering)
{
	pthread_t t;

	racing = ossl_proc_module_open("racing");
	tl_expect(OSSL_PROC_LOG_ERROR, "not an open module");
	pthread_create(&t, NULL, registrar, NULL);
	while (atomic_load(&accepted) == 0)
		sched_yield();
	ck_assert_int_eq(ossl_proc_module_close(racing),
			 OSSL_PROC_UNLOAD_SAFE);
	pthread_join(t, NULL);
	ck_assert_int_eq(atomic_load(&accepted) + atomic_load(&refused), 2000);
	ck_assert_int_gt(atomic_load(&accepted), 0);
	/* Nothing of the closed module is left on the context. */
	ck_assert_ptr_null(SSL_CTX_get_info_callback(client));
	calls_a = 0;
	ck_assert_int_eq(tls_handshakes(client, server, 1), 1);
	ck_assert_int_eq(calls_a, 0);
}
END_TEST

/* A module that sets one kind twice restores once, silently. */
START_TEST(same_kind_twice)
{
	struct ossl_proc_module *m = ossl_proc_module_open("twice");

	ck_assert_int_eq(ossl_proc_module_set_info_callback(m, client, info_a),
			 0);
	ck_assert_int_eq(ossl_proc_module_set_info_callback(m, client, info_b),
			 0);
	ck_assert_int_eq(ossl_proc_module_close(m), OSSL_PROC_UNLOAD_SAFE);
	ck_assert_ptr_null(SSL_CTX_get_info_callback(client));
}
END_TEST

/* Misuse: clear errors, no crash. */
START_TEST(misuse)
{
	struct ossl_proc_module *m = ossl_proc_module_open("misuse");

	tl_expect(OSSL_PROC_LOG_ERROR, "client bug");
	ck_assert_int_eq(ossl_proc_module_close(NULL), -EINVAL);
	ck_assert_int_eq(ossl_proc_module_set_info_callback(m, client, NULL),
			 -EINVAL);
	ck_assert_int_eq(ossl_proc_module_set_info_callback(m, NULL, info_a),
			 -EINVAL);
	ck_assert_int_eq(ossl_proc_module_close(m), OSSL_PROC_UNLOAD_SAFE);
	/* Closed: the handle is refused, never dereferenced. */
	ck_assert_int_eq(ossl_proc_module_close(m), -EINVAL);
	ck_assert_int_eq(ossl_proc_module_set_info_callback(m, client, info_a),
			 -EINVAL);
	ck_assert_int_lt(ossl_proc_module_ex_new_index(m, CRYPTO_EX_INDEX_SSL,
						       0, NULL, NULL, NULL,
						       NULL), 0);
	ck_assert_ptr_null(ossl_proc_module_libctx(m));
	ck_assert_int_eq(ossl_proc_module_on_close(m, undo_hook, NULL),
			 -EINVAL);
}
END_TEST

/* osslproc vendored in the plugin: its trampolines stay reachable from the
 * connection created while it was loaded, so it is pinned, and says so. */
START_TEST(vendored_plugin_pinned)
{
	struct plugin p = plugin_load(TLSPLUG_VENDORED);
	struct tls_conn live;

	ck_assert_int_eq(p.init_vendored(), 0);
	ck_assert_int_eq(p.attach(client, server, 1), 0);
	ck_assert_int_eq(tls_pair_new(client, server, &live), 0);
	ck_assert_int_eq(p.detach(), OSSL_PROC_UNLOAD_PINNED);
	ck_assert_int_ge(p.teardown_vendored(), 0);
	dlclose(p.handle);
	ck_assert(mapped(TLSPLUG_VENDORED));
	ck_assert_int_eq(tls_pair_handshake(&live), 0);
	tls_conn_free(&live);
	ck_assert_int_eq(tls_handshakes(client, server, 1), 1);
}
END_TEST

/* Two plugins, each with its own vendored copy, stacked on the same
 * contexts, unloaded in either order while the host keeps handshaking. */
static void
two_vendored(bool first_loaded_unloads_first)
{
	struct plugin a = plugin_load(TLSPLUG_VENDORED);
	struct plugin b = plugin_load(TLSPLUG_VENDORED2);
	struct plugin *order[2] = { &a, &b };

	if (!first_loaded_unloads_first) {
		order[0] = &b;
		order[1] = &a;
	}
	ck_assert_int_eq(a.init_vendored(), 0);
	ck_assert_int_eq(b.init_vendored(), 0);
	ck_assert_int_eq(a.attach(client, server, 1), 0);
	ck_assert_int_eq(b.attach(client, server, 1), 0);
	ck_assert_int_eq(tls_handshakes(client, server, 2), 2);
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(order[i]->detach(), OSSL_PROC_UNLOAD_PINNED);
		ck_assert_int_ge(order[i]->teardown_vendored(), 0);
		dlclose(order[i]->handle);
		ck_assert_int_eq(tls_handshakes(client, server, 2), 2);
	}
	ck_assert(mapped(TLSPLUG_VENDORED) && mapped(TLSPLUG_VENDORED2));
}

START_TEST(two_vendored_first_out_first)
{
	two_vendored(true);
}
END_TEST

START_TEST(two_vendored_last_out_first)
{
	two_vendored(false);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("module");
	TCase *tc = tcase_create("plugin");

	tcase_set_timeout(tc, 120);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, scoped_plugin_unloads_safely);
	tcase_add_test_raise_signal(tc, unscoped_plugin_crashes_host, SIGSEGV);
	tcase_add_test(tc, reload_cycles);
	tcase_add_test(tc, thousand_cycles_bounded);
	tcase_add_test(tc, replaced_callback_kept);
	tcase_add_test(tc, vendored_plugin_pinned);
	tcase_add_test(tc, two_vendored_first_out_first);
	tcase_add_test(tc, two_vendored_last_out_first);
	suite_add_tcase(s, tc);

	tc = tcase_create("scope");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, stacked_close_newest_first);
	tcase_add_test(tc, stacked_close_oldest_first);
	tcase_add_test(tc, context_freed_first);
	tcase_add_test(tc, on_close_lifo_and_libctx);
	tcase_add_test(tc, misuse);
	tcase_add_test(tc, close_while_registering);
	tcase_add_test(tc, same_kind_twice);
	suite_add_tcase(s, tc);
	return tl_run(s);
}
