/* The DPSR label (src/label.ts), as the udev probe needs it: the pair's name
 * and the identity of its source. */
#ifndef DPSR_LABEL_H
#define DPSR_LABEL_H
#include <stdbool.h>

#define LABEL_BYTES 4096

/* What label.ts's DriveLabel.source holds that tells the source apart. NULL: none recorded. */
struct recorded_source {
	long long size_sectors;
	const char *name, *wwid, *serial, *loop_backing_file;
};

struct label {
	char text[LABEL_BYTES];  /* the payload; the strings below point into it */
	double seq;              /* NaN when it is no number */
	const char *pair_name;   /* NULL when the label is not one dpsr could have written */
	struct recorded_source source;
};

/* Reads both slots of the device at `path`; true and `out` set to the newest
 * valid label (plausible or not: out->pair_name says), false when it has none. */
bool label_at(const char *path, struct label *out);

#endif
