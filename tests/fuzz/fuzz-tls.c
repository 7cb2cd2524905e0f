/* Fuzz target: whatever a network peer sends before and during the handshake. The bytes
 * go to a server session (inbound) and to a client session that has sent its ClientHello
 * (outbound); each must refuse or wait, never crash, and never hand out plaintext or a
 * verified peer it did not get through a complete handshake. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "certgen.h"
#include "tls/identity.h"
#include "tls/tls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tt_identity *server_id, *client_id;

static struct tt_identity *make(const struct tt_certgen_cert *leaf, const char *bundle)
{
    char err[256];
    struct tt_identity *id = tt_identity_from_pem(leaf->chain_pem, strlen(leaf->chain_pem),
                                                  leaf->key_pem, strlen(leaf->key_pem), bundle,
                                                  strlen(bundle), "fuzz", err, sizeof(err));
    if (id == NULL)
        abort();
    return id;
}

static void init(void)
{
    struct tt_certgen_cert *root = tt_certgen_ca("fuzz root", NULL);
    struct tt_certgen_cert *s = tt_certgen_leaf(root, "spiffe://td/ns/a/sa/server");
    struct tt_certgen_cert *c = tt_certgen_leaf(root, "spiffe://td/ns/b/sa/client");

    if (root == NULL || s == NULL || c == NULL)
        abort();
    server_id = make(s, root->cert_pem);
    client_id = make(c, root->cert_pem);
    tt_certgen_free(s);
    tt_certgen_free(c);
    tt_certgen_free(root);
}

/* Feeds data in two pieces (a split point taken from the data) and drives the session. */
static void drive(struct tt_tls *tls, const uint8_t *data, size_t size)
{
    const uint8_t *out;
    uint8_t buf[4096];
    size_t split = size > 0 ? data[0] % (size + 1) : 0;
    int r = 0;

    for (int part = 0; part < 2; part++) {
        const uint8_t *p = part == 0 ? data : data + split;
        size_t n = part == 0 ? split : size - split;
        if (tt_tls_feed(tls, p, n) < 0)
            return;
        r = tt_tls_handshake(tls);
        size_t pending = tt_tls_pending(tls, &out);
        tt_tls_consume(tls, pending);
        if (r < 0)
            return;
    }
    if (r == 1) {
        /* Random bytes cannot complete a verified handshake with a real key. */
        abort();
    }
    if (tt_tls_read(tls, buf, sizeof(buf)) > 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *out;

    if (server_id == NULL)
        init();
    struct tt_tls *s = tt_tls_new(server_id, TT_TLS_SERVER, NULL);
    struct tt_tls *c = tt_tls_new(client_id, TT_TLS_CLIENT, "spiffe://td/ns/a/sa/server");
    if (s == NULL || c == NULL)
        abort();
    drive(s, data, size);
    tt_tls_handshake(c); /* the ClientHello, thrown away */
    tt_tls_consume(c, tt_tls_pending(c, &out));
    drive(c, data, size);
    tt_tls_free(s);
    tt_tls_free(c);
    return 0;
}
