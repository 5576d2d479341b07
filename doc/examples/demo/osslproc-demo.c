/*
 * osslproc-demo: a prefork TLS daemon with a TLS plugin, the process model
 * of OpenSIPS and Kamailio, and a client to exercise it, in one program.
 *
 *   parent   ossl_proc_init() (private mode, or --shared with the built-in
 *            arena), forks the client, dlopen()s demo-plugin.so (which
 *            registers with OpenSSL through a module scope), checks the
 *            per-process server SSL_CTX, forks the workers;
 *   workers  each builds its own SSL_CTX and serves TLS 1.3 on its own
 *            SO_REUSEPORT socket of one 127.0.0.1 port;
 *   client   verified handshakes and requests; keeps connections open;
 *   parent   tells every worker to unload the plugin while those
 *            connections are open, lets the client go on (old connections
 *            and new handshakes, all without the plugin), ends the workers,
 *            collects their reports, tears down, prints a summary.
 *
 * The parent coordinates every step over pipes, with one deadline for the
 * whole run; a child that does not report in time is killed and named.
 * Exit status: 0 when every claim of the summary held, 1 when one did
 * not, 2 for bad command-line input.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "demo.h"

#define ARENA_BYTES ((size_t)64 << 20)
/* How long children get to exit once told to, after a failure. */
#define GRACE_US 5000000u

static struct demo demo;

/* ------------------------------------------------------------------ */
/* Command line                                                        */
/* ------------------------------------------------------------------ */

static void
usage(FILE *out)
{
	fprintf(out,
"Usage: osslproc-demo [OPTION]...\n"
"A prefork TLS daemon that loads a TLS plugin, serves verified TLS 1.3\n"
"on 127.0.0.1 from forked workers, unloads the plugin while connections\n"
"are open and keeps serving; a built-in client drives it.  Prints what\n"
"osslproc saw and exits 0 only if every claim held.\n"
"\n"
"  --workers N      worker processes (1-%d, default 4)\n"
"  --handshakes M   client handshakes in all (2-1000000, default 200);\n"
"                   a quarter of them (at least 1) after the unload\n"
"  --keep K         connections per worker kept open across the unload\n"
"                   (1-16, default 2)\n"
"  --shared         shared mode: osslproc's built-in MAP_SHARED arena\n"
"                   as the allocator's backend (default: private mode)\n"
"  --ca FILE        CA certificate the client trusts\n"
"  --cert FILE      server certificate (chain), for --host\n"
"  --key FILE       server private key\n"
"                   (give all three, or none for a throwaway PKI)\n"
"  --host NAME      name the client verifies (default localhost)\n"
"  --plugin FILE    the plugin (default: demo-plugin.so next to the\n"
"                   program)\n"
"  --timeout S      seconds for the whole run (1-3600, default 60)\n"
"  --unscoped       negative control: the plugin registers directly with\n"
"                   OpenSSL, without a module scope, as it would without\n"
"                   osslproc; expect the workers to crash after the\n"
"                   unload and the run to fail\n"
"  --verbose        osslproc's informational and debug lines from every\n"
"                   process (default: errors and warnings, and the\n"
"                   parent's informational lines)\n"
"  --help           this text\n", MAX_WORKERS);
}

static int
bad_input(const char *fmt, ...)
{
	va_list ap;

	fputs("osslproc-demo: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nTry 'osslproc-demo --help'.\n", stderr);
	return -EINVAL;
}

static int
parse_uint(const char *name, const char *s, unsigned lo, unsigned hi,
	   unsigned *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (s[0] < '0' || s[0] > '9' || *end || errno || v < lo || v > hi)
		return bad_input("--%s: expected a number from %u to %u, "
				 "got '%s'", name, lo, hi, s);
	*out = (unsigned)v;
	return 0;
}

static int
check_file(const char *name, const char *path)
{
	if (access(path, R_OK) == 0)
		return 0;
	return bad_input("--%s: cannot read '%s': %s", name, path,
			 strerror(errno));
}

enum { O_WORKERS = 256, O_HANDSHAKES, O_KEEP, O_SHARED, O_CA, O_CERT,
       O_KEY, O_HOST, O_PLUGIN, O_TIMEOUT, O_VERBOSE, O_UNSCOPED };

static const struct option long_options[] = {
	{ "workers", required_argument, NULL, O_WORKERS },
	{ "handshakes", required_argument, NULL, O_HANDSHAKES },
	{ "keep", required_argument, NULL, O_KEEP },
	{ "shared", no_argument, NULL, O_SHARED },
	{ "ca", required_argument, NULL, O_CA },
	{ "cert", required_argument, NULL, O_CERT },
	{ "key", required_argument, NULL, O_KEY },
	{ "host", required_argument, NULL, O_HOST },
	{ "plugin", required_argument, NULL, O_PLUGIN },
	{ "timeout", required_argument, NULL, O_TIMEOUT },
	{ "verbose", no_argument, NULL, O_VERBOSE },
	{ "unscoped", no_argument, NULL, O_UNSCOPED },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static int
apply_option(struct options *o, int c, const char *arg)
{
	switch (c) {
	case O_WORKERS:
		return parse_uint("workers", arg, 1, MAX_WORKERS, &o->workers);
	case O_HANDSHAKES:
		return parse_uint("handshakes", arg, 2, 1000000,
				  &o->handshakes);
	case O_KEEP:
		return parse_uint("keep", arg, 1, 16, &o->keep);
	case O_TIMEOUT:
		return parse_uint("timeout", arg, 1, 3600, &o->timeout);
	case O_SHARED:
		o->shared = true;
		return 0;
	case O_VERBOSE:
		o->verbose = true;
		return 0;
	case O_UNSCOPED:
		o->unscoped = true;
		return 0;
	case O_CA:
		o->ca = arg;
		return check_file("ca", arg);
	case O_CERT:
		o->cert = arg;
		return check_file("cert", arg);
	case O_KEY:
		o->key = arg;
		return check_file("key", arg);
	case O_HOST:
		o->host = arg;
		return arg[0] ? 0 : bad_input("--host: empty name");
	case O_PLUGIN:
		o->plugin = arg;
		return check_file("plugin", arg);
	}
	return -EINVAL;
}

/* 0 to run, 1 after --help, -EINVAL for bad input (already explained). */
static int
parse_options(int argc, char **argv, struct options *o)
{
	int c, rc;

	*o = (struct options){ .workers = 4, .handshakes = 200, .keep = 2,
			       .timeout = 60, .host = "localhost" };
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", long_options, NULL)) != -1) {
		if (c == 'h') {
			usage(stdout);
			return 1;
		}
		if (c == '?')
			return bad_input("unknown option '%s'",
					 argv[optind - 1]);
		if (c == ':')
			return bad_input("option '%s' needs a value",
					 argv[optind - 1]);
		rc = apply_option(o, c, optarg);
		if (rc)
			return rc;
	}
	if (optind < argc)
		return bad_input("unexpected argument '%s'", argv[optind]);
	if ((o->ca || o->cert || o->key) && !(o->ca && o->cert && o->key))
		return bad_input("give --ca, --cert and --key together, or "
				 "none of them");
	return 0;
}

/* ------------------------------------------------------------------ */
/* Set-up                                                              */
/* ------------------------------------------------------------------ */

static int
init_osslproc(struct demo *d)
{
	struct ossl_proc_config cfg = OSSL_PROC_CONFIG_INIT;
	int rc;

	cfg.log = demo_log;
	cfg.log_level = d->opt.verbose ? OSSL_PROC_LOG_DEBUG
				       : OSSL_PROC_LOG_INFO;
	demo_verbose = d->opt.verbose;
	if (d->opt.shared) {
		/* Before init and before any fork: every process must map
		 * the same arena. */
		d->arena = ossl_proc_arena_new(ARENA_BYTES);
		if (!d->arena) {
			say("ossl_proc_arena_new: %s", strerror(errno));
			return -errno;
		}
		cfg.allocator = ossl_proc_arena_allocator(d->arena);
	}
	rc = ossl_proc_init(&cfg);
	if (rc < 0)
		say("ossl_proc_init: %s", strerror(-rc));
	return rc < 0 ? rc : 0;
}

static int
copy_path(char *dst, const char *src)
{
	int n = snprintf(dst, PATH_MAX, "%s", src);

	return n >= 0 && n < PATH_MAX ? 0 : -ENAMETOOLONG;
}

static int
setup_pki(struct demo *d)
{
	int rc;

	if (!d->opt.ca)
		return pki_generate(d->pki_dir, sizeof(d->pki_dir), d->ca,
				    d->cert, d->key, PATH_MAX);
	rc = copy_path(d->ca, d->opt.ca);
	if (!rc)
		rc = copy_path(d->cert, d->opt.cert);
	if (!rc)
		rc = copy_path(d->key, d->opt.key);
	return rc;
}

/* demo-plugin.so next to the program, unless --plugin names one. */
static int
find_plugin(struct demo *d)
{
	char exe[PATH_MAX];
	ssize_t n;
	char *slash;

	if (d->opt.plugin)
		return copy_path(d->plugin_path, d->opt.plugin);
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n < 0) {
		say("cannot find the program's directory: %s",
		    strerror(errno));
		return -errno;
	}
	exe[n] = '\0';
	slash = strrchr(exe, '/');
	if (slash)
		*slash = '\0';
	n = snprintf(d->plugin_path, sizeof(d->plugin_path),
		     "%s/demo-plugin.so", exe);
	return n > 0 && (size_t)n < sizeof(d->plugin_path) ? 0 : -ENAMETOOLONG;
}

static int
listen_on(unsigned port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
			0);

	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(fd, 128) < 0) {
		int rc = -errno;

		close(fd);
		return rc;
	}
	return fd;
}

/*
 * One listening socket per worker, all on one port (port 0 for the first
 * picks it): with SO_REUSEPORT the kernel spreads connections over the
 * workers, so each has connections open when the plugin goes.
 */
static int
open_listeners(struct demo *d)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);

	for (unsigned i = 0; i < d->opt.workers; i++) {
		d->listen_fds[i] = listen_on(d->port);
		if (d->listen_fds[i] < 0) {
			say("cannot listen on 127.0.0.1:%u: %s", d->port,
			    strerror(-d->listen_fds[i]));
			return d->listen_fds[i];
		}
		if (i == 0 && getsockname(d->listen_fds[0],
					  (struct sockaddr *)&sa, &len) == 0)
			d->port = ntohs(sa.sin_port);
	}
	return 0;
}

static void
close_listeners(struct demo *d, int except)
{
	for (unsigned i = 0; i < d->opt.workers; i++) {
		if ((int)i != except && d->listen_fds[i] >= 0) {
			close(d->listen_fds[i]);
			d->listen_fds[i] = -1;
		}
	}
}

/* ------------------------------------------------------------------ */
/* Children                                                            */
/* ------------------------------------------------------------------ */

static void
close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* In a new child: drop the parent's ends of every child's pipes. */
static void
close_parent_ends(struct demo *d)
{
	close_fd(&d->client.ctl);
	close_fd(&d->client.rep);
	for (unsigned i = 0; i < d->opt.workers; i++) {
		close_fd(&d->workers[i].ctl);
		close_fd(&d->workers[i].rep);
	}
}

/*
 * Fork a child with a control pipe (parent to child) and a report pipe
 * (child to parent).  Returns the pid in the parent, 0 in the child (with
 * its ends in @ctl and @rep), a negative errno on failure.
 */
static pid_t
spawn(struct demo *d, struct child *c, int *ctl, int *rep)
{
	int cp[2], rp[2];
	pid_t pid;

	if (pipe2(cp, O_CLOEXEC) < 0)
		return -errno;
	if (pipe2(rp, O_CLOEXEC) < 0) {
		close(cp[0]);
		close(cp[1]);
		return -errno;
	}
	c->ctl = cp[1];
	c->rep = rp[0];
	/* Nothing buffered may be written twice. */
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid == 0) {
		close_parent_ends(d);
		*ctl = cp[0];
		*rep = rp[1];
		/* Only the parent's deadline counts; this is a backstop in
		 * case the parent itself is stuck. */
		alarm(d->opt.timeout + 30);
		return 0;
	}
	close(cp[0]);
	close(rp[1]);
	if (pid < 0) {
		close_fd(&c->ctl);
		close_fd(&c->rep);
		return -errno;
	}
	c->pid = pid;
	return pid;
}

static int
spawn_client(struct demo *d)
{
	int ctl, rep;
	pid_t pid = spawn(d, &d->client, &ctl, &rep);

	if (pid == 0) {
		demo_role = "client";
		close_listeners(d, -1);
		client_main(d, ctl, rep);
	}
	if (pid < 0)
		say("cannot fork the client: %s", strerror((int)-pid));
	return pid < 0 ? (int)pid : 0;
}

static int
spawn_workers(struct demo *d)
{
	static char role[32];
	int ctl, rep;

	for (unsigned i = 0; i < d->opt.workers; i++) {
		pid_t pid = spawn(d, &d->workers[i], &ctl, &rep);

		if (pid == 0) {
			snprintf(role, sizeof(role), "worker %u", i);
			demo_role = role;
			close_listeners(d, (int)i);
			worker_main(d, i, ctl, rep);
		}
		if (pid < 0) {
			say("cannot fork worker %u: %s", i,
			    strerror((int)-pid));
			return (int)pid;
		}
	}
	return 0;
}

static void
tell(struct child *c, unsigned char cmd)
{
	if (c->ctl >= 0 && write(c->ctl, &cmd, 1) != 1)
		say("cannot reach process %ld: %s", (long)c->pid,
		    strerror(errno));
}

static void
tell_workers(struct demo *d, unsigned char cmd)
{
	for (unsigned i = 0; i < d->opt.workers; i++)
		tell(&d->workers[i], cmd);
}

static void
read_report(struct child *c)
{
	struct report r;
	ssize_t n = read(c->rep, &r, sizeof(r));

	if (n == (ssize_t)sizeof(r) && r.kind > 0 && r.kind < R_KINDS) {
		c->last = r;
		c->got |= 1u << r.kind;
		return;
	}
	if (n < 0 && errno == EINTR)
		return;
	/* End of file: the child exited (or crashed). */
	close_fd(&c->rep);
}

/* 1 when @c sent @kind, 0 while it still may, -1 when it never will. */
static int
has(const struct child *c, unsigned kind)
{
	if (c->got & (1u << kind))
		return 1;
	return c->rep >= 0 ? 0 : -1;
}

/* Whether every worker (or the client) sent @kind; 1, 0 or -1 as has(). */
static int
all_have(struct demo *d, bool workers, unsigned kind)
{
	int all = 1;

	if (!workers)
		return has(&d->client, kind);
	for (unsigned i = 0; i < d->opt.workers; i++) {
		int h = has(&d->workers[i], kind);

		if (h < 0)
			return -1;
		all &= h;
	}
	return all;
}

static void
poll_reports(struct demo *d, uint64_t deadline)
{
	struct pollfd p[MAX_WORKERS + 1];
	struct child *who[MAX_WORKERS + 1];
	nfds_t n = 0;
	uint64_t now = now_us();

	if (d->client.rep >= 0)
		who[n++] = &d->client;
	for (unsigned i = 0; i < d->opt.workers; i++)
		if (d->workers[i].rep >= 0)
			who[n++] = &d->workers[i];
	for (nfds_t i = 0; i < n; i++)
		p[i] = (struct pollfd){ .fd = who[i]->rep, .events = POLLIN };
	if (now >= deadline ||
	    poll(p, n, (int)((deadline - now) / 1000) + 1) <= 0)
		return;
	for (nfds_t i = 0; i < n; i++)
		if (p[i].revents)
			read_report(who[i]);
}

/* Wait, until the run's deadline, for every worker (or the client) to
 * report @kind; 0, -ETIMEDOUT or -EPIPE (a child exited without it). */
static int
collect(struct demo *d, bool workers, unsigned kind, const char *what)
{
	int h;

	while ((h = all_have(d, workers, kind)) == 0) {
		if (now_us() >= d->deadline) {
			say("no %s after %u s: giving up", what,
			    d->opt.timeout);
			return -ETIMEDOUT;
		}
		poll_reports(d, d->deadline);
	}
	if (h < 0) {
		say("a process exited before reporting %s", what);
		return -EPIPE;
	}
	return 0;
}

static void
reap_one(struct child *c, bool block)
{
	if (c->pid <= 0 || c->reaped)
		return;
	if (waitpid(c->pid, &c->status, block ? 0 : WNOHANG) == c->pid)
		c->reaped = true;
}

static bool
reap_all(struct demo *d, bool block)
{
	bool all;

	reap_one(&d->client, block);
	all = d->client.pid <= 0 || d->client.reaped;
	for (unsigned i = 0; i < d->opt.workers; i++) {
		reap_one(&d->workers[i], block);
		all &= d->workers[i].pid <= 0 || d->workers[i].reaped;
	}
	return all;
}

static void
kill_one(struct child *c)
{
	if (c->pid > 0 && !c->reaped) {
		say("process %ld did not exit in time: killing it",
		    (long)c->pid);
		kill(c->pid, SIGKILL);
		c->killed = true;
	}
}

/* Every child ends: on its own before @deadline, or killed. */
static void
end_children(struct demo *d, uint64_t deadline)
{
	while (!reap_all(d, false) && now_us() < deadline) {
		/* Drain the final reports; they carry the statistics. */
		poll_reports(d, now_us() + 20000);
	}
	kill_one(&d->client);
	for (unsigned i = 0; i < d->opt.workers; i++)
		kill_one(&d->workers[i]);
	reap_all(d, true);
}

/* ------------------------------------------------------------------ */
/* The run                                                             */
/* ------------------------------------------------------------------ */

static void
progress(const struct demo *d, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void
progress(const struct demo *d, const char *fmt, ...)
{
	va_list ap;

	printf("[%7.3f s] ", (double)(now_us() - d->t0) / 1e6);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static uint64_t
sum_workers(const struct demo *d, size_t offset)
{
	uint64_t sum = 0;

	for (unsigned i = 0; i < d->opt.workers; i++)
		sum += *(const uint64_t *)((const char *)
			&d->workers[i].last.u.w + offset);
	return sum;
}

#define WSUM(d, field) sum_workers(d, offsetof(struct worker_report, field))

/* The coordinated part: each step waits for every report it needs. */
static int
orchestrate(struct demo *d)
{
	const struct client_report *cr = &d->client.last.u.c;
	int rc;

	rc = collect(d, true, R_READY, "ready report from every worker");
	if (rc)
		return rc;
	progress(d, "%u workers ready, each with its own SSL_CTX",
		 d->opt.workers);
	tell(&d->client, CMD_GO);
	rc = collect(d, false, R_BEFORE, "first phase from the client");
	if (rc)
		return rc;
	progress(d, "client: %llu verified handshakes, %llu connections "
		 "left open", (unsigned long long)cr->hs_ok[0],
		 (unsigned long long)cr->kept);
	tell_workers(d, CMD_UNLOAD);
	rc = collect(d, true, R_UNLOADED, "unload report from every worker");
	if (rc)
		return rc;
	progress(d, "plugin unloaded in every worker, %llu connections open",
		 (unsigned long long)WSUM(d, open_at_unload));
	tell(&d->client, CMD_AFTER);
	rc = collect(d, false, R_FINAL, "final report from the client");
	if (rc)
		return rc;
	progress(d, "client: done after the unload (%llu more handshakes)",
		 (unsigned long long)cr->hs_ok[1]);
	tell_workers(d, CMD_EXIT);
	rc = collect(d, true, R_FINAL, "final report from every worker");
	if (!rc)
		progress(d, "workers finished");
	return rc;
}

/* The parent's own end: plugin, context, teardown, leak count. */
struct parent_end {
	struct unload_result unload;
	struct final_stats fin;
	struct ossl_proc_arena_stats arena;
	int reclaimed;
};

static void
parent_end(struct demo *d, struct parent_end *pe)
{
	/* The negative control's parent keeps its copy: unloading it
	 * would crash the parent before it can print what happened. */
	if (!d->opt.unscoped)
		plugin_close(d, &pe->unload);
	ossl_proc_ctx_free(d->server);
	d->server = NULL;
	if (d->arena) {
		/* Blocks a worker left in the arena (one that was killed,
		 * or ended with _exit()): the parent frees them. */
		for (unsigned i = 0; i < d->opt.workers; i++) {
			int n = ossl_proc_arena_reclaim(d->arena,
							d->workers[i].pid);

			pe->reclaimed += n > 0 ? n : 0;
		}
		if (d->client.pid > 0) {
			int n = ossl_proc_arena_reclaim(d->arena,
							d->client.pid);

			pe->reclaimed += n > 0 ? n : 0;
		}
		pe->arena.size = sizeof(pe->arena);
		ossl_proc_arena_get_stats(d->arena, &pe->arena);
	}
	final_stats(&pe->fin);
}

/* ------------------------------------------------------------------ */
/* Summary                                                             */
/* ------------------------------------------------------------------ */

static const char *
unload_name(int rc)
{
	switch (rc) {
	case OSSL_PROC_UNLOAD_SAFE:
		return "safe";
	case OSSL_PROC_UNLOAD_PINNED:
		return "pinned";
	case OSSL_PROC_UNLOAD_IN_USE:
		return "in use";
	}
	return "failed";
}

static const char *
bytes(uint64_t n, char buf[static 24])
{
	if (n < 10 * 1024)
		snprintf(buf, 24, "%llu B", (unsigned long long)n);
	else if (n < 10 * 1024 * 1024)
		snprintf(buf, 24, "%.1f KiB", (double)n / 1024);
	else
		snprintf(buf, 24, "%.1f MiB", (double)n / (1024 * 1024));
	return buf;
}

static const char *
exit_text(const struct child *c, char buf[static 32])
{
	if (!c->reaped)
		snprintf(buf, 32, "not reaped");
	else if (c->killed)
		snprintf(buf, 32, "killed (hung)");
	else if (WIFSIGNALED(c->status))
		snprintf(buf, 32, "signal %d", WTERMSIG(c->status));
	else
		snprintf(buf, 32, "exit %d", WEXITSTATUS(c->status));
	return buf;
}

static bool
exited_0(const struct child *c)
{
	return c->reaped && !c->killed && WIFEXITED(c->status) &&
	       WEXITSTATUS(c->status) == 0;
}

static uint64_t
bad_frees(const struct ossl_proc_stats *st)
{
	return st->double_frees + st->invalid_frees + st->foreign_frees +
	       st->inherited_frees;
}

static void
print_worker(const struct demo *d, unsigned i)
{
	const struct child *c = &d->workers[i];
	const struct worker_report *w = &c->last.u.w;
	char ex[32];

	printf("  %6u %8ld %7llu %6llu %6llu  %7llu %6llu %7llu    %-6s "
	       "%5llu us  %s\n", i, (long)c->pid,
	       (unsigned long long)(w->hs_ok - w->hs_after),
	       (unsigned long long)w->hs_after,
	       (unsigned long long)w->hs_failed,
	       (unsigned long long)(w->requests - w->requests_after),
	       (unsigned long long)w->requests_after,
	       (unsigned long long)w->open_at_unload,
	       w->unload.done ? unload_name(w->unload.rc) : "-",
	       (unsigned long long)w->unload.us, exit_text(c, ex));
}

/* Why each unload result is what it is. */
static void
print_unload_reasons(const struct demo *d)
{
	bool safe = false;

	for (unsigned i = 0; i < d->opt.workers; i++) {
		const struct unload_result *u = &d->workers[i].last.u.w.unload;

		if (u->rc == OSSL_PROC_UNLOAD_PINNED)
			printf("  worker %u pinned: %s\n", i,
			       u->why[0] ? u->why : "(no reason logged)");
		safe |= u->done && u->rc == OSSL_PROC_UNLOAD_SAFE;
	}
	if (d->opt.unscoped)
		printf("  --unscoped: nothing was undone before dlclose(); "
		       "OpenSSL still points into\n  the unmapped plugin\n");
	else if (safe)
		printf("  safe: ossl_proc_module_close() undid every "
		       "registration; live connections call\n  osslproc's "
		       "trampolines (in libosslproc.so), never the plugin, so "
		       "dlclose() unmapped it\n");
}

static void
print_plugin_view(const struct demo *d)
{
	printf("\nWhat the plugin's callbacks counted in each worker before "
	       "the unload\n"
	       "  worker  handshakes  records  keylog lines  alerts  "
	       "connections tagged/freed\n");
	for (unsigned i = 0; i < d->opt.workers; i++) {
		const struct demo_plugin_counters *p =
			&d->workers[i].last.u.w.plugin;

		printf("  %6u  %10llu  %7llu  %12llu  %6llu  %llu/%llu\n", i,
		       (unsigned long long)p->handshakes,
		       (unsigned long long)p->records,
		       (unsigned long long)p->keylog_lines,
		       (unsigned long long)p->alerts,
		       (unsigned long long)p->conns_tagged,
		       (unsigned long long)p->conns_freed);
	}
	printf("  (connections open at the unload are freed later: their "
	       "ex_data free function\n   is a no-op by then, osslproc "
	       "freed the plugin's index)\n");
}

static void
print_workers(const struct demo *d)
{
	printf("\nWorkers             handshakes             requests     "
	       "open at   plugin unload\n"
	       "  worker      pid  before  after failed   before  after  "
	       "unload    result  time      exit\n");
	for (unsigned i = 0; i < d->opt.workers; i++)
		print_worker(d, i);
	print_unload_reasons(d);
	print_plugin_view(d);
}

static void
print_client(const struct demo *d)
{
	const struct child *c = &d->client;
	const struct client_report *r = &c->last.u.c;
	char ex[32];
	double rate = r->us[0] ? (double)r->hs_ok[0] * 1e6 / (double)r->us[0]
			       : 0;

	printf("\nClient (pid %ld, %s)\n", (long)c->pid, exit_text(c, ex));
	printf("  before the unload: %llu handshakes verified, %llu failed, "
	       "%llu requests answered,\n    %.3f s, %.0f handshakes/s "
	       "(connect, handshake, request, close)\n",
	       (unsigned long long)r->hs_ok[0],
	       (unsigned long long)r->hs_failed[0],
	       (unsigned long long)r->ex_ok[0], (double)r->us[0] / 1e6, rate);
	printf("  open across the unload: %llu connections, %llu requests "
	       "answered on them after it,\n    %llu failed\n",
	       (unsigned long long)r->kept,
	       (unsigned long long)r->kept_ex_ok,
	       (unsigned long long)r->kept_ex_failed);
	printf("  after the unload: %llu new handshakes verified, %llu "
	       "failed, %llu requests answered,\n    %.3f s\n",
	       (unsigned long long)r->hs_ok[1],
	       (unsigned long long)r->hs_failed[1],
	       (unsigned long long)r->ex_ok[1], (double)r->us[1] / 1e6);
	printf("  served by worker:");
	for (unsigned i = 0; i < d->opt.workers; i++)
		printf(" %u:%llu", i, (unsigned long long)r->served_by[i]);
	putchar('\n');
}

static void
print_memory_row(const char *who, const struct final_stats *f,
		 bool reported)
{
	const struct ossl_proc_stats *st = &f->st;
	char peak[24], leak[24];

	if (!reported) {
		printf("  %-9s (no final report)\n", who);
		return;
	}

	printf("  %-9s %9llu %9llu %10s %8s %6llu %7llu %7llu %9llu\n", who,
	       (unsigned long long)st->allocs, (unsigned long long)st->frees,
	       bytes(st->peak_bytes, peak), bytes(st->live_bytes, leak),
	       (unsigned long long)st->double_frees,
	       (unsigned long long)st->invalid_frees,
	       (unsigned long long)st->foreign_frees,
	       (unsigned long long)st->inherited_frees);
}

static void
print_memory(const struct demo *d, const struct parent_end *pe)
{
	char who[24];

	/* On 4.0 OpenSSL's state is still allocated at this point (its
	 * destructor frees it after main): what is live is not all leaked. */
	bool v4 = OpenSSL_version_num() >= 0x40000000L;

	printf("\nOpenSSL memory per process (ossl_proc_get_stats() after "
	       "ossl_proc_teardown()\nand OPENSSL_cleanup(): %s; a worker's "
	       "frees include what\nit inherited)\n"
	       "  process      allocs     frees  peak live %8s double "
	       "invalid foreign inherited\n",
	       v4 ? "what is still live includes OpenSSL 4's own state,\n"
		    "freed only after main returns" :
		    "what is still live leaked",
	       v4 ? "live" : "leaked");
	print_memory_row("parent", &pe->fin, true);
	print_memory_row("client", &d->client.last.u.c.fin,
			 has(&d->client, R_FINAL) > 0);
	for (unsigned i = 0; i < d->opt.workers; i++) {
		snprintf(who, sizeof(who), "worker %u", i);
		print_memory_row(who, &d->workers[i].last.u.w.fin,
				 has(&d->workers[i], R_FINAL) > 0);
	}
}

static void
print_parent(const struct demo *d, const struct parent_end *pe)
{
	char b1[24], b2[24];

	printf("\nParent (pid %ld)\n", (long)getpid());
	if (!pe->unload.done)
		printf("  plugin kept loaded (--unscoped: unloading it would "
		       "crash the parent)\n");
	else
		printf("  plugin unload: %s, %s, error strings %s (%llu us)\n",
	       unload_name(pe->unload.rc),
	       pe->unload.unmapped ? "unmapped" : "still mapped",
	       pe->unload.strings_gone ? "gone" : "still registered",
	       (unsigned long long)pe->unload.us);
	if (pe->unload.why[0])
		printf("    why: %s\n", pe->unload.why);
	printf("  ossl_proc_teardown: %s", unload_name(pe->fin.teardown_rc));
	if (pe->fin.teardown_rc == OSSL_PROC_UNLOAD_PINNED)
		printf(" (libosslproc.so stays mapped: OpenSSL's memory "
		       "functions\n    point into it until exit)");
	putchar('\n');
	if (d->arena)
		printf("  shared arena: %llu allocations, %llu frees, %s in use"
		       " at the end, peak %s,\n    %d blocks reclaimed from "
		       "exited processes\n",
		       (unsigned long long)pe->arena.allocs,
		       (unsigned long long)pe->arena.frees,
		       bytes(pe->arena.used_bytes, b1),
		       bytes(pe->arena.peak_bytes, b2), pe->reclaimed);
	print_memory(d, pe);
	printf("\nossl_proc_report() in the parent at the end:\n");
	fflush(stdout);
	ossl_proc_report(stdout);
}

/* ------------------------------------------------------------------ */
/* Claims                                                              */
/* ------------------------------------------------------------------ */

struct verdict {
	unsigned failed;
};

static void
claim(struct verdict *v, bool ok, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void
claim(struct verdict *v, bool ok, const char *fmt, ...)
{
	va_list ap;

	printf("  [%s] ", ok ? " ok " : "FAIL");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	v->failed += !ok;
}

static void
claim_traffic(const struct demo *d, struct verdict *v)
{
	const struct client_report *r = &d->client.last.u.c;
	uint64_t ok = r->hs_ok[0] + r->hs_ok[1];
	uint64_t after = d->opt.handshakes / 4 ? d->opt.handshakes / 4 : 1;

	claim(v, ok == d->opt.handshakes && !r->hs_failed[0] &&
	      !r->hs_failed[1], "%llu of %u TLS 1.3 handshakes verified "
	      "(CA %s, host name %s)", (unsigned long long)ok,
	      d->opt.handshakes, d->opt.ca ? "given" : "generated",
	      d->opt.host);
	claim(v, r->ex_ok[0] + r->ex_ok[1] == d->opt.handshakes &&
	      !r->ex_failed[0] && !r->ex_failed[1],
	      "every request on a new connection answered (%llu)",
	      (unsigned long long)(r->ex_ok[0] + r->ex_ok[1]));
	claim(v, r->kept > 0 && !r->kept_ex_failed &&
	      r->kept_ex_ok == r->kept * 3, "%llu connections opened with the "
	      "plugin loaded still exchanged data after its unload (%llu "
	      "requests)", (unsigned long long)r->kept,
	      (unsigned long long)r->kept_ex_ok);
	claim(v, r->hs_ok[1] == after && !r->wrong_state, "%llu new "
	      "handshakes after the unload; every reply came from the "
	      "expected side of it", (unsigned long long)r->hs_ok[1]);
}

static void
claim_unload(const struct demo *d, const struct parent_end *pe,
	     struct verdict *v)
{
	unsigned safe = 0, pinned = 0, good = 0;

	for (unsigned i = 0; i < d->opt.workers; i++) {
		const struct unload_result *u = &d->workers[i].last.u.w.unload;

		safe += u->done && u->rc == OSSL_PROC_UNLOAD_SAFE;
		pinned += u->done && u->rc == OSSL_PROC_UNLOAD_PINNED;
		/* Safe means gone; pinned means kept mapped on purpose. */
		good += u->done && u->strings_gone &&
			((u->rc == OSSL_PROC_UNLOAD_SAFE && u->unmapped) ||
			 u->rc == OSSL_PROC_UNLOAD_PINNED);
	}
	claim(v, good == d->opt.workers, "plugin unloaded in %u of %u "
	      "workers with %llu connections open (%u safe and unmapped, %u "
	      "pinned), its error strings gone", good, d->opt.workers,
	      (unsigned long long)WSUM(d, open_at_unload), safe, pinned);
	claim(v, pe->unload.done && pe->unload.rc >= 0 &&
	      pe->fin.teardown_rc >= 0, "parent: plugin unload %s, "
	      "ossl_proc_teardown %s", unload_name(pe->unload.rc),
	      unload_name(pe->fin.teardown_rc));
}

static void
claim_workers(const struct demo *d, struct verdict *v)
{
	const struct client_report *r = &d->client.last.u.c;
	bool freed = true;

	for (unsigned i = 0; i < d->opt.workers; i++) {
		const struct worker_report *w = &d->workers[i].last.u.w;

		freed &= w->conns_freed == w->hs_ok + w->hs_failed;
	}
	claim(v, WSUM(d, hs_ok) == r->hs_ok[0] + r->hs_ok[1] &&
	      !WSUM(d, hs_failed) && freed, "the workers accepted exactly "
	      "the client's %llu handshakes and freed every connection",
	      (unsigned long long)WSUM(d, hs_ok));
}

/* The plugin really was in the path before the unload. */
static void
claim_plugin(const struct demo *d, struct verdict *v)
{
	uint64_t seen = 0, served = 0;

	for (unsigned i = 0; i < d->opt.workers; i++) {
		const struct worker_report *w = &d->workers[i].last.u.w;

		seen += w->plugin.handshakes;
		served += w->hs_ok - w->hs_after;
	}
	claim(v, seen == served && served > 0, "the plugin's info callback "
	      "saw each of the %llu handshakes before the unload (%llu)",
	      (unsigned long long)served, (unsigned long long)seen);
}

static void
claim_memory(const struct demo *d, const struct parent_end *pe,
	     struct verdict *v)
{
	uint64_t dbl = pe->fin.st.double_frees, bad = bad_frees(&pe->fin.st);
	uint64_t errors = pe->fin.log_errors, warnings = pe->fin.log_warnings;
	const struct final_stats *f = &d->client.last.u.c.fin;

	unsigned reported = 1 + (has(&d->client, R_FINAL) > 0);
	uint64_t leaked_blocks = pe->fin.st.live_blocks + f->st.live_blocks;
	uint64_t leaked_bytes = pe->fin.st.live_bytes + f->st.live_bytes;

	dbl += f->st.double_frees;
	bad += bad_frees(&f->st);
	errors += f->log_errors;
	warnings += f->log_warnings;
	for (unsigned i = 0; i < d->opt.workers; i++) {
		f = &d->workers[i].last.u.w.fin;
		reported += has(&d->workers[i], R_FINAL) > 0;
		leaked_blocks += f->st.live_blocks;
		leaked_bytes += f->st.live_bytes;
		dbl += f->st.double_frees;
		bad += bad_frees(&f->st);
		errors += f->log_errors;
		warnings += f->log_warnings;
	}
	/* OpenSSL 4.0's OPENSSL_cleanup() only asks for a cleanup that its
	 * destructor does after main returns: before that, its own state is
	 * still allocated and is no leak. */
	if (OpenSSL_version_num() >= 0x40000000L)
		printf("  [info] still allocated after teardown: %llu blocks, "
		       "%llu bytes in all (OpenSSL %s frees its own state "
		       "only after main returns: not all leaks)\n",
		       (unsigned long long)leaked_blocks,
		       (unsigned long long)leaked_bytes,
		       OpenSSL_version(OPENSSL_VERSION_STRING));
	else
		printf("  [info] leaked after teardown and OpenSSL's cleanup: "
		       "%llu blocks, %llu bytes in all\n",
		       (unsigned long long)leaked_blocks,
		       (unsigned long long)leaked_bytes);
	claim(v, dbl == 0 && reported == d->opt.workers + 2,
	      "double frees caught: %llu (%u of %u processes reported)",
	      (unsigned long long)dbl, reported, d->opt.workers + 2);
	claim(v, bad == 0 && reported == d->opt.workers + 2, "no double, "
	      "invalid, foreign or inherited frees in any process");
	claim(v, errors == 0 && warnings == 0, "osslproc logged %llu errors "
	      "and %llu warnings", (unsigned long long)errors,
	      (unsigned long long)warnings);
	if (d->arena)
		claim(v, pe->arena.allocs > 0 && pe->arena.used_bytes == 0,
		      "shared arena: %llu worker and client allocations, all "
		      "freed by their owners (%llu bytes in use)",
		      (unsigned long long)pe->arena.allocs,
		      (unsigned long long)pe->arena.used_bytes);
}

static void
claim_exits(const struct demo *d, struct verdict *v)
{
	unsigned ok = exited_0(&d->client);

	for (unsigned i = 0; i < d->opt.workers; i++)
		ok += exited_0(&d->workers[i]);
	claim(v, ok == d->opt.workers + 1, "%u of %u workers and the client "
	      "exited 0 (no crash, no hang)", ok, d->opt.workers + 1);
}

static bool
summarise(const struct demo *d, const struct parent_end *pe, uint64_t end)
{
	struct verdict v = { 0 };

	print_workers(d);
	print_client(d);
	print_parent(d, pe);
	printf("\nClaims\n");
	claim_traffic(d, &v);
	claim_unload(d, pe, &v);
	claim_workers(d, &v);
	claim_plugin(d, &v);
	claim_memory(d, pe, &v);
	claim_exits(d, &v);
	printf("\n%s: %s mode, %u workers, %u handshakes, %.2f s; %s\n",
	       v.failed ? "FAIL" : "PASS", d->opt.shared ? "shared" : "private",
	       d->opt.workers, d->opt.handshakes,
	       (double)(end - d->t0) / 1e6, v.failed ?
	       "some claims did not hold" : "every claim held");
	fflush(stdout);
	return v.failed == 0;
}

/* ------------------------------------------------------------------ */
/* Main                                                                */
/* ------------------------------------------------------------------ */

static void
print_header(const struct demo *d)
{
	char e[256];

	ERR_error_string_n(d->plugin_error, e, sizeof(e));
	printf("osslproc-demo: %s mode, %u workers, %u handshakes "
	       "(%u after the plugin unload), %u kept open per worker\n",
	       d->opt.shared ? "shared" : "private", d->opt.workers,
	       d->opt.handshakes, d->opt.handshakes / 4 ?
	       d->opt.handshakes / 4 : 1, d->opt.keep);
	printf("  %s; osslproc %d.%d.%d\n", OpenSSL_version(OPENSSL_VERSION),
	       OSSL_PROC_VERSION_MAJOR, OSSL_PROC_VERSION_MINOR,
	       OSSL_PROC_VERSION_MICRO);
	if (d->arena)
		printf("  allocator backend: built-in shared arena, %zu MiB\n",
		       ARENA_BYTES >> 20);
	if (d->pki_dir[0])
		printf("  certificates: a throwaway CA and server certificate "
		       "for localhost,\n    generated in %s (removed at the "
		       "end)\n", d->pki_dir);
	else
		printf("  certificates: CA %s,\n    server %s, key %s\n",
		       d->ca, d->cert, d->key);
	printf("  plugin: %s\n    registered %s: an SSL ex_data index, "
	       "error strings,\n    info, msg and keylog callbacks on each "
	       "server SSL_CTX; its error reads\n    \"%s\"\n",
	       d->plugin_path, d->opt.unscoped ?
	       "directly with OpenSSL (--unscoped, the negative control)" :
	       "through its module scope", e);
	printf("  listening on 127.0.0.1:%u, one SO_REUSEPORT socket per "
	       "worker\n", d->port);
}

/* Everything up to the forked workers; 0 or a negative errno. */
static int
start(struct demo *d)
{
	int rc = setup_pki(d);

	if (rc) {
		say("no certificates: %s", strerror(-rc));
		return rc;
	}
	rc = find_plugin(d);
	if (!rc)
		rc = open_listeners(d);
	/* The client first, so it carries no copy of the plugin. */
	if (!rc)
		rc = spawn_client(d);
	if (!rc)
		rc = plugin_open(d);
	if (rc)
		return rc;
	d->server = ossl_proc_ctx_new(build_server_ctx, d);
	/* Built once here to fail early on a bad certificate or key; each
	 * worker builds its own. */
	if (!d->server || !ossl_proc_ctx_get(d->server)) {
		say("cannot build the server SSL_CTX from %s and %s", d->cert,
		    d->key);
		return -EINVAL;
	}
	print_header(d);
	rc = spawn_workers(d);
	close_listeners(d, -1);
	return rc;
}

static void
prepare(struct demo *d)
{
	d->t0 = now_us();
	d->deadline = d->t0 + (uint64_t)d->opt.timeout * 1000000u;
	d->client.ctl = d->client.rep = -1;
	for (unsigned i = 0; i < MAX_WORKERS; i++) {
		d->listen_fds[i] = -1;
		d->workers[i].ctl = d->workers[i].rep = -1;
	}
	/* Peers that hang up must not kill a process with SIGPIPE. */
	signal(SIGPIPE, SIG_IGN);
	/* A backstop: the parent stops by itself even if it is stuck. */
	alarm(d->opt.timeout + 60);
}

int
main(int argc, char **argv)
{
	struct demo *d = &demo;
	struct parent_end pe = { 0 };
	bool pass;
	int rc, started;

	rc = parse_options(argc, argv, &d->opt);
	if (rc)
		return rc > 0 ? 0 : 2;
	prepare(d);
	if (init_osslproc(d) < 0)
		return 1;
	started = start(d);
	rc = started < 0 ? started : orchestrate(d);
	if (rc) {
		/* Stop whatever still runs: workers exit on CMD_EXIT, the
		 * client when its control pipe closes. */
		tell_workers(d, CMD_EXIT);
		close_fd(&d->client.ctl);
	}
	end_children(d, (rc ? now_us() : d->deadline) + GRACE_US);
	if (started == 0) {
		progress(d, "all children reaped");
		parent_end(d, &pe);
		pass = summarise(d, &pe, now_us()) && rc == 0;
	} else {
		printf("FAIL: the daemon could not start (see above)\n");
		pass = false;
	}
	/* Only a PKI this run generated; given files are the user's. */
	if (d->pki_dir[0])
		pki_remove(d->pki_dir, d->ca, d->cert, d->key);
	return pass ? 0 : 1;
}
