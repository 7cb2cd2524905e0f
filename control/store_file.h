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

#endif
