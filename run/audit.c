/*
 * libosslproc-audit.so: the LD_AUDIT companion of libosslproc-preload.so
 * (osslproc-run(1)).  The dynamic loader calls la_objclose() for every
 * object it is about to unmap, dependencies of the handle being closed
 * included, after the object's destructors ran: the one moment at which
 * the preload can undo what the object registered with OpenSSL while its
 * code and data are still there.  It audits no symbol bindings (no
 * la_symbind, la_objopen returns 0), so it costs nothing per call.
 *
 * It lives in its own link-map namespace, with its own libc: it shares
 * no variable with the preload, only the loader.  It finds the preload's
 * notification function once, by name, in the preload's dynamic symbol
 * table (its GNU hash: run/meson.build links it so).  Not with dlsym():
 * the auditor's own libc cannot look up symbols of the main namespace
 * (glibc 2.36 crashes in it).
 */
#include <elf.h>
#include <link.h>
#include <stdint.h>
#include <string.h>

#define AUDIT_EXPORT __attribute__((visibility("default")))

typedef void (*objclose_fn)(struct link_map *map);

static struct link_map *preload;
static objclose_fn notify;
static int looked_up;

static uint32_t
gnu_hash(const char *s)
{
	uint32_t h = 5381;

	for (; *s; s++)
		h = h * 33 + (unsigned char)*s;
	return h;
}

/* A dynamic entry's address: relocated in place by the loader on most
 * targets, not on those with a read-only dynamic section. */
static const void *
dyn_ptr(const struct link_map *lm, ElfW(Addr) p)
{
	return (const void *)(p < lm->l_addr ? p + lm->l_addr : p);
}

/* @name's address in @lm, through DT_GNU_HASH; NULL when not there. */
static void *
lookup(const struct link_map *lm, const char *name)
{
	const ElfW(Sym) *sym = NULL;
	const uint32_t *gh = NULL, *buckets, *chain;
	const char *str = NULL;
	uint32_t h = gnu_hash(name), i;

	for (const ElfW(Dyn) *d = lm->l_ld; d->d_tag != DT_NULL; d++) {
		if (d->d_tag == DT_SYMTAB)
			sym = dyn_ptr(lm, d->d_un.d_ptr);
		else if (d->d_tag == DT_STRTAB)
			str = dyn_ptr(lm, d->d_un.d_ptr);
		else if (d->d_tag == DT_GNU_HASH)
			gh = dyn_ptr(lm, d->d_un.d_ptr);
	}
	if (!sym || !str || !gh || !gh[0])
		return NULL;
	buckets = gh + 4 + gh[2] * (sizeof(ElfW(Addr)) / 4);
	chain = buckets + gh[0];
	for (i = buckets[h % gh[0]]; i >= gh[1]; i++) {
		uint32_t ch = chain[i - gh[1]];

		if ((ch | 1) == (h | 1) && !strcmp(str + sym[i].st_name, name)
		    && sym[i].st_shndx != SHN_UNDEF)
			return (void *)(lm->l_addr + sym[i].st_value);
		if (ch & 1)
			break;
	}
	return NULL;
}

AUDIT_EXPORT unsigned int
la_version(unsigned int version)
{
	/* Version 1 has all this uses. */
	return version < LAV_CURRENT ? version : LAV_CURRENT;
}

static int
is_preload(const char *name)
{
	const char *base = name ? strrchr(name, '/') : NULL;

	base = base ? base + 1 : name;
	return base && !strncmp(base, "libosslproc-preload", 19);
}

AUDIT_EXPORT unsigned int
la_objopen(struct link_map *map, Lmid_t lmid, uintptr_t *cookie)
{
	if (lmid == LM_ID_BASE && !preload && is_preload(map->l_name))
		preload = map;
	*cookie = (uintptr_t)map;
	return 0; /* no LA_FLG_BINDTO / BINDFROM: no PLT auditing */
}

AUDIT_EXPORT unsigned int
la_objclose(uintptr_t *cookie)
{
	struct link_map *map = (struct link_map *)*cookie;

	if (!preload)
		return 0;
	if (map == preload) {
		/* From here on its code is not there to call. */
		notify = NULL;
		preload = NULL;
		return 0;
	}
	/* Looked up at the first close, not at open: by then the preload
	 * is relocated and initialised. */
	if (!looked_up) {
		looked_up = 1;
		notify = (objclose_fn)lookup(preload,
					     "ossl_proc_preload_objclose");
	}
	if (notify)
		notify(map);
	return 0;
}
