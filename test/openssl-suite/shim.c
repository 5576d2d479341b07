/*
 * osslproc in a process of OpenSSL's own test suite (scripts/test-openssl).
 *
 * Built twice:
 *  - as osslproc-suite-shim.so, linked with libosslproc.so and the
 *    libcrypto under test; preload.c loads it into every process;
 *  - with -DSHIM_STATIC into libosslproc-suite-static.a, which
 *    scripts/test-openssl links, with libosslproc.a, into the test
 *    programs that carry a static libcrypto.
 *
 * A constructor initialises osslproc before the program's first OpenSSL
 * allocation (constructors of shared objects run before the program's,
 * and preload.c runs it from a preloaded object's constructor), with
 * bad frees aborting and call sites tracked.  At exit it checks the
 * counters and that exactly one libcrypto is in the process.  Each process
 * appends lines to $OSSLPROC_SUITE_DIR/records:
 *
 *   init pid=P rc=R exe=E
 *   exit pid=P libcrypto=N allocator=M allocs=A frees=F double=D
 *        invalid=I foreign=X inherited=H exe=E
 *   libcrypto pid=P when=init|exit path=L   (each copy, when not one)
 *   log pid=P level=V MSG           (osslproc's WARNINGs and ERRORs)
 *
 * A process that aborts on a bad free leaves its ERROR as a "log" line.
 * Nothing of the program's own choices is read: the configuration below
 * is fixed.
 */
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <osslproc.h>

#define SHIM_FLAGS OSSL_PROC_F_TRACK_SITES

/* Exported so that preload.c can tell that this program carries its own
 * osslproc and libcrypto (the link exports it with
 * --export-dynamic-symbol) and must not get a shared libcrypto as well. */
#ifdef SHIM_STATIC
#define SHIM_IS_STATIC 1
__attribute__((visibility("default"), used))
const int osslproc_suite_static = 1;
#else
#define SHIM_IS_STATIC 0
#endif

static int rec_fd = -1;
static char exe[256];

/* One line, one write(2) on an O_APPEND descriptor: lines of concurrent
 * processes do not interleave.  Formats on the stack, never allocates
 * (it is also called from the log callback). */
__attribute__((format(printf, 1, 2)))
static void record(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n;

	if (rec_fd < 0)
		return;
	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	if (write(rec_fd, line, (size_t)n) < 0) {
		/* nowhere to report it */
	}
}

static void shim_log(enum ossl_proc_log_level level, const char *msg,
		     void *arg)
{
	char line[1024];
	int n;

	(void)arg;
	record("log pid=%ld level=%d %s", (long)getpid(), (int)level, msg);
	/* ERRORs also where the recipe's output shows them (the bad-free
	 * abort's reason); WARNINGs only in the record, so that programs
	 * whose output a recipe compares are not changed by them. */
	if (level > OSSL_PROC_LOG_ERROR)
		return;
	n = snprintf(line, sizeof(line), "osslproc-suite: %s\n", msg);
	if (n > 0 && write(STDERR_FILENO, line,
			   (size_t)n < sizeof(line) ? (size_t)n
						    : sizeof(line) - 1) < 0) {
		/* nowhere to report it */
	}
}

/* ---- one libcrypto per process ---- */

/* A libcrypto defines it, and a static link of any program that uses
 * libcrypto pulls it in (OpenSSL_version would be left out of programs
 * that do not call it). */
#define LIBCRYPTO_SYMBOL "CRYPTO_malloc"

/*
 * Whether a loaded object's own dynamic symbol table defines @name.  Read
 * from memory (no dlopen, which at exit would run a finished object's
 * constructors again): the symbol table and string table through
 * PT_DYNAMIC, the symbol found through DT_GNU_HASH or DT_HASH.
 */
static int object_defines(const struct dl_phdr_info *info, const char *name)
{
	const ElfW(Dyn) *dyn = NULL;
	const ElfW(Sym) *symtab = NULL;
	const char *strtab = NULL;
	const uint32_t *gnu = NULL, *sysv = NULL;

	for (int i = 0; i < info->dlpi_phnum; i++)
		if (info->dlpi_phdr[i].p_type == PT_DYNAMIC)
			dyn = (const void *)(info->dlpi_addr +
					     info->dlpi_phdr[i].p_vaddr);
	if (!dyn)
		return 0;
	for (; dyn->d_tag != DT_NULL; dyn++) {
		/* ld.so relocates these entries in place; the vDSO's are
		 * left relative to its base. */
		ElfW(Addr) a = dyn->d_un.d_ptr;

		if (a < info->dlpi_addr)
			a += info->dlpi_addr;
		switch (dyn->d_tag) {
		case DT_SYMTAB: symtab = (const void *)a; break;
		case DT_STRTAB: strtab = (const void *)a; break;
		case DT_GNU_HASH: gnu = (const void *)a; break;
		case DT_HASH: sysv = (const void *)a; break;
		default: break;
		}
	}
	if (!symtab || !strtab)
		return 0;
#define DEFINED(i) (strcmp(strtab + symtab[i].st_name, name) == 0 && \
		    symtab[i].st_shndx != SHN_UNDEF)
	if (gnu) {
		uint32_t nbuckets = gnu[0], symoffset = gnu[1];
		uint32_t bloom_size = gnu[2], h = 5381, i;
		const uint32_t *buckets, *chain;

		for (const unsigned char *c = (const void *)name; *c; c++)
			h = h * 33 + *c;
		buckets = (const uint32_t *)((const ElfW(Addr) *)&gnu[4] +
					     bloom_size);
		chain = buckets + nbuckets;
		i = nbuckets ? buckets[h % nbuckets] : 0;
		if (i < symoffset)
			return 0;
		for (;; i++) {
			uint32_t h2 = chain[i - symoffset];

			if ((h | 1) == (h2 | 1) && DEFINED(i))
				return 1;
			if (h2 & 1)
				return 0;
		}
	}
	if (sysv) {
		uint32_t nbucket = sysv[0], h = 0, g;
		const uint32_t *bucket = sysv + 2, *chain = bucket + nbucket;

		for (const unsigned char *c = (const void *)name; *c; c++) {
			h = (h << 4) + *c;
			g = h & 0xf0000000u;
			if (g)
				h ^= g >> 24;
			h &= ~g;
		}
		for (uint32_t i = nbucket ? bucket[h % nbucket] : 0; i;
		     i = chain[i])
			if (DEFINED(i))
				return 1;
	}
#undef DEFINED
	return 0;
}

/*
 * Whether the program's own symbol table (.symtab of its file: a program
 * exports none of its symbols) defines the function @name, as a program
 * linked with libcrypto.a does.  A stripped program counts as not.
 */
static int program_defines(const char *name)
{
	const unsigned char *map;
	const ElfW(Ehdr) *eh;
	const ElfW(Shdr) *sh;
	struct stat sb;
	int fd, found = 0;

	fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	if (fstat(fd, &sb) < 0 || (size_t)sb.st_size < sizeof(*eh)) {
		close(fd);
		return 0;
	}
	map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (map == MAP_FAILED)
		return 0;
	eh = (const void *)map;
	if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 ||
	    eh->e_ident[EI_CLASS] != (sizeof(void *) == 8 ? ELFCLASS64
							  : ELFCLASS32) ||
	    eh->e_shentsize != sizeof(*sh) ||
	    eh->e_shoff + (uint64_t)eh->e_shnum * sizeof(*sh) >
	    (uint64_t)sb.st_size)
		goto out;
	sh = (const void *)(map + eh->e_shoff);
	for (int i = 0; i < eh->e_shnum && !found; i++) {
		const ElfW(Sym) *sym;
		const char *str;
		uint64_t n, strsize;

		if (sh[i].sh_type != SHT_SYMTAB || sh[i].sh_link >= eh->e_shnum ||
		    sh[i].sh_offset + sh[i].sh_size > (uint64_t)sb.st_size)
			continue;
		str = (const char *)map + sh[sh[i].sh_link].sh_offset;
		strsize = sh[sh[i].sh_link].sh_size;
		if (sh[sh[i].sh_link].sh_offset + strsize >
		    (uint64_t)sb.st_size)
			continue;
		sym = (const void *)(map + sh[i].sh_offset);
		n = sh[i].sh_size / sizeof(*sym);
		for (uint64_t j = 0; j < n; j++)
			if (sym[j].st_name < strsize &&
			    sym[j].st_shndx != SHN_UNDEF &&
			    ELF64_ST_TYPE(sym[j].st_info) == STT_FUNC &&
			    strncmp(str + sym[j].st_name, name,
				    strsize - sym[j].st_name) == 0) {
				found = 1;
				break;
			}
	}
out:
	munmap((void *)map, (size_t)sb.st_size);
	return found;
}

static int exe_static = -1;	/* the program carries a libcrypto */

struct count {
	int n;
	int report;
	const char *when;
};

static int count_one(struct dl_phdr_info *info, size_t size, void *arg)
{
	struct count *c = arg;

	(void)size;
	/* The program itself was looked at in its file. */
	if (!info->dlpi_name[0] || !object_defines(info, LIBCRYPTO_SYMBOL))
		return 0;
	c->n++;
	if (c->report)
		record("libcrypto pid=%ld when=%s path=%s", (long)getpid(),
		       c->when, info->dlpi_name[0] ? info->dlpi_name : exe);
	return 0;
}

/*
 * The number of libcrypto copies in the process: objects whose dynamic
 * symbols define CRYPTO_malloc, plus a static copy in the program.
 * With more or fewer than one, each is recorded.
 */
static int count_libcrypto(const char *when)
{
	struct count c = { .when = when };

	if (exe_static < 0)
		exe_static = SHIM_IS_STATIC ||
			     program_defines(LIBCRYPTO_SYMBOL);
	c.n = exe_static;
	dl_iterate_phdr(count_one, &c);
	if (c.n != 1) {
		c.n = exe_static;
		c.report = 1;
		if (exe_static)
			record("libcrypto pid=%ld when=%s path=%s (static)",
			       (long)getpid(), when, exe);
		dl_iterate_phdr(count_one, &c);
	}
	return c.n;
}

/* ---- init and exit ---- */

/* glibc's: an exit handler tied to no object (see shim_init). */
extern int __cxa_atexit(void (*fn)(void *), void *arg, void *dso);

static void shim_exit(void *arg)
{
	struct ossl_proc_stats st = { .size = sizeof(st) };
	int copies = count_libcrypto("exit");

	(void)arg;
	if (ossl_proc_get_stats(&st) < 0)
		memset(&st, 0xff, sizeof(st));
	record("exit pid=%ld libcrypto=%d allocator=%llu allocs=%llu "
	       "frees=%llu double=%llu invalid=%llu foreign=%llu "
	       "inherited=%llu exe=%s", (long)getpid(), copies,
	       (unsigned long long)st.allocator,
	       (unsigned long long)st.allocs, (unsigned long long)st.frees,
	       (unsigned long long)st.double_frees,
	       (unsigned long long)st.invalid_frees,
	       (unsigned long long)st.foreign_frees,
	       (unsigned long long)st.inherited_frees, exe);
}

__attribute__((constructor))
static void shim_init(void)
{
	struct ossl_proc_config cfg = OSSL_PROC_CONFIG_INIT;
	const char *dir = getenv("OSSLPROC_SUITE_DIR");
	ssize_t n;
	int rc;

	if (dir) {
		char path[4096];

		snprintf(path, sizeof(path), "%s/records", dir);
		rec_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
			      0644);
		/* Keep the descriptor out of the program's way: programs
		 * that count or close their descriptors must not see it. */
		if (rec_fd >= 0 && rec_fd < 200) {
			int high = fcntl(rec_fd, F_DUPFD_CLOEXEC, 200);

			if (high >= 0) {
				close(rec_fd);
				rec_fd = high;
			}
		}
	}
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	exe[n > 0 ? n : 0] = '\0';

	cfg.flags = SHIM_FLAGS;
	cfg.on_bad_free = OSSL_PROC_BAD_FREE_ABORT;
	cfg.log = shim_log;
	cfg.log_level = OSSL_PROC_LOG_WARNING;
	/* No OpenSSL initialisation on the program's behalf: its own
	 * first OPENSSL_init_* call decides (OPENSSL_INIT_NO_ATEXIT,
	 * OPENSSL_INIT_NO_LOAD_CONFIG, or loading the configuration). */
	cfg.openssl_init_opts = OSSL_PROC_OPENSSL_INIT_NONE;

	/*
	 * The exit check must see the frees of OpenSSL's atexit cleanup.  A
	 * shared object's atexit() handlers run when that object is
	 * finalised, and constructors (OpenSSL initialised from one)
	 * run before the C library registers the finalisation of all
	 * objects: OpenSSL's cleanup then runs when libcrypto is finalised,
	 * after this object.  A handler tied to no object, registered now,
	 * runs after all of that; in a program that links the shim and
	 * libcrypto statically it runs after OpenSSL's cleanup too
	 * (registered later, run first).
	 */
	__cxa_atexit(shim_exit, NULL, NULL);
	rc = ossl_proc_init(&cfg);
	record("init pid=%ld rc=%d exe=%s", (long)getpid(), rc, exe);
	/* Recorded when not one. */
	count_libcrypto("init");
}
