/* What preload.c and unload.c share inside libosslproc-preload.so. */
#ifndef OSSLPROC_PRELOAD_INT_H
#define OSSLPROC_PRELOAD_INT_H

#define PRELOAD_EXPORT __attribute__((visibility("default")))

/* From the constructor, once osslproc is initialised and unless
 * OSSLPROC_DISABLE=unload: the implicit scopes start attributing
 * registrations.  Until then every interposer passes straight through. */
void unload_start(void);

/* objects.c: the SSL calls OSSLPROC_SHARED_OBJECTS=1 routes (SSL_free)
 * or drains at.  Resolved by the constructor first; started once
 * osslproc is initialised with OSSL_PROC_F_SHARED_OBJECTS. */
void objects_resolve(void);
void objects_start(void);

/* Exported for libosslproc-audit.so (la_objclose): @map is about to be
 * unmapped, its destructors have run.  It closes the map's implicit
 * scope. */
struct link_map;
void ossl_proc_preload_objclose(struct link_map *map);

#endif
