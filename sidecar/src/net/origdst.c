/* Original destinations (origdst.h), from the netfilter conntrack entry. */
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "net/origdst.h"

/* From <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>, which clash
 * with <netinet/in.h>: the kernel ABI's values. */
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

static bool is_v4_mapped(const struct sockaddr_in6 *in6)
{
    static const unsigned char prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(in6->sin6_addr.s6_addr, prefix, sizeof(prefix)) == 0;
}

/* True when a and b are one address and port (both AF_INET, or both AF_INET6). */
static bool same_sockaddr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

/* Converts an IPv4-mapped IPv6 address into AF_INET in place. */
static void unmap(struct sockaddr_storage *ss)
{
    struct sockaddr_in6 in6;
    struct sockaddr_in *in = (struct sockaddr_in *)ss;

    if (ss->ss_family != AF_INET6 || !is_v4_mapped((struct sockaddr_in6 *)ss))
        return;
    memcpy(&in6, ss, sizeof(in6));
    memset(ss, 0, sizeof(*ss));
    in->sin_family = AF_INET;
    in->sin_port = in6.sin6_port;
    memcpy(&in->sin_addr, in6.sin6_addr.s6_addr + 12, 4);
}

/* Reads the original destination (origdst.h). */
int tt_origdst_get(int fd, struct tt_addr *out, bool *redirected)
{
    struct sockaddr_storage local, orig;
    socklen_t len = sizeof(local);
    int r;

    memset(&local, 0, sizeof(local));
    memset(&orig, 0, sizeof(orig));
    if (getsockname(fd, (struct sockaddr *)&local, &len) < 0)
        return -errno;
    unmap(&local);
    len = sizeof(orig);
    if (local.ss_family == AF_INET)
        r = getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &orig, &len);
    else
        r = getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &orig, &len);
    if (r < 0)
        return -errno;
    unmap(&orig);
    memset(out, 0, sizeof(*out));
    memcpy(&out->ss, &orig, sizeof(orig));
    out->len = orig.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    tt_sockaddr_format((struct sockaddr *)&out->ss, out->text, sizeof(out->text));
    *redirected = !same_sockaddr(&local, &orig);
    return 0;
}
