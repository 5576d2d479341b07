/*
 * Two containers, header-only: an intrusive circular doubly linked list
 * (a head links to itself when empty), and a growable array.
 */
#ifndef OSSLPROC_LIST_H
#define OSSLPROC_LIST_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>

#pragma GCC visibility push(hidden)

struct list {
	struct list *prev, *next;
};

#define LIST_INIT(head) { &(head), &(head) }
#define list_entry(node, type, member) \
	((type *)((char *)(node) - offsetof(type, member)))
#define list_for_each(pos, head) \
	for ((pos) = (head)->next; (pos) != (head); (pos) = (pos)->next)
/* The same, where the loop may unlink @pos. */
#define list_for_each_safe(pos, tmp, head) \
	for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head); \
	     (pos) = (tmp), (tmp) = (pos)->next)

/* Insert @n right after @head (at the front). */
static inline void
list_add(struct list *head, struct list *n)
{
	n->next = head->next;
	n->prev = head;
	head->next->prev = n;
	head->next = n;
}

/* Unlink @n; it then links to itself. */
static inline void
list_del(struct list *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->next = n->prev = n;
}

/*
 * Room for one more element in the array *@items of @n elements of
 * @size bytes, *@cap allocated: doubles the allocation (from 8) when
 * full.  0, or -ENOMEM with the array unchanged.
 */
static inline int
array_reserve(void **items, size_t *cap, size_t n, size_t size)
{
	size_t ncap;
	void *p;

	if (n < *cap)
		return 0;
	ncap = *cap ? *cap * 2 : 8;
	if (ncap < *cap || ncap > (size_t)-1 / size)
		return -ENOMEM;
	p = realloc(*items, ncap * size);
	if (!p)
		return -ENOMEM;
	*items = p;
	*cap = ncap;
	return 0;
}

#pragma GCC visibility pop

#endif /* OSSLPROC_LIST_H */
