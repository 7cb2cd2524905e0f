/* Byte buffers whose storage comes from a per-thread pool of fixed-size slabs, so the
 * data path reuses memory instead of calling malloc per read, and an idle buffer holds
 * no memory at all (its slab goes back to the pool when it becomes empty). */
#ifndef TT_BUF_H
#define TT_BUF_H

#include <stddef.h>
#include <stdint.h>

#define TT_BUF_SLAB (32 * 1024) /* pooled storage size; larger buffers use malloc */

struct tt_buf {
    uint8_t *data; /* NULL while empty */
    size_t off;    /* start of unread bytes */
    size_t len;    /* unread bytes */
    size_t cap;    /* storage size */
};

/* Initializes an empty buffer (holds no memory). */
void tt_buf_init(struct tt_buf *b);

/* Releases the storage; the buffer is empty afterwards and may be reused. */
void tt_buf_done(struct tt_buf *b);

/* Returns a pointer to at least `n` writable bytes at the tail, growing the storage
 * (moving unread bytes to the front first), or NULL when out of memory. Follow with
 * tt_buf_commit(). Pointers into the buffer are invalidated. */
uint8_t *tt_buf_reserve(struct tt_buf *b, size_t n);

/* Marks `n` bytes written after tt_buf_reserve() as data. */
void tt_buf_commit(struct tt_buf *b, size_t n);

/* Appends a copy of data[0..n). Returns 0 or -ENOMEM. */
int tt_buf_append(struct tt_buf *b, const void *data, size_t n);

/* Drops `n` bytes from the front; when the buffer becomes empty its storage returns to
 * the pool. */
void tt_buf_consume(struct tt_buf *b, size_t n);

static inline const uint8_t *tt_buf_head(const struct tt_buf *b)
{
    return b->data + b->off;
}

/* Frees the calling thread's cached slabs (call before a thread exits). */
void tt_buf_pool_drain(void);

#endif
