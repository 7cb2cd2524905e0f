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

/* Makes sure only one tether-control uses the state directory `dir` (created with mode
 * 0700 when missing): takes an exclusive flock on dir/lock (mode 0600) and writes this
 * process's pid into it. The lock lasts until *fd_out is closed or the process ends.
 * Returns 0, -EBUSY with err naming the directory and the holder's pid when another
 * process holds it, or -errno with err set. */
int cp_state_dir_lock(const char *dir, int *fd_out, char *err, size_t errlen);

#endif
