/*
 * What every synthetic unload plugin exports to the host (host.c): one
 * call that registers its callbacks with OpenSSL directly, as a plugin
 * that knows nothing of osslproc does.  @times repeats each registration,
 * as a plugin that sets them once per connection would.  Returns the
 * error library code whose strings it loaded (the host raises an error
 * in it once the plugin is gone), 0 when it loads none, -1 on failure.
 *
 * A plugin that sets per-SSL callbacks exports plug_register_ssl() too:
 * the host gives it a client and a server SSL, not yet connected, and
 * handshakes them once the plugin is gone.  0, or -1 on failure.
 */
#ifndef UNLOAD_PLUGIN_H
#define UNLOAD_PLUGIN_H

#include <openssl/err.h>
#include <openssl/ssl.h>

#define PLUGIN_API __attribute__((visibility("default")))

PLUGIN_API int plug_register(SSL_CTX *client, SSL_CTX *server, int times);
PLUGIN_API int plug_register_ssl(SSL *client, SSL *server, int times);

#endif
