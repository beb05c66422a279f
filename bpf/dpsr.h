/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Layouts shared by the BPF programs and user space: the ring record, the
 * map values and their limits. Fixed-width types only; src/kernel-abi.ts
 * mirrors them and a test pins every size and offset.
 */
#ifndef DPSR_H
#define DPSR_H

#define DPSR_MAX_SLOTS		32	/* tracked ranges; bit i of a disk's mask */
#define DPSR_MAX_RINGS		8	/* consumers; bit r of a slot's ring mask */
#define DPSR_BITMAP_WORDS	1024	/* 65,536 chunks per slot and epoch */
#define DPSR_SPAN_WORDS		16	/* a wider write marks the whole slot */

/* dpsr_record.flags */
#define DPSR_REC_UNKNOWN	1	/* a write without a range (REQ_OP_DRV_OUT; a multi-range */
					/* discard whose bios could not all be read) */
#define DPSR_REC_ERROR		2	/* completed with an error status */

/* One completed write, as seen at block_rq_complete; a multi-range discard
 * gives one record per bio. */
struct dpsr_record {
	__u64 sector;		/* absolute on the disk, 512-byte units */
	__u32 sectors;		/* completed by this call: partial completions happen */
	__u32 dev;		/* the disk's dev_t, kernel encoding (major << 20 | minor) */
	__u16 op;		/* REQ_OP_* */
	__u16 flags;		/* DPSR_REC_* */
	__u32 slot_mask;	/* slots whose range the write touched */
};

/* A tracked range of one disk: the whole disk or one partition. */
struct dpsr_slot {
	__u64 start_sector;	/* absolute on the disk */
	__u64 end_sector;	/* exclusive */
	__u32 disk_dev;
	__u32 ring_mask;	/* consumers that receive its records; 0 = free */
	__u32 chunk_shift;	/* log2 of the sectors one bitmap bit covers */
	__u32 pad;
};

/* The slots of one disk, keyed by the disk's dev_t. */
struct dpsr_disk {
	__u32 slot_mask;
	__u32 pad;
};

/* Monotonic per slot (per-CPU; user space sums). */
struct dpsr_slot_stats {
	__u64 records;		/* completions that touched the range */
	__u64 sectors;		/* their sectors, clipped to the range */
	__u64 disk_sectors;	/* every completed write sector on the disk: */
				/* compared with the disk's /sys stat */
	__u64 unknown;		/* writes without a range */
};

/* Monotonic per consumer ring (per-CPU). */
struct dpsr_ring_stats {
	__u64 records;
	__u64 drops;
};

/* One epoch's coarse bitmap of one slot. */
struct dpsr_bitmap {
	__u64 whole;		/* a write too wide for the words, or without a range */
	__u64 words[DPSR_BITMAP_WORDS];
};

/* Who reads a ring (user space only): lets a successor reclaim the ring of
 * a consumer that died. */
struct dpsr_consumer {
	__u32 pid;		/* 0: free */
	__u32 flags;		/* DPSR_CONSUMER_* */
	__u64 start_time;	/* /proc/PID/stat starttime: guards against pid reuse */
};

#define DPSR_CONSUMER_OWNER	1	/* the tracker's ring: outlives its processes */

/*
 * The issue log: a second, independent record of where writes go. Each
 * ranged write request of a tracked disk is logged at issue (`issued`, keyed
 * by the request's address) and removed once its last completion is seen. An
 * entry still there when its request is issued again, or when a completion
 * does not continue it, lost a completion: it moves to `missed` (keyed by
 * dpsr_missed_key) until the owner has saved where it was. A shortfall of the
 * counts is then placed at those writes instead of whole regions.
 */
#define DPSR_ISSUED_ENTRIES	8192	/* writes in flight on tracked disks, and lost ones not yet re-issued */
#define DPSR_MISSED_ENTRIES	1024	/* lost completions the owner has not taken yet */

/* dpsr_issued.flags */
#define DPSR_ISSUED_UNPLACED	1	/* a multi-range discard: not one extent, cannot be placed */
#define DPSR_ISSUED_REQUEUED	2	/* given back to be issued again, not completed */

struct dpsr_issued {
	__u64 sector;		/* absolute on the disk: the first sector not seen completed */
	__u64 issued_ns;	/* bpf_ktime_get_ns() at issue (CLOCK_MONOTONIC): names this issue */
	__u32 dev;		/* the disk's dev_t, kernel encoding */
	__u32 sectors;		/* from `sector` to the request's end: not seen completed */
	__u16 op;		/* REQ_OP_* */
	__u16 flags;		/* DPSR_ISSUED_* */
	__u32 pad;
};

/*
 * The issue log's fast path (v5 on): an array indexed by the request's tag.
 * A request is the same static object for each tag (internal_tag under an
 * I/O scheduler, the driver tag without one) of each hardware queue, so its
 * entry is found by index instead of hashed by address. A disk's entries are
 * the DPSR_TAGS_PER_DISK from its lowest slot's index times that; a request
 * whose tag lies beyond, or has none, is logged in `issued` as before. The
 * programs bump `seq` to odd before they rewrite an entry and to even after,
 * so user space can tell a torn copy.
 */
#define DPSR_TAGS_PER_DISK	1024

struct dpsr_tag_entry {
	__u64 seq;		/* odd while being rewritten */
	__u64 rq;		/* the request's address (the `missed` key's rq); 0: empty */
	struct dpsr_issued e;	/* as in `issued` */
};

/* One lost completion: its request, its issue, its first unseen sector
 * (a request can lose a partial completion and later its last one). */
struct dpsr_missed_key {
	__u64 rq;
	__u64 issued_ns;
	__u64 sector;
};

/* The issue log's counter (one entry, never reset). */
struct dpsr_log_stats {
	__u64 full;		/* issues or lost completions the log could not hold */
};

struct dpsr_control {
	__u32 epoch;		/* 0 or 1: the bitmaps and drop counters in use */
	__u32 owner_clean;	/* reserved (unused since the owner releases ring records only once persisted) */
};

#endif /* DPSR_H */
