/*
 * osslproc-demo internals: the options, the state the parent hands to its
 * children through fork(), and the reports they send back over pipes.
 */
#ifndef DEMO_H
#define DEMO_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <osslproc.h>

#include "demo-plugin.h"

#define MAX_WORKERS 64
#define REQUEST_MAX 256

/* Commands the parent writes, one byte each, to a child's control pipe. */
enum {
	CMD_GO = 'g',           /* client: start the handshakes */
	CMD_UNLOAD = 'u',       /* worker: unload the plugin now */
	CMD_AFTER = 'a',        /* client: the plugin is gone, go on */
	CMD_EXIT = 'x',         /* worker: finish and exit */
};

/* What a child reports, in this order; each report carries the child's
 * whole record so far. */
enum report_kind {
	R_READY = 1,            /* worker: its own SSL_CTX is built */
	R_BEFORE,               /* client: handshakes before unload done */
	R_UNLOADED,             /* worker: plugin closed and dlclose'd */
	R_FINAL,                /* both: all done, about to exit(0) */
	R_KINDS
};

struct final_stats {
	/* After ossl_proc_teardown() and OPENSSL_cleanup(): what is still
	 * live leaked. */
	struct ossl_proc_stats st;
	int teardown_rc;                /* ossl_proc_teardown() */
	uint64_t log_errors, log_warnings;
};

/* What unloading the plugin did in one process. */
struct unload_result {
	int done;                       /* the plugin was unloaded */
	int rc;                         /* ossl_proc_module_close() */
	int unmapped;                   /* gone from the address space */
	int strings_gone;               /* its error strings unregistered */
	uint64_t us;                    /* module close + dlclose */
	char why[160];                  /* osslproc's log line, if pinned */
};

struct worker_report {
	uint64_t hs_ok, hs_failed;      /* handshakes accepted, failed */
	uint64_t hs_after;              /* of hs_ok, after the unload */
	uint64_t requests, requests_after;
	uint64_t conns_freed;           /* SSL objects freed (all of them) */
	uint64_t open_at_unload;        /* connections open when unloading */
	struct unload_result unload;
	struct demo_plugin_counters plugin;  /* last view before unload */
	struct final_stats fin;
};

struct client_report {
	/* [0]: before the unload, [1]: after it */
	uint64_t hs_ok[2], hs_failed[2];
	uint64_t ex_ok[2], ex_failed[2];
	uint64_t us[2];                 /* duration of each phase */
	uint64_t kept;                  /* connections left open at unload */
	uint64_t kept_ex_ok, kept_ex_failed;  /* on them, after unload */
	uint64_t wrong_state;            /* replies from the wrong side */
	uint64_t served_by[MAX_WORKERS];
	struct final_stats fin;
};

struct report {
	uint32_t kind;
	int32_t index;
	union {
		struct worker_report w;
		struct client_report c;
	} u;
};

/* A report is written whole with one write(2): atomic on a pipe. */
_Static_assert(sizeof(struct report) <= 4096, "report exceeds PIPE_BUF");

struct options {
	unsigned workers;
	unsigned handshakes;
	unsigned keep;                  /* connections kept open per worker */
	unsigned timeout;               /* seconds for the whole run */
	bool shared;
	bool verbose;
	bool unscoped;                  /* negative control: no module scope */
	const char *ca, *cert, *key;
	const char *host;
	const char *plugin;
};

struct child {
	pid_t pid;
	int ctl, rep;                   /* the parent's ends; -1: closed */
	uint32_t got;                   /* report kinds received (bits) */
	struct report last;
	int status;                     /* from waitpid() */
	bool reaped, killed;
};

struct demo {
	struct options opt;
	uint64_t t0, deadline;          /* monotonic µs */
	struct ossl_proc_arena *arena;
	struct ossl_proc_ctx *server;   /* per-process server SSL_CTX */
	void *plugin_handle;
	const struct demo_plugin *plugin;  /* NULL where not loaded */
	char plugin_path[PATH_MAX];
	unsigned long plugin_error;
	int listen_fds[MAX_WORKERS];
	unsigned port;
	struct child workers[MAX_WORKERS];
	struct child client;
	char pki_dir[64];               /* a generated PKI, or "" */
	char ca[PATH_MAX], cert[PATH_MAX], key[PATH_MAX];
};

/* demo-util.c */
uint64_t now_us(void);
extern const char *demo_role;
extern bool demo_verbose;
void demo_log(enum ossl_proc_log_level level, const char *msg, void *arg);
void demo_log_counts(uint64_t *errors, uint64_t *warnings);
const char *demo_log_pin_reason(void);
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void warn_openssl(const char *what);
int send_report(int fd, struct report *r);
int plugin_open(struct demo *d);
void plugin_close(struct demo *d, struct unload_result *u);
int wait_command(int fd, uint64_t deadline);
void final_stats(struct final_stats *out);

/* demo-pki.c */
int pki_generate(char *dir, size_t dirlen, char *ca, char *cert, char *key,
		 size_t pathlen);
void pki_remove(const char *dir, const char *ca, const char *cert,
		const char *key);

/* demo-worker.c */
SSL_CTX *build_server_ctx(void *arg);
void worker_main(struct demo *d, unsigned index, int ctl, int rep)
	__attribute__((noreturn));

/* demo-client.c */
void client_main(struct demo *d, int ctl, int rep) __attribute__((noreturn));

#endif
