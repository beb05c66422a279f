/* A small strict JSON reader (RFC 8259) for the DPSR label's payload: a tree
 * of nodes in one caller-owned array, no allocation. */
#ifndef DPSR_JSON_H
#define DPSR_JSON_H
#include <stddef.h>

enum json_type { JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT };

struct json {
	enum json_type type;
	double number;
	const char *string;    /* JSON_STRING: decoded, NUL-terminated (in the parser's text buffer) */
	size_t length;         /* its length in bytes (it may hold a NUL, from \u0000) */
	const char *key;       /* a member of an object: its decoded name */
	size_t key_length;
	struct json *child;    /* first member or element */
	struct json *next;     /* next sibling */
};

/* Parses text (len bytes, modified in place: strings are decoded into it) into
 * nodes[0..max); returns the root, or NULL when it is no JSON or too large. */
struct json *json_parse(char *text, size_t len, struct json *nodes, size_t max);

/* The member `key` of an object (the last one, as JSON.parse keeps), or NULL. */
const struct json *json_get(const struct json *object, const char *key);

#endif
