/*
 * The interface between osslproc-demo and its TLS plugin, demo-plugin.so.
 *
 * The host finds one symbol with dlsym(), demo_plugin_entry, and calls
 * everything else through the table it returns, the way SIP servers load
 * their TLS modules.  Nothing here is osslproc's API: it is the example's
 * own plugin contract.
 */
#ifndef DEMO_PLUGIN_H
#define DEMO_PLUGIN_H

#include <stdint.h>

#include <openssl/ssl.h>

#define DEMO_PLUGIN_ABI 1
#define DEMO_PLUGIN_ENTRY "demo_plugin_entry"

/* What the plugin's callbacks saw in this process. */
struct demo_plugin_counters {
	uint64_t handshakes;    /* info callback: server handshakes done */
	uint64_t alerts;        /* info callback: alerts read or written */
	uint64_t records;       /* msg callback: record headers */
	uint64_t keylog_lines;  /* keylog callback (the secrets are dropped) */
	uint64_t conns_tagged;  /* ex_data new function: SSL objects tagged */
	uint64_t conns_freed;   /* ex_data free function: tagged SSLs freed */
};

struct demo_plugin {
	unsigned abi;           /* DEMO_PLUGIN_ABI */
	const char *name;
	/* Once per process that loads the plugin, after ossl_proc_init():
	 * opens the plugin's module scope, takes an ex_data index and
	 * registers error strings.  With @scoped 0 it registers everything
	 * directly with OpenSSL instead, as a plugin without osslproc
	 * does (the demo's negative control).  0 or a negative errno. */
	int (*load)(int scoped);
	/* For each server SSL_CTX, in each process that builds one: sets
	 * the plugin's callbacks through the scope.  0 or a negative errno
	 * (with an OpenSSL error of the plugin's own library queued). */
	int (*configure)(SSL_CTX *ctx);
	/* Closes the scope; the host may dlclose() the plugin afterwards.
	 * The enum ossl_proc_unload value, or a negative errno. */
	int (*unload)(void);
	void (*counters)(struct demo_plugin_counters *out);
	/* An error code whose reason string the plugin registered. */
	unsigned long (*sample_error)(void);
};

typedef const struct demo_plugin *(*demo_plugin_entry_fn)(void);

#endif
