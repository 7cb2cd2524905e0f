/* tt_strerror(): one name for every error code the project returns. */
#include <string.h>

#include "core/errors.h"

/* Returns a static description of `err`, a tt_err code or a negative errno. */
const char *tt_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
    case TT_E_TLS:
        return "TLS library error";
    case TT_E_NO_CERT:
        return "peer presented no certificate";
    case TT_E_UNKNOWN_CA:
        return "peer certificate not issued by a trusted root";
    case TT_E_EXPIRED:
        return "peer certificate expired";
    case TT_E_NOT_YET_VALID:
        return "peer certificate not yet valid";
    case TT_E_BAD_SAN:
        return "peer certificate lacks exactly one spiffe:// URI SAN";
    case TT_E_WRONG_IDENTITY:
        return "peer SPIFFE ID is not the expected one";
    case TT_E_REVOKED:
        return "peer certificate revoked";
    case TT_E_PROTOCOL:
        return "TLS protocol error";
    case TT_E_TIMEOUT:
        return "handshake timed out";
    case TT_E_TLS_CLOSED:
        return "peer closed the TLS stream";
    case TT_E_BAD_USAGE:
        return "peer certificate not valid for this TLS role (key usage)";
    case TT_E_PEM:
        return "invalid PEM data";
    case TT_E_KEY_MISMATCH:
        return "private key does not match certificate";
    case TT_E_IDENTITY:
        return "certificate unusable as a workload identity";
    case TT_E_POLICY:
        return "invalid policy document";
    case TT_E_DENIED:
        return "denied by policy";
    case TT_E_CONFIG:
        return "invalid configuration";
    case TT_E_SPIFFE:
        return "invalid SPIFFE ID";
    case TT_E_CSR:
        return "not a DER PKCS#10 certificate request";
    case TT_E_CSR_SIGNATURE:
        return "certificate request signature does not verify";
    case TT_E_CSR_KEY:
        return "certificate request key is not EC P-256 nor RSA of at least 2048 bits";
    case TT_E_CSR_SAN:
        return "certificate request lacks exactly one URI SAN";
    case TT_E_CSR_IDENTITY:
        return "certificate request is for an identity the proof does not support";
    case TT_E_CA_INTERNAL:
        return "certificate authority internal error";
    case TT_E_CONN_LIMIT:
        return "connection limit";
    case TT_E_NOT_REDIRECTED:
        return "not redirected by the capture rules (no original destination)";
    case TT_E_UNKNOWN_DEST:
        return "destination outside the mesh refused (--outbound-unknown deny)";
    case TT_E_NO_ENDPOINT:
        return "no endpoint of the service could be connected";
    case TT_E_HTTP:
        return "HTTP request refused as malformed or ambiguous";
    case TT_E_H2_PROTOCOL:
        return "HTTP/2 protocol error by the peer";
    case TT_E_H2_RESET:
        return "HTTP/2 stream reset";
    case TT_E_H2_REFUSED:
        return "HTTP/2 stream not processed by the peer (retryable)";
    case TT_E_H2_GOAWAY:
        return "HTTP/2 session going away (no new streams)";
    case TT_E_H2_NO_CONNECT:
        return "peer did not enable extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL)";
    case TT_E_H2_CLOSED:
        return "HTTP/2 stream closed";
    case TT_E_H2_HEADERS:
        return "invalid or oversized HTTP/2 headers";
    case TT_E_H2_INTERNAL:
        return "HTTP/2 library error";
    case TT_E_LINK_CLOSED:
        return "pooled connection to the peer sidecar closed";
    case TT_E_TUNNEL_REFUSED:
        return "peer sidecar refused the tunnel";
    }
    if (err < 0 && err > -4096)
        return strerror(-err);
    return "unknown error";
}
