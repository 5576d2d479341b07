/*
 * The cost of one registration osslproc-run interposes, run with and
 * without it (test/bench/reg-bench.sh runs both, side by side):
 * SSL_CTX_set_info_callback() and SSL_set_info_callback() with a
 * callback in a dlopen'ed plugin (attributed to the plugin's implicit
 * scope) and with one in this program (passed straight through), and
 * SSL_set_info_callback() once per connection, as a plugin that
 * configures each SSL does.  Prints the median ns per call of REPS timed
 * rounds and what the heap and RSS grew by across them: repeating a
 * registration replaces its entry, so neither may grow.
 *
 *   reg-bench PLUGIN [CALLS [REPS]]
 *
 * CALLS (1,000,000) is the number of calls timed per case, in REPS (5)
 * rounds after one untimed round that warms up; the per-connection cases
 * make a tenth as many connections.
 */
#include <dlfcn.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/ssl.h>

typedef void (*info_fn)(const SSL *, int, int);

static SSL_CTX *ctx, *conn_ctx;
static SSL *ssl;
static info_fn plugin_cb;

static void
main_cb(const SSL *s, int where, int ret)
{
	(void)s, (void)where, (void)ret;
}

static void
ctx_plugin(long n)
{
	for (long i = 0; i < n; i++)
		SSL_CTX_set_info_callback(ctx, plugin_cb);
}

static void
ctx_main(long n)
{
	for (long i = 0; i < n; i++)
		SSL_CTX_set_info_callback(ctx, main_cb);
}

static void
ssl_plugin(long n)
{
	for (long i = 0; i < n; i++)
		SSL_set_info_callback(ssl, plugin_cb);
}

static void
ssl_main(long n)
{
	for (long i = 0; i < n; i++)
		SSL_set_info_callback(ssl, main_cb);
}

/* The baseline of the per-connection case: a connection, no callback. */
static void
conn_none(long n)
{
	for (long i = 0; i < n; i++)
		SSL_free(SSL_new(conn_ctx));
}

static void
conn_plugin(long n)
{
	for (long i = 0; i < n; i++) {
		SSL *s = SSL_new(conn_ctx);

		SSL_set_info_callback(s, plugin_cb);
		SSL_free(s);
	}
}

struct bench {
	const char *name;
	void (*loop)(long);
	int per_conn;     /* a tenth as many iterations */
	double ns;        /* median ns per iteration */
};

static struct bench benches[] = {
	{ "SSL_CTX_set_info_callback, plugin's callback", ctx_plugin, 0, 0 },
	{ "SSL_CTX_set_info_callback, program's callback", ctx_main, 0, 0 },
	{ "SSL_set_info_callback, plugin's callback", ssl_plugin, 0, 0 },
	{ "SSL_set_info_callback, program's callback", ssl_main, 0, 0 },
	{ "SSL_new + SSL_free", conn_none, 1, 0 },
	{ "SSL_new + SSL_set_info_callback (plugin) + SSL_free", conn_plugin,
	  1, 0 },
};

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Bytes the heap hands out, the mapped large blocks included. */
static long
heap_bytes(void)
{
	struct mallinfo2 mi = mallinfo2();

	return (long)(mi.uordblks + mi.hblkhd);
}

static long
rss_kib(void)
{
	char line[256];
	long kib = -1;
	FILE *f = fopen("/proc/self/status", "r");

	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, "VmRSS:", 6))
			kib = strtol(line + 6, NULL, 10);
	if (f)
		fclose(f);
	return kib;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static void
run(struct bench *b, long calls, int reps)
{
	long n = (b->per_conn ? calls / 10 : calls) / reps;
	long heap, rss;
	double t[64];

	b->loop(n); /* warm-up: first entries, caches, lazy binding */
	heap = heap_bytes();
	rss = rss_kib();
	for (int r = 0; r < reps; r++) {
		double start = now();

		b->loop(n);
		t[r] = (now() - start) / (double)n;
	}
	qsort(t, (size_t)reps, sizeof(t[0]), cmp_double);
	b->ns = t[reps / 2];
	printf("%-52s %9.1f ns (%.1f-%.1f), %ld calls: heap %+ld B, "
	       "RSS %+ld KiB\n", b->name, b->ns, t[0], t[reps - 1],
	       n * reps, heap_bytes() - heap, rss_kib() - rss);
}

int
main(int argc, char **argv)
{
	long calls = argc > 2 ? atol(argv[2]) : 1000000;
	int reps = argc > 3 ? atoi(argv[3]) : 5;
	void *plugin;

	if (argc < 2 || calls < 100 || reps < 1 || reps > 64) {
		fprintf(stderr, "usage: reg-bench PLUGIN [CALLS [REPS]]\n");
		return 2;
	}
	plugin = dlopen(argv[1], RTLD_NOW);
	if (!plugin) {
		fprintf(stderr, "reg-bench: %s\n", dlerror());
		return 1;
	}
	*(void **)&plugin_cb = dlsym(plugin, "reg_plugin_info");
	ctx = SSL_CTX_new(TLS_server_method());
	conn_ctx = SSL_CTX_new(TLS_server_method());
	ssl = ctx ? SSL_new(ctx) : NULL;
	if (!plugin_cb || !conn_ctx || !ssl) {
		fprintf(stderr, "reg-bench: no callback in %s, or no SSL\n",
			argv[1]);
		return 1;
	}
	/* The preload exports this for its LD_AUDIT companion. */
	printf("reg-bench: osslproc-run %s, median of %d rounds\n",
	       dlsym(RTLD_DEFAULT, "ossl_proc_preload_objclose") ?
	       "preloaded" : "not loaded", reps);
	for (size_t i = 0; i < sizeof(benches) / sizeof(benches[0]); i++)
		run(&benches[i], calls, reps);
	printf("%-52s %9.1f ns\n", "per connection, SSL_set_info_callback",
	       benches[5].ns - benches[4].ns);
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	SSL_CTX_free(conn_ctx);
	/* The scope closes here under osslproc-run: nothing left to undo
	 * but the entries of the freed SSL and SSL_CTX. */
	dlclose(plugin);
	return 0;
}
