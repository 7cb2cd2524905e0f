/* Unit tests for snapshot/snapshot.c and the workers' side of it (net/worker.c): members
 * replaced on their own, generations, the wake callback and its detach, and a worker that
 * runs the newest generation even when it was published while the worker was starting. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "certgen.h"
#include "core/util.h"
#include "net/worker.h"
#include "policy/policy.h"
#include "snapshot/services.h"
#include "snapshot/snapshot.h"
#include "tls/identity.h"
#include "tls/revocations.h"

#define WEB "spiffe://td/ns/shop/sa/web"

static struct tt_certgen_cert *root;

static int group_setup(void **state)
{
    root = tt_certgen_ca("snapshot test root", NULL);
    return root != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    tt_certgen_free(root);
    return 0;
}

/* A fresh identity (a new leaf each call, so a new serial). */
static struct tt_identity *new_identity(void)
{
    struct tt_certgen_cert *leaf = tt_certgen_leaf(root, WEB);
    char err[256];
    struct tt_identity *id;

    assert_non_null(leaf);
    id = tt_identity_from_pem(leaf->chain_pem, strlen(leaf->chain_pem), leaf->key_pem,
                              strlen(leaf->key_pem), root->cert_pem, strlen(root->cert_pem), "test",
                              err, sizeof(err));
    tt_certgen_free(leaf);
    if (id == NULL)
        fail_msg("identity: %s", err);
    return id;
}

static struct tt_policy *new_policy(const char *version)
{
    char doc[256], err[256];
    struct tt_policy *p;

    snprintf(doc, sizeof(doc), "{\"version\": \"%s\", \"rules\": []}", version);
    p = tt_policy_parse(doc, strlen(doc), "test", err, sizeof(err));
    if (p == NULL)
        fail_msg("policy: %s", err);
    return p;
}

struct wake_log {
    int calls;
    uint64_t last_generation;
};

static void on_wake(void *arg, const struct tt_snapshot *s)
{
    struct wake_log *log = arg;

    log->calls++;
    log->last_generation = s->generation;
}

static void test_snapshot_members_replaced_on_their_own(void **state)
{
    struct tt_snapshot_slot slot;
    struct wake_log log = {0};
    struct tt_snapshot_update u = {.replace = TT_SNAP_POLICY, .policy = new_policy("a")};
    struct tt_snapshot *s1, *s2, *s3;
    size_t bad;

    tt_snapshot_slot_init(&slot);
    tt_snapshot_slot_set_wake(&slot, on_wake, &log);
    assert_null(tt_snapshot_slot_get(&slot));

    /* The first publish must carry an identity; the refused update's reference is dropped
     * (LeakSanitizer would say otherwise). */
    assert_int_equal(tt_snapshot_slot_publish(&slot, &u), -EINVAL);
    assert_int_equal(log.calls, 0);
    assert_int_equal(tt_snapshot_slot_generation(&slot), 0);

    u = (struct tt_snapshot_update){.replace = TT_SNAP_IDENTITY | TT_SNAP_POLICY,
                                    .identity = new_identity(),
                                    .policy = new_policy("a")};
    assert_int_equal(tt_snapshot_slot_publish(&slot, &u), 1);
    assert_int_equal(log.calls, 1);
    assert_int_equal(log.last_generation, 1);
    s1 = tt_snapshot_slot_get(&slot);
    assert_non_null(s1->identity);
    assert_null(s1->revocations);
    assert_null(s1->services);

    /* A policy push: a new policy, the very same identity (its SSL_CTXs, ticket keys). */
    u = (struct tt_snapshot_update){.replace = TT_SNAP_POLICY, .policy = new_policy("b")};
    assert_int_equal(tt_snapshot_slot_publish(&slot, &u), 2);
    s2 = tt_snapshot_slot_get(&slot);
    assert_ptr_equal(s2->identity, s1->identity);
    assert_ptr_not_equal(s2->policy, s1->policy);
    assert_string_equal(tt_policy_version(s2->policy), "b");
    assert_string_equal(tt_policy_version(s1->policy), "a"); /* s1 is untouched */

    /* Revocations and services: the identity and the policy stay. */
    const char *serials[] = {"AB"};
    const struct tt_service_entry e[] = {{NULL, "10.0.0.1:80", WEB}};
    u = (struct tt_snapshot_update){.replace = TT_SNAP_REVOCATIONS | TT_SNAP_SERVICES,
                                    .revocations = tt_revocations_new(serials, 1, &bad),
                                    .services = tt_services_new(e, 1, NULL, NULL, 0)};
    assert_int_equal(tt_snapshot_slot_publish(&slot, &u), 3);
    s3 = tt_snapshot_slot_get(&slot);
    assert_ptr_equal(s3->identity, s1->identity);
    assert_ptr_equal(s3->policy, s2->policy);
    assert_true(tt_revocations_check(s3->revocations, "AB"));
    assert_int_equal(tt_services_count(s3->services), 1);
    assert_int_equal(tt_snapshot_slot_rotations(&slot), 0);

    /* A new certificate counts as a rotation. */
    u = (struct tt_snapshot_update){.replace = TT_SNAP_IDENTITY, .identity = new_identity()};
    assert_int_equal(tt_snapshot_slot_publish(&slot, &u), 4);
    assert_int_equal(tt_snapshot_slot_rotations(&slot), 1);
    assert_int_equal(log.calls, 4);

    /* Detached: publishes go on, nobody is called. */
    tt_snapshot_slot_set_wake(&slot, NULL, NULL);
    u = (struct tt_snapshot_update){.replace = TT_SNAP_POLICY, .policy = NULL};
    assert_int_equal(tt_snapshot_slot_publish(&slot, &u), 5);
    assert_int_equal(log.calls, 4);

    tt_snapshot_unref(s1);
    tt_snapshot_unref(s2);
    tt_snapshot_unref(s3);
    tt_snapshot_slot_done(&slot);
}

/* ---- a worker and the start-up window ---------------------------------------------- */

static struct tt_snapshot_slot *hook_slot;

/* Runs on the worker's thread after it started, before it looks at the slot. */
static void publish_in_start_window(struct tt_worker *w)
{
    struct tt_snapshot_update u = {.replace = TT_SNAP_POLICY, .policy = new_policy("window")};
    assert_true(tt_snapshot_slot_publish(hook_slot, &u) > 0);
}

struct waker {
    struct tt_worker *w;
    int calls;
};

/* The runtime's wake callback, reduced to what matters: wake the worker. */
static void wake_worker(void *arg, const struct tt_snapshot *s)
{
    struct waker *k = arg;

    k->calls++;
    tt_worker_wake(k->w);
}

static void wait_generation(struct tt_worker *w, uint64_t want)
{
    for (int i = 0; i < 500 && tt_worker_generation(w) != want; i++)
        usleep(10 * 1000);
    assert_int_equal(tt_worker_generation(w), want);
}

static void test_snapshot_worker_takes_newest(void **state)
{
    struct tt_snapshot_slot slot;
    struct tt_worker w;
    struct waker k = {.w = &w};
    int fds[1] = {-1};
    struct tt_worker_settings st = {.slot = &slot, .max_connections = 1};
    struct tt_snapshot_update u = {.replace = TT_SNAP_IDENTITY | TT_SNAP_POLICY,
                                   .identity = new_identity(),
                                   .policy = new_policy("one")};

    memset(&w, 0, sizeof(w));
    tt_snapshot_slot_init(&slot);
    assert_int_equal(tt_snapshot_slot_publish(&slot, &u), 1);
    assert_int_equal(tt_worker_init(&w, 0, &st, fds), 0);

    /* Published after init, before the thread runs, with nobody to wake it (the runtime
     * wakes only started workers): the worker must still run it. */
    u = (struct tt_snapshot_update){.replace = TT_SNAP_POLICY, .policy = new_policy("two")};
    assert_int_equal(tt_snapshot_slot_publish(&slot, &u), 2);
    /* And one more published on the worker's own thread, in the window between its start
     * and its first look, again with nobody to wake it. */
    hook_slot = &slot;
    tt_worker_test_start_hook = publish_in_start_window;
    assert_int_equal(tt_worker_start(&w), 0);
    wait_generation(&w, 3);
    tt_worker_test_start_hook = NULL;
    tt_snapshot_slot_set_wake(&slot, wake_worker, &k);

    /* Later publishes arrive through the wake. */
    u = (struct tt_snapshot_update){.replace = TT_SNAP_POLICY, .policy = new_policy("four")};
    assert_int_equal(tt_snapshot_slot_publish(&slot, &u), 4);
    wait_generation(&w, 4);

    /* Shutdown: detach first, then stop; a publish after that wakes nothing (the worker's
     * async handle is closed) and the worker stays where it was. */
    tt_snapshot_slot_set_wake(&slot, NULL, NULL);
    int calls = k.calls;
    tt_worker_stop(&w);
    tt_worker_stop(&w); /* twice is harmless */
    tt_worker_done(&w);
    u = (struct tt_snapshot_update){.replace = TT_SNAP_POLICY, .policy = new_policy("five")};
    assert_int_equal(tt_snapshot_slot_publish(&slot, &u), 5);
    assert_int_equal(k.calls, calls);
    tt_snapshot_slot_done(&slot);
}

/* The set a sidecar keeps only grows: a later push without a serial keeps it until its
 * certificate expires; a malformed serial refuses the whole push. */
static void test_revocations_merge_grow_only(void **state)
{
    const struct tt_revocation first[] = {{"0a:bc", 2000}, {"FF", 0}, {"01", 1500}};
    const struct tt_revocation later[] = {{"DD", 5000}, {"ABC", 2500}};
    const struct tt_revocation bad_push[] = {{"12", 0}, {"xyz", 0}};
    struct tt_revocations *a, *b, *c;
    size_t bad;

    (void)state;
    a = tt_revocations_merge(NULL, first, 3, 1000, &bad);
    assert_non_null(a);
    assert_int_equal(tt_revocations_count(a), 3);
    /* A push that leaves them out (a rogue or a confused control plane): still there, and
     * the one whose certificate expired at 1500 is dropped at 1600. */
    b = tt_revocations_merge(a, later, 2, 1600, &bad);
    assert_non_null(b);
    assert_true(tt_revocations_check(b, "ABC"));
    assert_true(tt_revocations_check(b, "FF"));
    assert_true(tt_revocations_check(b, "DD"));
    assert_false(tt_revocations_check(b, "1"));
    assert_int_equal(tt_revocations_count(b), 3);
    /* An empty push changes nothing until expiry; unknown not-afters stay for good. */
    c = tt_revocations_merge(b, NULL, 0, 2400, &bad);
    assert_true(tt_revocations_equal(b, c));
    tt_revocations_unref(c);
    c = tt_revocations_merge(b, NULL, 0, 1000000, &bad);
    assert_int_equal(tt_revocations_count(c), 1);
    assert_true(tt_revocations_check(c, "FF"));
    tt_revocations_unref(c);
    /* ABC was pushed with 2000 then 2500: the later date wins. */
    c = tt_revocations_merge(b, NULL, 0, 2200, &bad);
    assert_true(tt_revocations_check(c, "ABC"));
    tt_revocations_unref(c);
    assert_null(tt_revocations_merge(b, bad_push, 2, 1600, &bad));
    assert_int_equal(bad, 1);
    tt_revocations_unref(a);
    tt_revocations_unref(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_snapshot_members_replaced_on_their_own),
        cmocka_unit_test(test_revocations_merge_grow_only),
        cmocka_unit_test(test_snapshot_worker_takes_newest),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
