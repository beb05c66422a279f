/* Reads the DPSR label as src/label.ts writes it: two 4 KiB slots in the last
 * 8 KiB of the drive, each "DPSRLBL1", format 1 (u32 LE), payload length
 * (u32 LE), SHA-256 of the payload, then the payload (JSON). The newest valid
 * slot by seq wins, and it is then judged as udev-probe.ts's plausible() did:
 * any drive can be plugged in, and what the probe prints becomes udev properties. */
#define _GNU_SOURCE
#include "label.h"
#include "json.h"
#include "sha256.h"
#include <fcntl.h>
#include <linux/fs.h>
#include <math.h>
#include <regex.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define HEADER 48 /* magic 8, format 4, length 4, sha256 32 */
#define FORMAT 1
#define MAX_NODES 1024

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* A string member, "" when absent or not a string. A NUL inside (\u0000) turns
 * it into "\x01", which no kernel name nor cleaned id holds: it matches nothing. */
static const char *string_of(const struct json *v)
{
	if (!v || v->type != JSON_STRING)
		return NULL;
	return strlen(v->string) == v->length ? v->string : "\x01";
}

/* null, absent or a string: label.ts's isIdOrNull. */
static bool id_or_null(const struct json *v, const char **out)
{
	*out = NULL;
	if (!v || v->type == JSON_NULL)
		return true;
	return (*out = string_of(v)) != NULL;
}

static bool is_safe_integer(const struct json *v)
{
	return v && v->type == JSON_NUMBER && v->number == floor(v->number) && fabs(v->number) <= 9007199254740991.0;
}

static bool valid_pair_name(const char *s)
{
	regex_t re;
	bool ok;

	if (regcomp(&re, "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", REG_EXTENDED | REG_NOSUB))
		return false;
	ok = regexec(&re, s, 0, NULL, 0) == 0;
	regfree(&re);
	return ok;
}

/* One slot: true when it holds a label whose checksum and JSON hold. */
static bool decode_slot(const uint8_t *b, struct label *out)
{
	struct json nodes[MAX_NODES];
	const struct json *root, *src, *v;
	uint8_t digest[32];
	uint32_t length;

	if (memcmp(b, "DPSRLBL1", 8) || le32(b + 8) != FORMAT)
		return false;
	length = le32(b + 12);
	if (length > LABEL_BYTES - HEADER)
		return false;
	sha256(b + HEADER, length, digest);
	if (memcmp(digest, b + 16, 32))
		return false;
	memset(out, 0, sizeof(*out));
	memcpy(out->text, b + HEADER, length);
	if (!(root = json_parse(out->text, length, nodes, MAX_NODES)))
		return false;
	v = json_get(root, "seq");
	out->seq = v && v->type == JSON_NUMBER ? v->number : NAN;

	/* plausible(): a pair name dpsr accepts, a source with a safe-integer size and a name. */
	src = json_get(root, "source");
	v = json_get(root, "pairName");
	if (!string_of(v) || !valid_pair_name(string_of(v)) || !src || src->type != JSON_OBJECT)
		return true;
	if (!is_safe_integer(json_get(src, "sizeSectors")) || !string_of(json_get(src, "name")))
		return true;
	if (!id_or_null(json_get(src, "wwid"), &out->source.wwid) || !id_or_null(json_get(src, "serial"), &out->source.serial) ||
	    !id_or_null(json_get(src, "loopBackingFile"), &out->source.loop_backing_file))
		return true;
	out->source.size_sectors = (long long)json_get(src, "sizeSectors")->number;
	out->source.name = string_of(json_get(src, "name"));
	out->pair_name = string_of(v);
	return true;
}

/* Copies a decoded label, moving its string pointers into the copy's own text. */
static void copy_label(struct label *to, const struct label *from)
{
	const char **fields[] = { &to->pair_name, &to->source.name, &to->source.wwid, &to->source.serial,
				  &to->source.loop_backing_file };
	size_t i;

	*to = *from;
	for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
		if (*fields[i] >= from->text && *fields[i] < from->text + LABEL_BYTES)
			*fields[i] = to->text + (*fields[i] - from->text);
}

bool label_at(const char *path, struct label *out)
{
	struct label slot;
	uint64_t bytes = 0;
	uint8_t *buf = NULL;
	bool found = false;
	int fd, i;

	fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (fd < 0)
		return false;
	if (ioctl(fd, BLKGETSIZE64, &bytes) || bytes < 2 * LABEL_BYTES || posix_memalign((void **)&buf, 4096, LABEL_BYTES))
		goto cleanup;
	for (i = 2; i >= 1; i--) {
		if (pread(fd, buf, LABEL_BYTES, (off_t)(bytes - (uint64_t)i * LABEL_BYTES)) != LABEL_BYTES || !decode_slot(buf, &slot))
			continue;
		/* label.seq > best.seq, as in label.ts (false for a seq that is no number). */
		if (!found || slot.seq > out->seq)
			copy_label(out, &slot);
		found = true;
	}
cleanup:
	free(buf);
	close(fd);
	return found;
}
