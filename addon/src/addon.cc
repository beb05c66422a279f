// dpsr's native addon: BPF tracking objects, ring buffer delivery, and the
// block-device syscalls Node lacks, batched I/O, NBD exports (libnbd). Mechanism only; policy lives in src/.
#include "exports.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
	InitTracking(env, exports);
	InitRingReader(env, exports);
	InitSyscalls(env, exports);
	InitBatchIo(env, exports);
	InitExtents(env, exports);
	InitRecords(env, exports);
	InitNbd(env, exports);
	return exports;
}

NODE_API_MODULE(dpsr, Init)
