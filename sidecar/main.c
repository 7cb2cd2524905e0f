/* tether-sidecar: parse the configuration and run. The only place that exits. */
#include <stdio.h>
#include <stdlib.h>

#include "app/config.h"
#include "core/errors.h"
#include "core/log.h"
#include "app/runtime.h"

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
    r = tt_runtime_run(&cfg);
    tt_config_done(&cfg);
    return r;
}
