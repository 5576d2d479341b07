/* Two copies of osslproc in one process: the host's shared library and a
 * plugin's vendored static copy.  Whichever installs first owns OpenSSL's
 * allocator; the other attaches to it instead of stacking a second
 * tracker, and an owning plugin is pinned when it unloads. */
#include <dlfcn.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <string.h>

#include "common/testlog.h"
#include "common/tls-util.h"

struct plugin {
	void *handle;
	int (*init)(unsigned flags);
	int (*init_with)(const struct ossl_proc_allocator *al);
	int (*teardown)(void);
	int (*get_stats)(struct ossl_proc_stats *st);
	int (*report)(FILE *out);
	void *(*init_address)(void);
};

static struct plugin
plugin_load(void)
{
	struct plugin p = { .handle = dlopen(VENDORED_PLUGIN, RTLD_NOW) };

	ck_assert_msg(p.handle, "dlopen: %s", dlerror());
	p.init = (int (*)(unsigned))dlsym(p.handle, "vendored_init");
	p.init_with = (int (*)(const struct ossl_proc_allocator *))dlsym(
		p.handle, "vendored_init_with");
	p.teardown = (int (*)(void))dlsym(p.handle, "vendored_teardown");
	p.get_stats = (int (*)(struct ossl_proc_stats *))dlsym(p.handle,
		"vendored_get_stats");
	p.report = (int (*)(FILE *))dlsym(p.handle, "vendored_report");
	p.init_address = (void *(*)(void))dlsym(p.handle,
		"vendored_init_address");
	ck_assert(p.init && p.init_with && p.teardown && p.get_stats &&
		  p.report &&
		  p.init_address);
	/* The plugin's copy is its own, not a binding to ours. */
	ck_assert_ptr_ne(p.init_address(), (void *)ossl_proc_init);
	ck_assert_ptr_null(dlsym(p.handle, "ossl_proc_init"));
	return p;
}

static bool
still_mapped(void)
{
	void *h = dlopen(VENDORED_PLUGIN, RTLD_NOW | RTLD_NOLOAD);

	if (h)
		dlclose(h);
	return h != NULL;
}

static struct ossl_proc_stats
host_stats(void)
{
	struct ossl_proc_stats st = { .size = sizeof(st) };

	ck_assert_int_eq(ossl_proc_get_stats(&st), 0);
	return st;
}

static void
handshakes(int n)
{
	struct tls_pki *pki = tls_pki_new();
	SSL_CTX *s = tls_server_ctx(pki), *c = tls_client_ctx(pki);

	ck_assert_int_eq(tls_handshakes(c, s, n), n);
	SSL_CTX_free(c);
	SSL_CTX_free(s);
	tls_pki_free(pki);
}

static char *
report_of(int (*report)(FILE *), char *buf, size_t len)
{
	FILE *f = tmpfile();
	size_t n;

	ck_assert_int_eq(report(f), 0);
	rewind(f);
	n = fread(buf, 1, len - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* The host installed first: the plugin attaches, sees the host's
 * counters, and unloads without pinning. */
START_TEST(host_owns_plugin_attaches)
{
	struct ossl_proc_config c = tl_config();
	struct ossl_proc_stats ps = { .size = sizeof(ps) };
	struct plugin p;
	void *x;

	ck_assert_int_eq(ossl_proc_init(&c), 0);
	p = plugin_load();
	ck_assert_int_eq(p.init(0), 0);
	ck_assert_int_eq(p.get_stats(&ps), 0);
	ck_assert_int_eq(ps.allocator, OSSL_PROC_ALLOC_ATTACHED);
	x = OPENSSL_malloc(77);
	ck_assert_int_eq(p.get_stats(&ps), 0);
	/* One set of counters: the host's. */
	ck_assert_uint_eq(ps.allocs, host_stats().allocs);
	ck_assert_uint_eq(ps.live_bytes, host_stats().live_bytes);
	OPENSSL_free(x);
	ck_assert_int_eq(p.teardown(), OSSL_PROC_UNLOAD_SAFE);
	dlclose(p.handle);
	ck_assert(!still_mapped());
	handshakes(3);
	ck_assert_int_eq(host_stats().allocator, OSSL_PROC_ALLOC_TRACKED);
	ossl_proc_teardown();
}
END_TEST

/* The plugin installed first: the host attaches, is told which object owns
 * the allocator, and the plugin stays mapped after dlclose because
 * OpenSSL keeps calling its allocator. */
START_TEST(plugin_owns_host_attaches)
{
	struct ossl_proc_config c = tl_config();
	char buf[4096];
	struct plugin p = plugin_load();

	ck_assert_int_eq(p.init(0), 0);
	ck_assert_int_eq(ossl_proc_init(&c), 0);
	ck_assert_int_eq(host_stats().allocator, OSSL_PROC_ALLOC_ATTACHED);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_INFO, "libvendored.so"), 1);
	handshakes(3);
	ck_assert_ptr_nonnull(strstr(report_of(ossl_proc_report, buf,
					       sizeof(buf)),
				     "allocator owner: " VENDORED_PLUGIN));
	ck_assert_uint_gt(host_stats().allocs, 1000);
	ck_assert_int_eq(p.teardown(), OSSL_PROC_UNLOAD_PINNED);
	dlclose(p.handle);
	ck_assert(still_mapped());
	/* OpenSSL still allocates through the pinned plugin. */
	handshakes(3);
	ck_assert_int_eq(ossl_proc_teardown(), OSSL_PROC_UNLOAD_SAFE);
}
END_TEST

/* Shared mode with osslproc inside the plugin: the vendored copy owns
 * the allocator on the host's arena; workers forked by the host place
 * their memory in the arena and give it all back when they exit(). */
START_TEST(plugin_owns_shared_mode)
{
	struct ossl_proc_config c = tl_config();
	struct ossl_proc_arena *a = ossl_proc_arena_new(32 << 20);
	struct ossl_proc_arena_stats as = { .size = sizeof(as) };
	struct plugin p = plugin_load();
	pid_t pids[4];

	ck_assert_ptr_nonnull(a);
	ck_assert_int_eq(p.init_with(ossl_proc_arena_allocator(a)), 0);
	ck_assert_int_eq(ossl_proc_init(&c), 0);
	ck_assert_int_eq(host_stats().allocator, OSSL_PROC_ALLOC_ATTACHED);
	handshakes(1);
	for (int i = 0; i < 4; i++) {
		pids[i] = fork();
		if (pids[i] == 0) {
			struct ossl_proc_arena_stats ws = { .size = sizeof(ws) };
			struct tls_pki *pki = tls_pki_new();
			SSL_CTX *s = tls_server_ctx(pki);
			SSL_CTX *cl = tls_client_ctx(pki);
			int ok = tls_handshakes(cl, s, 5) == 5;

			SSL_CTX_free(cl);
			SSL_CTX_free(s);
			tls_pki_free(pki);
			ossl_proc_arena_get_stats(a, &ws);
			exit(ok && ws.allocs > 0 ? 0 : 1);
		}
	}
	for (int i = 0; i < 4; i++) {
		int status;

		ck_assert_int_eq(waitpid(pids[i], &status, 0), pids[i]);
		ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	ck_assert_int_eq(ossl_proc_arena_get_stats(a, &as), 0);
	ck_assert_uint_gt(as.allocs, 1000);
	ck_assert_uint_eq(as.used_bytes, 0);
	ck_assert_uint_eq(as.bad_frees, 0);
	handshakes(1);
	ck_assert_int_eq(ossl_proc_teardown(), OSSL_PROC_UNLOAD_SAFE);
	ck_assert_int_eq(p.teardown(), OSSL_PROC_UNLOAD_PINNED);
	dlclose(p.handle);
}
END_TEST

/*
 * A copy of another version, as a later copy sees it: the ELF note
 * "osslproc" of the object holding the installed malloc, and the owner
 * record it points to, are the ABI between copies (lib/alloc/owner.c),
 * frozen but for fields appended at the end, so they are spelled out
 * here rather than shared with the library.  This executable is that
 * object: its note points to @other_copy_record.
 */
struct other_record {
	uint64_t magic;
	uint32_t version;
	uint32_t size;
	const struct other_record *self;
	const char *object;
	int (*get_stats)(struct ossl_proc_stats *out);
	void (*report)(FILE *out);
	void *(*malloc)(size_t n, const char *file, int line);
	void *appended_later;
};

struct other_record other_copy_record;

__asm__(".pushsection .note.osslproc, \"a\", %note\n"
	".balign 4\n"
	".long 9, 8, 0x6f70\n"
	".asciz \"osslproc\"\n"
	".balign 4\n"
	"1: .quad other_copy_record - 1b\n"
	".popsection\n");

static int
other_get_stats(struct ossl_proc_stats *out)
{
	out->allocs = 4242;
	return 0;
}

static void
other_report(FILE *out)
{
	fputs("report of the other copy\n", out);
}

static void *
other_malloc(size_t n, const char *file, int line)
{
	(void)file, (void)line;
	return malloc(n);
}

static void *
other_realloc(void *p, size_t n, const char *file, int line)
{
	(void)file, (void)line;
	return realloc(p, n);
}

static void
other_free(void *p, const char *file, int line)
{
	(void)file, (void)line;
	free(p);
}

/* In a child: what init makes of an allocator answering with @rec. */
static int
mode_with_other(struct other_record rec)
{
	struct ossl_proc_config c = tl_config();
	pid_t pid;
	int status;

	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		other_copy_record = rec;
		other_copy_record.self = rec.self ? &other_copy_record : NULL;
		if (!CRYPTO_set_mem_functions(other_malloc, other_realloc,
					      other_free) ||
		    ossl_proc_init(&c) != 0)
			_exit(100);
		_exit((int)host_stats().allocator);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status));
	return WEXITSTATUS(status);
}

/* A newer copy (a higher version, a longer record) owns the allocator:
 * this one attaches and reports the owner's counters and report; a
 * record that does not verify is no osslproc, or not the owner, and this
 * copy stacks on those functions instead. */
START_TEST(other_versions_recognised)
{
	struct other_record newer = {
		.magic = 0x6f73736c70726f63ull, .version = 3,
		.size = sizeof(struct other_record), .self = &other_copy_record,
		.object = "newer-copy.so", .get_stats = other_get_stats,
		.report = other_report, .malloc = other_malloc,
	};
	struct other_record bad;
	struct ossl_proc_config c = tl_config();
	char buf[4096];

	bad = newer, bad.version = 0;
	ck_assert_int_eq(mode_with_other(bad), OSSL_PROC_ALLOC_TRACKED);
	/* 0.2's records knew no malloc: never attached to. */
	bad = newer, bad.version = 1;
	ck_assert_int_eq(mode_with_other(bad), OSSL_PROC_ALLOC_TRACKED);
	/* A copy whose malloc is not the one installed is not the owner. */
	bad = newer, bad.malloc = NULL;
	ck_assert_int_eq(mode_with_other(bad), OSSL_PROC_ALLOC_TRACKED);
	bad = newer, bad.size = 24;
	ck_assert_int_eq(mode_with_other(bad), OSSL_PROC_ALLOC_TRACKED);
	bad = newer, bad.magic ^= 1;
	ck_assert_int_eq(mode_with_other(bad), OSSL_PROC_ALLOC_TRACKED);
	bad = newer, bad.self = NULL;
	ck_assert_int_eq(mode_with_other(bad), OSSL_PROC_ALLOC_TRACKED);
	ck_assert_int_eq(mode_with_other(newer), OSSL_PROC_ALLOC_ATTACHED);

	/* Here too, to look at what attaching gives. */
	other_copy_record = newer;
	ck_assert_int_eq(CRYPTO_set_mem_functions(other_malloc, other_realloc,
						  other_free), 1);
	ck_assert_int_eq(ossl_proc_init(&c), 0);
	ck_assert_int_eq(tl_count(OSSL_PROC_LOG_INFO,
				  "belongs to the osslproc copy in "
				  "newer-copy.so"), 1);
	ck_assert_uint_eq(host_stats().allocs, 4242);
	ck_assert_ptr_nonnull(strstr(report_of(ossl_proc_report, buf,
					       sizeof(buf)),
				     "report of the other copy"));
	ossl_proc_teardown();
}
END_TEST

/* OpenSSL's file argument is any caller's string: 0.2 answered a probe
 * by writing a pointer 32 bytes past one that read
 * "osslproc:owner-probe".  Nothing is written through it now. */
START_TEST(file_argument_never_written)
{
	char file[64];
	void *p;

	tl_init(TL_CONFIG());
	memset(file, 0xa5, sizeof(file));
	memcpy(file, "osslproc:owner-probe", 21);
	p = CRYPTO_malloc(0, file, 0x6f70726f);
	CRYPTO_free(p, OPENSSL_FILE, OPENSSL_LINE);
	for (size_t i = 21; i < sizeof(file); i++)
		ck_assert_int_eq((unsigned char)file[i], 0xa5);
	ossl_proc_teardown();
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("copies");
	TCase *tc = tcase_create("vendored");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, host_owns_plugin_attaches);
	tcase_add_test(tc, plugin_owns_host_attaches);
	tcase_add_test(tc, plugin_owns_shared_mode);
	tcase_add_test(tc, other_versions_recognised);
	tcase_add_test(tc, file_argument_never_written);
	suite_add_tcase(s, tc);
	return tl_run(s);
}
