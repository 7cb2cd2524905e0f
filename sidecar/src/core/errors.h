/* Tether's error codes: 0 is success, -errno (libuv's UV_E* are the same) for system
 * errors, and the project's own codes below -1000 for TLS, identity, policy,
 * configuration and admission failures. tt_strerror() names both kinds. */
#ifndef TT_ERRORS_H
#define TT_ERRORS_H

enum tt_err {
    TT_E_TLS = -1001,            /* TLS library failure not covered below */
    TT_E_NO_CERT = -1002,        /* peer presented no certificate */
    TT_E_UNKNOWN_CA = -1003,     /* peer chain does not lead to a root in the bundle */
    TT_E_EXPIRED = -1004,        /* a certificate in the peer chain has expired */
    TT_E_NOT_YET_VALID = -1005,  /* a certificate in the peer chain is not valid yet */
    TT_E_BAD_SAN = -1006,        /* peer leaf lacks exactly one valid spiffe:// URI SAN */
    TT_E_WRONG_IDENTITY = -1007, /* server's SPIFFE ID is not the one expected */
    TT_E_REVOKED = -1008,        /* peer certificate serial is revoked */
    TT_E_PROTOCOL = -1009,       /* TLS protocol error (bad record, version, alert...) */
    TT_E_TIMEOUT = -1010,        /* handshake did not finish in time */
    TT_E_BAD_USAGE = -1011,      /* peer leaf not fit for its TLS role (key usage, EKU) */
    TT_E_TLS_CLOSED = -1012,     /* the peer ended the TLS stream (close_notify) */
    TT_E_PEM = -1020,            /* a PEM file could not be parsed */
    TT_E_KEY_MISMATCH = -1021,   /* private key does not match the certificate */
    TT_E_IDENTITY = -1022,       /* certificate unusable as a workload identity */
    TT_E_POLICY = -1030,         /* policy document invalid */
    TT_E_DENIED = -1031,         /* connection refused by policy */
    TT_E_CONFIG = -1040,         /* configuration invalid */
    TT_E_SPIFFE = -1050,         /* string is not a valid SPIFFE ID */
    /* The control plane's CA refusing a certificate request (control/ca.h). */
    TT_E_CSR = -1060,            /* not a DER PKCS#10 request */
    TT_E_CSR_SIGNATURE = -1061,  /* the request's self-signature does not verify */
    TT_E_CSR_KEY = -1062,        /* the request's key is not EC P-256 nor RSA >= 2048 */
    TT_E_CSR_SAN = -1063,        /* not exactly one URI SAN, or SANs of other kinds */
    TT_E_CSR_IDENTITY = -1064,   /* the SPIFFE ID is not the one the caller's proof supports */
    TT_E_CA_INTERNAL = -1065,    /* the CA failed: BoringSSL or allocation failure */
    TT_E_CONN_LIMIT = -1070,     /* connection refused: --max-connections reached */
    TT_E_NOT_REDIRECTED = -1071, /* transparent: no original destination (not redirected) */
    TT_E_UNKNOWN_DEST = -1072,   /* transparent: non-mesh destination refused (deny) */
    TT_E_NO_ENDPOINT = -1073,    /* transparent: no endpoint of the service could be reached */
    TT_E_HTTP = -1080,           /* an HTTP request refused as malformed (http/h1.h names why) */
    /* HTTP/2 between sidecars (http/h2.h). */
    TT_E_H2_PROTOCOL = -1090,   /* the peer broke HTTP/2 (bad preface, frame): close it */
    TT_E_H2_RESET = -1091,      /* the stream was reset (RST_STREAM; h2 code given beside) */
    TT_E_H2_REFUSED = -1092,    /* the peer did not process the stream: safe to retry */
    TT_E_H2_GOAWAY = -1093,     /* the session is going away: no new streams */
    TT_E_H2_NO_CONNECT = -1094, /* the peer did not enable extended CONNECT (RFC 8441) */
    TT_E_H2_CLOSED = -1095,     /* the stream is closed or its sending side ended */
    TT_E_H2_HEADERS = -1096,    /* headers invalid, or over the header list size bound */
    TT_E_H2_INTERNAL = -1097,   /* the HTTP/2 library failed (out of memory, misuse) */
    /* The pool of links between sidecars (net/pool.h). */
    TT_E_LINK_CLOSED = -1100,    /* the pooled connection carrying a tunnel closed */
    TT_E_TUNNEL_REFUSED = -1101, /* the peer sidecar refused the tunnel (its status given) */
};

/* Returns a static, human-readable description of `err` (a tt_err or a -errno). */
const char *tt_strerror(int err);

#endif
