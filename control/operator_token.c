/* The loopback API's operator credential (see operator_token.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "operator_token.h"
#include "store_file.h"
#include "tls/crypto.h"

#define TOKEN_RANDOM_BYTES 32
#define TOKEN_MIN          32 /* characters: a hand-written token must not be guessable */

/* True for the characters a token may hold (RFC 6750's b64token, which hex is a part of). */
static bool token_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           strchr("-._~+/=", ch) != NULL;
}

/* Reads path into out, dropping trailing whitespace; with `owner_only`, also refuses a
 * file that is not a regular file of this user readable by nobody else. Returns 0, -ENOENT
 * (err set) when it does not exist, or another negative errno with err set. */
static int token_load(const char *path, bool owner_only, char *out, char *err, size_t errlen)
{
    struct stat st;
    ssize_t n;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -errno;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -EINVAL;
    }
    if (owner_only && (st.st_uid != geteuid() || (st.st_mode & 077) != 0)) {
        snprintf(err, errlen,
                 "%s: mode %04o, owner uid %u: other users can read or replace the operator "
                 "credential; it must be mode 0600 and owned by uid %u (chmod 600, chown it)",
                 path, (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid, (unsigned)geteuid());
        close(fd);
        return -EPERM;
    }
    n = read(fd, out, CP_OPERATOR_TOKEN_MAX - 1);
    close(fd);
    if (n < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -errno;
    }
    while (n > 0 && strchr(" \t\r\n", out[n - 1]) != NULL)
        n--;
    out[n] = '\0';
    for (ssize_t i = 0; i < n; i++) {
        if (!token_char(out[i])) {
            n = 0;
            break;
        }
    }
    if (n < TOKEN_MIN) {
        snprintf(err, errlen,
                 "%s: expected one token of %d to %d characters (letters, digits, -._~+/=)", path,
                 TOKEN_MIN, CP_OPERATOR_TOKEN_MAX - 1);
        tt_crypto_wipe(out, CP_OPERATOR_TOKEN_MAX);
        return -EINVAL;
    }
    return 0;
}

/* Loads state_dir/operator.token or creates it; see operator_token.h. */
int cp_operator_token_ensure(const char *state_dir, char *out, char *err, size_t errlen)
{
    unsigned char raw[TOKEN_RANDOM_BYTES];
    char path[4096], text[2 * TOKEN_RANDOM_BYTES + 2];
    int rc;

    snprintf(path, sizeof(path), "%s/%s", state_dir, CP_OPERATOR_TOKEN_FILE);
    rc = token_load(path, true, out, err, errlen);
    if (rc != -ENOENT)
        return rc;
    tt_crypto_random(raw, sizeof(raw));
    for (size_t i = 0; i < sizeof(raw); i++)
        snprintf(text + 2 * i, 3, "%02x", raw[i]);
    tt_crypto_wipe(raw, sizeof(raw));
    text[2 * TOKEN_RANDOM_BYTES] = '\n';
    text[2 * TOKEN_RANDOM_BYTES + 1] = '\0';
    rc = cp_atomic_write(path, text, strlen(text), 0600);
    if (rc == 0) {
        memcpy(out, text, 2 * TOKEN_RANDOM_BYTES);
        out[2 * TOKEN_RANDOM_BYTES] = '\0';
    } else {
        snprintf(err, errlen, "%s: creating it failed: %s", path, strerror(-rc));
    }
    tt_crypto_wipe(text, sizeof(text));
    return rc;
}

/* Reads state_dir/operator.token for a client; see operator_token.h. */
int cp_operator_token_read(const char *state_dir, char *out, char *err, size_t errlen)
{
    char path[4096];

    snprintf(path, sizeof(path), "%s/%s", state_dir, CP_OPERATOR_TOKEN_FILE);
    return token_load(path, false, out, err, errlen);
}

/* Checks "Bearer <token>" in constant time over the token's length; see operator_token.h. */
bool cp_operator_token_matches(const char *token, const char *authorization)
{
    size_t len = strlen(token);
    const char *given;

    if (authorization == NULL || strncasecmp(authorization, "Bearer ", 7) != 0)
        return false;
    given = authorization + 7;
    while (*given == ' ')
        given++;
    if (strlen(given) != len)
        return false;
    return tt_crypto_equal(token, given, len);
}
