/*
 * osslproc-demo: the small things every process of the demo uses: time,
 * osslproc's log callback, messages, reports to the parent.
 */
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>

#include "demo.h"

/* Who is talking in log lines: set right after each fork. */
const char *demo_role = "parent";
bool demo_verbose;

static uint64_t log_errors, log_warnings;
static char pin_reason[160];

uint64_t
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static const char *
level_name(enum ossl_proc_log_level level)
{
	if (level <= OSSL_PROC_LOG_ERROR)
		return "ERROR";
	if (level <= OSSL_PROC_LOG_WARNING)
		return "WARNING";
	return level <= OSSL_PROC_LOG_INFO ? "info" : "debug";
}

/*
 * osslproc's log callback.  It can run inside OpenSSL's allocator and in
 * fork handlers, so it formats into a stack buffer and writes once, and
 * never allocates.  It counts errors and warnings for the summary and
 * keeps the reason osslproc gives for pinning an object.  Informational
 * lines are shown for the parent only (each child would repeat them),
 * unless --verbose.
 */
void
demo_log(enum ossl_proc_log_level level, const char *msg, void *arg)
{
	char line[1200];
	int n;

	if (level <= OSSL_PROC_LOG_ERROR)
		log_errors++;
	else if (level <= OSSL_PROC_LOG_WARNING)
		log_warnings++;
	if (strstr(msg, "stays mapped"))
		snprintf(pin_reason, sizeof(pin_reason), "%s", msg);
	if (level > OSSL_PROC_LOG_WARNING && !demo_verbose &&
	    strcmp(demo_role, "parent") != 0)
		return;
	n = snprintf(line, sizeof(line), "  osslproc [%s %ld] %s: %s\n",
		     demo_role, (long)getpid(), level_name(level), msg);
	if (n > 0 && write(STDERR_FILENO, line,
			   (size_t)n < sizeof(line) ? (size_t)n
						    : sizeof(line) - 1) < 0)
		return;
}

void
demo_log_counts(uint64_t *errors, uint64_t *warnings)
{
	*errors = log_errors;
	*warnings = log_warnings;
}

const char *
demo_log_pin_reason(void)
{
	return pin_reason;
}

/* A message from the demo itself, to stderr, naming the process. */
void
say(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n;

	n = snprintf(line, sizeof(line), "osslproc-demo [%s %ld]: ",
		     demo_role, (long)getpid());
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	strcat(line, "\n");
	/* One write per line: the processes share stderr. */
	if (write(STDERR_FILENO, line, strlen(line)) < 0)
		return;
}

/* @what failed: say so with OpenSSL's first queued reason. */
void
warn_openssl(const char *what)
{
	char buf[256] = "no OpenSSL error queued";
	unsigned long e = ERR_get_error();

	if (e)
		ERR_error_string_n(e, buf, sizeof(buf));
	say("%s: %s", what, buf);
	ERR_clear_error();
}

int
send_report(int fd, struct report *r)
{
	ssize_t n;

	do {
		n = write(fd, r, sizeof(*r));
	} while (n < 0 && errno == EINTR);
	if (n == (ssize_t)sizeof(*r))
		return 0;
	say("cannot report to the parent: %s",
	    n < 0 ? strerror(errno) : "short write");
	return n < 0 ? -errno : -EIO;
}

/* The next command byte on @fd, -ETIMEDOUT at @deadline, -EPIPE when the
 * parent is gone. */
int
wait_command(int fd, uint64_t deadline)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	unsigned char c;
	uint64_t now;

	for (;;) {
		now = now_us();
		if (now >= deadline)
			return -ETIMEDOUT;
		if (poll(&p, 1, (int)((deadline - now) / 1000) + 1) < 0 &&
		    errno != EINTR)
			return -errno;
		if (!(p.revents & (POLLIN | POLLHUP)))
			continue;
		if (read(fd, &c, 1) == 1)
			return c;
		return -EPIPE;
	}
}

/*
 * The end of a child's life: what osslproc counted, its teardown, then
 * OpenSSL's own cleanup (which exit() would run anyway) so that whatever
 * is still allocated afterwards really leaked.
 */
void
final_stats(struct final_stats *out)
{
	out->teardown_rc = ossl_proc_teardown();
	OPENSSL_cleanup();
	out->st.size = sizeof(out->st);
	ossl_proc_get_stats(&out->st);
	demo_log_counts(&out->log_errors, &out->log_warnings);
}

/*
 * dlopen() the plugin and let it register with OpenSSL through its module
 * scope.  In the parent, before the workers fork: they inherit the
 * mapping, the scope and what it registered, like children of a SIP
 * server inherit its modules.  0 or a negative errno.
 */
int
plugin_open(struct demo *d)
{
	demo_plugin_entry_fn entry;
	const struct demo_plugin *p;
	int rc = 0;

	d->plugin_handle = dlopen(d->plugin_path, RTLD_NOW | RTLD_LOCAL);
	if (!d->plugin_handle) {
		say("cannot load the plugin: %s", dlerror());
		return -ENOENT;
	}
	*(void **)&entry = dlsym(d->plugin_handle, DEMO_PLUGIN_ENTRY);
	p = entry ? entry() : NULL;
	if (!p || p->abi != DEMO_PLUGIN_ABI) {
		say("%s is not a demo plugin of ABI %d", d->plugin_path,
		    DEMO_PLUGIN_ABI);
		rc = -ENOEXEC;
	} else if ((rc = p->load(!d->opt.unscoped)) < 0) {
		say("the plugin failed to load: %s", strerror(-rc));
	}
	if (rc < 0) {
		dlclose(d->plugin_handle);
		d->plugin_handle = NULL;
		return rc;
	}
	d->plugin = p;
	d->plugin_error = p->sample_error();
	return 0;
}

static bool
still_mapped(const char *path)
{
	void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);

	if (h)
		dlclose(h);
	return h != NULL;
}

/*
 * Close the plugin's scope, then dlclose() it, and look at what is left:
 * whether it is still mapped and whether OpenSSL still knows its error
 * strings (a lookup that would read unmapped memory had they stayed).
 */
void
plugin_close(struct demo *d, struct unload_result *u)
{
	uint64_t t = now_us();

	if (!d->plugin)
		return;
	u->rc = d->plugin->unload();
	d->plugin = NULL;
	/* If the scope could not be closed, OpenSSL may still point into
	 * the plugin: keep it mapped rather than crash later. */
	if (u->rc >= 0)
		dlclose(d->plugin_handle);
	d->plugin_handle = NULL;
	u->us = now_us() - t;
	u->done = 1;
	u->unmapped = !still_mapped(d->plugin_path);
	/* Without a scope the lookup itself would read the unmapped
	 * plugin; the negative control crashes on traffic instead. */
	if (!d->opt.unscoped)
		u->strings_gone =
			ERR_reason_error_string(d->plugin_error) == NULL;
	if (u->rc == OSSL_PROC_UNLOAD_PINNED)
		snprintf(u->why, sizeof(u->why), "%s", demo_log_pin_reason());
	if (u->rc < 0)
		say("closing the plugin's scope failed: %s", strerror(-u->rc));
}
