// Delivers one consumer ring's records to a JS callback, in batches, on the
// libuv loop: a poll handle on the ring's fd (the programs wake it only when
// the ring is filling) and a short timer for the rest. No thread.
//
// Its own consumer over the mmap'ed ring (the layout libbpf's ringbuf.c
// reads), because the owner needs what libbpf cannot do: read records
// without releasing them, and release only what it has persisted
// (`deferRelease`). Whatever was read but not released is read again by the
// next process to open the ring: a kill -9 loses nothing.
#include <bpf/bpf.h>
#include <linux/bpf.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uv.h>

#include <cstring>

#include "dpsr.h"
#include "errors.h"
#include "exports.h"

namespace {

class RingReader : public Napi::ObjectWrap<RingReader> {
public:
	static Napi::Function Define(Napi::Env env) {
		return DefineClass(env, "RingReader",
				   {InstanceMethod("consume", &RingReader::Consume),
				    InstanceMethod("position", &RingReader::Position),
				    InstanceMethod("release", &RingReader::ReleaseTo),
				    InstanceMethod("malformed", &RingReader::Malformed),
				    InstanceMethod("close", &RingReader::Close)});
	}

	// new RingReader(outerFd, index, callback(Buffer), timerMs, maxBatchRecords[, deferRelease])
	RingReader(const Napi::CallbackInfo &info) : Napi::ObjectWrap<RingReader>(info) {
		Napi::Env env = info.Env();
		int64_t outer, index, timer_ms, max_batch;
		if (!ArgInt(info, 0, outer) || !ArgInt(info, 1, index) || info.Length() < 3 ||
		    !info[2].IsFunction() || !ArgInt(info, 3, timer_ms) || !ArgInt(info, 4, max_batch) ||
		    max_batch < 1) {
			ThrowUsage(env, "new RingReader(outerFd, index, callback, timerMs, maxBatchRecords[, deferRelease])");
			return;
		}
		defer_release_ = info.Length() > 5 && info[5].ToBoolean();
		max_records_ = (size_t)max_batch;
		// One batch memory for the reader's life, lent to the callback as a
		// view: a copy and a Buffer per batch cost more than reading them.
		Napi::ArrayBuffer store = Napi::ArrayBuffer::New(env, max_records_ * sizeof(struct dpsr_record));
		store_data_ = static_cast<uint8_t *>(store.Data());
		store_ = Napi::Persistent(store);
		__u32 key = (__u32)index, id = 0;
		if (bpf_map_lookup_elem((int)outer, &key, &id)) {
			ThrowErrno(env, errno, "no consumer ring at index " + std::to_string(index));
			return;
		}
		ring_fd_ = bpf_map_get_fd_by_id(id);
		if (ring_fd_ < 0) {
			ThrowErrno(env, errno, "bpf_map_get_fd_by_id");
			return;
		}
		struct bpf_map_info mi = {};
		__u32 len = sizeof(mi);
		if (bpf_obj_get_info_by_fd(ring_fd_, &mi, &len)) {
			ThrowErrno(env, errno, "bpf_obj_get_info_by_fd (ring)");
			return;
		}
		page_ = (size_t)sysconf(_SC_PAGESIZE);
		mask_ = mi.max_entries - 1;
		// The consumer page is ours to write; producer page and data (mapped
		// twice, so a record never wraps) are read-only.
		void *cons = mmap(nullptr, page_, PROT_READ | PROT_WRITE, MAP_SHARED, ring_fd_, 0);
		if (cons == MAP_FAILED) {
			ThrowErrno(env, errno, "mmap ring consumer page");
			return;
		}
		consumer_pos_ = static_cast<unsigned long *>(cons);
		prod_len_ = page_ + 2 * (size_t)mi.max_entries;
		void *prod = mmap(nullptr, prod_len_, PROT_READ, MAP_SHARED, ring_fd_, page_);
		if (prod == MAP_FAILED) {
			ThrowErrno(env, errno, "mmap ring data");
			return;
		}
		producer_pos_ = static_cast<unsigned long *>(prod);
		data_ = static_cast<uint8_t *>(prod) + page_;
		read_pos_ = __atomic_load_n(consumer_pos_, __ATOMIC_ACQUIRE);

		callback_ = Napi::Persistent(info[2].As<Napi::Function>());
		context_ = new Napi::AsyncContext(env, "dpsr:ring");
		uv_loop_t *loop = nullptr;
		napi_get_uv_event_loop(env, &loop);
		// The ring's fd polls readable while anything is unreleased: with a
		// deferred release that is always, so then the timer alone drives.
		poll_ = new uv_poll_t;
		uv_poll_init(loop, poll_, ring_fd_);
		poll_->data = this;
		if (!defer_release_) uv_poll_start(poll_, UV_READABLE, OnReadable);
		timer_ = new uv_timer_t;
		uv_timer_init(loop, timer_);
		timer_->data = this;
		uv_timer_start(timer_, OnTimer, timer_ms, timer_ms);
		open_ = true;
		Ref();  // alive while the handles are
	}

	~RingReader() {
		Release();
		Unmap();
	}

private:
	// Reads up to one batch from read_pos_ into the batch memory; returns records taken.
	int Fill() {
		size_t n = 0;
		unsigned long prod = __atomic_load_n(producer_pos_, __ATOMIC_ACQUIRE);
		while (read_pos_ < prod && n < max_records_) {
			uint32_t *hdr = reinterpret_cast<uint32_t *>(data_ + (read_pos_ & mask_));
			uint32_t len = __atomic_load_n(hdr, __ATOMIC_ACQUIRE);
			if (len & BPF_RINGBUF_BUSY_BIT) break;  // still being written
			uint32_t size = len & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT);
			if (!(len & BPF_RINGBUF_DISCARD_BIT)) {
				if (size == sizeof(struct dpsr_record)) {
					const uint8_t *p = reinterpret_cast<const uint8_t *>(hdr) + BPF_RINGBUF_HDR_SZ;
					memcpy(store_data_ + n * size, p, size);
					n++;
				} else {
					bad_++;
				}
			}
			read_pos_ += (size + BPF_RINGBUF_HDR_SZ + 7) & ~7UL;
		}
		if (!defer_release_) __atomic_store_n(consumer_pos_, read_pos_, __ATOMIC_RELEASE);
		return (int)n;
	}
	// The first n records of the batch memory, valid until the next Fill.
	Napi::Uint8Array Batch(Napi::Env env, int n) {
		return Napi::Uint8Array::New(env, (size_t)n * sizeof(struct dpsr_record), store_.Value(), 0);
	}

	// From libuv: drain in batches, each a callback through MakeCallback.
	void Pump() {
		Napi::Env env = Env();
		Napi::HandleScope scope(env);
		while (open_) {
			int n = Fill();
			if (n <= 0) break;
			callback_.MakeCallback(Value(), {Batch(env, n)}, *context_);
			if (env.IsExceptionPending()) {
				napi_fatal_exception(env, env.GetAndClearPendingException().Value());
				break;
			}
			if ((size_t)n < max_records_) break;
		}
	}

	static void OnReadable(uv_poll_t *h, int, int) { static_cast<RingReader *>(h->data)->Pump(); }
	static void OnTimer(uv_timer_t *h) { static_cast<RingReader *>(h->data)->Pump(); }

	// consume() -> records delivered: drains the ring now, synchronously.
	Napi::Value Consume(const Napi::CallbackInfo &info) {
		Napi::Env env = info.Env();
		if (!open_) return ThrowErrno(env, EBADF, "ring reader is closed");
		int total = 0;
		for (;;) {
			int n = Fill();
			if (n == 0) break;
			total += n;
			callback_.Call(Value(), {Batch(env, n)});
			if (env.IsExceptionPending()) return env.Undefined();
			if ((size_t)n < max_records_) break;
		}
		return Napi::Number::New(env, total);
	}

	// malformed() -> records read that were not a dpsr_record (not delivered):
	// the caller must treat their writes as unseen.
	Napi::Value Malformed(const Napi::CallbackInfo &info) {
		return Napi::Number::New(info.Env(), (double)bad_);
	}

	// position() -> how far records have been read (a ring offset).
	Napi::Value Position(const Napi::CallbackInfo &info) {
		return Napi::Number::New(info.Env(), (double)read_pos_);
	}

	// release(position): the records before it are persisted; the ring may reuse their space.
	Napi::Value ReleaseTo(const Napi::CallbackInfo &info) {
		int64_t pos;
		if (!ArgInt(info, 0, pos) || pos < 0) return ThrowUsage(info.Env(), "release(position)");
		if (open_ && (unsigned long)pos <= read_pos_ && (unsigned long)pos > *consumer_pos_)
			__atomic_store_n(consumer_pos_, (unsigned long)pos, __ATOMIC_RELEASE);
		return info.Env().Undefined();
	}

	Napi::Value Close(const Napi::CallbackInfo &info) {
		Release();
		return info.Env().Undefined();
	}

	void Release() {
		if (!open_) return;
		open_ = false;
		uv_poll_stop(poll_);
		uv_timer_stop(timer_);
		uv_close(reinterpret_cast<uv_handle_t *>(poll_), [](uv_handle_t *h) { delete reinterpret_cast<uv_poll_t *>(h); });
		uv_close(reinterpret_cast<uv_handle_t *>(timer_), [](uv_handle_t *h) { delete reinterpret_cast<uv_timer_t *>(h); });
		delete context_;
		context_ = nullptr;
		callback_.Reset();
		store_.Reset();
		store_data_ = nullptr;
		Unref();
	}

	void Unmap() {
		if (producer_pos_) munmap(producer_pos_, prod_len_);
		if (consumer_pos_) munmap(consumer_pos_, page_);
		producer_pos_ = nullptr;
		consumer_pos_ = nullptr;
		if (ring_fd_ >= 0) close(ring_fd_);
		ring_fd_ = -1;
	}

	bool open_ = false;
	bool defer_release_ = false;
	int ring_fd_ = -1;
	size_t page_ = 4096;
	size_t prod_len_ = 0;
	unsigned long mask_ = 0;
	unsigned long *consumer_pos_ = nullptr;
	unsigned long *producer_pos_ = nullptr;
	uint8_t *data_ = nullptr;
	unsigned long read_pos_ = 0;
	uv_poll_t *poll_ = nullptr;
	uv_timer_t *timer_ = nullptr;
	Napi::FunctionReference callback_;
	Napi::AsyncContext *context_ = nullptr;
	Napi::Reference<Napi::ArrayBuffer> store_;
	uint8_t *store_data_ = nullptr;
	size_t max_records_ = 65536;
	uint64_t bad_ = 0;
};

}  // namespace

void InitRingReader(Napi::Env env, Napi::Object exports) {
	exports.Set("RingReader", RingReader::Define(env));
}
