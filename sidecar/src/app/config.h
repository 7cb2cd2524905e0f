/* The sidecar's configuration: from a JSON file (--config FILE) and/or flags. Flags
 * given on the command line override the file's values; repeatable flags (--inbound,
 * --outbound, --crl) add to the file's lists. Every error names the flag or the file and key
 * and what was expected, in one line. */
#ifndef TT_CONFIG_H
#define TT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/log.h"
#include "core/util.h"
#include "net/listener.h"
#include "snapshot/services.h"

#define TT_DEFAULT_ADMIN                "127.0.0.1:15000"
#define TT_DEFAULT_MAX_CONNECTIONS      16384
#define TT_DEFAULT_HANDSHAKE_TIMEOUT_MS 10000
#define TT_DEFAULT_CONNECT_TIMEOUT_MS   5000
#define TT_DEFAULT_IDLE_TIMEOUT_MS      (3600 * 1000)
#define TT_DEFAULT_DRAIN_TIMEOUT_MS     20000

struct tt_config {
    char *config_path;         /* --config, or NULL */
    char *cert_path;           /* --identity-cert */
    char *key_path;            /* --identity-key */
    char *bundle_path;         /* --trust-bundle */
    char **crl_paths;          /* --crl, identity.crls: CRL files */
    size_t n_crls;             /* entries in crl_paths */
    char *policy_path;         /* --policy, or NULL (no policy: any authenticated caller) */
    bool has_control;          /* --control given: identity and policy come from it */
    struct tt_addr control;    /* --control */
    char *control_bundle_path; /* --control-bundle */
    char *join_token_path;     /* --join-token */
    char *jwt_path;            /* --jwt-file: a service-account token (or join_token_path) */
    char *spiffe_id;           /* --spiffe-id */
    struct tt_addr admin;      /* --admin */
    bool admin_remote_control; /* --admin-allow-remote-control */
    unsigned workers;          /* --workers; 0 in input means "number of cores" */
    enum tt_log_level log_level;
    unsigned max_connections;
    unsigned request_log_sample; /* --request-log-sample: one request line in N */
    bool pool;                   /* --pool on|off, "pool": pooled HTTP/2 links (default on) */
    bool http_streams; /* --http-streams on|off: outbound HTTP/1.x requests as streams (on) */
    uint64_t handshake_timeout_ms;
    uint64_t connect_timeout_ms;
    uint64_t idle_timeout_ms;
    uint64_t request_timeout_ms; /* --request-timeout: pooled outbound HTTP/1.x; 0: none */
    uint64_t drain_timeout_ms;
    struct tt_listener_cfg *listeners; /* inbound and outbound, in the order given */
    size_t n_listeners;
    struct tt_transparent_cfg transparent; /* --transparent and its flags */
    struct tt_addr health;                 /* transparent: pod_ip:15021 (/ready, /live) */
    struct tt_addr metrics;                /* transparent: pod_ip:15020 (/stats) */
    struct tt_service_entry *services;     /* --service, "services": file mode's table */
    size_t n_services;                     /* (strings owned) */
    /* Not configuration: the malloc this binary runs on, for the "started" line; set by
     * main.c ("mimalloc 2.0.9", meson option allocator); NULL reads as "libc". */
    const char *allocator;
};

#define TT_TRANSPARENT_OUTBOUND_PORT 15001
#define TT_TRANSPARENT_INBOUND_PORT  15006
#define TT_TRANSPARENT_METRICS_PORT  15020
#define TT_TRANSPARENT_HEALTH_PORT   15021
#define TT_DEFAULT_DETECT_TIMEOUT_MS 500
#define TT_DEFAULT_CHECK_INTERVAL_MS 5000
#define TT_CAPTURE_PROBE_TIMEOUT_MS  1000

#define TT_CONFIG_HELP 1 /* tt_config_parse_args(): --help was printed */

/* Fills cfg from argv (getopt_long; options as tt_config_usage() lists them), loading
 * --config FILE first when given. Defaults apply to what neither sets; workers 0
 * becomes the number of online CPUs. Requires the three identity files and at least
 * one listener; with --control, the identity files and --policy are refused and
 * --control-bundle, --spiffe-id and exactly one of --join-token and --jwt-file are required.
 * Returns 0, TT_CONFIG_HELP after printing usage to stdout, or TT_E_CONFIG with one line in err
 * (e.g. "--inbound 127.0.0.1:99999=x: port must be 0..65535" or "sidecar.json: timeouts.idle:
 * expected a duration such as \"10s\""). On error cfg holds nothing that needs freeing beyond
 * tt_config_done(). */
int tt_config_parse_args(int argc, char **argv, struct tt_config *cfg, char *err, size_t errlen);

/* Parses the value of --inbound (LISTEN=FORWARD) or --outbound
 * (LISTEN=UPSTREAM@SPIFFE_ID) into out. Returns 0 or TT_E_CONFIG with err set. */
int tt_config_parse_listener(enum tt_listener_kind kind, const char *value,
                             struct tt_listener_cfg *out, char *err, size_t errlen);

/* Frees what cfg owns; cfg is zeroed. */
void tt_config_done(struct tt_config *cfg);

/* Prints the --help text: every option, its default and an example. */
void tt_config_usage(FILE *out);

#endif
