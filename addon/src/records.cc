// Reading a batch of ring records as extents, for the tracker's common case
// (src/kernel/tracker.ts): plain writes to one disk under one slot mask.
// Read one at a time in JS a record cost more than all the rest of its way
// through the daemon; here the whole batch is a pass over the memory it sits in.
#include <linux/types.h>

#include <cstring>

#include "dpsr.h"
#include "errors.h"
#include "exports.h"

namespace {

constexpr __u16 kReqOpDiscard = 3, kReqOpSecureErase = 5;  // REQ_OP_* (blk_types.h)
constexpr double kMaxSector = 4503599627370496.0;          // 2^52: exact in a double, with room to add

// plainWrites(batch, starts, ends, summary) -> extents, or -1: when every
// record of the batch is a write (no discard, no DPSR_REC_UNKNOWN) of the same
// disk under the same slot mask, writes their ranges [sector, sector +
// sectors) in order to starts and ends (a record that starts inside the one
// before is folded into it; empty ones are left out) and summary = [dev,
// slotMask, sectors of all records, lowest start, highest end]. -1 asks the
// caller to read the records one by one (discards keep their order there).
Napi::Value PlainWrites(const Napi::CallbackInfo &info) {
	Napi::Env env = info.Env();
	const char *usage = "plainWrites(batch: Uint8Array, starts: Float64Array, ends: Float64Array, summary: Float64Array(5))";
	if (info.Length() < 4 || !info[0].IsTypedArray() || !info[1].IsTypedArray() || !info[2].IsTypedArray() || !info[3].IsTypedArray())
		return ThrowUsage(env, usage);
	Napi::TypedArray batch = info[0].As<Napi::TypedArray>(), sa = info[1].As<Napi::TypedArray>(),
			 ea = info[2].As<Napi::TypedArray>(), sum = info[3].As<Napi::TypedArray>();
	const size_t records = batch.ByteLength() / sizeof(struct dpsr_record);
	if (batch.TypedArrayType() != napi_uint8_array || sa.TypedArrayType() != napi_float64_array ||
	    ea.TypedArrayType() != napi_float64_array || sum.TypedArrayType() != napi_float64_array ||
	    sa.ElementLength() < records || ea.ElementLength() < records || sum.ElementLength() < 5)
		return ThrowUsage(env, usage);
	const uint8_t *p = static_cast<const uint8_t *>(batch.ArrayBuffer().Data()) + batch.ByteOffset();
	double *starts = sa.As<Napi::Float64Array>().Data(), *ends = ea.As<Napi::Float64Array>().Data();
	double *summary = sum.As<Napi::Float64Array>().Data();
	if (records == 0) return Napi::Number::New(env, -1);
	struct dpsr_record first;
	memcpy(&first, p, sizeof(first));
	size_t n = 0;
	double sectors = 0, lowest = kMaxSector, highest = 0;
	for (size_t i = 0; i < records; i++) {
		struct dpsr_record r;
		memcpy(&r, p + i * sizeof(r), sizeof(r));  // a copied batch need not be aligned
		if (r.op == kReqOpDiscard || r.op == kReqOpSecureErase || (r.flags & DPSR_REC_UNKNOWN) || r.dev != first.dev ||
		    r.slot_mask != first.slot_mask || (double)r.sector >= kMaxSector)
			return Napi::Number::New(env, -1);
		if (r.sectors == 0) continue;
		const double start = (double)r.sector, end = start + r.sectors;
		sectors += r.sectors;
		if (start < lowest) lowest = start;
		if (end > highest) highest = end;
		if (n > 0 && start >= starts[n - 1] && start <= ends[n - 1]) {
			if (end > ends[n - 1]) ends[n - 1] = end;  // sequential or repeated: one extent
			continue;
		}
		starts[n] = start;
		ends[n] = end;
		n++;
	}
	summary[0] = first.dev;
	summary[1] = first.slot_mask;
	summary[2] = sectors;
	summary[3] = n > 0 ? lowest : 0;
	summary[4] = highest;
	return Napi::Number::New(env, (double)n);
}

}  // namespace

void InitRecords(Napi::Env env, Napi::Object exports) {
	exports.Set("plainWrites", Napi::Function::New(env, PlainWrites));
}
