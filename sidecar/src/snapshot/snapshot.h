/* The snapshot (DESIGN.md "Threads and snapshots"): everything a connection decides with,
 * immutable and refcounted, and the one slot it is published through.
 *
 * A snapshot holds four members, each immutable and refcounted on its own, so a push
 * replaces only what changed:
 *   identity     leaf, key, chain, the trust roots and the SSL_CTXs built from them
 *                (replaced only when the certificate or the roots change, so session
 *                tickets survive every other push);
 *   revocations  the serials the control plane revoked (the trust member's changing part);
 *   crls         the CRL files given with --crl (the trust member's CRLs, tls/crl.h);
 *   policy       the parsed allow list (no counters inside: metrics/ keys them by rule);
 *   services     the service table (empty in explicit mode).
 *
 * The slot holds the newest snapshot and a generation number that grows by one per
 * publish. Publishers (the control client's thread, SIGHUP on the main thread) hand it
 * the members that change; the slot builds the new snapshot from the current one and
 * calls the wake callback, which the runtime points at each worker's uv_async_send. A
 * worker takes the newest snapshot on wake and when it starts; a connection keeps the
 * snapshot it was accepted with. No sockets and no libuv here. */
#ifndef TT_SNAPSHOT_H
#define TT_SNAPSHOT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct tt_identity;
struct tt_revocations;
struct tt_crls;
struct tt_policy;
struct tt_services;

struct tt_snapshot {
    int refs; /* atomic */
    uint64_t generation;
    int64_t created_unix;
    struct tt_identity *identity;       /* never NULL */
    struct tt_revocations *revocations; /* NULL: nothing revoked */
    struct tt_crls *crls;               /* NULL: no CRLs */
    struct tt_policy *policy;           /* NULL: any authenticated caller is allowed */
    struct tt_services *services;       /* NULL: the empty table */
};

struct tt_snapshot *tt_snapshot_ref(struct tt_snapshot *s);
void tt_snapshot_unref(struct tt_snapshot *s); /* accepts NULL */

/* Members an update replaces. */
#define TT_SNAP_IDENTITY    (1u << 0)
#define TT_SNAP_REVOCATIONS (1u << 1)
#define TT_SNAP_POLICY      (1u << 2)
#define TT_SNAP_SERVICES    (1u << 3)
#define TT_SNAP_CRLS        (1u << 4)

/* What a publisher changes: for each bit in `replace`, the member's new value (one
 * reference each, handed to the slot; NULL allowed except for the identity). Members not
 * in `replace` are taken from the current snapshot and must be NULL here. */
struct tt_snapshot_update {
    unsigned replace;
    struct tt_identity *identity;
    struct tt_revocations *revocations;
    struct tt_policy *policy;
    struct tt_services *services;
    struct tt_crls *crls;
};

/* Called after each publish with the new snapshot (valid during the call), on the
 * publisher's thread, with the slot's lock held: it must not call into the slot. */
typedef void (*tt_snapshot_wake_cb)(void *arg, const struct tt_snapshot *snapshot);

struct tt_snapshot_slot {
    pthread_mutex_t lock;
    struct tt_snapshot *current; /* NULL until the first publish */
    uint64_t generation;         /* atomic reads: the newest published generation */
    uint64_t rotations;          /* publishes whose identity has a new leaf serial */
    tt_snapshot_wake_cb wake;
    void *wake_arg;
};

/* Initializes an empty slot (no snapshot, generation 0, no wake callback). */
void tt_snapshot_slot_init(struct tt_snapshot_slot *slot);

/* Drops the slot's snapshot. No publish may run or follow. */
void tt_snapshot_slot_done(struct tt_snapshot_slot *slot);

/* Sets the wake callback (NULL detaches it). When this returns, no call of the previous
 * callback is running and none will start: detach before closing what it wakes. */
void tt_snapshot_slot_set_wake(struct tt_snapshot_slot *slot, tt_snapshot_wake_cb cb, void *arg);

/* Publishes the current snapshot with the members in `u` replaced, as the next
 * generation, then calls the wake callback. Takes ownership of u's references in every
 * case. The first publish must replace the identity. Returns the new generation, or
 * -EINVAL (no identity) / -ENOMEM, the current snapshot then unchanged. Any thread. */
int64_t tt_snapshot_slot_publish(struct tt_snapshot_slot *slot, struct tt_snapshot_update *u);

/* A new reference to the newest snapshot, or NULL before the first publish. Any thread. */
struct tt_snapshot *tt_snapshot_slot_get(struct tt_snapshot_slot *slot);

/* The newest generation (0 before the first publish), without the lock: a worker compares
 * it with its own to know whether to take a new snapshot. */
uint64_t tt_snapshot_slot_generation(struct tt_snapshot_slot *slot);

/* Identity changes with a new leaf certificate since the first publish. */
uint64_t tt_snapshot_slot_rotations(struct tt_snapshot_slot *slot);

#endif
