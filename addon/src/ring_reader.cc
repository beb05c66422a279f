// Delivers one consumer ring's records to a JS callback, in batches, on the
// libuv loop: a poll handle on the ring's epoll fd (the programs wake it only
// when the ring is filling) and a short timer for the rest. No thread.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>
#include <uv.h>

#include <vector>

#include "dpsr.h"
#include "errors.h"
#include "exports.h"

namespace {

const int kBatchFull = -1000;  // our sample callback's "stop here" (libbpf keeps the sample consumed)

class RingReader : public Napi::ObjectWrap<RingReader> {
public:
	static Napi::Function Define(Napi::Env env) {
		return DefineClass(env, "RingReader",
				   {InstanceMethod("consume", &RingReader::Consume),
				    InstanceMethod("close", &RingReader::Close)});
	}

	// new RingReader(outerFd, index, callback(Buffer), timerMs, maxBatchRecords)
	RingReader(const Napi::CallbackInfo &info) : Napi::ObjectWrap<RingReader>(info) {
		Napi::Env env = info.Env();
		int64_t outer, index, timer_ms, max_batch;
		if (!ArgInt(info, 0, outer) || !ArgInt(info, 1, index) || info.Length() < 3 ||
		    !info[2].IsFunction() || !ArgInt(info, 3, timer_ms) || !ArgInt(info, 4, max_batch) ||
		    max_batch < 1) {
			ThrowUsage(env, "new RingReader(outerFd, index, callback, timerMs, maxBatchRecords)");
			return;
		}
		max_records_ = (size_t)max_batch;
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
		rb_ = ring_buffer__new(ring_fd_, OnSample, this, nullptr);
		if (!rb_) {
			ThrowErrno(env, errno, "ring_buffer__new");
			return;
		}
		callback_ = Napi::Persistent(info[2].As<Napi::Function>());
		context_ = new Napi::AsyncContext(env, "dpsr:ring");
		uv_loop_t *loop = nullptr;
		napi_get_uv_event_loop(env, &loop);
		poll_ = new uv_poll_t;
		uv_poll_init(loop, poll_, ring_buffer__epoll_fd(rb_));
		poll_->data = this;
		uv_poll_start(poll_, UV_READABLE, OnReadable);
		timer_ = new uv_timer_t;
		uv_timer_init(loop, timer_);
		timer_->data = this;
		uv_timer_start(timer_, OnTimer, timer_ms, timer_ms);
		Ref();  // alive while the handles are
	}

	~RingReader() {
		Release();
		if (ring_fd_ >= 0) close(ring_fd_);
	}

private:
	static int OnSample(void *ctx, void *data, size_t size) {
		auto *self = static_cast<RingReader *>(ctx);
		if (size != sizeof(struct dpsr_record)) {
			self->bad_++;
			return 0;
		}
		const uint8_t *p = static_cast<const uint8_t *>(data);
		self->batch_.insert(self->batch_.end(), p, p + size);
		return self->batch_.size() >= self->max_records_ * sizeof(struct dpsr_record) ? kBatchFull : 0;
	}

	// Consumes up to one batch; returns records taken, or -errno.
	int Fill() {
		batch_.clear();
		int n = ring_buffer__consume(rb_);
		if (n < 0 && n != kBatchFull) return n;
		return (int)(batch_.size() / sizeof(struct dpsr_record));
	}

	// From libuv: drain in batches, each a callback through MakeCallback.
	void Pump() {
		Napi::Env env = Env();
		Napi::HandleScope scope(env);
		while (rb_) {
			int n = Fill();
			if (n <= 0) break;
			Napi::Buffer<uint8_t> buf = Napi::Buffer<uint8_t>::Copy(env, batch_.data(), batch_.size());
			callback_.MakeCallback(Value(), {buf}, *context_);
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
		if (!rb_) return ThrowErrno(env, EBADF, "ring reader is closed");
		int total = 0;
		for (;;) {
			int n = Fill();
			if (n < 0) return ThrowErrno(env, n, "ring_buffer__consume");
			if (n == 0) break;
			total += n;
			callback_.Call(Value(), {Napi::Buffer<uint8_t>::Copy(env, batch_.data(), batch_.size())});
			if (env.IsExceptionPending()) return env.Undefined();
			if ((size_t)n < max_records_) break;
		}
		return Napi::Number::New(env, total);
	}

	Napi::Value Close(const Napi::CallbackInfo &info) {
		Release();
		return info.Env().Undefined();
	}

	void Release() {
		if (!rb_) return;
		uv_poll_stop(poll_);
		uv_timer_stop(timer_);
		uv_close(reinterpret_cast<uv_handle_t *>(poll_), [](uv_handle_t *h) { delete reinterpret_cast<uv_poll_t *>(h); });
		uv_close(reinterpret_cast<uv_handle_t *>(timer_), [](uv_handle_t *h) { delete reinterpret_cast<uv_timer_t *>(h); });
		ring_buffer__free(rb_);
		rb_ = nullptr;
		delete context_;
		context_ = nullptr;
		callback_.Reset();
		Unref();
	}

	struct ring_buffer *rb_ = nullptr;
	int ring_fd_ = -1;
	uv_poll_t *poll_ = nullptr;
	uv_timer_t *timer_ = nullptr;
	Napi::FunctionReference callback_;
	Napi::AsyncContext *context_ = nullptr;
	std::vector<uint8_t> batch_;
	size_t max_records_ = 65536;
	uint64_t bad_ = 0;
};

}  // namespace

void InitRingReader(Napi::Env env, Napi::Object exports) {
	exports.Set("RingReader", RingReader::Define(env));
}
