/* The control plane's API test fixture (see cpapifix.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cpapifix.h"

/* Opens store and CA in a new temporary directory. */
void cp_apifix_open_state(struct cp_apifix *f, const char *name)
{
    struct cp_ca_opts co = {.trust_domain = CP_APIFIX_TD};
    char err[512] = "";

    memset(f, 0, sizeof(*f));
    assert_true((size_t)snprintf(f->dir, sizeof(f->dir), "/tmp/%s-XXXXXX", name) < sizeof(f->dir));
    assert_non_null(mkdtemp(f->dir));
    f->store = cp_store_open(f->dir, err, sizeof(err));
    if (f->store == NULL)
        fail_msg("cp_store_open: %s", err);
    co.state_dir = f->dir;
    f->ca = cp_ca_open(&co, err, sizeof(err));
    if (f->ca == NULL)
        fail_msg("cp_ca_open: %s", err);
    if (cp_operator_token_ensure(f->dir, f->token, err, sizeof(err)) != 0)
        fail_msg("cp_operator_token_ensure: %s", err);
    f->creds.bearer = f->token;
}

/* Frees CA and store, removes the directory. */
void cp_apifix_close_state(struct cp_apifix *f)
{
    char cmd[128];

    cp_ca_free(f->ca);
    cp_store_free(f->store);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
}

static void on_stop(void *ud)
{
    struct cp_apifix *f = ud;

    cp_api_close(f->api);
    f->api = NULL;
}

/* State, then the API in its loop thread. */
void cp_apifix_start(struct cp_apifix *f, const char *name, const struct cp_api_opts *opts)
{
    struct cp_api_opts o = {.listen = "127.0.0.1:0"};
    char err[512] = "";

    cp_apifix_open_state(f, name);
    if (opts != NULL)
        o = *opts;
    if (o.operator_token == NULL)
        o.operator_token = f->token;
    tt_httpfix_loop_init(&f->lp, on_stop, f);
    f->api = cp_api_new(&f->lp.loop, &o, f->store, f->ca, err, sizeof(err));
    if (f->api == NULL)
        fail_msg("cp_api_new: %s", err);
    if (cp_api_port(f->api) > 0)
        snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%d", cp_api_port(f->api));
    tt_httpfix_loop_start(&f->lp);
}

/* API closed on its loop, loop ended cleanly, state closed. */
void cp_apifix_stop(struct cp_apifix *f)
{
    assert_int_equal(tt_httpfix_loop_stop(&f->lp), 0);
    cp_apifix_close_state(f);
}
