/* Cryptographic primitives for the layers above tls/ (crypto.h). */
#include <errno.h>
#include <stdint.h>
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

static const char b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* base64url-encodes without padding into a new string. */
char *tt_crypto_base64url_encode(const uint8_t *in, size_t n)
{
    char *out, *p;
    size_t i;

    if (n > (SIZE_MAX - 4) / 4 * 3 || (out = malloc(n / 3 * 4 + 4)) == NULL)
        return NULL;
    p = out;
    for (i = 0; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *p++ = b64url_alphabet[v >> 18];
        *p++ = b64url_alphabet[(v >> 12) & 63];
        *p++ = b64url_alphabet[(v >> 6) & 63];
        *p++ = b64url_alphabet[v & 63];
    }
    if (n - i == 1) {
        *p++ = b64url_alphabet[in[i] >> 2];
        *p++ = b64url_alphabet[(in[i] & 3) << 4];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 8 | in[i + 1];
        *p++ = b64url_alphabet[v >> 10];
        *p++ = b64url_alphabet[(v >> 4) & 63];
        *p++ = b64url_alphabet[(v & 15) << 2];
    }
    *p = '\0';
    return out;
}

/* The 6-bit value of a base64url character, or -1. */
static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Strict unpadded base64url decoding (see crypto.h). */
int tt_crypto_base64url_decode(const char *text, size_t len, uint8_t **out, size_t *out_len)
{
    size_t rem = len % 4, n = len / 4 * 3 + (rem == 0 ? 0 : rem - 1), o = 0;
    uint32_t acc = 0;
    unsigned bits = 0;
    uint8_t *buf;

    if (rem == 1)
        return -EINVAL; /* one character holds 6 bits: not a whole byte */
    if ((buf = malloc(n + 1)) == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_value((unsigned char)text[i]);

        if (v < 0)
            goto err_inval;
        acc = (acc << 6 | (uint32_t)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[o++] = (uint8_t)(acc >> bits);
        }
    }
    /* The bits of the last character past the last byte must be zero (RFC 4648 §3.5):
     * otherwise several texts would decode to the same bytes. */
    if ((acc & ((1u << bits) - 1)) != 0)
        goto err_inval;
    buf[o] = 0;
    *out = buf;
    *out_len = o;
    return 0;

err_inval:
    free(buf);
    return -EINVAL;
}
