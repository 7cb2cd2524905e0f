/* TLS to a server checked the web way, for clients of ordinary HTTPS APIs (the control
 * plane's Kubernetes API client): the server's chain must lead to a root of a PEM bundle
 * and its certificate must name the host dialled (DNS name or IP address SAN); no SPIFFE
 * rules. Optionally presents a client certificate. Blocking, over a connected stream fd
 * the caller owns (its SO_RCVTIMEO/SO_SNDTIMEO bound every call). BoringSSL stays in tls/. */
#ifndef TT_WEBTLS_H
#define TT_WEBTLS_H

#include <stddef.h>
#include <sys/types.h>

struct tt_webtls;

struct tt_webtls_opts {
    const char *ca_pem; /* the roots (PEM, one or more certificates); required */
    size_t ca_len;
    const char *host;     /* the name or IP literal the certificate must carry; also the SNI */
    const char *cert_pem; /* client certificate then intermediates, or NULL */
    size_t cert_len;
    const char *key_pem; /* its private key, or NULL */
    size_t key_len;
};

/* Runs the client handshake on fd with o's roots and host check. Returns the session, or
 * NULL with err naming the reason ("certificate verify failed: Hostname mismatch",
 * "no certificate in the CA bundle"). fd is not closed either way. */
struct tt_webtls *tt_webtls_connect(int fd, const struct tt_webtls_opts *o, char *err,
                                    size_t errlen);

/* Reads up to len plaintext bytes. Returns >0, 0 at the end of the stream (close_notify
 * or the peer's FIN), or -errno (-EAGAIN: the fd's receive timeout passed; -EPROTO: a TLS
 * error). */
ssize_t tt_webtls_read(struct tt_webtls *t, void *buf, size_t len);

/* Writes all of buf[0..len). Returns 0 or -errno. */
int tt_webtls_write(struct tt_webtls *t, const void *buf, size_t len);

/* Frees the session (no close_notify: the caller closes or shuts down the fd). Accepts
 * NULL. */
void tt_webtls_free(struct tt_webtls *t);

#endif
