/*
 * Copies of osslproc finding one another.  Several copies can live in one
 * process (a daemon linking the library and plugins that vendor a static
 * copy); the first to install its functions in OpenSSL owns the
 * allocator, and a later copy attaches to it rather than stacking on it.
 *
 * A later copy knows only the functions OpenSSL calls.  It looks up the
 * object holding that malloc and reads the object's ELF note "osslproc",
 * which gives the place of the owner record relative to the note itself
 * (the assembler computes it, so the note needs no relocation).  Nothing
 * is asked through the allocator: OpenSSL's file argument is any caller's
 * string, never a place to write to.
 *
 * The note and the record are an ABI between copies of different
 * versions: the record's fields are only ever appended, and a reader
 * checks @size before using a field.  Copies before 0.3 answered a probe
 * through malloc(0, file, line) instead; a 0.3 copy does not recognise
 * them (it stacks on their functions), nor they it.
 */
#include <dlfcn.h>
#include <link.h>
#include <string.h>

#include "alloc-int.h"

#define OWNER_MAGIC 0x6f73736c70726f63ull /* "osslproc" */
#define OWNER_VERSION 2
#define NOTE_NAME "osslproc"
#define NOTE_TYPE 0x6f70u

static char owner_object[512] = "the main program";

/* Hidden, but a global name: the note below refers to it from asm. */
const struct owner_record osslproc_owner_record = {
	.magic = OWNER_MAGIC,
	.version = OWNER_VERSION,
	.size = sizeof(struct owner_record),
	.self = &osslproc_owner_record,
	.object = owner_object,
	.get_stats = ossl_proc_get_stats,
	.report = owner_report,
	.malloc = om_malloc,
};

/* namesz, descsz, type, "osslproc\0" padded to 12, then the record's
 * offset from the descriptor (8 bytes). */
__asm__(".pushsection .note.osslproc, \"a\", %note\n"
	".balign 4\n"
	".long 9, 8, 0x6f70\n"
	".asciz \"osslproc\"\n"
	".balign 4\n"
	"1: .quad osslproc_owner_record - 1b\n"
	".popsection\n");

struct note_hdr {
	uint32_t namesz, descsz, type;
};

struct search {
	uintptr_t fn;                      /* the malloc OpenSSL calls */
	const struct owner_record *found;
};

/* The record that the osslproc note among the @len bytes of notes at @p
 * points to, or NULL. */
static const struct owner_record *
note_record(const char *p, size_t len)
{
	while (len >= sizeof(struct note_hdr)) {
		const struct note_hdr *n = (const void *)p;
		size_t name = (n->namesz + 3) & ~(size_t)3;
		size_t desc = (n->descsz + 3) & ~(size_t)3;
		size_t all = sizeof(*n) + name + desc;
		int64_t off;

		if (name > len || desc > len || all > len)
			return NULL;
		if (n->type == NOTE_TYPE && n->namesz == sizeof(NOTE_NAME) &&
		    n->descsz == sizeof(off) &&
		    !memcmp(p + sizeof(*n), NOTE_NAME, sizeof(NOTE_NAME))) {
			memcpy(&off, p + sizeof(*n) + name, sizeof(off));
			return (const void *)(p + sizeof(*n) + name + off);
		}
		p += all;
		len -= all;
	}
	return NULL;
}

static bool
holds(const struct dl_phdr_info *info, uintptr_t fn)
{
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t start = info->dlpi_addr + ph->p_vaddr;

		if (ph->p_type == PT_LOAD && fn - start < ph->p_memsz)
			return true;
	}
	return false;
}

static int
search_object(struct dl_phdr_info *info, size_t size, void *arg)
{
	struct search *s = arg;

	(void)size;
	if (!holds(info, s->fn))
		return 0;
	for (int i = 0; i < info->dlpi_phnum && !s->found; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];

		if (ph->p_type == PT_NOTE)
			s->found = note_record((const char *)(info->dlpi_addr +
							      ph->p_vaddr),
					       ph->p_memsz);
	}
	return 1; /* the object holding fn: stop here */
}

const struct owner_record *
owner_find(CRYPTO_malloc_fn m)
{
	struct search s = { .fn = (uintptr_t)m };
	const struct owner_record *r;

	dl_iterate_phdr(search_object, &s);
	r = s.found;
	/* A record whose malloc is not the one installed belongs to a copy
	 * that is not the owner (it stacked on or attached to another). */
	if (r && r->magic == OWNER_MAGIC && r->self == r &&
	    r->version >= OWNER_VERSION && r->size >= sizeof(*r) &&
	    r->malloc == m)
		return r;
	return NULL;
}

void
owner_name_object(void)
{
	Dl_info info;

	if (dladdr((void *)om_malloc, &info) && info.dli_fname &&
	    info.dli_fname[0])
		snprintf(owner_object, sizeof(owner_object), "%s",
			 info.dli_fname);
}

void
owner_report(FILE *out)
{
	fprintf(out, "allocator owner: %s\n", owner_object);
	/* On 4.0 OpenSSL's own state is among them until after main
	 * (report.c): not leaks yet. */
	sites_report(out, OpenSSL_version_num() >= 0x40000000L ?
		     "still allocated" : "leak");
}
