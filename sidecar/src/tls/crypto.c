/* Cryptographic primitives for the layers above tls/ (crypto.h). */
#include <errno.h>
#include <stdlib.h>

#include <openssl/base64.h>
#include <openssl/mem.h>
#include <openssl/rand.h>

#include "tls/crypto.h"

/* Wipes a secret. */
void tt_crypto_wipe(void *p, size_t n)
{
    if (p != NULL && n > 0)
        OPENSSL_cleanse(p, n);
}

/* Constant-time comparison: BoringSSL's CRYPTO_memcmp. */
bool tt_crypto_equal(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

/* Secure random bytes. */
void tt_crypto_random(void *buf, size_t n)
{
    RAND_bytes(buf, n);
}

/* Base64-encodes into a new string. */
char *tt_crypto_base64_encode(const uint8_t *in, size_t n)
{
    size_t len;
    char *out;

    if (!EVP_EncodedLength(&len, n) || (out = malloc(len)) == NULL)
        return NULL;
    EVP_EncodeBlock((uint8_t *)out, in, n);
    return out;
}

/* Base64-decodes into a new buffer. */
int tt_crypto_base64_decode(const char *text, size_t len, uint8_t **out, size_t *out_len)
{
    size_t max;
    uint8_t *buf;

    if (!EVP_DecodedLength(&max, len))
        return -EINVAL;
    if ((buf = malloc(max + 1)) == NULL)
        return -ENOMEM;
    if (!EVP_DecodeBase64(buf, out_len, max, (const uint8_t *)text, len)) {
        free(buf);
        return -EINVAL;
    }
    *out = buf;
    return 0;
}
