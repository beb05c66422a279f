/*
 * dpsr-udev-probe: what packaging/60-dpsr.rules runs (IMPORT{program}) for
 * each block device as it appears. Is it a DPSR drive (or a partition of
 * one), and must it be hidden? The copy carries the source's file system,
 * partition and LVM/md UUIDs: while the source is present, /dev/disk/by-uuid
 * (root=UUID=..., fstab) and desktop auto-mount must never pick the copy. The
 * rule is copied onto the DPSR drive with the system, so the disk the machine
 * runs from is never hidden nor made read-only.
 *
 * Compiled, not node: systemd-udevd runs it in its sandbox
 * (MemoryDenyWriteExecute=yes, where V8 aborts; a system-call filter; udev's
 * time limit) and the initramfs holds it with no runtime beside libc.
 *
 *   dpsr-udev-probe [--set-readonly] DEVNAME   KEY=value lines, or nothing; always exit 0
 *   dpsr-udev-probe --decide PAIR ON_PARENT SOURCE_PRESENT HOLDS_ROOT
 *        the decision alone, for tests (0/1 each; HOLDS_ROOT also "-": unknown)
 *   dpsr-udev-probe --is-source SIZE NAME WWID SERIAL LOOPFILE  SIZE NAME WWID SERIAL LOOPFILE
 *        whether a candidate (second) is the recorded source (first), for tests ("-": none)
 *   dpsr-udev-probe --root-devices   the kernel names / is on, one a line, for tests
 */
#define _GNU_SOURCE
#include "label.h"
#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define ID_MAX 512
#define MAX_NAMES 256
/* A sysfs directory (at most PATH_MAX) and a file name in it. */
#define PATH_BUF (PATH_MAX + 64)

/* What the decision needs to know about a device. */
struct facts {
	const char *pair_name;
	bool label_on_parent; /* a partition of a DPSR drive: it carries the source's UUIDs */
	bool source_present;  /* a device matching the label's source identity is present */
	int holds_root;       /* the drive holds /: 1, 0, or -1 when unknown (initramfs) */
};

struct decision {
	bool hide, booted, set_readonly;
};

/*
 * The rule. A drive the machine runs from (its source died and it was booted)
 * is the system now. Only the labelled device itself is made read-only: a
 * disk's flag covers its partitions, and `dpsr unpair` clears it on that
 * device alone. Source absent and / unknown (initramfs): this may be the disk
 * about to become /, left alone.
 */
static struct decision decide(const struct facts *f)
{
	struct decision d = { 0 };
	bool may_protect = !f->label_on_parent;

	if (f->holds_root == 1) {
		d.booted = true;
	} else if (f->source_present) {
		d.hide = true;
		d.set_readonly = may_protect;
	} else if (f->holds_root == 0) {
		d.set_readonly = may_protect;
	}
	return d;
}

/*
 * udev properties. Hiding: udisks (desktop auto-mount, file managers;
 * UDISKS_PRESENTATION_HIDE is udisks1's name) and systemd's
 * 60-persistent-storage.rules, which then skips its blkid probe: no ID_FS_*,
 * so no by-uuid, by-label or by-partuuid links and no md, LVM or btrfs
 * auto-assembly (they key on ID_FS_TYPE). The by-id and by-path links name
 * the hardware and stay.
 */
static void print_decision(const struct facts *f, const struct decision *d, FILE *out)
{
	fprintf(out, "DPSR_DRIVE=1\nDPSR_PAIR=%s\nDPSR_SOURCE_PRESENT=%d\n", f->pair_name, f->source_present ? 1 : 0);
	if (d->booted)
		fputs("DPSR_BOOTED=1\n", out);
	if (d->hide)
		fputs("DPSR_HIDDEN=1\nUDISKS_IGNORE=1\nUDISKS_AUTO=0\nUDISKS_PRESENTATION_HIDE=1\n"
		      "UDEV_DISABLE_PERSISTENT_STORAGE_BLKID_FLAG=1\n", out);
}

/* ---- sysfs ---- */

/* A sysfs file's text, trimmed; false when it cannot be read. */
static bool read_text(const char *file, char *out, size_t size)
{
	FILE *f = fopen(file, "re");
	size_t n, start = 0;

	if (!f)
		return false;
	n = fread(out, 1, size - 1, f);
	fclose(f);
	out[n] = '\0';
	while (n > 0 && isspace((unsigned char)out[n - 1]))
		out[--n] = '\0';
	while (isspace((unsigned char)out[start]))
		start++;
	memmove(out, out + start, n - start + 1);
	return true;
}

static bool exists(const char *file)
{
	return access(file, F_OK) == 0;
}

/* identity.ts's cleanId: control characters out, trimmed; NULL when blank or all zeros (some firmware). */
static const char *clean_id(char *s)
{
	char *w = s, *r;
	size_t n;

	for (r = s; *r; r++)
		if ((unsigned char)*r >= 0x20 && *r != 0x7f)
			*w++ = *r;
	*w = '\0';
	while (*s == ' ')
		s++;
	n = strlen(s);
	while (n > 0 && s[n - 1] == ' ')
		s[--n] = '\0';
	return s[strspn(s, "0 .:-")] == '\0' ? NULL : s;
}

static const char *sys_id(const char *file, char *buf)
{
	return read_text(file, buf, ID_MAX) ? clean_id(buf) : NULL;
}

/* SCSI VPD page 0x80 (unit serial number): 4-byte header, then Latin-1 text (made UTF-8, as node decodes it). */
static const char *vpd_serial(const char *file, char *buf)
{
	unsigned char raw[ID_MAX / 2];
	size_t n, len, i;
	char *w = buf;
	FILE *f = fopen(file, "re");

	if (!f)
		return NULL;
	n = fread(raw, 1, sizeof(raw), f);
	fclose(f);
	if (n < 4 || raw[1] != 0x80)
		return NULL;
	len = (size_t)raw[2] << 8 | raw[3];
	if (len > n - 4)
		len = n - 4;
	for (i = 4; i < 4 + len; i++) {
		if (raw[i] < 0x80) {
			*w++ = (char)raw[i];
		} else if (raw[i] == 0xa0) {
			*w++ = ' '; /* no-break space: trimmed like a space by JS */
		} else {
			*w++ = (char)(0xc0 | raw[i] >> 6);
			*w++ = (char)(0x80 | (raw[i] & 0x3f));
		}
	}
	*w = '\0';
	return clean_id(buf);
}

struct block_dev {
	char name[NAME_MAX + 1], disk[NAME_MAX + 1];
	bool is_partition;
	long long size_sectors;
};

/* devices.ts's resolveBlockDevice: what the node really is, from sysfs. */
static bool resolve(const char *node, struct block_dev *out)
{
	char link[PATH_BUF], dir[PATH_MAX], text[64], disk_dir[PATH_BUF];
	struct stat st;

	if (stat(node, &st) || !S_ISBLK(st.st_mode))
		return false;
	snprintf(link, sizeof(link), "/sys/dev/block/%u:%u", major(st.st_rdev), minor(st.st_rdev));
	if (!realpath(link, dir))
		return false;
	snprintf(out->name, sizeof(out->name), "%s", basename(dir));
	snprintf(disk_dir, sizeof(disk_dir), "%s/partition", dir);
	out->is_partition = exists(disk_dir);
	snprintf(disk_dir, sizeof(disk_dir), "%s", dir);
	if (out->is_partition)
		dirname(disk_dir);
	snprintf(out->disk, sizeof(out->disk), "%s", basename(disk_dir));
	snprintf(link, sizeof(link), "/sys/class/block/%s/size", out->name);
	if (!read_text(link, text, sizeof(text)))
		return false;
	out->size_sectors = atoll(text);
	return true;
}

/* The identity isRecordedSource compares: identity.ts's identify(), those fields. */
struct candidate {
	long long size_sectors;
	const char *name, *wwid, *serial, *loop_backing_file;
	char buf[4][ID_MAX];
};

static void identify(const struct block_dev *dev, struct candidate *c)
{
	char file[PATH_BUF];
	const char *d = dev->disk;

	c->size_sectors = dev->size_sectors;
	c->name = dev->name;
	snprintf(file, sizeof(file), "/sys/block/%s/wwid", d);
	if (!(c->wwid = sys_id(file, c->buf[0]))) {
		snprintf(file, sizeof(file), "/sys/block/%s/device/wwid", d);
		c->wwid = sys_id(file, c->buf[0]);
	}
	snprintf(file, sizeof(file), "/sys/block/%s/device/serial", d);
	if (!(c->serial = sys_id(file, c->buf[1]))) {
		snprintf(file, sizeof(file), "/sys/block/%s/serial", d);
		if (!(c->serial = sys_id(file, c->buf[1]))) {
			snprintf(file, sizeof(file), "/sys/block/%s/device/vpd_pg80", d);
			c->serial = vpd_serial(file, c->buf[1]);
		}
	}
	c->loop_backing_file = NULL;
	snprintf(file, sizeof(file), "/sys/block/%s/loop/backing_file", d);
	if (!strncmp(d, "loop", 4) && d[4] && strspn(d + 4, "0123456789") == strlen(d + 4) &&
	    read_text(file, c->buf[2], ID_MAX) && c->buf[2][0])
		c->loop_backing_file = c->buf[2];
}

static bool same(const char *a, const char *b)
{
	return a && b ? !strcmp(a, b) : a == b;
}

static bool recorded(const char *id)
{
	return id && *id;
}

/* Whether a device is the label's source: the rule of matchRecordedSource
 * (src/devices/identity.ts): same size and every identity recorded the
 * same. With none recorded the kernel name decides, the best there is. */
static bool is_recorded_source(const struct recorded_source *r, const struct candidate *c)
{
	if (c->size_sectors != r->size_sectors)
		return false;
	if (recorded(r->wwid) && !same(c->wwid, r->wwid))
		return false;
	if (recorded(r->serial) && !same(c->serial, r->serial))
		return false;
	if (recorded(r->loop_backing_file) && !same(c->loop_backing_file, r->loop_backing_file))
		return false;
	if (recorded(r->wwid) || recorded(r->serial) || recorded(r->loop_backing_file))
		return true;
	return !strcmp(c->name, r->name);
}

static bool is_partition_of(const char *disk, const char *name)
{
	char file[PATH_BUF];

	snprintf(file, sizeof(file), "/sys/block/%s/%s/partition", disk, name);
	return exists(file);
}

/* Whether the label's source is present: devices of its size (sysfs), then their identity. Not the drive nor its partitions. */
static bool source_present(const struct recorded_source *r, const struct block_dev *drive)
{
	DIR *dir = opendir("/sys/class/block");
	struct dirent *e;
	bool found = false;

	if (!dir)
		return false;
	while (!found && (e = readdir(dir))) {
		char file[PATH_BUF], text[64];
		struct block_dev dev;
		struct candidate c;

		if (e->d_name[0] == '.' || !strcmp(e->d_name, drive->name) ||
		    (!drive->is_partition && is_partition_of(drive->name, e->d_name)))
			continue;
		snprintf(file, sizeof(file), "/sys/class/block/%s/size", e->d_name);
		if (!read_text(file, text, sizeof(text)) || atoll(text) != r->size_sectors)
			continue;
		snprintf(file, sizeof(file), "/dev/%s", e->d_name);
		if (!resolve(file, &dev))
			continue; /* no node, or it went away meanwhile: not present */
		identify(&dev, &c);
		found = is_recorded_source(r, &c);
	}
	closedir(dir);
	return found;
}

/* ---- the devices / is on ---- */

struct names {
	char name[MAX_NAMES][NAME_MAX + 1];
	int count;
};

static bool has_name(const struct names *n, const char *name)
{
	for (int i = 0; i < n->count; i++)
		if (!strcmp(n->name[i], name))
			return true;
	return false;
}

static void add_name(struct names *n, const char *name)
{
	if (n->count < MAX_NAMES && !has_name(n, name))
		snprintf(n->name[n->count++], NAME_MAX + 1, "%s", name);
}

/* A block device, the devices it is built on (dm/md slaves), and the disks of the partitions among them. */
static void with_underlying(const char *name, struct names *into)
{
	char link[PATH_BUF], dir[PATH_MAX], file[PATH_BUF], parent[PATH_MAX];
	DIR *slaves;
	struct dirent *e;

	if (has_name(into, name))
		return;
	snprintf(link, sizeof(link), "/sys/class/block/%s", name);
	if (!realpath(link, dir))
		return;
	add_name(into, name);
	snprintf(file, sizeof(file), "%s/partition", dir);
	if (exists(file)) {
		snprintf(parent, sizeof(parent), "%s", dir);
		add_name(into, basename(dirname(parent)));
	}
	snprintf(file, sizeof(file), "%s/slaves", dir);
	if (!(slaves = opendir(file)))
		return;
	while ((e = readdir(slaves)))
		if (e->d_name[0] != '.')
			with_underlying(e->d_name, into);
	closedir(slaves);
}

/* /proc/self/mountinfo's octal escapes (\040 for a space), in place. */
static void unescape(char *s)
{
	char *w = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '7' && s[2] >= '0' && s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
			*w++ = (char)((s[1] - '0') << 6 | (s[2] - '0') << 3 | (s[3] - '0'));
			s += 3;
		} else {
			*w++ = *s;
		}
	}
	*w = '\0';
}

/*
 * The kernel names / is on (mounts.ts's rootDeviceName, then its underlying
 * devices); false when / is on no block device: an initramfs before the root
 * is mounted, or a network root.
 */
static bool root_devices(struct names *out)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL, num[64] = "", source[PATH_MAX] = "", link[128], dir[PATH_MAX];
	size_t cap = 0;
	struct stat st;

	out->count = 0;
	if (!f)
		return false;
	while (getline(&line, &cap, f) > 0) {
		char *fields[64], *save = NULL, *tok;
		int n = 0, sep = -1;

		for (tok = strtok_r(line, " \n", &save); tok && n < 64; tok = strtok_r(NULL, " \n", &save)) {
			if (sep < 0 && !strcmp(tok, "-"))
				sep = n;
			fields[n++] = tok;
		}
		if (n < 5 || sep < 0)
			continue;
		unescape(fields[4]);
		if (strcmp(fields[4], "/"))
			continue;
		snprintf(num, sizeof(num), "%s", fields[2]);
		snprintf(source, sizeof(source), "%s", sep + 2 < n ? fields[sep + 2] : "");
		unescape(source);
	}
	free(line);
	fclose(f);
	if (!num[0])
		return false;
	/* btrfs and others report an anonymous 0:N: take the device the mount names. */
	if (!strncmp(num, "0:", 2) && !strncmp(source, "/dev/", 5) && !stat(source, &st) && S_ISBLK(st.st_mode))
		snprintf(num, sizeof(num), "%u:%u", major(st.st_rdev), minor(st.st_rdev));
	snprintf(link, sizeof(link), "/sys/dev/block/%s", num);
	if (!realpath(link, dir))
		return false;
	with_underlying(basename(dir), out);
	return true;
}

/* ---- the probe ---- */

/* Makes the labelled device read-only (BLKROSET), unless it is already. */
static bool set_readonly(const char *node)
{
	int fd = open(node, O_RDONLY | O_DIRECT | O_CLOEXEC), ro = 0, one = 1;
	bool ok;

	if (fd < 0)
		return false;
	ok = !ioctl(fd, BLKROGET, &ro) && (ro || !ioctl(fd, BLKROSET, &one));
	close(fd);
	return ok;
}

/* Reads, decides, protects; prints nothing for a device that is no DPSR drive or on any error. */
static void probe(const char *node, bool protect)
{
	static struct label label;
	char labelled_node[PATH_BUF];
	struct block_dev dev, labelled;
	struct names roots;
	struct facts f = { 0 };
	struct decision d;

	if (!resolve(node, &dev))
		return;
	labelled = dev;
	snprintf(labelled_node, sizeof(labelled_node), "%s", node);
	if (!label_at(node, &label) || !label.pair_name) {
		if (!dev.is_partition)
			return;
		snprintf(labelled_node, sizeof(labelled_node), "/dev/%s", dev.disk);
		if (!resolve(labelled_node, &labelled) || !label_at(labelled_node, &label) || !label.pair_name)
			return;
		f.label_on_parent = true;
	}
	f.pair_name = label.pair_name;
	f.source_present = source_present(&label.source, &labelled);
	f.holds_root = root_devices(&roots) ? has_name(&roots, labelled.name) : -1;
	d = decide(&f);
	if (d.set_readonly && protect && !set_readonly(labelled_node))
		return;
	print_decision(&f, &d, stdout);
}

static const char *arg_or_null(const char *s)
{
	return strcmp(s, "-") ? s : NULL;
}

int main(int argc, char **argv)
{
	if (argc == 6 && !strcmp(argv[1], "--decide")) {
		struct facts f = { .pair_name = argv[2], .label_on_parent = !strcmp(argv[3], "1"),
				   .source_present = !strcmp(argv[4], "1"),
				   .holds_root = !strcmp(argv[5], "-") ? -1 : !strcmp(argv[5], "1") };
		struct decision d = decide(&f);

		print_decision(&f, &d, stdout);
		printf("SET_READONLY=%d\n", d.set_readonly ? 1 : 0);
		return 0;
	}
	if (argc == 12 && !strcmp(argv[1], "--is-source")) {
		struct recorded_source r = { atoll(argv[2]), argv[3], arg_or_null(argv[4]), arg_or_null(argv[5]), arg_or_null(argv[6]) };
		struct candidate c = { .size_sectors = atoll(argv[7]), .name = argv[8], .wwid = arg_or_null(argv[9]),
				       .serial = arg_or_null(argv[10]), .loop_backing_file = arg_or_null(argv[11]) };

		return puts(is_recorded_source(&r, &c) ? "yes" : "no") < 0;
	}
	if (argc == 2 && !strcmp(argv[1], "--root-devices")) {
		static struct names roots;

		if (root_devices(&roots))
			for (int i = 0; i < roots.count; i++)
				puts(roots.name[i]);
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "--set-readonly"))
		probe(argv[2], true);
	else if (argc == 2 && argv[1][0] != '-')
		probe(argv[1], false);
	else
		fputs("usage: dpsr-udev-probe [--set-readonly] DEVNAME\n", stderr);
	return 0; /* never fails the udev event */
}
