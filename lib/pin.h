/* Keeping the object that holds osslproc's code mapped (pin.c). */
#ifndef OSSLPROC_PIN_H
#define OSSLPROC_PIN_H

#include <stdbool.h>

#pragma GCC visibility push(hidden)

/* Pin the object holding osslproc's code (RTLD_NODELETE) if it is not the
 * main program.  Returns true if it was pinned (or already is). */
bool pin_self(const char *why);
/* Pin the object holding this code if it carries its own libcrypto. */
bool pin_own_libcrypto(void);

#pragma GCC visibility pop

#endif /* OSSLPROC_PIN_H */
