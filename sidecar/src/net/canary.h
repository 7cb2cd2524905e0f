/* The readiness canaries of transparent mode (app/capture.h): where the capture check
 * connects, and what the capture listeners answer there. Shared by the listeners (net/)
 * and the check (app/). */
#ifndef TT_CANARY_H
#define TT_CANARY_H

/* TEST-NET-1 (RFC 5737): never routed; tether-iptables redirects it to 15001. */
#define TT_CANARY_OUTBOUND     "192.0.2.1:15009"
#define TT_CANARY_INBOUND_PORT 15008 /* at the pod address; redirected to 15006 */
#define TT_CANARY_ANSWER       "TETHER-CANARY-OK\n"

#endif
