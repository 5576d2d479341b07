/*
 * osslproc-bench: OpenSSL's default path against osslproc, side by side
 * in one run.  Every measurement runs in a fresh child process (an
 * allocator can be installed into OpenSSL only once per process), the
 * variants alternate round by round so that drift in the machine hits
 * both alike, and the table shows medians and their ratio.
 *
 *   osslproc-bench [alloc|handshake|fork|module|arena|all] [-r rounds]
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <osslproc.h>

#include "../common/tls-util.h"

enum variant { DEFAULT, OSSLPROC };

struct bench {
	const char *name;     /* row label */
	const char *group;    /* subcommand that runs it */
	const char *target;   /* the target as text */
	int osslproc_only;    /* no default-path counterpart */
	double (*run)(enum variant v, int arg);
	int arg;
	bool threads;         /* runs threads: never pinned to one CPU */
};

static int rounds = 7;
static bool verbose; /* -v: each round's figures on stderr */
/* -c N: run single-threaded measurements on CPU N.  On a VM whose vCPUs
 * differ (here one ran steadily, the other swung between 800 and 1,300
 * handshakes/s), leaving the choice to the scheduler makes each process's
 * speed depend on where it landed. */
static int pin_cpu = -1;

static double median(double *v, int n);

static double
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* OSSLPROC_BENCH_QUARANTINE and OSSLPROC_BENCH_CACHE set quarantine_bytes
 * and cache_bytes, for tuning. */
static void
setup_variant(enum variant v)
{
	struct ossl_proc_config c = OSSL_PROC_CONFIG_INIT;
	const char *q = getenv("OSSLPROC_BENCH_QUARANTINE");
	const char *k = getenv("OSSLPROC_BENCH_CACHE");

	if (q)
		c.quarantine_bytes = strtoul(q, NULL, 0);
	if (k)
		c.cache_bytes = strtoul(k, NULL, 0);
	if (v == OSSLPROC && ossl_proc_init(&c) != 0) {
		fprintf(stderr, "ossl_proc_init failed\n");
		_exit(2);
	}
}

/* ---- alloc: CRYPTO_malloc + CRYPTO_free pairs ---- */

#define PAIRS 2000000
#define WORKING_SET 64

/*
 * Sizes in the proportions OpenSSL 3.0 asks for during verified TLS 1.3
 * handshakes (both sides, counted per handshake with a counting
 * CRYPTO_set_mem_functions): per mille of requests up to each bound.
 */
static const struct {
	unsigned permille; /* cumulative */
	size_t lo, hi;
} size_mix[] = {
	{ 304, 1, 16 },      { 647, 17, 32 },      { 784, 33, 64 },
	{ 870, 65, 128 },    { 973, 129, 256 },    { 981, 257, 512 },
	{ 988, 513, 1024 },  { 989, 1025, 2048 },  { 997, 2049, 4096 },
	{ 998, 4097, 8192 }, { 999, 8193, 16384 }, { 1000, 16385, 32768 },
};

static size_t
openssl_size(unsigned *seed)
{
	unsigned r = (unsigned)rand_r(seed) % 1000;
	size_t i = 0;

	while (r >= size_mix[i].permille)
		i++;
	return size_mix[i].lo + (unsigned)rand_r(seed) %
	       (size_mix[i].hi - size_mix[i].lo + 1);
}

static void *
pairs_thread(void *arg)
{
	void *held[WORKING_SET] = { 0 };
	unsigned seed = (unsigned)(uintptr_t)arg;
	size_t sizes[1024];

	for (int i = 0; i < 1024; i++)
		sizes[i] = openssl_size(&seed);
	for (int i = 0; i < PAIRS; i++) {
		unsigned slot = (unsigned)i * 2654435761u % WORKING_SET;

		CRYPTO_free(held[slot], __FILE__, __LINE__);
		held[slot] = CRYPTO_malloc(sizes[i & 1023], __FILE__,
					   __LINE__);
	}
	for (int i = 0; i < WORKING_SET; i++)
		CRYPTO_free(held[i], __FILE__, __LINE__);
	return NULL;
}

/* ns per malloc+free pair, per thread. */
static double
run_alloc(enum variant v, int threads)
{
	pthread_t t[8];
	double t0;

	setup_variant(v);
	pairs_thread((void *)1); /* warm up the allocator's caches */
	t0 = now_ns();
	for (int i = 0; i < threads; i++)
		pthread_create(&t[i], NULL, pairs_thread,
			       (void *)(uintptr_t)(i + 2));
	for (int i = 0; i < threads; i++)
		pthread_join(t[i], NULL);
	return (now_ns() - t0) / PAIRS;
}

/* ---- handshake: verified TLS 1.3 handshakes per second ---- */

static double
run_handshake(enum variant v, int n)
{
	struct tls_pki *pki;
	SSL_CTX *s, *c;
	double t0, secs;

	setup_variant(v);
	pki = tls_pki_new();
	s = pki ? tls_server_ctx(pki) : NULL;
	c = pki ? tls_client_ctx(pki) : NULL;
	if (!s || !c || tls_handshakes(c, s, 10) != 10)
		_exit(3);
	t0 = now_ns();
	if (tls_handshakes(c, s, n) != n)
		_exit(4);
	secs = (now_ns() - t0) / 1e9;
	SSL_CTX_free(c);
	SSL_CTX_free(s);
	tls_pki_free(pki);
	return n / secs;
}

/* ---- fork ---- */

#define FORKS 200

/* Some OpenSSL state for a child to inherit, as a daemon would have. */
static SSL_CTX *
warm_openssl(void)
{
	struct tls_pki *pki = tls_pki_new();
	SSL_CTX *s = pki ? tls_server_ctx(pki) : NULL;
	SSL_CTX *c = pki ? tls_client_ctx(pki) : NULL;

	if (!s || !c || tls_handshakes(c, s, 2) != 2)
		_exit(3);
	SSL_CTX_free(c);
	tls_pki_free(pki);
	return s;
}

static long
minor_faults(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_minflt;
}

/* A page the parent wrote: the child's first write to it copies it. */
static char cow_page[4096] __attribute__((aligned(4096)));

/* In a fresh child: @what 0, µs of ossl_proc_child_reinit(); 1, the page
 * faults it took; 2, µs of one copy-on-write fault, the unit most of a
 * re-init's time is made of on a virtual machine. */
static double
reinit_child(int what)
{
	double t0;
	long f0;

	if (what == 1) {
		minor_faults(); /* its own code and data are mapped now */
		f0 = minor_faults();
		ossl_proc_child_reinit();
		return (double)(minor_faults() - f0);
	}
	t0 = now_ns();
	if (what == 2)
		*(volatile char *)cow_page = 2;
	else
		ossl_proc_child_reinit();
	return (now_ns() - t0) / 1e3;
}

/* Median µs of ossl_proc_child_reinit() in fresh children (no hooks):
 * with OSSL_PROC_F_NO_ATFORK the host runs the handlers itself, so the
 * child's whole re-initialisation happens inside the timed call. */
static double
run_reinit(enum variant v, int arg)
{
	struct ossl_proc_config c = OSSL_PROC_CONFIG_INIT;
	double us[FORKS];
	int fds[2];

	(void)v;
	c.flags = OSSL_PROC_F_NO_ATFORK;
	if (ossl_proc_init(&c) != 0 || pipe(fds) < 0)
		_exit(2);
	warm_openssl();
	cow_page[0] = 1;
	now_ns();
	/* A no-op here (this process is set up), but it binds the call, so
	 * the children time osslproc rather than the dynamic linker. */
	ossl_proc_child_reinit();
	for (int i = 0; i < FORKS; i++) {
		pid_t pid;

		ossl_proc_fork_prepare();
		pid = fork();
		if (pid > 0)
			ossl_proc_fork_parent();
		if (pid == 0) {
			double x = reinit_child(arg);

			_exit(write(fds[1], &x, sizeof(x)) == sizeof(x) ? 0 : 1);
		}
		if (pid < 0 || read(fds[0], &us[i], sizeof(us[i])) !=
		    sizeof(us[i]))
			_exit(4);
		waitpid(pid, NULL, 0);
	}
	return median(us, FORKS);
}

/* Median µs from fork() to the parent reaping a child that _exit()s. */
/* One fork + _exit + waitpid, in microseconds. */
static double
fork_exit_us(void)
{
	double t0 = now_ns();
	pid_t pid = fork();

	if (pid == 0)
		_exit(0);
	if (pid < 0)
		_exit(4);
	waitpid(pid, NULL, 0);
	return (now_ns() - t0) / 1e3;
}

static double
run_fork_exit(enum variant v, int arg)
{
	double us[FORKS];

	(void)arg;
	setup_variant(v);
	warm_openssl();
	for (int i = 0; i < FORKS; i++)
		us[i] = fork_exit_us();
	return median(us, FORKS);
}

/*
 * fork + _exit + waitpid with @arg live OpenSSL locks (CRYPTO_THREAD_lock_new,
 * what every context, key and certificate calls for its own) and one
 * other thread that has used OpenSSL, so that osslproc's prepare
 * quiesces them; with @arg's bit 0 set (osslproc only), the median µs the
 * prepare spent taking them instead.
 */
static pthread_barrier_t idle_bar;

static void *
idle_thread(void *arg)
{
	(void)arg;
	OPENSSL_free(OPENSSL_malloc(32));
	pthread_barrier_wait(&idle_bar);
	pthread_barrier_wait(&idle_bar);
	return NULL;
}

static double
run_fork_locks(enum variant v, int arg)
{
	struct ossl_proc_stats st = { .size = sizeof(st) };
	int nlocks = arg & ~1, prep = arg & 1;
	CRYPTO_RWLOCK **locks = calloc((size_t)nlocks + 1, sizeof(*locks));
	double us[FORKS];
	pthread_t t;

	setup_variant(v);
	warm_openssl();
	for (int i = 0; i < nlocks; i++)
		if (!locks || !(locks[i] = CRYPTO_THREAD_lock_new()))
			_exit(3);
	pthread_barrier_init(&idle_bar, NULL, 2);
	pthread_create(&t, NULL, idle_thread, NULL);
	pthread_barrier_wait(&idle_bar);
	for (int i = 0; i < FORKS; i++) {
		us[i] = fork_exit_us();
		if (prep) {
			ossl_proc_get_stats(&st);
			us[i] = (double)st.fork_prepare_ns / 1e3;
		}
	}
	pthread_barrier_wait(&idle_bar);
	pthread_join(t, NULL);
	for (int i = 0; i < nlocks; i++)
		CRYPTO_THREAD_lock_free(locks[i]);
	free(locks);
	return median(us, FORKS);
}

/* ---- module ---- */

#define CYCLES 2000

static void
nop_info(const SSL *ssl, int where, int ret)
{
	(void)ssl, (void)where, (void)ret;
}

static int
nop_verify(int ok, X509_STORE_CTX *store)
{
	(void)store;
	return ok;
}

static void
nop_msg(int w, int v, int t, const void *b, size_t l, SSL *s, void *a)
{
	(void)w, (void)v, (void)t, (void)b, (void)l, (void)s, (void)a;
}

static void
nop_undo(void *arg)
{
	(void)arg;
}

/* µs per open + 5 registrations + close. */
static double
run_module_cycle(enum variant v, int arg)
{
	SSL_CTX *ctx;
	double t0;

	(void)v, (void)arg;
	setup_variant(OSSLPROC);
	ctx = SSL_CTX_new(TLS_method());
	t0 = now_ns();
	for (int i = 0; i < CYCLES; i++) {
		struct ossl_proc_module *m = ossl_proc_module_open("bench");

		if (!m || ossl_proc_module_ex_new_index(m, CRYPTO_EX_INDEX_SSL,
				0, NULL, NULL, NULL, NULL) < 0 ||
		    ossl_proc_module_set_info_callback(m, ctx, nop_info) ||
		    ossl_proc_module_set_verify(m, ctx, SSL_VERIFY_PEER,
						nop_verify) ||
		    ossl_proc_module_set_msg_callback(m, ctx, nop_msg) ||
		    ossl_proc_module_on_close(m, nop_undo, NULL) ||
		    ossl_proc_module_close(m) < 0)
			_exit(5);
	}
	t0 = (now_ns() - t0) / 1e3 / CYCLES;
	SSL_CTX_free(ctx);
	return t0;
}

/* Handshakes/s with info, verify and msg callbacks on the client context,
 * set directly (default) or through a module scope's trampolines; both
 * with osslproc's allocator, so only the callback path differs. */
static double
run_module_handshake(enum variant v, int n)
{
	struct tls_pki *pki;
	SSL_CTX *s, *c;
	double t0;

	setup_variant(OSSLPROC);
	pki = tls_pki_new();
	s = pki ? tls_server_ctx(pki) : NULL;
	c = pki ? tls_client_ctx(pki) : NULL;
	if (!s || !c)
		_exit(3);
	if (v == DEFAULT) {
		SSL_CTX_set_info_callback(c, nop_info);
		SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nop_verify);
		SSL_CTX_set_msg_callback(c, nop_msg);
	} else {
		struct ossl_proc_module *m = ossl_proc_module_open("bench");

		if (ossl_proc_module_set_info_callback(m, c, nop_info) ||
		    ossl_proc_module_set_verify(m, c, SSL_VERIFY_PEER,
						nop_verify) ||
		    ossl_proc_module_set_msg_callback(m, c, nop_msg))
			_exit(5);
	}
	if (tls_handshakes(c, s, 10) != 10)
		_exit(4);
	t0 = now_ns();
	if (tls_handshakes(c, s, n) != n)
		_exit(4);
	return n / ((now_ns() - t0) / 1e9);
}

/* ---- harness ---- */

/* ---- arena: shared mode against private mode ---- */

#define ARENA_BENCH_BYTES ((size_t)64 << 20)
#define ARENA_WORKER_HANDSHAKES 200

/* Private mode (DEFAULT) or shared mode with the built-in arena; the
 * arena, or NULL. */
static struct ossl_proc_arena *
setup_arena_variant(enum variant v)
{
	struct ossl_proc_config c = OSSL_PROC_CONFIG_INIT;
	struct ossl_proc_arena *a = NULL;

	if (v == OSSLPROC) {
		a = ossl_proc_arena_new(ARENA_BENCH_BYTES);
		if (!a)
			_exit(2);
		c.allocator = ossl_proc_arena_allocator(a);
	}
	if (ossl_proc_init(&c) != 0)
		_exit(2);
	return a;
}

/* Forks @workers processes that each run @fn and write a double back;
 * their mean, or -1. */
static double
arena_workers(int workers, double (*fn)(void *), void *arg)
{
	pid_t pids[8];
	int fds[2];
	double sum = 0, x;

	if (workers > 8 || pipe(fds) < 0)
		return -1;
	fflush(NULL); /* the workers leave with exit() */
	for (int i = 0; i < workers; i++) {
		pids[i] = fork();
		if (pids[i] == 0) {
			x = fn(arg);
			if (write(fds[1], &x, sizeof(x)) != sizeof(x))
				_exit(1);
			exit(0);
		}
	}
	close(fds[1]);
	for (int i = 0; i < workers; i++) {
		if (read(fds[0], &x, sizeof(x)) != sizeof(x) || x < 0)
			sum = -1e300;
		sum += x;
	}
	close(fds[0]);
	for (int i = 0; i < workers; i++)
		waitpid(pids[i], NULL, 0);
	return sum < 0 ? -1 : sum / workers;
}

struct tls_pair {
	SSL_CTX *c, *s;
};

static struct tls_pair
arena_tls(void)
{
	struct tls_pki *pki = tls_pki_new();
	struct tls_pair t = { NULL, NULL };

	if (pki) {
		t.s = tls_server_ctx(pki);
		t.c = tls_client_ctx(pki);
	}
	/* As a daemon does: OpenSSL's lazy state made before forking. */
	if (!t.s || !t.c || tls_handshakes(t.c, t.s, 10) != 10)
		_exit(3);
	return t;
}

static double
worker_handshakes(void *arg)
{
	struct tls_pair *t = arg;
	double t0 = now_ns();

	if (tls_handshakes(t->c, t->s, ARENA_WORKER_HANDSHAKES) !=
	    ARENA_WORKER_HANDSHAKES)
		return -1;
	return ARENA_WORKER_HANDSHAKES / ((now_ns() - t0) / 1e9);
}

/* Handshakes/s per worker, @workers at once. */
static double
run_arena_handshake(enum variant v, int workers)
{
	struct tls_pair t;

	setup_arena_variant(v);
	t = arena_tls();
	return arena_workers(workers, worker_handshakes, &t);
}

static struct ossl_proc_arena_stats
arena_stats_of(struct ossl_proc_arena *a)
{
	struct ossl_proc_arena_stats st = { .size = sizeof(st) };

	if (ossl_proc_arena_get_stats(a, &st))
		_exit(6);
	return st;
}

/* Lock waits per 1,000 lock operations, 2 workers handshaking. */
static double
run_arena_contention(enum variant v, int workers)
{
	struct ossl_proc_arena *a = setup_arena_variant(OSSLPROC);
	struct ossl_proc_arena_stats st0, st;
	struct tls_pair t = arena_tls();

	st0 = arena_stats_of(a);
	if (arena_workers(workers, worker_handshakes, &t) < 0)
		return -1;
	st = arena_stats_of(a);
	return 1000.0 * (double)(st.lock_waits - st0.lock_waits) /
	       (double)(st.lock_ops - st0.lock_ops);
}

#define MIXED_SMALL 50000

struct mixed {
	struct tls_pair t;
	struct ossl_proc_arena *a;
	int what; /* 0: peak KiB; 1: fragmentation % with a tenth kept */
};

/* Bursts of small blocks (a tenth kept), handshakes, large blocks. */
static double
worker_mixed(void *arg)
{
	struct mixed *m = arg;
	static void *small[MIXED_SMALL];
	struct ossl_proc_arena_stats st;
	void *large[4];

	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < MIXED_SMALL; i++)
			small[i] = OPENSSL_malloc(8 + (size_t)(i % 7) * 8);
		for (int i = 0; i < MIXED_SMALL; i++)
			if (i % 10)
				OPENSSL_free(small[i]);
		if (tls_handshakes(m->t.c, m->t.s, 10) != 10)
			return -1;
		for (int i = 0; i < 4; i++)
			large[i] = OPENSSL_malloc((size_t)(i + 1) << 20);
		for (int i = 0; i < 4; i++)
			OPENSSL_free(large[i]);
		if (round < 2)
			for (int i = 0; i < MIXED_SMALL; i += 10)
				OPENSSL_free(small[i]);
	}
	st = arena_stats_of(m->a);
	for (int i = 0; i < MIXED_SMALL; i += 10)
		OPENSSL_free(small[i]);
	if (m->what == 0)
		return (double)st.peak_bytes / 1024;
	return 100.0 * (1.0 - (double)st.largest_free / (double)st.free_bytes);
}

/* After the mixed workload in 2 workers: the arena's peak use (KiB), or
 * its fragmentation while a tenth of a burst is still held (%, 0: the
 * free memory is one block). */
static double
run_arena_mixed(enum variant v, int what)
{
	struct mixed m;

	m.a = setup_arena_variant(OSSLPROC);
	m.t = arena_tls();
	m.what = what;
	return arena_workers(what == 0 ? 2 : 1, worker_mixed, &m);
}

/* After every worker of the mixed workload exited: free blocks in the
 * arena (1: all of it is one block again). */
static double
run_arena_after(enum variant v, int arg)
{
	struct mixed m;

	m.a = setup_arena_variant(OSSLPROC);
	m.t = arena_tls();
	m.what = 0;
	if (arena_workers(2, worker_mixed, &m) < 0)
		return -1;
	return (double)arena_stats_of(m.a).free_blocks;
}

/* ---- the table ---- */

static void
pin_to(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) != 0) {
		perror("osslproc-bench: sched_setaffinity");
		_exit(5);
	}
}

static double
in_child(const struct bench *b, enum variant v)
{
	int fds[2];
	double r = -1;
	pid_t pid;
	int status;

	if (pipe(fds) < 0)
		return -1;
	pid = fork();
	if (pid == 0) {
		double x;

		close(fds[0]);
		if (pin_cpu >= 0 && !b->threads)
			pin_to(pin_cpu);
		x = b->run(v, b->arg);
		if (write(fds[1], &x, sizeof(x)) != sizeof(x))
			_exit(1);
		_exit(0);
	}
	close(fds[1]);
	if (pid < 0 || read(fds[0], &r, sizeof(r)) != sizeof(r))
		r = -1;
	close(fds[0]);
	if (pid > 0)
		waitpid(pid, &status, 0);
	return r;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double
median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static int
measure(const struct bench *b)
{
	double d[64], o[64], ratio[64], md, mo;

	for (int r = 0; r < rounds; r++) {
		/* Alternate which variant goes first, too. */
		enum variant first = r % 2 ? OSSLPROC : DEFAULT;

		(first == DEFAULT ? d : o)[r] = in_child(b, first);
		(first == DEFAULT ? o : d)[r] = in_child(b, !first);
		if (d[r] < 0 || o[r] < 0) {
			fprintf(stderr, "%s: a measurement failed\n", b->name);
			return -1;
		}
		ratio[r] = o[r] / d[r];
		if (verbose)
			fprintf(stderr, "%s, round %d: %.1f %.1f %.3fx\n",
				b->name, r + 1, d[r], o[r], ratio[r]);
	}
	md = median(d, rounds);
	mo = median(o, rounds);
	/* The ratio is the median of each round's own ratio: the two runs of
	 * a round are seconds apart, so a VM's drift between rounds (up to
	 * 40% here) cancels out, which it does not in a ratio of medians. */
	printf("| %-34s | %10.1f | %10.1f | %6.3fx | %-9s |\n", b->name, md,
	       mo, median(ratio, rounds), b->target);
	fflush(stdout);
	return 0;
}

static int
measure_alone(const struct bench *b)
{
	double o[64];

	for (int r = 0; r < rounds; r++) {
		o[r] = in_child(b, OSSLPROC);
		if (o[r] < 0) {
			fprintf(stderr, "%s: a measurement failed\n", b->name);
			return -1;
		}
	}
	printf("| %-34s | %10s | %10.1f | %7s | %-9s |\n", b->name, "-",
	       median(o, rounds), "-", b->target);
	fflush(stdout);
	return 0;
}

static const struct bench benches[] = {
	{ "alloc+free pair, 1 thread (ns)", "alloc", "<= 1.10x", 0,
	  run_alloc, 1, false },
	{ "alloc+free pair, 2 threads (ns)", "alloc", "<= 1.10x", 0,
	  run_alloc, 2, true },
	{ "verified TLS 1.3 handshakes/s", "handshake", ">= 1.00x", 0,
	  run_handshake, 400, false },
	{ "child re-init, no hooks (us)", "fork", "<= 20 us", 1,
	  run_reinit, 0, false },
	{ "child re-init, page faults", "fork", "-", 1,
	  run_reinit, 1, false },
	{ "one copy-on-write fault (us)", "fork", "-", 1,
	  run_reinit, 2, false },
	{ "fork + _exit + waitpid (us)", "fork", "-", 0,
	  run_fork_exit, 0, false },
	{ "fork+exit+wait, 1 thread, 0 locks", "fork", "-", 0,
	  run_fork_locks, 0, true },
	{ "fork+exit+wait, +1,000 locks (us)", "fork", "<= 1.25x", 0,
	  run_fork_locks, 1000, true },
	{ "fork+exit+wait, +10,000 locks (us)", "fork", "-", 0,
	  run_fork_locks, 10000, true },
	{ "prepare, +1,000 locks (us)", "fork", "-", 1,
	  run_fork_locks, 1001, true },
	{ "prepare, +10,000 locks (us)", "fork", "-", 1,
	  run_fork_locks, 10001, true },
	{ "module open + 5 reg. + close (us)", "module", "<= 50 us", 1,
	  run_module_cycle, 0, false },
	{ "handshakes/s, callbacks via scope", "module", ">= 0.99x", 0,
	  run_module_handshake, 400, false },
	/* Arena rows: "default" is private mode, "osslproc" shared mode
	 * with the built-in arena. */
	{ "arena hs/s/worker, 1 (priv|shared)", "arena", ">= 0.95x", 0,
	  run_arena_handshake, 1, false },
	{ "arena hs/s/worker, 2 (priv|shared)", "arena", ">= 0.95x", 0,
	  run_arena_handshake, 2, true },
	{ "arena lock waits/1000, 2 workers", "arena", "-", 1,
	  run_arena_contention, 2, true },
	{ "arena peak, mixed load (KiB)", "arena", "-", 1,
	  run_arena_mixed, 0, true },
	{ "arena fragmentation, mixed (%)", "arena", "-", 1,
	  run_arena_mixed, 1, false },
	{ "arena free blocks after exit", "arena", "1", 1,
	  run_arena_after, 0, true },
};

static void
header(void)
{
	struct utsname u;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);

	uname(&u);
	/* OpenSSL_version() needs no allocation; the parent stays clean. */
	printf("osslproc-bench: %s, %s %s, %ld CPUs, %d rounds, medians",
	       OpenSSL_version(OPENSSL_VERSION), u.sysname, u.machine, cpus,
	       rounds);
	if (pin_cpu >= 0)
		printf(", single-threaded runs on CPU %d", pin_cpu);
	printf("\n\n");
	printf("| %-34s | %10s | %10s | %7s | %-9s |\n", "measure",
	       "default", "osslproc", "ratio", "target");
	printf("|%s|%s|%s|%s|%s|\n", "------------------------------------",
	       "------------", "------------", "---------", "-----------");
	fflush(stdout); /* before any child can inherit the buffer */
}

static int
usage(void)
{
	fprintf(stderr, "usage: osslproc-bench "
		"[alloc|handshake|fork|module|arena|all] "
		"[-r rounds] [-c cpu] [-v]\n");
	return 2;
}

int
main(int argc, char **argv)
{
	const char *what = "all";
	int opt, rc = 0;

	while ((opt = getopt(argc, argv, "c:r:v")) != -1) {
		if (opt == 'v') {
			verbose = true;
			continue;
		}
		if (opt == 'c') {
			pin_cpu = atoi(optarg);
			continue;
		}
		if (opt != 'r')
			return usage();
		rounds = atoi(optarg);
		if (rounds < 1 || rounds > 64)
			return usage();
	}
	if (optind < argc)
		what = argv[optind];
	if (strcmp(what, "all") && strcmp(what, "alloc") &&
	    strcmp(what, "handshake") && strcmp(what, "fork") &&
	    strcmp(what, "module") && strcmp(what, "arena"))
		return usage();
	header();
	for (size_t i = 0; i < sizeof(benches) / sizeof(benches[0]); i++) {
		const struct bench *b = &benches[i];

		if (strcmp(what, "all") && strcmp(what, b->group))
			continue;
		rc |= b->osslproc_only ? measure_alone(b) : measure(b);
	}
	return rc ? 1 : 0;
}
