/*
 * Blocks and their backends: the size classes, where a block's memory
 * comes from and goes back to (libc, the host's allocator, the functions
 * installed before osslproc), the header read that cannot fault, and the
 * list of live blocks kept with OSSL_PROC_F_TRACK_SITES.
 */
#include <stdlib.h>

#include "alloc-int.h"

const uint32_t class_bytes[NCLASSES] = {
	0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224,
	240, 256, 272, 288, 304, 320, 336, 352, 368, 384, 400, 416, 432, 448,
	464, 480, 496, 512, 528, 544, 560, 576, 592, 608, 624, 640, 656, 672,
	688, 704, 720, 736, 752, 768, 784, 800, 816, 832, 848, 864, 880, 896,
	912, 928, 944, 960, 976, 992, 1008, 1024,
	1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096, 5120, 6144, 7168,
	8192, 10240, 12288, 14336, 16384, 20480, 24576, 28672, 32768,
};

static struct list site_list = LIST_INIT(site_list);

/* Non-zero while this thread is inside a backend function: a signal
 * handler that interrupted it there must not enter the backend again
 * (glibc's malloc is not re-entrant). */
__thread unsigned char tls_in_backend __attribute__((tls_model("initial-exec")));

static void *
bk_alloc(enum backend bk, size_t n, const char *file, int line)
{
	void *p = NULL;

	tls_in_backend++;
	atomic_signal_fence(memory_order_seq_cst);
	switch (bk) {
	case BK_LIBC:
		p = malloc(n);
		break;
	case BK_HOST:
	case BK_SHARED:
		p = aconf.host.malloc(n, aconf.host.arg);
		break;
	case BK_PRIOR:
		p = aconf.prior_m(n, file, line);
		break;
	}
	atomic_signal_fence(memory_order_seq_cst);
	tls_in_backend--;
	return p;
}

static void
bk_free(enum backend bk, void *base, const char *file, int line)
{
	tls_in_backend++;
	atomic_signal_fence(memory_order_seq_cst);
	switch (bk) {
	case BK_LIBC:
		free(base);
		break;
	case BK_HOST:
	case BK_SHARED:
		aconf.host.free(base, aconf.host.arg);
		break;
	case BK_PRIOR:
		aconf.prior_f(base, file, line);
		break;
	}
	atomic_signal_fence(memory_order_seq_cst);
	tls_in_backend--;
}

void
site_link(struct blk *h, const char *file, int line)
{
	struct blk_site *s = site_of(h);

	s->alloc_file = file;
	s->alloc_line = line;
	s->free_file = NULL;
	s->free_line = 0;
	proc_lock(&proc_mut.site_lock);
	list_add(&site_list, &s->link);
	proc_unlock(&proc_mut.site_lock);
}

void
site_unlink(struct blk *h, const char *file, int line)
{
	struct blk_site *s = site_of(h);

	proc_lock(&proc_mut.site_lock);
	list_del(&s->link);
	proc_unlock(&proc_mut.site_lock);
	s->free_file = file;
	s->free_line = line;
}

/*
 * A block whose user pointer would be at a reserved page offset (0 or
 * LARGE_OFF: alloc-int.h) is never handed out: take a PAD_BYTES larger
 * block and, if needed, pad.  The rejected chunk is parked rather than
 * freed: a LIFO backend (glibc's tcache) would hand the same chunk back
 * for the next request of its size, and every allocation of that size
 * would pay for two more backend calls.
 */
static void
park(struct tstate *t, enum backend bk, void *base)
{
	unsigned slot = t->park_next;
	void *old = t->parked[slot];
	enum backend old_bk = (enum backend)t->parked_bk[slot];

	if (t->shared) {
		bk_free(bk, base, OPENSSL_FILE, OPENSSL_LINE);
		return;
	}
	t->parked[slot] = base;
	t->parked_bk[slot] = (uint8_t)bk;
	t->park_next = (slot + 1) % PARK_SLOTS;
	if (old)
		bk_free(old_bk, old, OPENSSL_FILE, OPENSSL_LINE);
}

/*
 * Take a larger chunk for a block whose first chunk @base was unusable:
 * room for both paddings, each used if the new chunk needs it.
 */
static void *
refit(struct tstate *t, enum backend bk, void *base, size_t total,
      uint32_t *word, const char *file, int line)
{
	char *nb = bk_alloc(bk, total + PAD_BYTES + ALIGN8_BYTES, file, line);

	park(t, bk, base);
	if (!nb)
		return NULL;
	*word &= ~(W_PADDED | W_ALIGN8);
	if (((uintptr_t)nb & ALIGN_MASK) == ALIGN8_BYTES)
		*word |= W_ALIGN8;
	if (page_reserved(nb + prefix_len(*word)))
		*word |= W_PADDED;
	return nb;
}

/* A chunk that cannot carry a block of @word's layout as it is: at a
 * reserved page offset, or only 8-byte aligned. */
static inline bool
misfit(const char *base, uint32_t word)
{
	return ((uintptr_t)base & ALIGN_MASK) == ALIGN8_BYTES ||
	       page_reserved(base + prefix_len(word));
}

/*
 * Read a header that may lie in memory we do not own (a stale pointer's
 * block after release, or a stack or static object).  The caller made sure
 * the 16 bytes are in the same page as the pointer, so the read cannot
 * fault; sanitizers are told that reading here is deliberate, and
 * test/valgrind.supp tells valgrind (noipa keeps the frame visible).
 */
__attribute__((noipa, no_sanitize_address)) bool
blk_peek(void *user, uint32_t *word)
{
	struct blk *h = hdr_of(user);
	uint64_t size_gen = __atomic_load_n(&h->size_gen, __ATOMIC_RELAXED);
	uint32_t magic = __atomic_load_n(&h->magic, __ATOMIC_RELAXED);

	*word = atomic_load_explicit(&h->word, memory_order_acquire);
	return magic == blk_magic(user, size_gen, *word);
}

/* blk_peek(), for a live lock's header too, which a fork may have wiped
 * (locks.c writes it again). */
bool
blk_peek_healed(void *user, uint32_t *word)
{
	return blk_peek(user, word) || (lk_heal(user) && blk_peek(user, word));
}

pid_t
blk_shared_owner(void *p)
{
	uint32_t word;

	if ((uintptr_t)p & ALIGN_MASK || page_reserved(p) ||
	    !blk_peek(p, &word) || (word & ST_MASK) != ST_LIVE ||
	    ((word & BK_MASK) >> BK_SHIFT) != BK_SHARED)
		return 0;
	return (pid_t)(word >> OWNER_SHIFT);
}

/* Fresh memory from the backend for a block with @word's layout.  A
 * chunk only 8-byte aligned, or one that would put the user pointer at a
 * reserved page offset, is replaced by a larger one, padded: it keeps
 * its class (the padding is in @word, and the cache keeps it), since a
 * block of no class goes back to the backend when freed, and a LIFO
 * backend then hands out the chunk just parked for the next block of
 * that size, which is refitted again: measured, every cache miss of two
 * classes in a handshake went round that way (0.91x of glibc's
 * handshakes instead of 0.99x). */
char *
backend_block(struct tstate *t, enum backend bk, size_t total, uint32_t *word,
	      unsigned *c, const char *file, int line)
{
	char *base = bk_alloc(bk, total, file, line);

	if (unlikely(!base))
		return NULL;
	if (unlikely(misfit(base, *word))) {
		base = refit(t, bk, base, total, word, file, line);
		if (!base)
			return NULL;
	}
	if (unlikely(((uintptr_t)base + prefix_len(*word)) & ALIGN_MASK)) {
		log_error("the allocator backend returned %p, which is not "
			  "even 8-byte aligned; fix the backend", (void *)base);
		bk_free(bk, base, file, line);
		return NULL;
	}
	return base + prefix_len(*word);
}

/* Mark a block released and hand it to its backend. */
void
blk_to_backend(void *user)
{
	struct blk *h = hdr_of(user);
	uint32_t word = atomic_load_explicit(&h->word, memory_order_relaxed);

	atomic_store_explicit(&h->word, (word & ~ST_MASK) | ST_RELEASED,
			      memory_order_release);
	bk_free((enum backend)((word & BK_MASK) >> BK_SHIFT),
		(char *)user - prefix_len(word), OPENSSL_FILE, OPENSSL_LINE);
}

/* In a child: parked chunks of a shared backend are the parent's, which
 * still holds them; forget them rather than free them. */
CHILD_PATH void
park_forget_shared(struct tstate *t)
{
	for (unsigned i = 0; i < PARK_SLOTS; i++)
		if (t->parked_bk[i] == BK_SHARED)
			t->parked[i] = NULL;
}

/* Give every parked chunk of @t back. */
void
park_flush(struct tstate *t)
{
	for (unsigned i = 0; i < PARK_SLOTS; i++) {
		if (t->parked[i])
			bk_free((enum backend)t->parked_bk[i], t->parked[i],
				OPENSSL_FILE, OPENSSL_LINE);
		t->parked[i] = NULL;
	}
}

void
sites_report(FILE *out, const char *label)
{
	size_t shown = 0, total = 0;
	struct list *l;

	proc_lock(&proc_mut.site_lock);
	list_for_each(l, &site_list) {
		struct blk_site *s = list_entry(l, struct blk_site, link);
		struct blk *h = (struct blk *)(s + 1);

		total++;
		if (shown++ < 50)
			fprintf(out, "  %s: %zu bytes at %p, allocated at "
				"%s:%d\n", label, blk_size(h), (void *)(h + 1),
				s->alloc_file ? s->alloc_file : "?",
				s->alloc_line);
	}
	proc_unlock(&proc_mut.site_lock);
	large_report(out, label, &shown, &total);
	if (total > shown)
		fprintf(out, "  ... and %zu more\n", total - shown);
}
