/* The service table (DESIGN.md "Control plane"): what a workload may dial and who must
 * answer there. A service is a virtual address and port (a Kubernetes ClusterIP, an
 * operator's VIP) with a list of endpoints, each an IP:port with the SPIFFE ID that must
 * answer there; a bare endpoint is a service of one. Immutable and refcounted, a member
 * of the snapshot replaced on its own; lookups are pure and lock-free (binary search over
 * a sorted array). Explicit mode leaves it empty; transparent mode looks up the original
 * destination in it. No sockets, no libuv, no JSON. */
#ifndef TT_SERVICES_H
#define TT_SERVICES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/util.h"

struct sockaddr;

/* One endpoint of a service. */
struct tt_endpoint {
    struct tt_addr addr;
    const char *spiffe_id; /* the identity that must answer at addr */
};

/* One service: the address workloads dial and its endpoints (at least one). */
struct tt_service {
    struct tt_addr address;
    const struct tt_endpoint *endpoints;
    size_t n_endpoints;
};

/* Builder input: one endpoint, optionally under a service address. */
struct tt_service_entry {
    const char *service;   /* "IP:PORT" workloads dial, or NULL/"" for a bare endpoint */
    const char *endpoint;  /* "IP:PORT" or "[IPv6]:PORT" */
    const char *spiffe_id; /* a valid SPIFFE ID */
};

struct tt_services;

/* An address reduced to what identifies it: IPv4-mapped IPv6 becomes IPv4 (zeroed
 * padding, so keys compare and hash as bytes). */
struct tt_addr_key {
    uint8_t family; /* 4 or 6 */
    uint8_t ip[16];
    uint16_t port;
};

/* Fills *k from sa (AF_INET or AF_INET6). Returns false for another family. */
bool tt_addr_key_of(const struct sockaddr *sa, struct tt_addr_key *k);

/* Builds a table from entries[0..n): entries with the same service address become that
 * service's endpoints (in the order given, duplicates of the same endpoint and identity
 * kept once); a bare entry is a service of one at its endpoint address, and so is every
 * endpoint of a service (dialled directly, it requires its own identity) unless its address
 * is a service address or a bare entry itself, or services list it with two identities
 * (then it is not matched). Addresses must be
 * IP literals with a port 1..65535: an entry naming a host ("db.local:5432", which the
 * control plane accepts for operators) cannot be matched against a captured destination,
 * so it is left out and counted in *skipped (may be NULL). Errors: a malformed address or
 * SPIFFE ID, an endpoint listed twice in one service with two identities, or one address
 * that is both a service and another service's bare endpoint; err then names the entry
 * ("services[3].spiffe_id: ...") and NULL is returned. Returns a table with one
 * reference (n = 0 gives an empty table). */
struct tt_services *tt_services_new(const struct tt_service_entry *entries, size_t n,
                                    size_t *skipped, char *err, size_t errlen);

struct tt_services *tt_services_ref(struct tt_services *s);
void tt_services_unref(struct tt_services *s); /* accepts NULL */

/* The service whose address is `sa` (AF_INET or AF_INET6, an IPv4-mapped IPv6 address
 * matches its IPv4 service), or NULL. NULL `s` is the empty table. Valid while the table
 * is referenced. */
const struct tt_service *tt_services_lookup(const struct tt_services *s, const struct sockaddr *sa);

/* Services in address order, for listings: i in [0, tt_services_count()). */
size_t tt_services_count(const struct tt_services *s);
const struct tt_service *tt_services_get(const struct tt_services *s, size_t i);

/* True when both tables hold the same services and endpoints (NULL equals empty). */
bool tt_services_equal(const struct tt_services *a, const struct tt_services *b);

#endif
