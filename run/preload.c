/*
 * libosslproc-preload.so: osslproc for a program that does not call it,
 * loaded with LD_PRELOAD (osslproc-run(1)).  Its constructor initialises
 * a private copy of osslproc (the static library, whose internals it
 * uses) before the program's first OpenSSL allocation, configured from
 * OSSLPROC_* variables read once, here.  It interposes the calls through
 * which a program would undo or bypass what osslproc set up: its own
 * CRYPTO_set_mem_functions() (which becomes the tracked allocator's
 * backend) and the default verify paths (served from the environment
 * snapshot, never from getenv()).  Only those symbols are exported
 * (preload.sym), so a program that links libosslproc itself keeps its
 * own, which attaches to this copy's allocator.
 */
#include <errno.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "osslproc-int.h"
#include "alloc/alloc-int.h"

#include "preload-int.h"

/* What the program's environment asked for, read once. */
static struct {
	bool no_env;      /* OSSLPROC_DISABLE=env: OpenSSL's own defaults */
	bool no_unload;   /* OSSLPROC_DISABLE=unload: no implicit scopes */
	bool shared;      /* OSSLPROC_SHARED_BACKEND=1, or: */
	bool objects;     /* OSSLPROC_SHARED_OBJECTS=1 */
	bool ready;       /* ossl_proc_init() succeeded */
	/* A copy: programs rewrite their environment's memory (nginx puts
	 * its process title there). */
	char report_dir[4096];
	int log_fd;       /* OSSLPROC_LOG=FILE or syslog's socket; -1 */
	bool syslog;
} pc = { .log_fd = -1 };

static int (*real_set_mem)(CRYPTO_malloc_fn, CRYPTO_realloc_fn,
			   CRYPTO_free_fn);
static int (*real_ctx_paths)(SSL_CTX *);
static int (*real_ctx_file)(SSL_CTX *);
static int (*real_ctx_dir)(SSL_CTX *);
static int (*real_store_paths)(X509_STORE *);
static int (*real_store_paths_ex)(X509_STORE *, OSSL_LIB_CTX *,
				  const char *);

/* ---- logging: stderr (osslproc's default), a file, syslog ---- */

/* Out of the program's way: programs that count or close their
 * descriptors from 3 up must not see it. */
static int
fd_high(int fd)
{
	int high;

	if (fd < 0 || fd >= 200)
		return fd;
	high = fcntl(fd, F_DUPFD_CLOEXEC, 200);
	if (high < 0)
		return fd;
	close(fd);
	return high;
}

/* One line, one write (or datagram): formatted on the stack, since the
 * allocator may be the caller. */
static void
sink(enum ossl_proc_log_level level, const char *msg, void *arg)
{
	static const char *const names[] = { "error", "warning", "info",
					     "debug" };
	int idx = level <= OSSL_PROC_LOG_ERROR ? 0 :
		  level <= OSSL_PROC_LOG_WARNING ? 1 :
		  level <= OSSL_PROC_LOG_INFO ? 2 : 3;
	/* syslog priorities: LOG_USER | err, warning, info, debug */
	static const int prio[] = { 8 | 3, 8 | 4, 8 | 6, 8 | 7 };
	char line[1200];
	int n;

	(void)arg;
	if (pc.syslog)
		n = snprintf(line, sizeof(line), "<%d>osslproc[%ld]: %s: %s",
			     prio[idx], (long)getpid(), names[idx], msg);
	else
		n = snprintf(line, sizeof(line), "osslproc[%ld] %s: %s\n",
			     (long)getpid(), names[idx], msg);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	if (pc.syslog ? send(pc.log_fd, line, (size_t)n, MSG_NOSIGNAL) < 0
		      : write(pc.log_fd, line, (size_t)n) < 0)
		return; /* nowhere to report it */
}

static int
syslog_open(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX,
				  .sun_path = "/dev/log" };
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		fd = -1;
	}
	return fd_high(fd);
}

/* OSSLPROC_LOG: NULL (stderr, osslproc's own sink) unless a file or
 * syslog could be opened; @bad is set when it could not. */
static ossl_proc_log_fn
log_sink(const char *v, bool *bad)
{
	if (!v || !*v || !strcmp(v, "stderr"))
		return NULL;
	if (!strcmp(v, "syslog")) {
		pc.log_fd = syslog_open();
		pc.syslog = pc.log_fd >= 0;
	} else {
		pc.log_fd = fd_high(open(v, O_WRONLY | O_APPEND | O_CREAT |
					 O_CLOEXEC, 0644));
	}
	*bad = pc.log_fd < 0;
	return pc.log_fd < 0 ? NULL : sink;
}

/* ---- the variables ---- */

struct word {
	const char *name;
	unsigned value;
};

/* @v's value among @w (@n words), or @dflt with one log line. */
static unsigned
pick_word(const char *var, const char *v, const struct word *w, size_t n,
	  unsigned dflt)
{
	if (!v || !*v)
		return dflt;
	for (size_t i = 0; i < n; i++)
		if (!strcmp(v, w[i].name))
			return w[i].value;
	log_warn("%s=%s is not one of the values it takes (see "
		 "osslproc-run(1)); using the default", var, v);
	return dflt;
}

static const struct word levels[] = {
	{ "error", OSSL_PROC_LOG_ERROR }, { "warning", OSSL_PROC_LOG_WARNING },
	{ "info", OSSL_PROC_LOG_INFO }, { "debug", OSSL_PROC_LOG_DEBUG },
};
static const struct word bad_frees[] = {
	{ "log", OSSL_PROC_BAD_FREE_LOG },
	{ "ignore", OSSL_PROC_BAD_FREE_IGNORE },
	{ "abort", OSSL_PROC_BAD_FREE_ABORT },
};
static const struct word yes_no[] = {
	{ "0", 0 }, { "1", 1 }, { "no", 0 }, { "yes", 1 },
};

#define DISABLE_ALLOCATOR 1u
#define DISABLE_FORK 2u
#define DISABLE_ENV 4u
#define DISABLE_UNLOAD 8u

static const struct word parts[] = {
	{ "allocator", DISABLE_ALLOCATOR }, { "fork", DISABLE_FORK },
	{ "env", DISABLE_ENV }, { "unload", DISABLE_UNLOAD },
};

/* OSSLPROC_DISABLE: a comma-separated list of parts. */
static unsigned
disabled_parts(const char *v)
{
	unsigned mask = 0;
	char one[32];

	while (v && *v) {
		size_t n = strcspn(v, ",");

		if (n && n < sizeof(one)) {
			memcpy(one, v, n);
			one[n] = '\0';
			mask |= pick_word("OSSLPROC_DISABLE", one, parts,
					  ARRAY_SIZE(parts), 0);
		} else if (n) {
			log_warn("OSSLPROC_DISABLE: a part name of %zu "
				 "characters is not one of allocator, fork, "
				 "env, unload; ignored", n);
		}
		v += n + (v[n] == ',');
	}
	return mask;
}

/* The log settings first, so that what follows can complain. */
static void
configure_log(struct ossl_proc_config *cfg)
{
	const char *where = getenv("OSSLPROC_LOG");
	const char *level = getenv("OSSLPROC_LOG_LEVEL");
	bool bad = false;

	cfg->log = log_sink(where, &bad);
	log_configure(cfg->log, NULL, OSSL_PROC_LOG_WARNING);
	cfg->log_level = pick_word("OSSLPROC_LOG_LEVEL", level, levels,
				   ARRAY_SIZE(levels), OSSL_PROC_LOG_WARNING);
	log_configure(cfg->log, NULL, cfg->log_level);
	if (bad)
		log_warn("OSSLPROC_LOG=%s: cannot open it (%s); logging to "
			 "stderr", where, strerror(errno));
}

static void
configure(struct ossl_proc_config *cfg)
{
	const char *report;
	unsigned off;

	configure_log(cfg);
	cfg->on_bad_free = pick_word("OSSLPROC_BAD_FREE",
				     getenv("OSSLPROC_BAD_FREE"), bad_frees,
				     ARRAY_SIZE(bad_frees),
				     OSSL_PROC_BAD_FREE_LOG);
	pc.shared = pick_word("OSSLPROC_SHARED_BACKEND",
			      getenv("OSSLPROC_SHARED_BACKEND"), yes_no,
			      ARRAY_SIZE(yes_no), 0);
	/* Sharing live objects needs them in shared memory. */
	pc.objects = pick_word("OSSLPROC_SHARED_OBJECTS",
			       getenv("OSSLPROC_SHARED_OBJECTS"), yes_no,
			       ARRAY_SIZE(yes_no), 0);
	if (pc.objects) {
		pc.shared = true;
		cfg->flags |= OSSL_PROC_F_SHARED_OBJECTS;
	}
	off = disabled_parts(getenv("OSSLPROC_DISABLE"));
	if (off & DISABLE_ALLOCATOR)
		cfg->flags |= OSSL_PROC_F_NO_ALLOCATOR;
	if (off & DISABLE_FORK)
		cfg->flags |= OSSL_PROC_F_NO_ATFORK;
	pc.no_env = off & DISABLE_ENV;
	pc.no_unload = off & DISABLE_UNLOAD;
	report = getenv("OSSLPROC_REPORT");
	if (report && strlen(report) >= sizeof(pc.report_dir))
		log_warn("OSSLPROC_REPORT: a directory name of %zu bytes is "
			 "too long; no reports", strlen(report));
	else if (report)
		strcpy(pc.report_dir, report);
	/* Nothing loaded on the program's behalf: its own first
	 * OPENSSL_init_* call (or implicit initialisation) decides. */
	cfg->openssl_init_opts = OSSL_PROC_OPENSSL_INIT_NONE;
}

/* ---- the report at exit ---- */

/* glibc's: an exit handler tied to no object. */
extern int __cxa_atexit(void (*fn)(void *), void *arg, void *dso);

/* Once per process, and only in one osslproc saw start: the child of a
 * vfork() shares its parent's memory, and must not allocate in it. */
static pid_t reported;

static void
report_exit(void *unused)
{
	char path[4096 + 64], exe[1024];
	pid_t self = getpid(), known = atomic_load(&proc_mut.pid);
	ssize_t n;
	FILE *f;
	int fd;

	(void)unused;
	if (!pc.report_dir[0] || reported == self ||
	    (known != 0 && known != self))
		return;
	reported = self;
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	exe[n > 0 ? n : 0] = '\0';
	snprintf(path, sizeof(path), "%s/osslproc-%ld.report", pc.report_dir,
		 (long)getpid());
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	f = fd >= 0 ? fdopen(fd, "w") : NULL;
	if (!f) {
		if (fd >= 0)
			close(fd);
		log_warn("OSSLPROC_REPORT: cannot write %s (%s); no report "
			 "for this process", path, strerror(errno));
		return;
	}
	fprintf(f, "program: %s\n", exe);
	ossl_proc_report(f);
	fclose(f);
}

/*
 * Programs whose workers end with _exit() (Kamailio's children, from
 * their SIGTERM handler) run no exit handler: the report is written
 * here.  From a signal handler it calls what the handler that called
 * _exit() already risked (stdio); a worker that is inside malloc at that
 * moment is the case it does not cover.
 */
static void (*real_exit)(int);

PRELOAD_EXPORT void
_exit(int status)
{
	report_exit(NULL);
	if (real_exit)
		real_exit(status);
	for (;;)
		syscall(SYS_exit_group, status);
}

/* ---- start ---- */

static void
resolve_real(void)
{
	real_exit = (void (*)(int))dlsym(RTLD_NEXT, "_exit");
	real_set_mem = (int (*)(CRYPTO_malloc_fn, CRYPTO_realloc_fn,
				CRYPTO_free_fn))dlsym(RTLD_NEXT,
						      "CRYPTO_set_mem_functions");
	real_ctx_paths = (int (*)(SSL_CTX *))dlsym(RTLD_NEXT,
			"SSL_CTX_set_default_verify_paths");
	real_ctx_file = (int (*)(SSL_CTX *))dlsym(RTLD_NEXT,
			"SSL_CTX_set_default_verify_file");
	real_ctx_dir = (int (*)(SSL_CTX *))dlsym(RTLD_NEXT,
			"SSL_CTX_set_default_verify_dir");
	real_store_paths = (int (*)(X509_STORE *))dlsym(RTLD_NEXT,
			"X509_STORE_set_default_paths");
	real_store_paths_ex = (int (*)(X509_STORE *, OSSL_LIB_CTX *,
				       const char *))dlsym(RTLD_NEXT,
			"X509_STORE_set_default_paths_ex");
}

__attribute__((constructor)) static void
preload_init(void)
{
	struct ossl_proc_config cfg = OSSL_PROC_CONFIG_INIT;
	int rc;

	resolve_real();
	objects_resolve();
	configure(&cfg);
	/* Registered first, so run last: after OpenSSL's own cleanup. */
	if (pc.report_dir[0])
		__cxa_atexit(report_exit, NULL, NULL);
	rc = ossl_proc_init(&cfg);
	pc.ready = rc >= 0;
	if (pc.ready && !pc.no_unload)
		unload_start();
	if (pc.ready && pc.objects)
		objects_start();
	if (rc < 0)
		log_error("osslproc-run: ossl_proc_init failed (%s); the "
			  "program runs without osslproc's protection",
			  strerror(-rc));
}

/* ---- the program's memory functions ---- */

PRELOAD_EXPORT int
CRYPTO_set_mem_functions(CRYPTO_malloc_fn m, CRYPTO_realloc_fn r,
			 CRYPTO_free_fn f)
{
	int rc;

	/* This copy installing its own; or nothing to stack on. */
	if (m == om_malloc || !pc.ready)
		return real_set_mem ? real_set_mem(m, r, f) : 0;
	rc = alloc_adopt(m, f, pc.shared);
	if (rc == -ENOTSUP)
		return real_set_mem ? real_set_mem(m, r, f) : 0;
	/* Installed, or refused with a log line: either way the program
	 * goes on as if its call had worked, and OpenSSL's memory stays
	 * osslproc's. */
	return 1;
}

/* ---- default verify paths from the snapshot ---- */

static bool
use_snapshot(void)
{
	return pc.ready && !pc.no_env;
}

/* What OpenSSL's default does, with the CA locations osslproc resolved
 * at start instead of SSL_CERT_FILE/SSL_CERT_DIR read now: a missing
 * location is no error, and none is left in the queue. */
static int
store_file(X509_STORE *st, OSSL_LIB_CTX *libctx, const char *propq)
{
	const char *file = ossl_proc_ca_file();
	X509_LOOKUP *lk;

	if (!file)
		return 1;
	lk = X509_STORE_add_lookup(st, X509_LOOKUP_file());
	if (!lk)
		return 0;
	X509_LOOKUP_load_file_ex(lk, file, X509_FILETYPE_PEM, libctx, propq);
	ERR_clear_error();
	return 1;
}

static int
store_dir(X509_STORE *st)
{
	const char *dir = ossl_proc_ca_dir();
	X509_LOOKUP *lk;

	if (!dir)
		return 1;
	lk = X509_STORE_add_lookup(st, X509_LOOKUP_hash_dir());
	if (!lk)
		return 0;
	X509_LOOKUP_add_dir(lk, dir, X509_FILETYPE_PEM);
	ERR_clear_error();
	return 1;
}

PRELOAD_EXPORT int
X509_STORE_set_default_paths_ex(X509_STORE *st, OSSL_LIB_CTX *libctx,
				const char *propq)
{
	if (!use_snapshot())
		return real_store_paths_ex ?
		       real_store_paths_ex(st, libctx, propq) : 0;
	return store_file(st, libctx, propq) && store_dir(st);
}

PRELOAD_EXPORT int
X509_STORE_set_default_paths(X509_STORE *st)
{
	if (!use_snapshot())
		return real_store_paths ? real_store_paths(st) : 0;
	return store_file(st, NULL, NULL) && store_dir(st);
}

PRELOAD_EXPORT int
SSL_CTX_set_default_verify_paths(SSL_CTX *ctx)
{
	X509_STORE *st;

	if (!use_snapshot())
		return real_ctx_paths ? real_ctx_paths(ctx) : 0;
	st = SSL_CTX_get_cert_store(ctx);
	/* The context's library context has no public getter in 3.0: the
	 * bundle is parsed in the default one, as OpenSSL's
	 * X509_STORE_set_default_paths() does. */
	return store_file(st, NULL, NULL) && store_dir(st);
}

PRELOAD_EXPORT int
SSL_CTX_set_default_verify_file(SSL_CTX *ctx)
{
	if (!use_snapshot())
		return real_ctx_file ? real_ctx_file(ctx) : 0;
	return store_file(SSL_CTX_get_cert_store(ctx), NULL, NULL);
}

PRELOAD_EXPORT int
SSL_CTX_set_default_verify_dir(SSL_CTX *ctx)
{
	if (!use_snapshot())
		return real_ctx_dir ? real_ctx_dir(ctx) : 0;
	return store_dir(SSL_CTX_get_cert_store(ctx));
}
