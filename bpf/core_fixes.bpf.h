/* SPDX-License-Identifier: GPL-2.0 */
/* Kernel differences, kept in one place (as bcc's libbpf-tools do). */
#ifndef CORE_FIXES_BPF_H
#define CORE_FIXES_BPF_H

#include <bpf/bpf_core_read.h>

/*
 * Kernel 5.17 removed request->rq_disk in favour of request->q->disk
 * (commit f3fa33acca9f "block: remove the ->rq_disk field in struct request").
 */
struct request___rq_disk {
	struct gendisk *rq_disk;
} __attribute__((preserve_access_index));

static __always_inline struct gendisk *request_disk(struct request *rq)
{
	struct request___rq_disk *old = (void *)rq;

	if (bpf_core_field_exists(old->rq_disk))
		return BPF_CORE_READ(old, rq_disk);
	return rq->q->disk;	/* a tp_btf argument: direct loads, no probe-read call */
}

#endif /* CORE_FIXES_BPF_H */
