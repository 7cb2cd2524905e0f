/* The store's private header (libuv's internal.h style): the shared struct behind the one
 * mutex, the record of each collection, and the cp__ functions the store's modules call
 * in each other. Only control/store*.c include it; everyone else uses store.h.
 *
 * Who owns what:
 *   store.c              the struct and its lock, open/free, version bump and notify
 *                        (state.json), the trust bundle, the policy document, the
 *                        snapshot copy, refusal counters and /stats
 *   store_file.c         paths in the state directory, the atomic writer, the
 *                        collection file reader (errors name file, element and key) and
 *                        writer
 *   store_journal.c      the append-only journal (journal.log) of token and issue
 *                        records: replay at open, one fsync'd line per change,
 *                        compaction into tokens.json and issued.json
 *   store_tokens.c       bootstrap tokens (tokens.json + journal), their hash index
 *   store_revocations.c  revoked serials (revocations.json)
 *   store_services.c     the registry of service entries (services.json)
 *   store_issued.c       issued-certificate records (issued.json + journal)
 *   store_sidecars.c     connected sidecars (runtime only, never persisted)
 *
 * Every persisted collection has exactly one serialiser of an item, its cp__coll's
 * to_json: the file writer and the API listing both call it, and where the API shows
 * something else (tokens hide the hash and add "expired"; issued records add "revoked")
 * the listing starts from that serialiser's object and edits keys. Functions named
 * *_locked expect the caller to hold s->mu.
 *
 * This header does not include store.h, so that the store's modules form no include
 * cycle: each store*.c includes store.h for the public declarations it implements. */
#ifndef CP_STORE_INT_H
#define CP_STORE_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "tls/identity.h" /* TT_SERIAL_MAX */

#define CP__SHA256_HEX 65 /* 64 hex digits of a SHA-256 digest plus NUL */

/* A growable array of T: v[0..n) used, cap allocated. */
#define CP__VEC(T)                                                                                 \
    struct {                                                                                       \
        T *v;                                                                                      \
        size_t n, cap;                                                                             \
    }

/* Makes room for one more element of *vec. Returns 0 or -ENOMEM (vec unchanged). */
#define CP__VEC_GROW(vec) cp__vec_grow((void **)&(vec).v, &(vec).cap, (vec).n, sizeof(*(vec).v))
int cp__vec_grow(void **v, size_t *cap, size_t n, size_t size);

/* One bootstrap token; only the hash of its secret is kept. A token with no use left or
 * past its expiry is dead: refused, not listed, and dropped at the next load or
 * compaction. */
struct cp__token {
    char hash[CP__SHA256_HEX]; /* lower-case hex SHA-256 of the secret */
    char *spiffe_id;
    int64_t uses_left;
    int64_t expires; /* unix seconds; 0: never */
    int64_t created;
};

/* The journal (store_journal.c): DIR/journal.log, one JSON object per line. */
struct cp__journal {
    int fd;          /* open for appending once the first record is written; -1 before */
    int64_t size;    /* bytes of complete records in the file */
    size_t records;  /* records in the file (since the last compaction) */
    size_t retry_at; /* after a failed compaction: records before the next try */
};

/* One revoked serial. */
struct cp__revoked {
    char serial[TT_SERIAL_MAX]; /* normalized */
    int64_t at;                 /* unix seconds */
    int64_t not_after;          /* the certificate's, from its issue record; 0: unknown */
};

/* One endpoint of a service: an address and the identity that must answer there. */
struct cp__endpoint {
    char *address; /* as given, checked with tt_addr_parse */
    char *spiffe_id;
};

/* One persisted service: the address workloads dial and its endpoints (at least one). A
 * bare endpoint is a service of one whose endpoint is its own address (`bare`). */
struct cp__service {
    char *address; /* as given, checked with tt_addr_parse */
    char *source;  /* CP_SOURCE_OPERATOR or CP_SOURCE_KUBERNETES */
    char *name;    /* Kubernetes: the Service's "namespace/name"; else NULL */
    bool bare;
    CP__VEC(struct cp__endpoint) eps;
};

/* One sidecar's registration of an endpoint it serves (runtime only, store_services.c):
 * bound to the IP its Watch connection came from and to its certificate's identity; it
 * lives while its stream does and for the grace period after. */
struct cp__reg {
    char *address;    /* normalized IP:PORT (tt_addr text), the observed IP */
    char *spiffe_id;  /* the identity the stream's certificate proves */
    char *holder;     /* the stream's key (cp_store_sidecar_seen's id) */
    bool live;        /* the holder's stream is open */
    uint64_t gone_ms; /* the store clock when the stream ended (when !live) */
};

/* One issued certificate. */
struct cp__issued {
    char serial[TT_SERIAL_MAX]; /* normalized */
    char *spiffe_id;
    int64_t not_after; /* unix seconds */
    int64_t issued_at;
    char via[16]; /* a CP_VIA_* name (store.h); "" in records from before it was kept */
};

/* One connected sidecar (runtime only). NULL strings are unknown. */
struct cp__sidecar {
    char *id;
    char *spiffe_id;
    char *peer;
    char *node;
    uint64_t acked; /* 0: none yet */
    uint64_t nacked;
    char *nack_reason;
    int64_t last_seen;
    json_t *registered; /* array of the endpoints its registration holds, or NULL */
    json_t *refused;    /* array of {"address", "reason", "detail"} refused, or NULL */
    char **claims;      /* the addresses its Hello registered, as sent */
    size_t n_claims;
};

/* How often Sign requests were refused for one reason. */
struct cp__refusal {
    char *reason;
    uint64_t n;
};

struct cp_store {
    pthread_mutex_t mu; /* guards everything below but dir (immutable) */
    char *dir;
    uint64_t version; /* persisted in state.json before the change it counts */
    char bundle_sha[CP__SHA256_HEX];
    char *bundle_pem; /* "" until set */
    char *policy;     /* the document's text, or NULL */
    CP__VEC(struct cp__token) tokens;
    /* Open-addressing index over tokens.v by hash: slot holds position + 1, 0 is empty;
     * cap is a power of two at least twice tokens.n. Rebuilt when tokens are removed. */
    struct {
        size_t *slot;
        size_t cap;
    } token_idx;
    struct cp__journal journal;
    CP__VEC(struct cp__revoked) revoked;
    CP__VEC(struct cp__service) services;
    CP__VEC(struct cp__reg) regs;
    CP__VEC(struct cp__service) k8s; /* CP_SOURCE_KUBERNETES, sorted by address */
    uint64_t reg_grace_ms;           /* how long a registration outlives its stream */
    uint64_t (*now_ms)(void *ud);    /* the registrations' clock (tests inject one) */
    void *now_ud;
    CP__VEC(struct cp__issued) issued;
    CP__VEC(struct cp__sidecar) sidecars;
    CP__VEC(struct cp__refusal) refusals;
    void (*cb)(void *ud, uint64_t version); /* a cp_store_change_cb */
    void *cb_ud;
};

/* ---- store.c ---- */

/* Bumps s->version and persists it in state.json. The version goes to disk before the
 * change it counts, so a crash in between never makes it go backwards. Returns 0 or
 * -errno (version unchanged). Lock held. */
int cp__store_bump_locked(struct cp_store *s);

/* Ends a change: releases s->mu (held by the caller) and, when version is not 0 (the
 * change bumped it), calls the change callback with it, read before the release, so no
 * lock is held during the call. */
void cp__store_unlock_notify(struct cp_store *s, uint64_t version);

/* Adds one to the refusal counter for reason. Lock held. */
void cp__count_refusal_locked(struct cp_store *s, const char *reason);

/* Writes the lower-case hex SHA-256 of data[0..len) into out. */
void cp__sha256_hex(const void *data, size_t len, char out[CP__SHA256_HEX]);

/* ---- store_file.c ---- */

/* Where a collection loader is: file path, array key, element index, and the caller's
 * error buffer. */
struct cp__lctx {
    const char *path;
    const char *arr;
    size_t i;
    char *err;
    size_t errlen;
};

/* A persisted collection: DIR/<file> holds {"<key>": [item, ...]}. */
struct cp__coll {
    const char *file; /* "tokens.json" */
    const char *key;  /* "tokens" */
    size_t size;      /* sizeof one in-memory item */
    /* The one serialiser of an item, as the file holds it. New reference, NULL when out
     * of memory. */
    json_t *(*to_json)(const void *item);
    /* Parses one element (checking every field with cp__get_str/cp__get_int) and
     * appends it to the store. Returns 0, the field check's error (err set through c),
     * or -ENOMEM. */
    int (*from_json)(struct cp_store *s, struct cp__lctx *c, json_t *o);
};

/* Fsyncs the directory that holds path, so that a file created or renamed there stays
 * after a crash. Returns 0 or -errno. */
int cp__fsync_parent(const char *path);

/* Writes DIR/name into buf. Returns 0 or -ENAMETOOLONG. */
int cp__store_path(const struct cp_store *s, const char *name, char *buf, size_t len);

/* How the API shows an item: takes the serialiser's object `obj` (consumed) and returns
 * the object to show (obj itself edited, or a new one built from it), NULL when out of
 * memory. ud is cp__coll_array's. */
typedef json_t *(*cp__view_fn)(json_t *obj, const void *item, void *ud);

/* The JSON array of items v[0..n) (each c->size bytes) by c->to_json, each then passed
 * through view(obj, item, ud) when view is not NULL. New reference, or NULL when out of
 * memory (never a partial array). */
json_t *cp__coll_array(const struct cp__coll *c, const void *v, size_t n, cp__view_fn view,
                       void *ud);

/* Persists items v[0..n) as DIR/<c->file> with cp_atomic_write (mode 0600). Returns 0,
 * -ENOMEM (nothing written) or the writer's -errno. */
int cp__coll_save(struct cp_store *s, const struct cp__coll *c, const void *v, size_t n);

/* Loads DIR/<c->file> element by element with c->from_json. A missing file is an empty
 * collection. Returns 0 or <0 with err naming the file and, for a bad element, its index
 * and key ("DIR/issued.json: issued[2].serial: expected a string"). */
int cp__coll_load(struct cp_store *s, const struct cp__coll *c, char *err, size_t errlen);

/* Reads DIR/name as JSON into *doc (new reference); *doc is NULL when the file does not
 * exist. path[pathlen] receives its path for the caller's messages. Returns 0 or <0 with
 * err naming the file (and the line of a syntax error). */
int cp__store_read_json(struct cp_store *s, const char *name, json_t **doc, char *path,
                        size_t pathlen, char *err, size_t errlen);

/* Writes doc (consumed; NULL is taken as out of memory) as DIR/name, indented, with a
 * final newline, through cp_atomic_write with mode 0600. Returns 0 or -errno. */
int cp__store_write_json(struct cp_store *s, const char *name, json_t *doc);

/* Field readers for from_json: the string, or the non-negative integer (with nullable,
 * null or absent reads as 0) under key. Return 0, or -EINVAL with err set to
 * "PATH: ARR[I].KEY: expected ...". */
int cp__get_str(struct cp__lctx *c, json_t *o, const char *key, const char **out);
int cp__get_int(struct cp__lctx *c, json_t *o, const char *key, bool nullable, int64_t *out);

/* Sets err to "PATH: ARR[I].KEY: expected WHAT" and returns -EINVAL. */
int cp__bad_field(struct cp__lctx *c, const char *key, const char *what);

/* ---- store_journal.c ---- */

#define CP__JOURNAL_FILE "journal.log"

/* Replays DIR/journal.log (if any) over the loaded collections: each line goes to
 * cp__tokens_apply or cp__issued_apply by its "op". A last line without its newline is
 * a write cut short by a crash: it is dropped and cut off the file. Returns 0 or <0 with
 * err naming the file and line ("DIR/journal.log: line 3: ..." or
 * "DIR/journal.log: line[3].sha256: expected a string"). */
int cp__journal_load(struct cp_store *s, char *err, size_t errlen);

/* Appends rec (consumed; NULL is taken as out of memory) as one line and fdatasyncs it.
 * On failure the file is cut back to its previous length, so no partial record stays,
 * and -errno is returned (the caller must not apply the change). Lock held. */
int cp__journal_append_locked(struct cp_store *s, json_t *rec);

/* Rewrites tokens.json and issued.json from memory (dead tokens and long-expired
 * records dropped) and empties the journal. Replaying a journal over the files it was
 * compacted into gives the same state, so a crash at any point loses nothing. Returns 0
 * or -errno (the journal is then kept). Lock held. */
int cp__journal_compact_locked(struct cp_store *s);

/* Compacts when the journal holds more than CP__JOURNAL_FACTOR times the live records
 * (and at least CP__JOURNAL_MIN), so its cost per change stays constant. A failed
 * compaction is retried later; the change that triggered it is already durable. Lock
 * held. */
void cp__journal_maybe_compact_locked(struct cp_store *s);

#define CP__JOURNAL_FACTOR 4
#define CP__JOURNAL_MIN    1024

/* Closes the journal's descriptor. */
void cp__journal_close(struct cp_store *s);

/* ---- the collections ---- */

extern const struct cp__coll cp__tokens_coll;   /* store_tokens.c */
extern const struct cp__coll cp__revoked_coll;  /* store_revocations.c */
extern const struct cp__coll cp__services_coll; /* store_services.c */
extern const struct cp__coll cp__issued_coll;   /* store_issued.c */

/* Applies one journal record of a token ("token_create", "token_use", "token_delete")
 * or the token part of an "issue" record; replaying is idempotent. Returns 0, -EINVAL
 * with err set through c, or -ENOMEM. (store_tokens.c) */
int cp__tokens_apply(struct cp_store *s, struct cp__lctx *c, const char *op, json_t *rec);

/* Applies an "issue" record's certificate (added unless its serial is known). Returns
 * as cp__tokens_apply. (store_issued.c) */
int cp__issued_apply(struct cp_store *s, struct cp__lctx *c, json_t *rec);

/* Drops dead tokens (cp__token_dead) and rebuilds the index. Returns 0 or -ENOMEM
 * (the index is then rebuilt at the next removal; lookups fall back to a scan). Lock
 * held or no other thread. (store_tokens.c) */
int cp__tokens_prune_locked(struct cp_store *s, int64_t now);

/* True when t has no use left or is past its expiry at now. */
bool cp__token_dead(const struct cp__token *t, int64_t now);

/* Drops records expired for more than a day. Lock held. (store_issued.c) */
void cp__issued_prune_locked(struct cp_store *s, int64_t now);

/* Finds the live or dead token whose hash is `hash`, NULL if none. Lock held. */
struct cp__token *cp__token_find_locked(struct cp_store *s, const char hash[CP__SHA256_HEX]);

/* Checks the presented secret for spiffe_id at now: sets *hash to its SHA-256 and
 * returns the token, or NULL with *reason set. Lock held. */
struct cp__token *cp__token_check_locked(struct cp_store *s, const char *secret,
                                         const char *spiffe_id, char hash[CP__SHA256_HEX],
                                         int *reason);

/* The {"sha256", "uses_left"} part of a record that uses token t once. New reference. */
json_t *cp__token_use_json(const struct cp__token *t);

/* The one serialiser of an issued record (store_issued.c), as issued.json holds it. */
json_t *cp__issued_item_json(const struct cp__issued *e);

/* True when the normalized serial is revoked. Lock held. (store_revocations.c) */
bool cp__revoked_locked(struct cp_store *s, const char *norm);

/* The not-after its issue record gives the certificate with normalized serial `norm`, or 0
 * when no record is kept. Lock held. (store_issued.c) */
int64_t cp__issued_not_after_locked(struct cp_store *s, const char *norm);

/* The stream `holder` ended: its registrations start their grace period, and open
 * streams that were refused one of its addresses (held_by_other) try their claims again,
 * so another identity takes the address over at once. *v gets the new version when what
 * sidecars receive changed. Lock held. (store_services.c) */
void cp__regs_stream_gone_locked(struct cp_store *s, const char *holder, uint64_t *v);

/* Keeps copies of sidecar `id`'s claimed addresses[0..n) in its record (an unknown id,
 * or no memory, keeps none). Lock held. (store_sidecars.c) */
void cp__sidecar_set_claims_locked(struct cp_store *s, const char *id, const char *const *addresses,
                                   size_t n);

/* Records what sidecar `id`'s registration holds and what was refused (both consumed;
 * NULL is an empty array) in its runtime record; an unknown id drops them. Lock held.
 * (store_sidecars.c) */
void cp__sidecar_set_registration_locked(struct cp_store *s, const char *id, json_t *registered,
                                         json_t *refused);

/* Appends the snapshot's service entries: operator services (one entry per endpoint),
 * then registrations no operator entry covers. Returns 0 or -ENOMEM. Lock held.
 * (store_services.c) */
struct cp_snapshot;
int cp__services_snapshot_locked(struct cp_store *s, struct cp_snapshot *snap);

/* Free every item and the array of each collection (store_*.c). */
void cp__tokens_free(struct cp_store *s);
void cp__services_free(struct cp_store *s);
void cp__issued_free(struct cp_store *s);
void cp__sidecars_free(struct cp_store *s);

#endif
