/*
 * White-box tests of the allocator's internals: the size classes, the
 * cache-link checks, the header's magic, and the library's containers
 * and log-once helpers.  Linked against the static library, with the
 * private headers of lib/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "alloc/alloc-int.h"
#include "list.h"
#include "log.h"
#include "common/testlog.h"

/* ---- size classes ---- */

START_TEST(class_is_smallest_that_fits)
{
	for (size_t n = 1; n <= CLASS_MAX_TOTAL; n++) {
		unsigned c = class_of(n);

		ck_assert_uint_ge(c, 1);
		ck_assert_uint_lt(c, NCLASSES);
		ck_assert_uint_ge(class_size(c), n);
		/* The class below would not hold it. */
		ck_assert_uint_lt(class_size(c - 1), n);
	}
	ck_assert_uint_eq(class_of(CLASS_MAX_TOTAL), NCLASSES - 1);
}
END_TEST

START_TEST(class_rounding_bounded)
{
	/* 16-byte steps up to 1 KiB, then at most a quarter above. */
	for (size_t n = 1; n <= CLASS_MAX_TOTAL; n++) {
		size_t got = class_size(class_of(n));

		if (n <= SMALL_MAX_TOTAL)
			ck_assert_uint_lt(got - n, 16);
		else
			ck_assert_uint_le(got - n, n / 4);
		ck_assert_uint_eq(got % 16, 0);
	}
	for (unsigned c = 1; c < NCLASSES; c++)
		ck_assert_uint_gt(class_size(c), class_size(c - 1));
}
END_TEST

/* ---- cache links ---- */

START_TEST(link_checks)
{
	void *heap = malloc(64);
	uintptr_t v;

	ck_assert_ptr_nonnull(heap);
	v = (uintptr_t)heap;
	ck_assert(link_ok(heap));
	ck_assert(!link_ok((void *)(v + 8)));        /* misaligned */
	ck_assert(!link_ok((void *)(v & ~(uintptr_t)4095))); /* page start */
	ck_assert(!link_ok((void *)(uintptr_t)0x10)); /* a small integer */
	ck_assert(!link_ok((void *)(uintptr_t)(64 * 1024 - 16)));
	ck_assert(link_ok((void *)(uintptr_t)(64 * 1024 + 16)));
#if UINTPTR_MAX > 0xffffffffu && !defined(__aarch64__)
	ck_assert(!link_ok((void *)((uintptr_t)1 << 56 | 16)));
#endif
	ck_assert(cache_empty(CACHE_END));
	ck_assert(cache_empty(NULL));
	ck_assert(!cache_empty(heap));
	free(heap);
}
END_TEST

/* ---- the header's magic ---- */

/* The magic's keys as install draws them, saved and put back. */
static struct alloc_conf saved_conf;

static void
keys_set(uint64_t k1, uint64_t k2, uint64_t k3)
{
	saved_conf = aconf;
	aconf.secret = k1;
	aconf.secret2 = k2;
	aconf.secret3 = k3 | 1;
}

static void
keys_restore(void)
{
	aconf = saved_conf;
}

START_TEST(magic_binds_address_size_and_layout)
{
	char buf[64] __attribute__((aligned(16)));
	void *u = buf + 32;
	uint32_t word = ST_LIVE | (uint32_t)BK_LIBC << BK_SHIFT;
	uint32_t m = 0;

	keys_set(0x0123456789abcdefull, 0x5555aaaa3333ccccull,
		 0x7777888899990000ull);
	m = blk_magic(u, 100, word);
	ck_assert_uint_ne(m, blk_magic(buf + 16, 100, word));
	ck_assert_uint_ne(m, blk_magic(u, 101, word));
	ck_assert_uint_ne(m, blk_magic(u, 100, word | W_SITES));
	ck_assert_uint_ne(m, blk_magic(u, 100,
				       ST_LIVE | (uint32_t)BK_HOST << BK_SHIFT));
	/* The state is not authenticated: it changes by compare-and-swap
	 * while the magic stays. */
	ck_assert_uint_eq(m, blk_magic(u, 100, (word & ~ST_MASK) | ST_QUAR));
	/* Another secret, another magic. */
	aconf.secret ^= 1ull << 40;
	ck_assert_uint_ne(m, blk_magic(u, 100, word));
	keys_restore();
}
END_TEST

static uint64_t
rand64(unsigned *seed)
{
	uint64_t v = 0;

	for (int i = 0; i < 4; i++)
		v = v << 16 ^ (uint64_t)(rand_r(seed) & 0xffff);
	return v;
}

static int
cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* From one header nothing predicts the magic of a header 16 bytes
 * further: over a thousand key sets, the difference of the two magics
 * takes (nearly) a thousand values.  A magic linear in the address
 * gave a few dozen, the carry patterns of adding 16, which is how a
 * nearby header could be forged with three guesses. */
START_TEST(magic_difference_unpredictable)
{
	char buf[64] __attribute__((aligned(16)));
	uint32_t word = ST_LIVE | (uint32_t)BK_LIBC << BK_SHIFT;
	uint32_t diff[1000];
	unsigned seed = 7, distinct = 1;

	for (unsigned i = 0; i < 1000; i++) {
		keys_set(rand64(&seed), rand64(&seed), rand64(&seed));
		diff[i] = blk_magic(buf + 16, 100, word) ^
			  blk_magic(buf + 32, 100, word);
		keys_restore();
	}
	qsort(diff, 1000, sizeof(diff[0]), cmp_u32);
	for (unsigned i = 1; i < 1000; i++)
		distinct += diff[i] != diff[i - 1];
	ck_assert_uint_ge(distinct, 990);
}
END_TEST

START_TEST(stamped_header_reads_back)
{
	char buf[64] __attribute__((aligned(16)));
	void *u = buf + 32;
	uint32_t word = ST_LIVE | (uint32_t)BK_LIBC << BK_SHIFT, read = 0;
	struct blk *h;

	keys_set(0xfeedfacecafebeefull, 0x1234, 0x5678);
	h = blk_stamp(u, 200, class_of(200 + sizeof(struct blk)), word);
	ck_assert_ptr_eq(h, hdr_of(u));
	ck_assert_uint_eq(blk_size(h), 200);
	ck_assert_uint_eq(blk_class(h), class_of(200 + sizeof(struct blk)));
	ck_assert(blk_peek(u, &read));
	ck_assert_uint_eq(read, word);
	/* One flipped bit of the size: no longer a header. */
	h->size_gen ^= 1;
	ck_assert(!blk_peek(u, &read));
	keys_restore();
}
END_TEST

/* ---- containers and log-once ---- */

struct item {
	int v;
	struct list link;
};

START_TEST(list_add_del_iterate)
{
	struct list head = LIST_INIT(head), *l, *tmp;
	struct item it[4];
	int sum = 0, n = 0;

	for (int i = 0; i < 4; i++) {
		it[i].v = 1 << i;
		list_add(&head, &it[i].link);
	}
	/* Added at the front: newest first. */
	ck_assert_ptr_eq(list_entry(head.next, struct item, link), &it[3]);
	list_for_each_safe(l, tmp, &head) {
		struct item *e = list_entry(l, struct item, link);

		if (e->v == 4)
			list_del(l);
	}
	ck_assert_ptr_eq(it[2].link.next, &it[2].link);
	list_for_each(l, &head) {
		sum += list_entry(l, struct item, link)->v;
		n++;
	}
	ck_assert_int_eq(n, 3);
	ck_assert_int_eq(sum, 1 + 2 + 8);
}
END_TEST

START_TEST(array_grows_and_refuses_overflow)
{
	int *a = NULL;
	size_t n = 0, cap = 0;

	for (int i = 0; i < 100; i++) {
		ck_assert_int_eq(array_reserve((void **)&a, &cap, n,
					       sizeof(*a)), 0);
		a[n++] = i;
	}
	ck_assert_uint_eq(cap, 128);
	for (int i = 0; i < 100; i++)
		ck_assert_int_eq(a[i], i);
	/* Doubling past SIZE_MAX bytes is refused, the array kept. */
	cap = n = (size_t)-1 / 8;
	ck_assert_int_eq(array_reserve((void **)&a, &cap, n, 16), -ENOMEM);
	ck_assert_int_eq(a[99], 99);
	free(a);
}
END_TEST

START_TEST(log_once_first_caller_only)
{
	static atomic_bool once;

	ck_assert(log_once(&once));
	ck_assert(!log_once(&once));
	atomic_store(&once, false); /* re-armed */
	ck_assert(log_once(&once));
	ck_assert(log_once_key(0x1230));
	ck_assert(!log_once_key(0x1230));
	ck_assert(log_once_key(0x4560));
}
END_TEST

static Suite *
internals_suite(void)
{
	Suite *s = suite_create("internals");
	TCase *tc = tcase_create("classes");

	tcase_add_test(tc, class_is_smallest_that_fits);
	tcase_add_test(tc, class_rounding_bounded);
	suite_add_tcase(s, tc);
	tc = tcase_create("headers");
	tcase_add_test(tc, link_checks);
	tcase_add_test(tc, magic_binds_address_size_and_layout);
	tcase_add_test(tc, magic_difference_unpredictable);
	tcase_add_test(tc, stamped_header_reads_back);
	suite_add_tcase(s, tc);
	tc = tcase_create("helpers");
	tcase_add_test(tc, list_add_del_iterate);
	tcase_add_test(tc, array_grows_and_refuses_overflow);
	tcase_add_test(tc, log_once_first_caller_only);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return tl_run(internals_suite());
}
