/* Snapshots and their publish slot (snapshot.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "policy/policy.h"
#include "snapshot/services.h"
#include "snapshot/snapshot.h"
#include "tls/crl.h"
#include "tls/identity.h"
#include "tls/revocations.h"

/* Takes a reference; any thread. */
struct tt_snapshot *tt_snapshot_ref(struct tt_snapshot *s)
{
    __atomic_fetch_add(&s->refs, 1, __ATOMIC_RELAXED);
    return s;
}

/* Drops a reference; the last one drops the members' references. */
void tt_snapshot_unref(struct tt_snapshot *s)
{
    if (s == NULL || __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    tt_identity_unref(s->identity);
    tt_revocations_unref(s->revocations);
    tt_crls_unref(s->crls);
    tt_policy_unref(s->policy);
    tt_services_unref(s->services);
    free(s);
}

/* Drops the references an update carries (a refused publish). */
static void update_drop(struct tt_snapshot_update *u)
{
    tt_identity_unref(u->identity);
    tt_revocations_unref(u->revocations);
    tt_crls_unref(u->crls);
    tt_policy_unref(u->policy);
    tt_services_unref(u->services);
    memset(u, 0, sizeof(*u));
}

/* Initializes an empty slot. */
void tt_snapshot_slot_init(struct tt_snapshot_slot *slot)
{
    memset(slot, 0, sizeof(*slot));
    pthread_mutex_init(&slot->lock, NULL);
}

/* Releases the slot's snapshot. */
void tt_snapshot_slot_done(struct tt_snapshot_slot *slot)
{
    tt_snapshot_unref(slot->current);
    slot->current = NULL;
    pthread_mutex_destroy(&slot->lock);
}

/* Sets or detaches the wake callback under the lock that publish holds while calling it. */
void tt_snapshot_slot_set_wake(struct tt_snapshot_slot *slot, tt_snapshot_wake_cb cb, void *arg)
{
    pthread_mutex_lock(&slot->lock);
    slot->wake = cb;
    slot->wake_arg = arg;
    pthread_mutex_unlock(&slot->lock);
}

/* Takes a reference to m when it is not NULL. */
#define REF_OR_NULL(fn, m) ((m) != NULL ? fn(m) : NULL)

/* Publishes the next generation (see snapshot.h). */
int64_t tt_snapshot_slot_publish(struct tt_snapshot_slot *slot, struct tt_snapshot_update *u)
{
    struct tt_snapshot *s = calloc(1, sizeof(*s)), *old;
    int64_t generation;

    if (s == NULL) {
        update_drop(u);
        return -ENOMEM;
    }
    s->refs = 1;
    s->created_unix = tt_now_unix();
    pthread_mutex_lock(&slot->lock);
    old = slot->current;
    if (!(u->replace & TT_SNAP_IDENTITY) && old == NULL) {
        pthread_mutex_unlock(&slot->lock);
        update_drop(u);
        free(s);
        return -EINVAL;
    }
    /* Each member: the update's reference, or a new reference to the current one. */
    s->identity = u->replace & TT_SNAP_IDENTITY ? u->identity : tt_identity_ref(old->identity);
    s->revocations = u->replace & TT_SNAP_REVOCATIONS
                         ? u->revocations
                         : REF_OR_NULL(tt_revocations_ref, old ? old->revocations : NULL);
    s->policy = u->replace & TT_SNAP_POLICY ? u->policy
                                            : REF_OR_NULL(tt_policy_ref, old ? old->policy : NULL);
    s->services = u->replace & TT_SNAP_SERVICES
                      ? u->services
                      : REF_OR_NULL(tt_services_ref, old ? old->services : NULL);
    s->crls =
        u->replace & TT_SNAP_CRLS ? u->crls : REF_OR_NULL(tt_crls_ref, old ? old->crls : NULL);
    memset(u, 0, sizeof(*u));
    if (s->identity == NULL) {
        pthread_mutex_unlock(&slot->lock);
        tt_snapshot_unref(s);
        return -EINVAL;
    }
    if (old != NULL && s->identity != old->identity &&
        strcmp(tt_identity_leaf(old->identity)->serial, tt_identity_leaf(s->identity)->serial) != 0)
        slot->rotations++;
    s->generation = slot->generation + 1;
    slot->current = s;
    __atomic_store_n(&slot->generation, s->generation, __ATOMIC_RELEASE);
    generation = (int64_t)s->generation;
    if (slot->wake != NULL)
        slot->wake(slot->wake_arg, s);
    pthread_mutex_unlock(&slot->lock);
    tt_snapshot_unref(old);
    return generation;
}

/* The newest snapshot, referenced. */
struct tt_snapshot *tt_snapshot_slot_get(struct tt_snapshot_slot *slot)
{
    pthread_mutex_lock(&slot->lock);
    struct tt_snapshot *s = slot->current != NULL ? tt_snapshot_ref(slot->current) : NULL;
    pthread_mutex_unlock(&slot->lock);
    return s;
}

/* The newest generation, lock-free. */
uint64_t tt_snapshot_slot_generation(struct tt_snapshot_slot *slot)
{
    return __atomic_load_n(&slot->generation, __ATOMIC_ACQUIRE);
}

/* Leaf changes so far. */
uint64_t tt_snapshot_slot_rotations(struct tt_snapshot_slot *slot)
{
    pthread_mutex_lock(&slot->lock);
    uint64_t n = slot->rotations;
    pthread_mutex_unlock(&slot->lock);
    return n;
}
