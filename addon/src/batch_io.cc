// Many positioned reads or writes of one fd as one job: io_uring on a worker
// thread keeps up to `depth` of them in flight, with one JS call and one
// promise for the lot. Through libuv's pool every scattered 4 KiB block of a
// sync costs a JS round trip; here it costs a queue entry.
//
// batchIo(fd, write, buffer, ops: Float64Array [bufferOffset, length, position]*, depth)
//   -> Promise<void>; rejects with {code, errno, syscall, position}, or code
//   ESHORT when the device ends before an I/O does. Short transfers are
//   continued. The buffer stays referenced until every I/O has completed.
#include <liburing.h>

#include <vector>

#include "errors.h"
#include "exports.h"

namespace {

struct Op {
	uint64_t buffer_offset;
	uint64_t length;
	uint64_t position;
	uint64_t done;
};

class BatchIo : public Napi::AsyncWorker {
public:
	BatchIo(Napi::Env env, int fd, bool write, Napi::Buffer<uint8_t> buffer, std::vector<Op> ops, unsigned depth)
	    : Napi::AsyncWorker(env, "dpsr:batchIo"),
	      deferred_(Napi::Promise::Deferred::New(env)),
	      fd_(fd),
	      write_(write),
	      data_(buffer.Data()),
	      ops_(std::move(ops)),
	      depth_(depth) {
		buffer_ = Napi::Persistent(buffer.As<Napi::Object>());
	}

	Napi::Promise Promise() { return deferred_.Promise(); }

protected:
	void Execute() override {
		struct io_uring ring;
		int r = io_uring_queue_init(depth_, &ring, 0);
		if (r < 0) {
			Fail(-r, "io_uring_queue_init", 0);
			return;
		}
		size_t next = 0, in_flight = 0;
		std::vector<size_t> again;  // continued after a short transfer
		bool stop = false;
		while (true) {
			while (!stop && in_flight < depth_ && (!again.empty() || next < ops_.size())) {
				size_t i;
				if (!again.empty()) {
					i = again.back();
					again.pop_back();
				} else {
					i = next++;
				}
				Op &o = ops_[i];
				struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
				if (!sqe) {  // cannot happen below depth; keep it for the next round
					again.push_back(i);
					break;
				}
				uint8_t *p = data_ + o.buffer_offset + o.done;
				unsigned len = (unsigned)std::min<uint64_t>(o.length - o.done, 1u << 30);
				if (write_) io_uring_prep_write(sqe, fd_, p, len, o.position + o.done);
				else io_uring_prep_read(sqe, fd_, p, len, o.position + o.done);
				io_uring_sqe_set_data64(sqe, i);
				in_flight++;
			}
			if (in_flight == 0) break;
			r = io_uring_submit_and_wait(&ring, 1);
			if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
				// Nothing can be submitted: wait out what the kernel holds (it writes into our buffer).
				Fail(-r, "io_uring_submit", 0);
				stop = true;
				while (in_flight > 0) {
					struct io_uring_cqe *cqe;
					if (io_uring_wait_cqe(&ring, &cqe) < 0) continue;
					io_uring_cqe_seen(&ring, cqe);
					in_flight--;
				}
				break;
			}
			struct io_uring_cqe *cqe;
			unsigned head, seen = 0;
			io_uring_for_each_cqe(&ring, head, cqe) {
				seen++;
				in_flight--;
				size_t i = (size_t)io_uring_cqe_get_data64(cqe);
				Op &o = ops_[i];
				if (cqe->res < 0) {
					Fail(-cqe->res, write_ ? "write" : "read", o.position + o.done);
					stop = true;
				} else if (cqe->res == 0) {
					Fail(0, write_ ? "write" : "read", o.position + o.done);
					stop = true;
				} else {
					o.done += (uint64_t)cqe->res;
					if (o.done < o.length) again.push_back(i);
				}
			}
			io_uring_cq_advance(&ring, seen);
		}
		io_uring_queue_exit(&ring);
	}

	void OnOK() override {
		Napi::Env env = Env();
		if (!failed_) {
			deferred_.Resolve(env.Undefined());
			return;
		}
		std::string what = syscall_ + " at byte " + std::to_string(position_);
		Napi::Error e = Napi::Error::New(env, err_ ? what + ": " + strerror(err_) : what + ": the device ends there");
		const char *name = err_ ? strerrorname_np(err_) : "ESHORT";
		e.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
		e.Set("errno", Napi::Number::New(env, err_));
		e.Set("syscall", Napi::String::New(env, syscall_));
		e.Set("position", Napi::Number::New(env, (double)position_));
		deferred_.Reject(e.Value());
	}

private:
	void Fail(int err, const char *syscall, uint64_t position) {
		if (failed_) return;  // the first failure is the one to report
		failed_ = true;
		err_ = err;
		syscall_ = syscall;
		position_ = position;
	}

	Napi::Promise::Deferred deferred_;
	Napi::ObjectReference buffer_;
	int fd_;
	bool write_;
	uint8_t *data_;
	std::vector<Op> ops_;
	unsigned depth_;
	bool failed_ = false;
	int err_ = 0;
	std::string syscall_;
	uint64_t position_ = 0;
};

Napi::Value BatchIoCall(const Napi::CallbackInfo &info) {
	Napi::Env env = info.Env();
	int64_t fd, depth;
	Napi::Buffer<uint8_t> buffer;
	if (!ArgInt(info, 0, fd) || info.Length() < 5 || !ArgBuffer(info, 2, buffer) || !info[3].IsTypedArray() ||
	    info[3].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array || !ArgInt(info, 4, depth) ||
	    depth < 1 || depth > 4096)
		return ThrowUsage(env, "batchIo(fd, write, buffer, ops: Float64Array [bufferOffset, length, position]*, depth 1..4096)");
	Napi::Float64Array flat = info[3].As<Napi::Float64Array>();
	if (flat.ElementLength() % 3 != 0) return ThrowUsage(env, "batchIo: ops holds triples [bufferOffset, length, position]");
	std::vector<Op> ops;
	ops.reserve(flat.ElementLength() / 3);
	for (size_t i = 0; i < flat.ElementLength(); i += 3) {
		double off = flat[i], len = flat[i + 1], pos = flat[i + 2];
		if (!(off >= 0 && len > 0 && pos >= 0) || off + len > (double)buffer.Length())
			return ThrowUsage(env, "batchIo: an op outside the buffer, or of no length");
		ops.push_back({(uint64_t)off, (uint64_t)len, (uint64_t)pos, 0});
	}
	auto *worker = new BatchIo(env, (int)fd, info[1].ToBoolean(), buffer, std::move(ops), (unsigned)depth);
	Napi::Promise promise = worker->Promise();
	worker->Queue();
	return promise;
}

}  // namespace

void InitBatchIo(Napi::Env env, Napi::Object exports) {
	exports.Set("batchIo", Napi::Function::New(env, BatchIoCall));
}
