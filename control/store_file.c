/* Files of the state directory (see store_int.h): paths, the one atomic writer, and the
 * reader and writer of collection files {"<key>": [items]}. */
#include <sys/file.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store_file.h"
#include "store_int.h"
#include "core/util.h"

/* Opens the directory that holds path and fsyncs it, so a rename into it is durable.
 * Returns 0 or -errno. */
int cp__fsync_parent(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    int dfd, rc = 0;

    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == path)
        snprintf(dir, sizeof(dir), "/");
    else if ((size_t)(slash - path) >= sizeof(dir))
        return -ENAMETOOLONG;
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    if (fsync(dfd) != 0)
        rc = -errno;
    close(dfd);
    return rc;
}

/* Atomic replace of a file; see store_file.h. */
int cp_atomic_write(const char *path, const void *data, size_t len, int mode)
{
    char tmp[4096];
    size_t off = 0;
    int fd, rc;

    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp))
        return -ENAMETOOLONG;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    /* The umask may have narrowed a wider mode, and a stale temporary may have another
     * one: the file must end up with exactly `mode`. */
    if (fchmod(fd, (mode_t)mode) != 0)
        goto err_close;
    while (off < len) {
        ssize_t n = write(fd, (const char *)data + off, len - off);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            goto err_close;
        }
        off += (size_t)n;
    }
    if (fsync(fd) != 0)
        goto err_close;
    if (close(fd) != 0)
        goto err_unlink;
    if (rename(tmp, path) != 0)
        goto err_unlink;
    return cp__fsync_parent(path);

err_close:
    rc = -errno;
    close(fd);
    unlink(tmp);
    return rc;
err_unlink:
    rc = -errno;
    unlink(tmp);
    return rc;
}

/* ---- sets of files created together ---- */

/* Test hook, for tests/integ/test_control_ca_atomic.py only: with the environment variable
 * TETHER_TEST_HOOK_KILL_AT_STEP=N the process kills itself (SIGKILL, as a crash) at step
 * N of cp_atomic_create_set(). Never set in production. */
static void test_hook_step(int step)
{
    const char *v = getenv("TETHER_TEST_HOOK_KILL_AT_STEP");

    if (v != NULL && atoi(v) == step)
        raise(SIGKILL);
}

/* Removes dir/sub/<name> and dir/sub/<name>.tmp for each name, then dir/sub. Returns 0 or
 * -errno of rmdir (ENOENT is success). */
static int remove_staging(const char *dir, const char *sub, const char *const *names, size_t n)
{
    char path[4096];

    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/%s/%s", dir, sub, names[i]);
        unlink(path);
        snprintf(path, sizeof(path), "%s/%s/%s.tmp", dir, sub, names[i]);
        unlink(path);
    }
    snprintf(path, sizeof(path), "%s/%s", dir, sub);
    return rmdir(path) == 0 || errno == ENOENT ? 0 : -errno;
}

/* Moves every part left in dir/<set>.new into dir, then removes <set>.new. */
static int finish_set(const char *dir, const char *set, const char *const *names, size_t n,
                      char *err, size_t errlen)
{
    char from[4096], to[4096], sub[300];
    struct stat st;
    int rc;

    snprintf(sub, sizeof(sub), "%s.new", set);
    for (size_t i = 0; i < n; i++) {
        snprintf(from, sizeof(from), "%s/%s/%s", dir, sub, names[i]);
        snprintf(to, sizeof(to), "%s/%s", dir, names[i]);
        if (stat(from, &st) != 0)
            continue; /* moved before the crash */
        if (stat(to, &st) == 0) {
            tt_errf(err, errlen,
                    "%s and %s both exist: not left by an interrupted creation; move one away",
                    from, to);
            return -EEXIST;
        }
        if (rename(from, to) != 0) {
            rc = -errno;
            tt_errf(err, errlen, "%s: %s", to, strerror(-rc));
            return rc;
        }
        test_hook_step(10 + (int)i);
    }
    snprintf(to, sizeof(to), "%s/x", dir);
    rc = cp__fsync_parent(to);
    if (rc == 0)
        rc = remove_staging(dir, sub, names, n);
    if (rc == 0)
        rc = cp__fsync_parent(to);
    if (rc != 0)
        tt_errf(err, errlen, "%s/%s: %s", dir, sub, strerror(-rc));
    return rc;
}

/* Finishes or discards an interrupted set creation; see store_file.h. */
int cp_atomic_set_recover(const char *dir, const char *set, const char *const *names, size_t n,
                          char *err, size_t errlen)
{
    char path[4096], sub[300];
    struct stat st;
    int rc;

    snprintf(sub, sizeof(sub), "%s.new.tmp", set);
    rc = remove_staging(dir, sub, names, n);
    if (rc != 0) {
        tt_errf(err, errlen, "%s/%s: %s", dir, sub, strerror(-rc));
        return rc;
    }
    snprintf(path, sizeof(path), "%s/%s.new", dir, set);
    if (stat(path, &st) != 0)
        return 0;
    return finish_set(dir, set, names, n, err, errlen);
}

/* Creates the set's files together; see store_file.h. */
int cp_atomic_create_set(const char *dir, const char *set, const struct cp_file_part *parts,
                         size_t n, char *err, size_t errlen)
{
    char tmp[4096], committed[4096], path[4200];
    const char *names[8];
    int rc;

    if (n > sizeof(names) / sizeof(names[0]))
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        names[i] = parts[i].name;
    snprintf(tmp, sizeof(tmp), "%s/%s.new.tmp", dir, set);
    snprintf(committed, sizeof(committed), "%s/%s.new", dir, set);
    remove_staging(dir, strrchr(tmp, '/') + 1, names, n);
    if (mkdir(tmp, 0700) != 0) {
        rc = -errno;
        tt_errf(err, errlen, "%s: %s", tmp, strerror(-rc));
        return rc;
    }
    test_hook_step(1);
    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/%s", tmp, parts[i].name);
        rc = cp_atomic_write(path, parts[i].data, parts[i].len, parts[i].mode);
        if (rc != 0) {
            tt_errf(err, errlen, "%s: %s", path, strerror(-rc));
            goto err_remove;
        }
        test_hook_step(2 + (int)i);
    }
    /* The commit: from here on the set exists, and recovery completes it. */
    if (rename(tmp, committed) != 0) {
        rc = -errno;
        tt_errf(err, errlen, "%s: %s", committed, strerror(-rc));
        goto err_remove;
    }
    test_hook_step(9);
    rc = cp__fsync_parent(committed);
    if (rc != 0) {
        tt_errf(err, errlen, "%s: %s", dir, strerror(-rc));
        return rc;
    }
    return finish_set(dir, set, names, n, err, errlen);

err_remove:
    remove_staging(dir, strrchr(tmp, '/') + 1, names, n);
    return rc;
}

/* Writes DIR/name into buf[len]. Returns 0 or -ENAMETOOLONG. */
int cp__store_path(const struct cp_store *s, const char *name, char *buf, size_t len)
{
    return (size_t)snprintf(buf, len, "%s/%s", s->dir, name) < len ? 0 : -ENAMETOOLONG;
}

/* Serialises doc (consumed), indented with a final newline, into DIR/name with mode 0600.
 * Returns 0 or -errno. */
int cp__store_write_json(struct cp_store *s, const char *name, json_t *doc)
{
    char path[4096];
    char *text = NULL, *t2;
    size_t len;
    int rc;

    if (doc == NULL)
        return -ENOMEM;
    rc = cp__store_path(s, name, path, sizeof(path));
    if (rc != 0)
        goto out;
    rc = -ENOMEM;
    text = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (text == NULL)
        goto out;
    len = strlen(text);
    t2 = realloc(text, len + 2);
    if (t2 == NULL)
        goto out;
    text = t2;
    text[len++] = '\n';
    text[len] = '\0';
    rc = cp_atomic_write(path, text, len, 0600);
out:
    free(text);
    json_decref(doc);
    return rc;
}

/* Builds the array of v[0..n) through c->to_json and view; NULL when any item fails. */
json_t *cp__coll_array(const struct cp__coll *c, const void *v, size_t n, cp__view_fn view,
                       void *ud)
{
    json_t *arr = json_array();

    for (size_t i = 0; arr != NULL && i < n; i++) {
        const void *item = (const char *)v + i * c->size;
        json_t *o = c->to_json(item);

        if (o != NULL && view != NULL)
            o = view(o, item, ud);
        if (json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    return arr;
}

/* Persists v[0..n) as {"<c->key>": [...]} in DIR/<c->file>. Returns 0 or -errno. */
int cp__coll_save(struct cp_store *s, const struct cp__coll *c, const void *v, size_t n)
{
    json_t *arr = cp__coll_array(c, v, n, NULL, NULL);

    return cp__store_write_json(s, c->file, arr ? json_pack("{s:o}", c->key, arr) : NULL);
}

/* Sets the "PATH: ARR[I].KEY: expected WHAT" message. Returns -EINVAL. */
int cp__bad_field(struct cp__lctx *c, const char *key, const char *what)
{
    tt_errf(c->err, c->errlen, "%s: %s[%zu].%s: expected %s", c->path, c->arr, c->i, key, what);
    return -EINVAL;
}

/* Points *out at the string under key (owned by o). Returns 0 or -EINVAL with err set. */
int cp__get_str(struct cp__lctx *c, json_t *o, const char *key, const char **out)
{
    json_t *v = json_object_get(o, key);

    if (!json_is_string(v))
        return cp__bad_field(c, key, "a string");
    *out = json_string_value(v);
    return 0;
}

/* Reads the non-negative integer under key (null or absent: 0 when nullable). Returns 0 or
 * -EINVAL with err set. */
int cp__get_int(struct cp__lctx *c, json_t *o, const char *key, bool nullable, int64_t *out)
{
    json_t *v = json_object_get(o, key);

    if (nullable && (v == NULL || json_is_null(v))) {
        *out = 0;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return cp__bad_field(
            c, key, nullable ? "a non-negative integer or null" : "a non-negative integer");
    *out = json_integer_value(v);
    return 0;
}

/* Loads DIR/name as JSON, rejecting duplicate keys; a missing file gives *doc NULL and 0.
 * Returns 0 or <0 with err naming the file. */
int cp__store_read_json(struct cp_store *s, const char *name, json_t **doc, char *path,
                        size_t pathlen, char *err, size_t errlen)
{
    json_error_t jerr;
    struct stat st;
    int rc;

    *doc = NULL;
    rc = cp__store_path(s, name, path, pathlen);
    if (rc != 0) {
        tt_errf(err, errlen, "%s/%s: %s", s->dir, name, strerror(-rc));
        return rc;
    }
    if (stat(path, &st) != 0) {
        rc = -errno;
        if (rc == -ENOENT)
            return 0;
        tt_errf(err, errlen, "%s: %s", path, strerror(-rc));
        return rc;
    }
    *doc = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (*doc == NULL) {
        if (jerr.line > 0)
            tt_errf(err, errlen, "%s: line %d: %s", path, jerr.line, jerr.text);
        else
            tt_errf(err, errlen, "%s: %s", path, jerr.text);
        return -EINVAL;
    }
    return 0;
}

/* Returns the array under key in {"<key>": [objects]}, or NULL with err set. */
static json_t *top_array(json_t *doc, const char *key, const char *path, char *err, size_t errlen)
{
    json_t *arr = json_is_object(doc) ? json_object_get(doc, key) : NULL;

    if (!json_is_array(arr)) {
        tt_errf(err, errlen, "%s: %s: expected an array in an object", path, key);
        return NULL;
    }
    for (size_t i = 0; i < json_array_size(arr); i++) {
        if (!json_is_object(json_array_get(arr, i))) {
            tt_errf(err, errlen, "%s: %s[%zu]: expected an object", path, key, i);
            return NULL;
        }
    }
    return arr;
}

/* Loads DIR/<c->file> through c->from_json, element by element. Returns 0 or <0 with err. */
int cp__coll_load(struct cp_store *s, const struct cp__coll *c, char *err, size_t errlen)
{
    char path[4096];
    json_t *doc, *arr;
    int rc = cp__store_read_json(s, c->file, &doc, path, sizeof(path), err, errlen);
    struct cp__lctx lc = {path, c->key, 0, err, errlen};

    if (rc != 0 || doc == NULL)
        return rc;
    arr = top_array(doc, c->key, path, err, errlen);
    rc = arr ? 0 : -EINVAL;
    for (size_t i = 0; rc == 0 && i < json_array_size(arr); i++) {
        lc.i = i;
        rc = c->from_json(s, &lc, json_array_get(arr, i));
        if (rc == -ENOMEM)
            tt_errf(err, errlen, "%s: out of memory", path);
    }
    json_decref(doc);
    return rc;
}

/* Locks the state directory for this process (see store_file.h). */
int cp_state_dir_lock(const char *dir, int *fd_out, char *err, size_t errlen)
{
    char path[4096], pid[32];
    int fd, r;

    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        r = -errno;
        tt_errf(err, errlen, "%s: %s", dir, strerror(-r));
        return r;
    }
    if ((size_t)snprintf(path, sizeof(path), "%s/lock", dir) >= sizeof(path)) {
        tt_errf(err, errlen, "%s: path too long", dir);
        return -ENAMETOOLONG;
    }
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        r = -errno;
        tt_errf(err, errlen, "%s: %s", path, strerror(-r));
        return r;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        r = -errno;
        if (r == -EWOULDBLOCK) {
            ssize_t n = pread(fd, pid, sizeof(pid) - 1, 0);
            pid[n > 0 ? n : 0] = '\0';
            pid[strcspn(pid, "\n")] = '\0';
            tt_errf(err, errlen,
                    "state directory %s is in use by another tether-control (pid %s); one "
                    "control plane per state directory",
                    dir, pid[0] ? pid : "unknown");
            r = -EBUSY;
        } else {
            tt_errf(err, errlen, "%s: flock: %s", path, strerror(-r));
        }
        close(fd);
        return r;
    }
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
        r = -errno;
        tt_errf(err, errlen, "%s: %s", path, strerror(-r));
        close(fd);
        return r;
    }
    *fd_out = fd;
    return 0;
}
