/* lockprof runtime: the open-addressing index shared by the interning tables
 * (creation sites, stacks, sample rows).  A slot holds a non-zero entry
 * number; each table keeps its entries and compares keys itself. */
#ifndef LOCKPROF_INDEX_H
#define LOCKPROF_INDEX_H

#include "lp_runtime.h"

typedef struct {
    uint32_t *slots;
    uint32_t mask;          /* capacity - 1 (a power of two) */
} lp_index;

typedef uint32_t (*lp_index_hash)(uint32_t entry);

/* Before adding an entry to a table of `count` entries: keeps the load at or
 * under one half, re-inserting entries [first, end) by their hash when the
 * index grows.  Returns -1 when memory runs out (the table then drops). */
static inline int
lp_index_reserve(lp_index *ix, uint32_t count, uint32_t first, uint32_t end, lp_index_hash hash)
{
    if (ix->slots != NULL && count * 2 <= ix->mask) {
        return 0;
    }
    uint32_t cap = ix->mask ? (ix->mask + 1) * 2 : 1024;
    uint32_t *slots = PyMem_Calloc(cap, sizeof(uint32_t));
    if (slots == NULL) {
        return -1;
    }
    for (uint32_t e = first; e < end; e++) {
        uint32_t j = hash(e) & (cap - 1);
        while (slots[j]) {
            j = (j + 1) & (cap - 1);
        }
        slots[j] = e;
    }
    PyMem_Free(ix->slots);
    ix->slots = slots;
    ix->mask = cap - 1;
    return 0;
}

#endif
