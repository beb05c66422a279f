// SPDX-License-Identifier: GPL-2.0
/*
 * Write tracking on the block layer: for tracked disks, every completed
 * write becomes a record in each interested consumer's ring buffer, and
 * every issued or completed write sets bits in the current epoch's coarse
 * bitmap, so a record that is dropped or never made still leaves a trace.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "core_fixes.bpf.h"
#include "dpsr.h"

#define REQ_OP_MASK ((1 << 8) - 1)	/* a macro in blk_types.h, so not in BTF */
/* Bios of one multi-range discard placed one by one: the most discard
 * segments a queue takes (NVME_DSM_MAX_RANGES, virtio_blk's
 * MAX_DISCARD_SEGMENTS). */
#define DPSR_MAX_DISCARD_BIOS 256
#define EEXIST 17	/* errno values are macros, not in BTF */
#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x) = (v))

char LICENSE[] SEC("license") = "GPL";

/* Test-only: skip every Nth completion on a tracked disk, as the kernel was
 * seen to skip a program now and then. Zero in production: the verifier
 * removes the branch. */
const volatile __u32 skip_every_n = 0;
__u64 completions_seen = 0;
/* Test-only: every Nth record is emitted malformed (too short), as a reader
 * must be ready to meet. */
const volatile __u32 malformed_every_n = 0;
__u64 records_made = 0;
/* Off only to stand in for a version without the issue log (tests). */
const volatile bool log_issues = true;
/* Entries of the tag-indexed log per disk: 0 logs every request in the hash
 * (as v4 did; tests), fewer than DPSR_TAGS_PER_DISK sends the tags beyond to
 * the hash (tests). */
const volatile __u32 tags_per_disk = DPSR_TAGS_PER_DISK;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DPSR_MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct dpsr_disk);
} disks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DPSR_MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct dpsr_slot);
} slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DPSR_MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct dpsr_slot_stats);
} slot_stats SEC(".maps");

/* Key: slot * 2 + epoch. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DPSR_MAX_SLOTS * 2);
	__type(key, __u32);
	__type(value, struct dpsr_bitmap);
} bitmaps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dpsr_control);
} control SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DPSR_MAX_RINGS);
	__type(key, __u32);
	__type(value, struct dpsr_ring_stats);
} ring_stats SEC(".maps");

/* When a completed write last touched each slot (bpf_ktime_get_ns, per CPU;
 * user space takes the latest): a sync's quiet period counts from it, so a
 * source idle for minutes is not waited on again. Pinned from v4 on. The
 * time is the clock read at the tick's first completion on that CPU
 * (clock_cache): up to one tick early. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DPSR_MAX_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} last_write SEC(".maps");

/* The clock read once per tick and CPU, for last_write: a TSC read cost
 * about 28 ns per write on a VM, half the programs' clock time. Not pinned:
 * only the programs that made it use it. */
struct clock_stamp {
	__u64 jiffies;
	__u64 ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct clock_stamp);
} clock_cache SEC(".maps");

/* Drops per ring and epoch (key: ring * 2 + epoch), cleared by the owner
 * once no program can still count into that epoch. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DPSR_MAX_RINGS * 2);
	__type(key, __u32);
	__type(value, __u64);
} epoch_drops SEC(".maps");

/* The issue log (dpsr.h): sized before load; user space reads `issued`,
 * and deletes from `missed` what it has saved. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DPSR_ISSUED_ENTRIES);
	__type(key, __u64);
	__type(value, struct dpsr_issued);
} issued SEC(".maps");

/* The issue log's fast path (dpsr.h): by disk and tag, pinned from v5 on. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DPSR_MAX_SLOTS * DPSR_TAGS_PER_DISK);
	__type(key, __u32);
	__type(value, struct dpsr_tag_entry);
} issued_by_tag SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DPSR_MISSED_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);	/* rarely used: memory only when a completion is lost */
	__type(key, struct dpsr_missed_key);
	__type(value, struct dpsr_issued);
} missed SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dpsr_log_stats);
} log_stats SEC(".maps");

/* Used by user space only; pinned with the rest. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DPSR_MAX_RINGS);
	__type(key, __u32);
	__type(value, struct dpsr_consumer);
} consumers SEC(".maps");

/* One ring buffer per consumer, created by user space at any size. */
struct ring {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, DPSR_MAX_RINGS);
	__type(key, __u32);
	__array(values, struct ring);
} rings SEC(".maps");

static __always_inline bool is_ranged_write(__u32 op)
{
	return op == REQ_OP_WRITE || op == REQ_OP_DISCARD ||
	       op == REQ_OP_SECURE_ERASE || op == REQ_OP_WRITE_ZEROES ||
	       op == REQ_OP_ZONE_APPEND;
}

static __always_inline __u32 current_epoch(void)
{
	__u32 zero = 0;
	struct dpsr_control *ctl = bpf_map_lookup_elem(&control, &zero);

	return ctl ? READ_ONCE(ctl->epoch) & 1 : 0;
}

/* CLOCK_MONOTONIC at this tick's first completion on this CPU. The entry is
 * this CPU's alone, and the kernel never runs the program nested on one CPU
 * (its recursion guard), so no run sees another's half-written stamp. */
static __always_inline __u64 tick_time_ns(void)
{
	__u32 zero = 0;
	struct clock_stamp *c = bpf_map_lookup_elem(&clock_cache, &zero);
	__u64 j = bpf_jiffies64();

	if (!c)
		return bpf_ktime_get_ns();
	if (c->jiffies != j) {
		c->ns = bpf_ktime_get_ns();
		c->jiffies = j;
	}
	return c->ns;
}

/* Sets the bits of [start, end) (absolute sectors, inside the slot). */
static __always_inline void mark_chunks(const struct dpsr_slot *slot, __u32 index,
					__u32 epoch, __u64 start, __u64 end)
{
	__u32 key = index * 2 + epoch;
	struct dpsr_bitmap *bm = bpf_map_lookup_elem(&bitmaps, &key);
	__u64 first, last;
	__u32 k;

	if (!bm)
		return;
	if (end <= start) {
		WRITE_ONCE(bm->whole, 1);
		return;
	}
	first = (start - slot->start_sector) >> (slot->chunk_shift & 63);
	last = (end - 1 - slot->start_sector) >> (slot->chunk_shift & 63);
	if ((last >> 6) - (first >> 6) >= DPSR_SPAN_WORDS ||
	    last >= DPSR_BITMAP_WORDS * 64) {
		WRITE_ONCE(bm->whole, 1);
		return;
	}
	for (k = 0; k <= DPSR_SPAN_WORDS; k++) {
		__u64 w = (first >> 6) + k;
		__u64 lo, hi, mask;

		if (w > (last >> 6))
			break;
		lo = w == (first >> 6) ? first & 63 : 0;
		hi = w == (last >> 6) ? last & 63 : 63;
		mask = (~0ULL >> (63 - hi)) & (~0ULL << lo);
		/* the mask bounds the index for the verifier; `last` was checked.
		 * A plain read first: hot chunks are mostly set already, and an
		 * atomic would bounce the cache line between CPUs for nothing. */
		__u64 *word = &bm->words[w & (DPSR_BITMAP_WORDS - 1)];

		if ((READ_ONCE(*word) & mask) != mask)
			__sync_fetch_and_or(word, mask);
	}
}

struct visit_ctx {
	__u64 start;		/* the write, absolute sectors */
	__u64 end;
	__u64 counted;		/* sectors to count on the disk (the kernel's stat) */
	__u32 slot_mask;	/* the disk's slots */
	__u32 epoch;
	__u32 touched;		/* out: slots whose range the write touched */
	__u32 ring_mask;	/* out: their consumers */
	__u64 now_ns;		/* at completion: when (req_ctx.now_ns) */
	bool unknown;		/* a write without a range */
	bool completed;		/* at completion (count), not at issue */
};

/* bpf_loop callback, once per slot index: the verifier checks the body once
 * instead of once per unrolled iteration and state. */
static long visit_slot(__u32 i, struct visit_ctx *c)
{
	struct dpsr_slot_stats *st = NULL;
	struct dpsr_slot *slot;
	__u64 s, e;

	if (i >= DPSR_MAX_SLOTS || !(c->slot_mask >> i))
		return 1;	/* no slot left */
	if (!(c->slot_mask & (1U << i)))
		return 0;
	slot = bpf_map_lookup_elem(&slots, &i);
	if (!slot)
		return 0;
	if (c->completed)
		st = bpf_map_lookup_elem(&slot_stats, &i);
	if (st)
		st->disk_sectors += c->counted;
	if (c->unknown) {
		mark_chunks(slot, i, c->epoch, 0, 0);
		if (st)
			st->unknown++;
	} else {
		s = c->start > slot->start_sector ? c->start : slot->start_sector;
		e = c->end < slot->end_sector ? c->end : slot->end_sector;
		if (s >= e)
			return 0;
		mark_chunks(slot, i, c->epoch, s, e);
		if (st) {
			st->records++;
			st->sectors += e - s;
		}
	}
	if (c->completed) {
		__u64 *t = bpf_map_lookup_elem(&last_write, &i);

		if (t)
			*t = c->now_ns;
	}
	c->touched |= 1U << i;
	c->ring_mask |= slot->ring_mask;
	return 0;
}

/* Index of the only bit set in a non-zero mask (BPF has no ctz). */
static __always_inline __u32 only_bit(__u32 mask)
{
	__u32 i = 0;

	if (mask & 0xffff0000) i += 16;
	if (mask & 0xff00ff00) i += 8;
	if (mask & 0xf0f0f0f0) i += 4;
	if (mask & 0xcccccccc) i += 2;
	if (mask & 0xaaaaaaaa) i += 1;
	return i;
}

/* Most disks have one slot, most slots one consumer: skip the loop then. */
static __always_inline void visit_all(struct visit_ctx *v)
{
	if (v->slot_mask && !(v->slot_mask & (v->slot_mask - 1)))
		visit_slot(only_bit(v->slot_mask), v);
	else
		bpf_loop(DPSR_MAX_SLOTS, visit_slot, v, 0);
}

static __always_inline struct dpsr_disk *tracked_disk(struct request *rq, __u32 *dev)
{
	struct gendisk *disk = request_disk(rq);

	if (!disk)
		return NULL;
	*dev = ((__u32)disk->major << 20) | (__u32)disk->first_minor;
	return bpf_map_lookup_elem(&disks, dev);
}

struct emit_ctx {
	struct dpsr_record rec;
	__u32 ring_mask;
	__u32 epoch;
	bool malformed;		/* test-only: a record too short to read */
};

/* A malformed record (test-only): the first 16 bytes of a record. */
struct dpsr_short_record {
	__u64 sector;
	__u32 sectors;
	__u32 dev;
};

/* A record's footprint in a ring buffer: its 8-byte header, rounded up to 8. */
#define DPSR_RING_RECORD_BYTES ((sizeof(struct dpsr_record) + 8 + 7) / 8 * 8)

static long emit_one(__u32 r, struct emit_ctx *c)
{
	struct dpsr_ring_stats *rs;
	struct dpsr_record *out;
	__u32 drop_key;
	void *ring;
	__u64 flags, avail, quarter;

	if (r >= DPSR_MAX_RINGS || !(c->ring_mask >> r))
		return 1;
	if (!(c->ring_mask & (1U << r)))
		return 0;
	ring = bpf_map_lookup_elem(&rings, &r);
	if (!ring)
		return 0;	/* the consumer went away */
	rs = bpf_map_lookup_elem(&ring_stats, &r);
	if (malformed_every_n && c->malformed) {
		struct dpsr_short_record *bad = bpf_ringbuf_reserve(ring, sizeof(*bad), 0);

		if (bad) {
			bad->sector = c->rec.sector;
			bad->sectors = c->rec.sectors;
			bad->dev = c->rec.dev;
			bpf_ringbuf_submit(bad, 0);
		}
		return 0;
	}
	out = bpf_ringbuf_reserve(ring, sizeof(*out), 0);
	if (!out) {
		__u64 *drops;

		drop_key = r * 2 + c->epoch;
		drops = bpf_map_lookup_elem(&epoch_drops, &drop_key);
		if (drops)
			(*drops)++;
		if (rs)
			rs->drops++;
		return 0;
	}
	*out = c->rec;
	/* Wake the consumer only when this record fills another quarter of
	 * the ring; it polls on a short timer otherwise. Waking on every
	 * record past a threshold (an irq_work per write while the owner
	 * holds a tick's records unreleased) quadrupled the p99 latency of
	 * writes at 100k/s. Two CPUs racing across a boundary may both wake
	 * or neither: the timer covers it. */
	avail = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);
	quarter = bpf_ringbuf_query(ring, BPF_RB_RING_SIZE) / 4;
	flags = quarter && avail / quarter != (avail - DPSR_RING_RECORD_BYTES) / quarter ?
		BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(out, flags);
	if (rs)
		rs->records++;
	return 0;
}

/* One write request as the programs see it, whichever range they place. */
struct req_ctx {
	__u32 dev;
	__u32 op;
	__u32 slot_mask;	/* the disk's slots */
	__u32 epoch;
	bool completed;		/* at completion (count, record), not at issue */
	bool error;
	__u64 now_ns;		/* at completion: tick_time_ns(), once per call */
};

/*
 * Places [start, end) (absolute sectors): bitmaps, and at completion the
 * counters and one record per interested ring. `unknown`: no range is known,
 * the slots become suspect. `counted`: the sectors the kernel's own stat
 * counts for this piece (blk_account_io_completion: nr_bytes >> 9 per
 * completion, passthrough not at all).
 */
static __always_inline void place(const struct req_ctx *q, __u64 start, __u64 end,
				  bool unknown, __u64 counted)
{
	struct visit_ctx v = {};
	struct emit_ctx em = {};

	v.start = start;
	v.end = end;
	v.counted = counted;
	v.slot_mask = q->slot_mask;
	v.epoch = q->epoch;
	v.unknown = unknown;
	v.completed = q->completed;
	v.now_ns = q->now_ns;
	visit_all(&v);
	if (!q->completed || !v.touched || (end == start && !unknown))
		return;

	em.rec.sector = start;
	em.rec.sectors = end - start;
	em.rec.dev = q->dev;
	em.rec.op = q->op;
	em.rec.flags = (unknown ? DPSR_REC_UNKNOWN : 0) | (q->error ? DPSR_REC_ERROR : 0);
	em.rec.slot_mask = v.touched;
	em.ring_mask = v.ring_mask;
	em.epoch = v.epoch;
	em.malformed = malformed_every_n &&
		__sync_fetch_and_add(&records_made, 1) % malformed_every_n == malformed_every_n - 1;
	if (!(em.ring_mask & (em.ring_mask - 1)))
		emit_one(only_bit(em.ring_mask), &em);
	else
		bpf_loop(DPSR_MAX_RINGS, emit_one, &em, 0);
}

struct walk_ctx {
	struct req_ctx q;
	struct bio *bio;	/* the next bio to place */
	__u64 left;		/* bytes not placed yet */
};

/* bpf_loop callback, once per bio of a multi-range discard. */
static long place_bio(__u32 i, struct walk_ctx *w)
{
	struct bio *bio = w->bio;
	__u64 sector;
	__u32 size;

	if (!w->left || !bio)
		return 1;
	if (BPF_CORE_READ_INTO(&sector, bio, bi_iter.bi_sector) ||
	    BPF_CORE_READ_INTO(&size, bio, bi_iter.bi_size) ||
	    BPF_CORE_READ_INTO(&w->bio, bio, bi_next))
		return 1;	/* unreadable: what is left becomes unknown */
	if (size > w->left)
		size = w->left;
	place(&w->q, sector, sector + (size >> 9), false, size >> 9);
	w->left -= size;
	return 0;
}

/*
 * Places `bytes` of a request from its start: one range, except for a
 * discard request with several segments. On a queue that takes several
 * discard segments (max_discard_segments > 1: NVMe, virtio-blk), the block
 * layer merges discard bios that need not be contiguous (blk_try_merge
 * returns ELEVATOR_DISCARD_MERGE, bio_attempt_discard_merge appends the bio
 * and counts a segment); __sector is the first bio's and the length the
 * sum, so each bio's own range is placed. At completion rq->bio is the first
 * bio not yet completed, advanced past what earlier partial completions
 * took (blk_update_request), so `bytes` are taken from it on. A chain longer
 * than the bound, or unreadable, leaves the rest as a write without a range:
 * never placed where it was not.
 */
static __always_inline void place_request(struct walk_ctx *w, struct request *rq, __u32 bytes)
{
	__u64 start = rq->__sector;

	if (!is_ranged_write(w->q.op)) {
		place(&w->q, start, start + (bytes >> 9), true, 0);
		return;
	}
	/* blk_rq_nr_discard_segments(); one segment: contiguous bios, if several
	 * (ll_new_hw_segment adds none for a discard merged at its end). */
	if ((w->q.op != REQ_OP_DISCARD && w->q.op != REQ_OP_SECURE_ERASE) ||
	    rq->nr_phys_segments <= 1) {
		place(&w->q, start, start + (bytes >> 9), false, bytes >> 9);
		return;
	}
	w->bio = BPF_CORE_READ(rq, bio);	/* read as a plain value: the walk reads bios by probe */
	w->left = bytes;
	bpf_loop(DPSR_MAX_DISCARD_BIOS, place_bio, w, 0);
	if (w->left)
		place(&w->q, 0, 0, true, w->left >> 9);
}

static __always_inline bool start_request(struct walk_ctx *w, struct request *rq)
{
	struct dpsr_disk *disk;

	w->q.op = rq->cmd_flags & REQ_OP_MASK;
	if (!(w->q.op & 1))		/* op_is_write() */
		return false;
	disk = tracked_disk(rq, &w->q.dev);
	if (!disk)
		return false;
	w->q.slot_mask = READ_ONCE(disk->slot_mask);
	w->q.epoch = current_epoch();
	return true;
}

static __always_inline void log_full(void)
{
	__u32 zero = 0;
	struct dpsr_log_stats *ls = bpf_map_lookup_elem(&log_stats, &zero);

	if (ls)
		__sync_fetch_and_add(&ls->full, 1);
}

/* [e->sector, e->sector + e->sectors) of request `rq` was written unseen. */
static __always_inline void log_missed(__u64 rq, const struct dpsr_issued *e)
{
	struct dpsr_missed_key key = { .rq = rq, .issued_ns = e->issued_ns, .sector = e->sector };
	long err;

	if (!e->sectors)
		return;
	err = bpf_map_update_elem(&missed, &key, e, BPF_NOEXIST);
	if (err && err != -EEXIST)	/* logged already */
		log_full();
}

/*
 * Where a request's use is logged: its entry in `issued_by_tag` (tag), or
 * else in `issued` under its address (key). The index is the request's tag
 * on its hardware queue (queue_num * nr_tags + tag: unique among the disk's
 * requests in flight), inside its disk's share of the array.
 */
struct log_ref {
	struct dpsr_tag_entry *tag;
	__u64 key;
};

static __always_inline struct log_ref log_ref_of(struct request *rq, __u32 slot_mask)
{
	struct log_ref ref = { .tag = NULL, .key = (__u64)rq };
	struct blk_mq_hw_ctx *hctx = rq->mq_hctx;
	struct blk_mq_tags *tags;
	__u32 index;
	int tag = rq->internal_tag;

	if (!tags_per_disk || !slot_mask || !hctx)
		return ref;
	if (tag >= 0) {
		tags = hctx->sched_tags;
	} else {
		tag = rq->tag;
		tags = hctx->tags;
	}
	if (tag < 0 || !tags)
		return ref;
	index = hctx->queue_num * tags->nr_tags + (__u32)tag;
	if (index >= tags_per_disk || index >= DPSR_TAGS_PER_DISK)
		return ref;
	index += only_bit(slot_mask & -slot_mask) * DPSR_TAGS_PER_DISK;
	ref.tag = bpf_map_lookup_elem(&issued_by_tag, &index);
	return ref;
}

/* The entry of this request, if logged (false: none). */
static __always_inline bool log_get(const struct log_ref *ref, struct dpsr_issued *e)
{
	struct dpsr_issued *p;

	if (ref->tag) {
		if (ref->tag->rq != ref->key || !ref->tag->e.sectors)
			return false;
		*e = ref->tag->e;
		return true;
	}
	p = bpf_map_lookup_elem(&issued, &ref->key);
	if (!p)
		return false;
	*e = *p;
	return true;
}

/* Rewrites a tag entry between two bumps of its sequence word. */
static __always_inline void tag_write(struct dpsr_tag_entry *t, __u64 rq, const struct dpsr_issued *e)
{
	__u64 seq = READ_ONCE(t->seq);

	WRITE_ONCE(t->seq, seq + 1);
	asm volatile("" ::: "memory");
	t->rq = rq;
	t->e = *e;
	asm volatile("" ::: "memory");
	WRITE_ONCE(t->seq, seq + 2);
}

/* Replaces this request's entry with `e`, or removes it (NULL). */
static __always_inline void log_put(const struct log_ref *ref, const struct dpsr_issued *e)
{
	struct dpsr_issued none = {};

	if (ref->tag)
		tag_write(ref->tag, e ? ref->key : 0, e ? e : &none);
	else if (!e)
		bpf_map_delete_elem(&issued, &ref->key);
	else if (bpf_map_update_elem(&issued, &ref->key, e, BPF_ANY))
		log_full();
}

/*
 * At issue: logs this use of the request, unless it has no range to place
 * (passthrough; zone append, written where the device chooses) or no data.
 * An entry still there lost the completion of its previous use (a request
 * is reused only once completed), unless it was requeued and is issued again
 * as it was; a tag entry of another request lost its completion too (the
 * tags were reallocated). The common case costs one store (a tag) or one
 * update (the hash).
 */
static __always_inline void log_issue(const struct req_ctx *q, struct request *rq, __u64 sector, __u32 bytes)
{
	struct log_ref ref = log_ref_of(rq, q->slot_mask);
	struct dpsr_issued e = {}, lost;
	bool loggable = q->op != REQ_OP_ZONE_APPEND && is_ranged_write(q->op) && bytes >= 512;
	__u64 owner = ref.key;
	long err = -EEXIST;

	if (loggable) {
		e.sector = sector;
		e.sectors = bytes >> 9;
		e.issued_ns = bpf_ktime_get_ns();
		e.dev = q->dev;
		e.op = q->op;
		e.flags = (q->op == REQ_OP_DISCARD || q->op == REQ_OP_SECURE_ERASE) &&
			  rq->nr_phys_segments > 1 ? DPSR_ISSUED_UNPLACED : 0;
		if (!ref.tag) {
			err = bpf_map_update_elem(&issued, &ref.key, &e, BPF_NOEXIST);
			if (!err)
				return;
		}
	}
	if (err != -EEXIST) {
		log_full();
		return;
	}
	if (ref.tag) {
		owner = ref.tag->rq;
		lost = ref.tag->e;
		if (!owner || !lost.sectors) {
			if (loggable)
				tag_write(ref.tag, ref.key, &e);
			return;
		}
	} else if (!log_get(&ref, &lost)) {
		lost.sectors = 0;
	}
	if (lost.sectors && (owner != ref.key || !(lost.flags & DPSR_ISSUED_REQUEUED) ||
			     lost.sector != sector || lost.sectors != bytes >> 9))
		log_missed(owner, &lost);
	log_put(&ref, loggable ? &e : NULL);
}

/*
 * The request's remaining range ([__sector, +__data_len), before a
 * completion advances it) must continue its logged entry. If it ends
 * elsewhere, the entry is a previous use whose completion was lost: logged
 * as missed and removed (returns false). If it starts later, a partial
 * completion was lost: that part is logged as missed and the entry advanced.
 */
static __always_inline bool log_continues(const struct log_ref *ref, struct dpsr_issued *e, struct request *rq)
{
	__u64 pos = rq->__sector;
	__u64 left = rq->__data_len >> 9;
	struct dpsr_issued lost;

	if (pos + left != e->sector + e->sectors || pos < e->sector) {
		log_missed(ref->key, e);
		log_put(ref, NULL);
		return false;
	}
	if (pos > e->sector) {
		lost = *e;
		lost.sectors = pos - e->sector;
		log_missed(ref->key, &lost);
		e->sector = pos;
		e->sectors = left;
	}
	return true;
}

/* At completion: the last one removes the entry, a partial one advances it. */
static __always_inline void log_complete(struct request *rq, __u32 slot_mask, __u32 nr_bytes)
{
	struct log_ref ref = log_ref_of(rq, slot_mask);
	struct dpsr_issued e;
	__u32 done = nr_bytes >> 9;

	if (!log_get(&ref, &e))
		return;
	if (!log_continues(&ref, &e, rq))
		return;
	if (done >= e.sectors) {
		log_put(&ref, NULL);
		return;
	}
	e.sector += done;
	e.sectors -= done;
	log_put(&ref, &e);
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(dpsr_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	struct walk_ctx w = {};

	if (!start_request(&w, rq))
		return 0;
	if (skip_every_n &&
	    __sync_fetch_and_add(&completions_seen, 1) % skip_every_n == skip_every_n - 1)
		return 0;
	w.q.completed = true;
	w.q.error = error != 0;
	w.q.now_ns = tick_time_ns();
	/* this completion's bytes, not the request's */
	place_request(&w, rq, nr_bytes);
	if (log_issues)
		log_complete(rq, w.q.slot_mask, nr_bytes);
	return 0;
}

/* A request given back to be issued again (the driver was busy, or asked
 * for it): not a lost completion when it comes back unchanged. */
SEC("tp_btf/block_rq_requeue")
int BPF_PROG(dpsr_requeue, struct request *rq)
{
	struct walk_ctx w = {};
	struct log_ref ref;
	struct dpsr_issued e;

	if (!log_issues || !start_request(&w, rq))
		return 0;
	ref = log_ref_of(rq, w.q.slot_mask);
	if (!log_get(&ref, &e))
		return 0;
	if (!log_continues(&ref, &e, rq))
		return 0;
	e.flags |= DPSR_ISSUED_REQUEUED;
	log_put(&ref, &e);
	return 0;
}

/* At issue the bitmaps and the issue log: if the completion's run is
 * skipped, the log places the write and the bits still bound it. */
SEC("tp_btf/block_rq_issue")
int BPF_PROG(dpsr_issue, struct request *rq)
{
	struct walk_ctx w = {};
	__u32 bytes;

	if (!start_request(&w, rq))
		return 0;
	bytes = rq->__data_len;
	place_request(&w, rq, bytes);
	if (log_issues)
		log_issue(&w.q, rq, rq->__sector, bytes);
	return 0;
}
