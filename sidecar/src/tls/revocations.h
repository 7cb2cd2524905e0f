/* The trust member's revocation set (DESIGN.md "Threads and snapshots"): the serial
 * numbers the control plane pushed as revoked, immutable and refcounted, so a push that
 * changes only revocations replaces this set and nothing else (the identity's SSL_CTXs
 * and their session-ticket keys stay). Handshakes check their peer's leaf against the set
 * they were started with (tls.h: tt_tls_set_revocations); the workers also close live
 * connections whose peer a newer set revokes. No BoringSSL, no libuv: pure data. */
#ifndef TT_REVOCATIONS_H
#define TT_REVOCATIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tt_revocations;

/* One revoked serial as the control plane pushes it. */
struct tt_revocation {
    const char *serial; /* any form tt_serial_normalize() accepts */
    int64_t not_after;  /* unix seconds: the revoked certificate's not-after; 0 unknown */
};

/* Builds a set from serials[0..n), each in any form tt_serial_normalize() accepts
 * (case, colons and leading zeros ignored). Duplicates are kept once. Returns the set
 * with one reference; NULL with *err_index set to the index of the first malformed
 * serial, or NULL with *err_index = n when out of memory. */
struct tt_revocations *tt_revocations_new(const char *const *serials, size_t n, size_t *err_index);

/* The set a sidecar keeps (DESIGN.md "Trust between the parts"): every serial of `held`
 * (NULL: none) and of add[0..n), minus those whose certificate's not-after (when known) is
 * before `now` (0: drop nothing). So a set built this way from the previous one only
 * grows until certificates expire: no later snapshot, and no other control plane, can
 * take a serial out while its certificate could still be presented. A serial in both
 * keeps the later not-after (unknown counts as latest). Returns the new set with one
 * reference; NULL with *err_index the index in add of the first malformed serial, or
 * NULL with *err_index = n when out of memory. */
struct tt_revocations *tt_revocations_merge(const struct tt_revocations *held,
                                            const struct tt_revocation *add, size_t n, int64_t now,
                                            size_t *err_index);

struct tt_revocations *tt_revocations_ref(struct tt_revocations *r);
void tt_revocations_unref(struct tt_revocations *r); /* accepts NULL */

/* True when `serial` (normalized: upper-case hex without colons or leading zeros, as
 * tt_cert_info.serial) is in the set. NULL is the empty set. */
bool tt_revocations_check(const struct tt_revocations *r, const char *serial);

/* Number of serials in the set (0 for NULL). */
size_t tt_revocations_count(const struct tt_revocations *r);

/* True when both sets hold the same serials with the same not-afters (NULL equals an
 * empty set). */
bool tt_revocations_equal(const struct tt_revocations *a, const struct tt_revocations *b);

#endif
