/* The store's journal (see store_int.h): DIR/journal.log holds one JSON object per line,
 * each a change to the tokens or the issued-certificate records since tokens.json and
 * issued.json were last written:
 *
 *   {"op": "token_create", "token": {<a tokens.json item>}}
 *   {"op": "token_use", "sha256": H, "uses_left": N}            N: the count after the use
 *   {"op": "token_delete", "sha256": H}
 *   {"op": "issue", "issued": {<an issued.json item>}, "token"?: {"sha256": H, "uses_left": N}}
 *
 * A change is one write(2) of its line and one fdatasync, so its cost does not depend on
 * how many tokens are stored, and a Sign's certificate record and its token use are saved
 * together or not at all. Every record is idempotent (a creation adds only an unknown
 * token, a use sets the count rather than decrementing it, an issue adds a serial once),
 * so replaying the journal over files it was already compacted into changes nothing:
 * compaction writes the two files, then empties the journal, and a crash in between loses
 * nothing. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"
#include "store.h"
#include "store_int.h"

#define JOURNAL_MAX (1024 * 1024 * 1024) /* refuse to load a journal larger than this */

/* Applies one parsed line. Returns 0 or <0 with err set through c. */
static int apply(struct cp_store *s, struct cp__lctx *c, json_t *rec)
{
    const char *op;
    int rc = cp__get_str(c, rec, "op", &op);

    if (rc != 0)
        return rc;
    if (strcmp(op, "issue") == 0) {
        rc = cp__issued_apply(s, c, rec);
        return rc != 0 ? rc : cp__tokens_apply(s, c, op, rec);
    }
    if (strcmp(op, "token_create") == 0 || strcmp(op, "token_use") == 0 ||
        strcmp(op, "token_delete") == 0)
        return cp__tokens_apply(s, c, op, rec);
    return cp__bad_field(c, "op", "\"token_create\", \"token_use\", \"token_delete\" or \"issue\"");
}

/* Cuts the file at path to len bytes and syncs it. Returns 0 or -errno. */
static int cut(const char *path, int64_t len)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    int rc = 0;

    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)len) != 0 || fdatasync(fd) != 0)
        rc = -errno;
    close(fd);
    return rc;
}

/* Replays DIR/journal.log; see store_int.h. */
int cp__journal_load(struct cp_store *s, char *err, size_t errlen)
{
    char path[4096];
    char *data = NULL, *line, *nl;
    size_t len;
    struct cp__lctx lc = {path, "line", 0, err, errlen}; /* "line[3].sha256: ..." */
    int rc;

    s->journal.fd = -1;
    rc = cp__store_path(s, CP__JOURNAL_FILE, path, sizeof(path));
    if (rc == 0)
        rc = tt_file_read(path, JOURNAL_MAX, &data, &len);
    if (rc == -ENOENT)
        return 0;
    if (rc != 0) {
        tt_errf(err, errlen, "%s: %s", path, strerror(-rc));
        return rc;
    }
    for (line = data; rc == 0 && (nl = memchr(line, '\n', len - (size_t)(line - data)));
         line = nl + 1) {
        json_error_t jerr;
        json_t *rec;

        lc.i++;
        rec = json_loadb(line, (size_t)(nl - line), JSON_REJECT_DUPLICATES, &jerr);
        if (!json_is_object(rec)) {
            tt_errf(err, errlen, "%s: line %zu: %s", path, lc.i,
                    rec ? "expected a JSON object" : jerr.text);
            rc = -EINVAL;
        } else {
            rc = apply(s, &lc, rec);
            if (rc == -ENOMEM)
                tt_errf(err, errlen, "%s: out of memory", path);
        }
        json_decref(rec);
    }
    if (rc == 0 && line < data + len) {
        /* A record cut short by a crash (every record ends with its newline, written by
         * the same write(2)): it was never acknowledged, so it is dropped. */
        rc = cut(path, line - data);
        if (rc != 0)
            tt_errf(err, errlen, "%s: cutting off a partial last record: %s", path, strerror(-rc));
    }
    s->journal.size = line - data;
    s->journal.records = lc.i;
    free(data);
    return rc;
}

/* Opens the journal for appending (created 0600), at its known size. Returns 0 or -errno. */
static int journal_open(struct cp_store *s)
{
    char path[4096];
    int rc = cp__store_path(s, CP__JOURNAL_FILE, path, sizeof(path));

    if (rc != 0)
        return rc;
    s->journal.fd = open(path, O_WRONLY | O_CLOEXEC);
    if (s->journal.fd >= 0 || errno != ENOENT)
        return s->journal.fd >= 0 ? 0 : -errno;
    /* A new file: its directory entry must be durable before a record in it counts. */
    s->journal.fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (s->journal.fd < 0)
        return -errno;
    rc = cp__fsync_parent(path);
    if (rc != 0) {
        close(s->journal.fd);
        s->journal.fd = -1;
    }
    return rc;
}

/* Appends one record line and syncs it; see store_int.h. */
int cp__journal_append_locked(struct cp_store *s, json_t *rec)
{
    char *text = rec ? json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    size_t len, off = 0;
    int rc = 0;

    json_decref(rec);
    if (text == NULL)
        return -ENOMEM;
    len = strlen(text);
    text[len++] = '\n'; /* json_dumps's NUL becomes the newline: the line is written whole */
    if (s->journal.fd < 0)
        rc = journal_open(s);
    while (rc == 0 && off < len) {
        ssize_t n = pwrite(s->journal.fd, text + off, len - off, (off_t)(s->journal.size + off));

        if (n < 0 && errno != EINTR)
            rc = -errno;
        else if (n > 0)
            off += (size_t)n;
    }
    if (rc == 0 && fdatasync(s->journal.fd) != 0)
        rc = -errno;
    if (rc != 0 && s->journal.fd >= 0) {
        /* Nothing of a record that failed may stay: a later one would follow garbage.
         * Cutting frees space, so it works on a full disk. */
        if (ftruncate(s->journal.fd, (off_t)s->journal.size) != 0 || fdatasync(s->journal.fd) != 0)
            rc = rc == 0 ? -errno : rc;
    } else if (rc == 0) {
        s->journal.size += (int64_t)len;
        s->journal.records++;
    }
    free(text);
    return rc;
}

/* Writes both files from memory, then empties the journal; see store_int.h. */
int cp__journal_compact_locked(struct cp_store *s)
{
    int64_t now = tt_now_unix();
    int rc;

    cp__tokens_prune_locked(s, now);
    cp__issued_prune_locked(s, now);
    rc = cp__coll_save(s, &cp__tokens_coll, s->tokens.v, s->tokens.n);
    if (rc == 0)
        rc = cp__coll_save(s, &cp__issued_coll, s->issued.v, s->issued.n);
    if (rc != 0)
        return rc;
    if (s->journal.fd < 0 && s->journal.size == 0)
        return 0;
    if (s->journal.fd < 0 && (rc = journal_open(s)) != 0)
        return rc;
    if (ftruncate(s->journal.fd, 0) != 0 || fdatasync(s->journal.fd) != 0)
        return -errno;
    s->journal.size = 0;
    s->journal.records = 0;
    s->journal.retry_at = 0;
    return 0;
}

/* Compacts when the journal has grown past CP__JOURNAL_FACTOR x the live records. */
void cp__journal_maybe_compact_locked(struct cp_store *s)
{
    size_t live = s->tokens.n + s->issued.n;

    if (s->journal.records < CP__JOURNAL_MIN || s->journal.records < CP__JOURNAL_FACTOR * live ||
        s->journal.records < s->journal.retry_at)
        return;
    /* A failure (a full disk) keeps the journal, which holds everything; another try
     * waits for CP__JOURNAL_MIN more records, so a disk that stays full does not cost a
     * rewrite per change. */
    if (cp__journal_compact_locked(s) != 0)
        s->journal.retry_at = s->journal.records + CP__JOURNAL_MIN;
}

/* Closes the journal's descriptor, if open. */
void cp__journal_close(struct cp_store *s)
{
    if (s->journal.fd >= 0)
        close(s->journal.fd);
    s->journal.fd = -1;
}

/* Folds the journal into tokens.json and issued.json now; see store.h. Takes the store lock. */
int cp_store_compact(struct cp_store *s)
{
    int rc;

    pthread_mutex_lock(&s->mu);
    rc = cp__journal_compact_locked(s);
    pthread_mutex_unlock(&s->mu);
    return rc;
}
