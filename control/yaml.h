/* YAML in and out for Kubernetes objects (DESIGN.md: libyaml in one YAML module). This
 * module is the only one that includes <yaml.h>; everything else sees documents as
 * jansson values, the same as JSON input.
 *
 * Reading follows the YAML 1.2 core schema: plain `null`, `Null`, `NULL`, `~` and the
 * empty scalar are null; `true`/`false` (also capitalised or upper case) are booleans;
 * decimal, `0o` octal and `0x` hex integers are integers; decimal floats are reals;
 * everything else, and every quoted or block scalar, is a string. YAML 1.1's `yes`, `no`,
 * `on`, `off` stay strings when read, but are quoted when written, so YAML 1.1 readers
 * (kubectl) read them back as strings too. Tags `!!str`, `!!int`, `!!float`, `!!bool`,
 * `!!null`, `!!map`, `!!seq` and the non-specific `!` are honoured; any other tag is
 * refused. Anchors and aliases are resolved by copying, within a bound on the nodes of a
 * stream (CP_YAML_MAX_NODES, so an alias bomb is refused, not expanded); `<<` merge keys
 * (YAML 1.1, which Kubernetes' reader accepts) merge mappings. Mapping keys must be
 * scalars and unique. Nesting is bounded (CP_YAML_MAX_DEPTH). .inf and .nan are refused:
 * JSON cannot hold them. */
#ifndef CP_YAML_H
#define CP_YAML_H

#include <stddef.h>

#include <jansson.h>

#define CP_YAML_MAX_NODES (1u << 20) /* nodes in one stream, alias copies included */
#define CP_YAML_MAX_DEPTH 256        /* nested mappings and sequences */

/* Parses text[0..len) as a stream of YAML documents (JSON is YAML, so a JSON document
 * reads too). On success returns 0 and sets *docs_out to a new array holding one value
 * per document, in order (an empty document is null; an empty stream an empty array);
 * the caller owns it. On failure returns a negative errno-style code (-EINVAL for bad
 * input, -E2BIG for a stream over the bounds, -ENOMEM) with one line in err naming
 * `name`, the line and the column (1-based), e.g.
 * "deploy.yaml:3:7: mapping values are not allowed in this context"; *docs_out is then
 * NULL. */
int cp_yaml_parse(const char *text, size_t len, const char *name, json_t **docs_out, char *err,
                  size_t errlen);

/* Writes the array `docs` as a YAML stream, one document per element, "---" before each
 * document after the first, block style, keys in the objects' order. Strings that would
 * read back as another type (under YAML 1.2's core schema or YAML 1.1's) are quoted;
 * strings holding newlines are written as literal blocks when YAML allows it. On success
 * returns 0 and sets *out to a NUL-terminated string the caller frees with free(). On
 * failure (docs not an array, a real that is not finite, -ENOMEM) returns a negative
 * errno-style code with err set and *out NULL. */
int cp_yaml_emit(json_t *docs, char **out, char *err, size_t errlen);

#endif
