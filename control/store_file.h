/* Files of the control plane: the one atomic writer, used by the state directory's store,
 * the CA's key and certificate, and tetherctl's admin-cert files. */
#ifndef CP_STORE_FILE_H
#define CP_STORE_FILE_H

#include <stddef.h>

/* Writes data[0..len) to path atomically: path.tmp created with exactly `mode` (whatever
 * the umask), written, fsync'ed, renamed over path, then the directory fsync'ed so the
 * rename survives a crash. A stale path.tmp is replaced. Returns 0 or -errno; on failure
 * the old file is untouched and no temporary is left behind (a failing directory fsync
 * is reported after the rename happened). */
int cp_atomic_write(const char *path, const void *data, size_t len, int mode);

/* One file of a set that cp_atomic_create_set() creates together. */
struct cp_file_part {
    const char *name; /* a plain file name inside the directory ("ca.key") */
    const void *data;
    size_t len;
    int mode;
};

/* Creates dir/<parts[i].name> for every part so that a crash at any point leaves either
 * none of them or, after cp_atomic_set_recover(), all of them: the parts are written and
 * fsync'ed in dir/<set>.new.tmp/, that directory is renamed to dir/<set>.new (the commit),
 * then each part is renamed into dir and <set>.new removed. None of the files may exist
 * yet. Returns 0 or -errno with err naming the path; on failure before the commit
 * nothing is left behind. */
int cp_atomic_create_set(const char *dir, const char *set, const struct cp_file_part *parts,
                         size_t n, char *err, size_t errlen);

/* Finishes or discards an interrupted cp_atomic_create_set() of `set` in dir, whose files
 * are names[0..n): a dir/<set>.new.tmp/ was never committed and is removed; the parts
 * still in a committed dir/<set>.new/ are renamed into dir. Call it before looking at the
 * files. Returns 0 (also when there was nothing to do) or -errno with err naming the path
 * (also -EEXIST when a part is both in <set>.new and in dir: that is not left by a crash,
 * and neither copy is touched). */
int cp_atomic_set_recover(const char *dir, const char *set, const char *const *names, size_t n,
                          char *err, size_t errlen);

/* Makes sure only one tether-control uses the state directory `dir` (created with mode
 * 0700 when missing): takes an exclusive flock on dir/lock (mode 0600) and writes this
 * process's pid into it. The lock lasts until *fd_out is closed or the process ends.
 * Returns 0, -EBUSY with err naming the directory and the holder's pid when another
 * process holds it, or -errno with err set. */
int cp_state_dir_lock(const char *dir, int *fd_out, char *err, size_t errlen);

#endif
