/* The fork point's part of the library's init and teardown (fork.c). */
#ifndef OSSLPROC_FORK_H
#define OSSLPROC_FORK_H

#include "osslproc-int.h"

#pragma GCC visibility push(hidden)

/* How long a fork's prepare tries to take OpenSSL's locks by default:
 * long enough for any critical section OpenSSL runs on a loaded machine
 * (they take microseconds), short enough that a lock held forever costs
 * one slow fork rather than a hang. */
#define FORK_QUIESCE_MS_DEFAULT 200u

/* At first init: register the child handler and, unless
 * OSSL_PROC_F_NO_ATFORK, the pthread_atfork handlers. */
int fork_init(const struct init_config *cfg);
/* Last teardown: the host's hooks are forgotten. */
void fork_teardown(void);

#pragma GCC visibility pop

#endif /* OSSLPROC_FORK_H */
