/* A strict JSON reader: what JSON.parse accepts (label.ts decodes the label's
 * payload with it), so that the probe and dpsr agree on which labels exist. */
#include "json.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64

struct parser {
	char *p, *end;
	struct json *nodes;
	size_t used, max;
};

static void skip_space(struct parser *ps)
{
	while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
		ps->p++;
}

static struct json *new_node(struct parser *ps, enum json_type type)
{
	struct json *n;

	if (ps->used == ps->max)
		return NULL;
	n = &ps->nodes[ps->used++];
	memset(n, 0, sizeof(*n));
	n->type = type;
	return n;
}

static int hex4(const char *s, unsigned *out)
{
	unsigned v = 0;
	int i;

	for (i = 0; i < 4; i++) {
		char c = s[i];
		v <<= 4;
		if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
		else return -1;
	}
	*out = v;
	return 0;
}

static char *put_utf8(char *w, unsigned cp)
{
	if (cp < 0x80) {
		*w++ = (char)cp;
	} else if (cp < 0x800) {
		*w++ = (char)(0xc0 | cp >> 6);
		*w++ = (char)(0x80 | (cp & 0x3f));
	} else if (cp < 0x10000) {
		*w++ = (char)(0xe0 | cp >> 12);
		*w++ = (char)(0x80 | ((cp >> 6) & 0x3f));
		*w++ = (char)(0x80 | (cp & 0x3f));
	} else {
		*w++ = (char)(0xf0 | cp >> 18);
		*w++ = (char)(0x80 | ((cp >> 12) & 0x3f));
		*w++ = (char)(0x80 | ((cp >> 6) & 0x3f));
		*w++ = (char)(0x80 | (cp & 0x3f));
	}
	return w;
}

/* Decodes a string in place (the decoded form is never longer); ps->p is at the opening quote. */
static const char *parse_string(struct parser *ps, size_t *length)
{
	char *start = ++ps->p, *w = start;
	unsigned cp, lo;

	while (ps->p < ps->end && *ps->p != '"') {
		unsigned char c = (unsigned char)*ps->p;
		if (c < 0x20)
			return NULL;
		if (c != '\\') {
			*w++ = *ps->p++;
			continue;
		}
		if (++ps->p >= ps->end)
			return NULL;
		switch (*ps->p++) {
		case '"': *w++ = '"'; break;
		case '\\': *w++ = '\\'; break;
		case '/': *w++ = '/'; break;
		case 'b': *w++ = '\b'; break;
		case 'f': *w++ = '\f'; break;
		case 'n': *w++ = '\n'; break;
		case 'r': *w++ = '\r'; break;
		case 't': *w++ = '\t'; break;
		case 'u':
			if (ps->end - ps->p < 4 || hex4(ps->p, &cp))
				return NULL;
			ps->p += 4;
			/* A surrogate pair is one code point; a lone surrogate stays as it is (as in a JS string). */
			if (cp >= 0xd800 && cp < 0xdc00 && ps->end - ps->p >= 6 && ps->p[0] == '\\' && ps->p[1] == 'u' &&
			    !hex4(ps->p + 2, &lo) && lo >= 0xdc00 && lo < 0xe000) {
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
				ps->p += 6;
			}
			w = put_utf8(w, cp);
			break;
		default:
			return NULL;
		}
	}
	if (ps->p >= ps->end)
		return NULL;
	ps->p++; /* the closing quote, now free for the terminator */
	*w = '\0';
	*length = (size_t)(w - start);
	return start;
}

static int parse_number(struct parser *ps, double *out)
{
	char *s = ps->p, *q = s, buf[64];
	size_t n;

	if (q < ps->end && *q == '-') q++;
	if (q < ps->end && *q == '0') q++;
	else if (q < ps->end && *q >= '1' && *q <= '9') while (q < ps->end && *q >= '0' && *q <= '9') q++;
	else return -1;
	if (q < ps->end && *q == '.') {
		if (++q >= ps->end || *q < '0' || *q > '9') return -1;
		while (q < ps->end && *q >= '0' && *q <= '9') q++;
	}
	if (q < ps->end && (*q == 'e' || *q == 'E')) {
		q++;
		if (q < ps->end && (*q == '+' || *q == '-')) q++;
		if (q >= ps->end || *q < '0' || *q > '9') return -1;
		while (q < ps->end && *q >= '0' && *q <= '9') q++;
	}
	n = (size_t)(q - s);
	if (n >= sizeof(buf))
		return -1;
	memcpy(buf, s, n);
	buf[n] = '\0';
	*out = strtod(buf, NULL);
	ps->p = q;
	return 0;
}

static int literal(struct parser *ps, const char *word)
{
	size_t n = strlen(word);

	if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n))
		return -1;
	ps->p += n;
	return 0;
}

static struct json *parse_value(struct parser *ps, int depth);

/* Members of an object or elements of an array, up to the closing bracket. */
static struct json *parse_container(struct parser *ps, struct json *node, char close, int depth)
{
	struct json **tail = &node->child;

	ps->p++;
	skip_space(ps);
	if (ps->p < ps->end && *ps->p == close) {
		ps->p++;
		return node;
	}
	for (;;) {
		const char *key = NULL;
		size_t key_length;
		struct json *item;

		skip_space(ps);
		if (close == '}') {
			if (ps->p >= ps->end || *ps->p != '"' || !(key = parse_string(ps, &key_length)))
				return NULL;
			skip_space(ps);
			if (ps->p >= ps->end || *ps->p++ != ':')
				return NULL;
		}
		if (!(item = parse_value(ps, depth + 1)))
			return NULL;
		item->key = key;
		item->key_length = key ? key_length : 0;
		*tail = item;
		tail = &item->next;
		skip_space(ps);
		if (ps->p < ps->end && *ps->p == ',') {
			ps->p++;
			continue;
		}
		if (ps->p < ps->end && *ps->p == close) {
			ps->p++;
			return node;
		}
		return NULL;
	}
}

static struct json *parse_value(struct parser *ps, int depth)
{
	struct json *n;

	if (depth > MAX_DEPTH)
		return NULL;
	skip_space(ps);
	if (ps->p >= ps->end)
		return NULL;
	switch (*ps->p) {
	case '{':
		return (n = new_node(ps, JSON_OBJECT)) ? parse_container(ps, n, '}', depth) : NULL;
	case '[':
		return (n = new_node(ps, JSON_ARRAY)) ? parse_container(ps, n, ']', depth) : NULL;
	case '"':
		if (!(n = new_node(ps, JSON_STRING)))
			return NULL;
		return (n->string = parse_string(ps, &n->length)) ? n : NULL;
	case 't':
		return literal(ps, "true") ? NULL : new_node(ps, JSON_TRUE);
	case 'f':
		return literal(ps, "false") ? NULL : new_node(ps, JSON_FALSE);
	case 'n':
		return literal(ps, "null") ? NULL : new_node(ps, JSON_NULL);
	default:
		if (!(n = new_node(ps, JSON_NUMBER)))
			return NULL;
		return parse_number(ps, &n->number) ? NULL : n;
	}
}

struct json *json_parse(char *text, size_t len, struct json *nodes, size_t max)
{
	struct parser ps = { .p = text, .end = text + len, .nodes = nodes, .max = max };
	struct json *root = parse_value(&ps, 0);

	skip_space(&ps);
	return root && ps.p == ps.end ? root : NULL;
}

const struct json *json_get(const struct json *object, const char *key)
{
	const struct json *found = NULL, *m;

	if (!object || object->type != JSON_OBJECT)
		return NULL;
	for (m = object->child; m; m = m->next)
		if (m->key_length == strlen(key) && !strcmp(m->key, key))
			found = m;
	return found;
}
