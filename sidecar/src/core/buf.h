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

/* Moves src's bytes and storage into dst, which must be empty (no copy); src is empty
 * afterwards. */
void tt_buf_move(struct tt_buf *dst, struct tt_buf *src);

/* The tail of the buffer for a read into it: storage is taken (a slab) if the buffer has
 * none, and unread bytes move to the front when that makes the tail larger. Sets *avail to
 * the tail's size (0 when the buffer is full: it never grows here) and returns the tail,
 * or NULL when out of memory. Follow with tt_buf_commit(), then tt_buf_settle(). */
uint8_t *tt_buf_tail(struct tt_buf *b, size_t *avail);

/* Gives the storage back when the buffer holds no bytes (after a tt_buf_tail() that
 * received nothing). */
void tt_buf_settle(struct tt_buf *b);

/* A queue of bytes in pooled slabs, however long: it never makes an oversize block, so
 * a buffer that may hold more than a slab (an HTTP/2 stream's window) stays in the pool.
 * Single-threaded like the slabs' pool. */
struct tt_bufq_node;
struct tt_bufq {
    struct tt_bufq_node *head, *tail;
    size_t len; /* unread bytes */
};

/* Initializes an empty queue (holds no memory). */
void tt_bufq_init(struct tt_bufq *q);

/* Gives every slab back to the pool; the queue is empty afterwards and may be reused. */
void tt_bufq_done(struct tt_bufq *q);

/* Appends a copy of data[0..n). Returns 0, or -ENOMEM (then nothing was appended). */
int tt_bufq_append(struct tt_bufq *q, const void *data, size_t n);

/* Sets *data to the first contiguous unread bytes (NULL when empty) and returns their
 * count: at most a slab's worth, less than q->len when more slabs follow. Valid until the
 * next change of the queue. */
size_t tt_bufq_peek(const struct tt_bufq *q, const uint8_t **data);

/* Drops n bytes from the front (at most q->len); emptied slabs go back to the pool. */
void tt_bufq_consume(struct tt_bufq *q, size_t n);

/* Copies up to len bytes from the front into buf and drops them. Returns the count. */
size_t tt_bufq_read(struct tt_bufq *q, void *buf, size_t len);

/* Frees the calling thread's cached slabs (call before a thread exits). */
void tt_buf_pool_drain(void);

/* Allocations the buffers made from the system, process-wide since start: slabs (when a
 * thread's pool was empty) and oversize blocks (a buffer grown past one slab). Steady-state
 * relaying makes neither. */
struct tt_buf_pool_stats {
    uint64_t slabs_allocated;
    uint64_t oversize_allocations;
};
void tt_buf_pool_stats(struct tt_buf_pool_stats *out);

#endif
