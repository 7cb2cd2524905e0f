/* The control plane's API test fixture, shared by test-cp-api and test-cp-tetherctl: a
 * state directory with a store and a CA (trust domain example.org) in /tmp, and the
 * operator API over them on 127.0.0.1 port 0, served by a tt_httpfix_loop thread. Field
 * names are what the tests use. Failures are cmocka assertions. For tests only. */
#ifndef CP_APIFIX_H
#define CP_APIFIX_H

#include "api.h"
#include "ca.h"
#include "httpc.h"
#include "httpfix.h"
#include "operator_token.h"
#include "store.h"

#define CP_APIFIX_TD "example.org"

struct cp_apifix {
    char dir[64]; /* the state directory */
    char url[64]; /* "http://127.0.0.1:PORT" once the API runs */
    struct cp_store *store;
    struct cp_ca *ca;
    struct cp_api *api;                /* NULL until cp_apifix_start() */
    char token[CP_OPERATOR_TOKEN_MAX]; /* the state directory's operator credential */
    struct cp_httpc_tls creds;         /* bearer = token: for cp_httpc_call() */
    struct tt_httpfix_loop lp;
};

/* Creates /tmp/<name>-XXXXXX and opens a store, a new CA and the operator credential in
 * it. */
void cp_apifix_open_state(struct cp_apifix *f, const char *name);

/* Frees the CA and the store and removes the directory. */
void cp_apifix_close_state(struct cp_apifix *f);

/* cp_apifix_open_state(), then the API with opts (NULL: plaintext on 127.0.0.1:0; without
 * an operator_token, the state's) in a loop thread; sets url when the API listens itself. */
void cp_apifix_start(struct cp_apifix *f, const char *name, const struct cp_api_opts *opts);

/* Closes the API on its loop, asserts the loop ended with no handle left, and closes the
 * state. */
void cp_apifix_stop(struct cp_apifix *f);

#endif
