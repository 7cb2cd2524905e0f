/* The original destination of a connection that the capture rules redirected (iptables
 * REDIRECT in the nat table): where the workload, or the remote caller, meant to connect
 * before the rules sent it to 15001 or 15006. */
#ifndef TT_ORIGDST_H
#define TT_ORIGDST_H

#include <stdbool.h>

#include "core/util.h"

/* Reads fd's original destination into *out: SO_ORIGINAL_DST for IPv4,
 * IP6T_SO_ORIGINAL_DST for IPv6; an IPv4 connection on an IPv6 socket (IPv4-mapped local
 * address) is asked as IPv4 and given as AF_INET. *redirected says whether the rules
 * changed the destination at all: false when it is the socket's own local address (a
 * client that dialled the capture port directly, whose relaying would loop back into the
 * sidecar). Returns 0 or -errno (-ENOENT: no conntrack entry, e.g. nf_conntrack absent). */
int tt_origdst_get(int fd, struct tt_addr *out, bool *redirected);

#endif
