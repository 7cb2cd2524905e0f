/* Slab-pooled byte buffers (see buf.h). Each thread keeps a small free list of
 * TT_BUF_SLAB-sized blocks; a buffer takes one when it first needs storage and gives it
 * back when it becomes empty, so steady-state relaying allocates nothing and idle
 * connections hold no buffer memory. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"

#define POOL_MAX_CACHED 256 /* slabs kept per thread: 8 MiB at most */

struct slab {
    struct slab *next;
};

static __thread struct slab *pool_head;
static __thread size_t pool_count;

/* Process-wide, relaxed atomics: only a pool miss or an oversize buffer counts. */
static uint64_t slabs_allocated;
static uint64_t oversize_allocations;

/* malloc for a buffer larger than a slab, counted. */
static void *oversize_alloc(size_t n)
{

    __atomic_fetch_add(&oversize_allocations, 1, __ATOMIC_RELAXED);
    return malloc(n);
}

static void *slab_get(void)
{
    struct slab *s = pool_head;

    if (s != NULL) {
        pool_head = s->next;
        pool_count--;
        return s;
    }
    __atomic_fetch_add(&slabs_allocated, 1, __ATOMIC_RELAXED);
    return malloc(TT_BUF_SLAB);
}

static void slab_put(void *p)
{
    struct slab *s = p;

    if (pool_count >= POOL_MAX_CACHED) {
        free(p);
        return;
    }
    s->next = pool_head;
    pool_head = s;
    pool_count++;
}

/* Releases storage of either kind: slabs go back to the pool, larger blocks to free(). */
static void storage_release(struct tt_buf *b)
{
    if (b->data == NULL)
        return;
    if (b->cap == TT_BUF_SLAB)
        slab_put(b->data);
    else
        free(b->data);
    b->data = NULL;
    b->cap = 0;
}

/* Initializes an empty buffer. */
void tt_buf_init(struct tt_buf *b)
{
    memset(b, 0, sizeof(*b));
}

/* Frees the buffer's storage; it is empty afterwards. */
void tt_buf_done(struct tt_buf *b)
{
    storage_release(b);
    b->off = 0;
    b->len = 0;
}

/* Makes room for n more bytes at the tail; returns the write pointer or NULL. */
uint8_t *tt_buf_reserve(struct tt_buf *b, size_t n)
{
    if (b->data == NULL) {
        size_t cap = n <= TT_BUF_SLAB ? TT_BUF_SLAB : n;
        b->data = cap == TT_BUF_SLAB ? slab_get() : oversize_alloc(cap);
        if (b->data == NULL)
            return NULL;
        b->cap = cap;
        b->off = 0;
        b->len = 0;
        return b->data;
    }
    if (b->off + b->len + n <= b->cap)
        return b->data + b->off + b->len;
    if (b->len + n <= b->cap) {
        /* Enough room once the unread bytes move to the front. */
        memmove(b->data, b->data + b->off, b->len);
        b->off = 0;
        return b->data + b->len;
    }

    size_t cap = b->cap;
    while (cap < b->len + n)
        cap *= 2;
    uint8_t *p = oversize_alloc(cap);
    if (p == NULL)
        return NULL;
    memcpy(p, b->data + b->off, b->len);
    storage_release(b);
    b->data = p;
    b->cap = cap;
    b->off = 0;
    return p + b->len;
}

/* Accounts n bytes written at the reserved tail. */
void tt_buf_commit(struct tt_buf *b, size_t n)
{
    b->len += n;
}

/* Appends a copy of data. */
int tt_buf_append(struct tt_buf *b, const void *data, size_t n)
{
    if (n == 0)
        return 0;
    uint8_t *p = tt_buf_reserve(b, n);
    if (p == NULL)
        return -ENOMEM;
    memcpy(p, data, n);
    b->len += n;
    return 0;
}

/* Drops n bytes from the front, releasing the storage once empty. */
void tt_buf_consume(struct tt_buf *b, size_t n)
{
    if (n >= b->len) {
        b->off = 0;
        b->len = 0;
        storage_release(b);
        return;
    }
    b->off += n;
    b->len -= n;
}

/* Moves storage and bytes from src to the empty dst. */
void tt_buf_move(struct tt_buf *dst, struct tt_buf *src)
{
    storage_release(dst);
    *dst = *src;
    memset(src, 0, sizeof(*src));
}

/* The writable tail, without growing the storage. */
uint8_t *tt_buf_tail(struct tt_buf *b, size_t *avail)
{
    if (b->data == NULL && tt_buf_reserve(b, 1) == NULL)
        return NULL;
    if (b->off > 0 && b->cap - b->off - b->len < b->off) {
        memmove(b->data, b->data + b->off, b->len);
        b->off = 0;
    }
    *avail = b->cap - b->off - b->len;
    return b->data + b->off + b->len;
}

/* Releases the storage of a buffer that received nothing. */
void tt_buf_settle(struct tt_buf *b)
{
    if (b->len == 0)
        tt_buf_consume(b, 0);
}

/* Reads the process-wide allocation counters. */
void tt_buf_pool_stats(struct tt_buf_pool_stats *out)
{
    out->slabs_allocated = __atomic_load_n(&slabs_allocated, __ATOMIC_RELAXED);
    out->oversize_allocations = __atomic_load_n(&oversize_allocations, __ATOMIC_RELAXED);
}

/* Frees this thread's cached slabs. */
void tt_buf_pool_drain(void)
{
    while (pool_head != NULL) {
        struct slab *s = pool_head;
        pool_head = s->next;
        free(s);
    }
    pool_count = 0;
}

/* ---- queues of slabs ----------------------------------------------------------------- */

/* One slab of a queue: this header, then the bytes. */
struct tt_bufq_node {
    struct tt_bufq_node *next;
    size_t off, len; /* unread bytes: data[off .. off + len) */
    uint8_t data[];
};

#define BUFQ_NODE_CAP (TT_BUF_SLAB - sizeof(struct tt_bufq_node))

/* Initializes an empty queue (holds no memory). */
void tt_bufq_init(struct tt_bufq *q)
{
    q->head = q->tail = NULL;
    q->len = 0;
}

/* Gives every slab back; the queue is empty afterwards. */
void tt_bufq_done(struct tt_bufq *q)
{
    while (q->head != NULL) {
        struct tt_bufq_node *n = q->head;
        q->head = n->next;
        slab_put(n);
    }
    q->tail = NULL;
    q->len = 0;
}

/* Appends a copy of data[0..n), filling the last slab first. Returns 0 or -ENOMEM (then
 * nothing was appended). */
int tt_bufq_append(struct tt_bufq *q, const void *data, size_t n)
{
    const uint8_t *p = data;
    struct tt_bufq_node *first_new = NULL, *last = q->tail;
    size_t room = last != NULL ? BUFQ_NODE_CAP - last->off - last->len : 0;
    size_t need = n > room ? n - room : 0;

    /* Take every slab first, so that a shortage appends nothing. */
    for (struct tt_bufq_node **link = &first_new; need > 0; link = &(*link)->next) {
        *link = slab_get();
        if (*link == NULL) {
            while (first_new != NULL) {
                struct tt_bufq_node *x = first_new;
                first_new = x->next;
                slab_put(x);
            }
            return -ENOMEM;
        }
        (*link)->next = NULL;
        (*link)->off = (*link)->len = 0;
        need -= need < BUFQ_NODE_CAP ? need : BUFQ_NODE_CAP;
    }
    if (room > 0 && n > 0) {
        size_t k = n < room ? n : room;
        memcpy(last->data + last->off + last->len, p, k);
        last->len += k;
        p += k;
        n -= k;
        q->len += k;
    }
    for (struct tt_bufq_node *node = first_new; node != NULL; node = node->next) {
        size_t k = n < BUFQ_NODE_CAP ? n : BUFQ_NODE_CAP;
        memcpy(node->data, p, k);
        node->len = k;
        p += k;
        n -= k;
        q->len += k;
        if (q->tail != NULL)
            q->tail->next = node;
        else
            q->head = node;
        q->tail = node;
    }
    return 0;
}

/* The first contiguous unread bytes (see buf.h). */
size_t tt_bufq_peek(const struct tt_bufq *q, const uint8_t **data)
{
    if (q->head == NULL) {
        *data = NULL;
        return 0;
    }
    *data = q->head->data + q->head->off;
    return q->head->len;
}

/* Drops n bytes from the front (at most what is queued), giving emptied slabs back. */
void tt_bufq_consume(struct tt_bufq *q, size_t n)
{
    while (n > 0 && q->head != NULL) {
        struct tt_bufq_node *h = q->head;
        size_t k = n < h->len ? n : h->len;
        h->off += k;
        h->len -= k;
        q->len -= k;
        n -= k;
        if (h->len == 0) {
            q->head = h->next;
            if (q->head == NULL)
                q->tail = NULL;
            slab_put(h);
        }
    }
}

/* Copies up to len bytes out and drops them; returns the count. */
size_t tt_bufq_read(struct tt_bufq *q, void *buf, size_t len)
{
    uint8_t *out = buf;
    size_t done = 0;

    while (done < len && q->head != NULL) {
        const uint8_t *p;
        size_t k = tt_bufq_peek(q, &p);
        if (k > len - done)
            k = len - done;
        memcpy(out + done, p, k);
        done += k;
        tt_bufq_consume(q, k);
    }
    return done;
}
