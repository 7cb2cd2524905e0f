/* tether-sidecar: parse the configuration and run. The only place that exits. */
#include <stdio.h>
#include <stdlib.h>

#ifdef TT_WITH_MIMALLOC
#include <mimalloc.h>
#endif

#include "app/config.h"
#include "core/errors.h"
#include "core/log.h"
#include "app/runtime.h"

/* The malloc this binary runs on (meson option allocator), for the "started" line. With
 * mimalloc the call to mi_version also keeps the library linked: nothing else names it (it
 * replaces malloc by being loaded before libc), and the linker drops a library no symbol
 * is taken from. */
static const char *allocator_name(void)
{
#ifdef TT_WITH_MIMALLOC
    static char name[32];
    int v = mi_version(); /* 209 for 2.0.9 */

    snprintf(name, sizeof(name), "mimalloc %d.%d.%d", v / 100, v / 10 % 10, v % 10);
    return name;
#else
    return "libc";
#endif
}

int main(int argc, char **argv)
{
    struct tt_config cfg = {0};
    char err[1024];
    int r = tt_config_parse_args(argc, argv, &cfg, err, sizeof(err));

    if (r == TT_CONFIG_HELP) {
        tt_config_done(&cfg);
        return TT_EXIT_OK;
    }
    if (r < 0) {
        fprintf(stderr, "tether-sidecar: %s\n", err);
        tt_config_done(&cfg);
        return TT_EXIT_CONFIG;
    }
    tt_log_set_level(cfg.log_level);
    cfg.allocator = allocator_name();
    r = tt_runtime_run(&cfg);
    tt_config_done(&cfg);
    return r;
}
