/*
 * Where OpenSSL versions differ in a way a host can observe.
 *
 * OpenSSL 3.6 keeps most of its thread-local state under one pthread key,
 * the "master key" of crypto/threads_common.c, whose destructor
 * (clean_master_key) runs when each thread that used OpenSSL exits.  The
 * key is created on first use and never deleted: OPENSSL_cleanup() deletes
 * its other keys (crypto/init.c, crypto/initthread.c) but not this one.
 * OpenSSL 3.0 to 3.5 delete every key they create in OPENSSL_cleanup().
 *
 * Shared libcrypto is linked -z nodelete, so this only matters for a
 * plugin that links libcrypto statically: dlclose runs the plugin's
 * atexit handler (OPENSSL_cleanup) and unmaps it.  Before 3.6 a thread
 * that used the plugin's OpenSSL can exit afterwards (its state leaks);
 * from 3.6 on its exit calls the destructor in unmapped code.  A plugin
 * that vendors osslproc in that situation is pinned at close.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/testlog.h"

/* The first version whose master key outlives OPENSSL_cleanup(). */
#define MASTER_KEY_VERSION 0x30600000UL

struct plugin {
	void *handle;
	int (*init)(unsigned flags, ossl_proc_log_fn log);
	int (*close)(void);
	int (*teardown)(void);
	int (*use_openssl)(void);
	unsigned long (*version)(void);
	void *(*version_address)(void);
};

static struct plugin
plugin_load(void)
{
	struct plugin p = { .handle = dlopen(PRIVCRYPTO_PLUGIN, RTLD_NOW) };

	ck_assert_msg(p.handle, "dlopen: %s", dlerror());
	p.init = (int (*)(unsigned, ossl_proc_log_fn))dlsym(p.handle,
							    "pc_init");
	p.close = (int (*)(void))dlsym(p.handle, "pc_close");
	p.teardown = (int (*)(void))dlsym(p.handle, "pc_teardown");
	p.use_openssl = (int (*)(void))dlsym(p.handle, "pc_use_openssl");
	p.version = (unsigned long (*)(void))dlsym(p.handle, "pc_version");
	p.version_address = (void *(*)(void))dlsym(p.handle,
						   "pc_version_address");
	ck_assert(p.init && p.close && p.teardown && p.use_openssl &&
		  p.version && p.version_address);
	return p;
}

static bool
still_mapped(void)
{
	void *h = dlopen(PRIVCRYPTO_PLUGIN, RTLD_NOW | RTLD_NOLOAD);

	if (h)
		dlclose(h);
	return h != NULL;
}

/* A thread of the host that calls into the plugin's OpenSSL, then stays
 * alive until told to exit. */
struct worker {
	pthread_t thread;
	sem_t used, go;
	int (*use_openssl)(void);
	int ok;
};

static void *
worker_main(void *arg)
{
	struct worker *w = arg;

	w->ok = w->use_openssl();
	sem_post(&w->used);
	sem_wait(&w->go);
	return NULL;
}

static void
worker_start(struct worker *w, const struct plugin *p)
{
	w->use_openssl = p->use_openssl;
	ck_assert_int_eq(sem_init(&w->used, 0, 0), 0);
	ck_assert_int_eq(sem_init(&w->go, 0, 0), 0);
	ck_assert_int_eq(pthread_create(&w->thread, NULL, worker_main, w), 0);
	while (sem_wait(&w->used) != 0)
		;
}

/* The thread exits now, after its plugin was dlclose'd. */
static void
worker_exit(struct worker *w)
{
	sem_post(&w->go);
	ck_assert_int_eq(pthread_join(w->thread, NULL), 0);
	sem_destroy(&w->used);
	sem_destroy(&w->go);
}

/* The plugin's OpenSSL is a copy of its own, of the same version. */
START_TEST(plugin_openssl_is_private)
{
	struct plugin p = plugin_load();

	ck_assert_ptr_ne(p.version_address(), (void *)OpenSSL_version_num);
	ck_assert_ptr_null(dlsym(p.handle, "OpenSSL_version_num"));
	ck_assert_ptr_null(dlsym(p.handle, "ossl_proc_init"));
	ck_assert_uint_eq(p.version(), OpenSSL_version_num());
	dlclose(p.handle);
	ck_assert(!still_mapped());
}
END_TEST

/*
 * The negative control, without osslproc: a thread uses the plugin's
 * OpenSSL, the plugin is unloaded, the thread exits.  It runs in a child
 * that reports each step through a pipe and then kills itself, so that a
 * thread state leaked on purpose is not reported by valgrind or LSan.
 */
static void
unprotected_child(int fd)
{
	struct plugin p = plugin_load();
	struct worker w;

	worker_start(&w, &p);
	if (w.ok && write(fd, "u", 1) != 1)
		_exit(2);
	dlclose(p.handle);
	if (!still_mapped() && write(fd, "d", 1) != 1)
		_exit(2);
	worker_exit(&w);
	if (write(fd, "j", 1) != 1)
		_exit(2);
	raise(SIGKILL);
}

START_TEST(unprotected_thread_exit)
{
	bool crashes = OpenSSL_version_num() >= MASTER_KEY_VERSION;
	char steps[8] = "";
	int fds[2], status;
	ssize_t n, got = 0;
	pid_t pid;

	ck_assert_int_eq(pipe(fds), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(fds[0]);
		unprotected_child(fds[1]);
	}
	close(fds[1]);
	while (got < (ssize_t)sizeof(steps) - 1 &&
	       (n = read(fds[0], steps + got, sizeof(steps) - 1 - got)) > 0)
		got += n;
	close(fds[0]);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFSIGNALED(status));
	/* Used OpenSSL, was unmapped; then the thread's exit decides. */
	if (crashes) {
		ck_assert_str_eq(steps, "ud");
		ck_assert_int_eq(WTERMSIG(status), SIGSEGV);
	} else {
		ck_assert_str_eq(steps, "udj");
		ck_assert_int_eq(WTERMSIG(status), SIGKILL);
	}
}
END_TEST

/* The same with osslproc vendored in the plugin: closing its scope, or
 * the last teardown, pins the plugin, so the thread exits safely after
 * dlclose on every version.  Without the tracked allocator nothing else
 * would keep it mapped. */
struct pin_case {
	unsigned flags;         /* the plugin's ossl_proc_config.flags */
	bool close_scope;       /* close its module scope before teardown */
};

static void
protected_thread_exit(struct pin_case pc)
{
	struct plugin p = plugin_load();
	struct worker w;

	ck_assert_int_eq(p.init(pc.flags, tl_log), 0);
	worker_start(&w, &p);
	ck_assert(w.ok);
	if (pc.close_scope)
		ck_assert_int_eq(p.close(), OSSL_PROC_UNLOAD_PINNED);
	ck_assert_int_eq(p.teardown(), OSSL_PROC_UNLOAD_PINNED);
	ck_assert_int_ge(tl_count(OSSL_PROC_LOG_INFO, "its own libcrypto"), 1);
	dlclose(p.handle);
	ck_assert(still_mapped());
	worker_exit(&w);
}

START_TEST(pinned_without_allocator)
{
	protected_thread_exit((struct pin_case){
		.flags = OSSL_PROC_F_NO_ALLOCATOR,
		.close_scope = true,
	});
}
END_TEST

/* With the allocator installed in the plugin's libcrypto, teardown pins
 * the plugin for that reason as well. */
START_TEST(pinned_with_allocator)
{
	protected_thread_exit((struct pin_case){
		.flags = 0,
		.close_scope = true,
	});
}
END_TEST

/* A plugin that never closes a scope: the last teardown alone pins it. */
START_TEST(pinned_by_teardown_alone)
{
	protected_thread_exit((struct pin_case){
		.flags = OSSL_PROC_F_NO_ALLOCATOR,
		.close_scope = false,
	});
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("versions");
	TCase *tc = tcase_create("private-libcrypto");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, plugin_openssl_is_private);
	tcase_add_test(tc, unprotected_thread_exit);
	tcase_add_test(tc, pinned_without_allocator);
	tcase_add_test(tc, pinned_with_allocator);
	tcase_add_test(tc, pinned_by_teardown_alone);
	suite_add_tcase(s, tc);
	return tl_run(s);
}
