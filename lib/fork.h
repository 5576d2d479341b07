/* The fork point's part of the library's init and teardown (fork.c). */
#ifndef OSSLPROC_FORK_H
#define OSSLPROC_FORK_H

#pragma GCC visibility push(hidden)

/* At first init: register the child handler and, unless
 * OSSL_PROC_F_NO_ATFORK, the pthread_atfork handlers. */
int fork_init(unsigned int flags);
/* Last teardown: the host's hooks are forgotten. */
void fork_teardown(void);

#pragma GCC visibility pop

#endif /* OSSLPROC_FORK_H */
