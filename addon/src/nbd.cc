// An NBD export as a block device, through libnbd (no protocol code of our
// own): connect by URI (nbd://, nbds:// with TLS, nbd+unix://), size and
// what the server allows, positioned reads and writes, flush, trim, zero.
// Single calls block the caller; batch() keeps up to `depth` requests in
// flight on a worker thread (libnbd's aio API driven by nbd_poll), one
// promise for the lot. One request stream per connection at a time: calls
// and batches take the connection's lock in turn.
//
// new NbdClient(uri, connectTimeoutMs) connects (0: no timeout) or throws {code, errno, message};
// batch(write, buffer, ops: Float64Array [bufferOffset, length, position]*, depth)
//   -> Promise<void>, rejecting with {code, errno, syscall, position}.
#include <libnbd.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <vector>

#include "errors.h"
#include "exports.h"

namespace {

// Requests larger than this are split (servers refuse large ones: nbdkit above 64 MiB).
constexpr uint64_t MAX_REQUEST = 16u << 20;

struct Conn {
	std::mutex lock;
	struct nbd_handle *h = nullptr;
	~Conn() { nbd_close(h); }
};

std::string LastError() {
	const char *e = nbd_get_error();
	return e ? e : "unknown libnbd error";
}

// A connection the server dropped says ENOTCONN whatever call noticed it first (libnbd
// may report a dead handle's state as EINVAL), so callers can tell "the server went away".
int LastErrno(struct nbd_handle *h = nullptr) {
	if (h && (nbd_aio_is_dead(h) == 1 || nbd_aio_is_closed(h) == 1)) return ENOTCONN;
	int e = nbd_get_errno();
	return e ? e : EIO;
}

Napi::Value ThrowNbd(Napi::Env env, const std::string &what, struct nbd_handle *h = nullptr) {
	int err = LastErrno(h);
	const char *name = strerrorname_np(err);
	Napi::Error e = Napi::Error::New(env, what + ": " + LastError());
	e.Set("code", Napi::String::New(env, name ? name : "EIO"));
	e.Set("errno", Napi::Number::New(env, err));
	e.Set("syscall", Napi::String::New(env, what));
	e.ThrowAsJavaScriptException();
	return env.Undefined();
}

struct Op {
	uint64_t buffer_offset;
	uint64_t length;
	uint64_t position;
};

// A command's completion: which op it was and how it ended.
struct Done {
	class Batch *batch;
	size_t index;
};

class Batch : public Napi::AsyncWorker {
public:
	Batch(Napi::Env env, std::shared_ptr<Conn> conn, int kind, Napi::Buffer<uint8_t> buffer, std::vector<Op> ops, unsigned depth)
	    : Napi::AsyncWorker(env, "dpsr:nbdBatch"),
	      deferred_(Napi::Promise::Deferred::New(env)),
	      conn_(std::move(conn)),
	      kind_(kind),
	      data_(buffer.IsEmpty() ? nullptr : buffer.Data()),
	      ops_(std::move(ops)),
	      depth_(depth) {
		if (!buffer.IsEmpty()) buffer_ = Napi::Persistent(buffer.As<Napi::Object>());
	}

	Napi::Promise Promise() { return deferred_.Promise(); }

	enum { READ = 0, WRITE = 1, FLUSH = 2 };

protected:
	void Execute() override {
		std::lock_guard<std::mutex> guard(conn_->lock);
		struct nbd_handle *h = conn_->h;
		if (!h) {
			Fail(ENOTCONN, "nbd", 0, "the connection is closed");
			return;
		}
		if (kind_ == FLUSH) {
			if (nbd_flush(h, 0) == -1) Fail(LastErrno(h), "flush", 0, LastError());
			return;
		}
		std::vector<Done> done(ops_.size());
		size_t next = 0;
		while (true) {
			while (!failed_ && in_flight_ < depth_ && next < ops_.size()) {
				size_t i = next++;
				Op &o = ops_[i];
				done[i] = {this, i};
				nbd_completion_callback cb = {.callback = Completed, .user_data = &done[i], .free = nullptr};
				uint8_t *p = data_ + o.buffer_offset;
				int64_t cookie = kind_ == WRITE ? nbd_aio_pwrite(h, p, o.length, o.position, cb, 0)
				                                : nbd_aio_pread(h, p, o.length, o.position, cb, 0);
				if (cookie == -1) {
					Fail(LastErrno(h), kind_ == WRITE ? "write" : "read", o.position, LastError());
					break;
				}
				in_flight_++;
			}
			if (in_flight_ == 0) break;
			if (nbd_poll(h, -1) == -1) {
				// The connection is dead: its commands will never complete (libnbd retires them).
				Fail(LastErrno(h), kind_ == WRITE ? "write" : "read", 0, LastError());
				break;
			}
		}
	}

	void OnOK() override {
		Napi::Env env = Env();
		if (!failed_) {
			deferred_.Resolve(env.Undefined());
			return;
		}
		Napi::Error e = Napi::Error::New(env, syscall_ + " at byte " + std::to_string(position_) + ": " + message_);
		const char *name = strerrorname_np(err_);
		e.Set("code", Napi::String::New(env, name ? name : "EIO"));
		e.Set("errno", Napi::Number::New(env, err_));
		e.Set("syscall", Napi::String::New(env, syscall_));
		e.Set("position", Napi::Number::New(env, (double)position_));
		deferred_.Reject(e.Value());
	}

private:
	static int Completed(void *user_data, int *error) {
		Done *d = static_cast<Done *>(user_data);
		Batch *b = d->batch;
		b->in_flight_--;
		if (*error) {
			const Op &o = b->ops_[d->index];
			b->Fail(*error, b->kind_ == WRITE ? "write" : "read", o.position, strerror(*error));
		}
		return 1;  // retire the command
	}

	void Fail(int err, const char *syscall, uint64_t position, const std::string &message) {
		if (failed_) return;  // the first failure is the one to report
		failed_ = true;
		err_ = err ? err : EIO;
		syscall_ = syscall;
		position_ = position;
		message_ = message;
	}

	Napi::Promise::Deferred deferred_;
	Napi::ObjectReference buffer_;
	std::shared_ptr<Conn> conn_;
	int kind_;
	uint8_t *data_;
	std::vector<Op> ops_;
	unsigned depth_;
	unsigned in_flight_ = 0;
	bool failed_ = false;
	int err_ = 0;
	std::string syscall_;
	uint64_t position_ = 0;
	std::string message_;
};

// nbd_connect_uri with an upper bound (0: none): a host that never answers (packets dropped, a
// server that accepts and says nothing) fails after timeout_ms instead of when TCP gives up.
// Returns 0, -1 with libnbd's error set, or an errno of its own (ETIMEDOUT, ENOTCONN).
int Connect(struct nbd_handle *h, const char *uri, int64_t timeout_ms) {
	if (nbd_aio_connect_uri(h, uri) == -1) return -1;
	auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
	while (nbd_aio_is_connecting(h) == 1) {
		int wait = -1;
		if (timeout_ms > 0) {
			auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
			if (left <= 0) return ETIMEDOUT;
			wait = (int)left;
		}
		if (nbd_poll(h, wait) == -1) return -1;
	}
	return nbd_aio_is_ready(h) == 1 ? 0 : ENOTCONN;
}

class NbdClient : public Napi::ObjectWrap<NbdClient> {
public:
	static Napi::Function Define(Napi::Env env) {
		return DefineClass(env, "NbdClient", {
			InstanceMethod("size", &NbdClient::Size),
			InstanceMethod("readOnly", &NbdClient::ReadOnly),
			InstanceMethod("canFlush", &NbdClient::CanFlush),
			InstanceMethod("canTrim", &NbdClient::CanTrim),
			InstanceMethod("canZero", &NbdClient::CanZero),
			InstanceMethod("tlsNegotiated", &NbdClient::TlsNegotiated),
			InstanceMethod("pread", &NbdClient::Pread),
			InstanceMethod("pwrite", &NbdClient::Pwrite),
			InstanceMethod("flush", &NbdClient::Flush),
			InstanceMethod("trim", &NbdClient::Trim),
			InstanceMethod("zero", &NbdClient::Zero),
			InstanceMethod("batch", &NbdClient::BatchCall),
			InstanceMethod("flushAsync", &NbdClient::FlushAsync),
			InstanceMethod("close", &NbdClient::Close),
		});
	}

	NbdClient(const Napi::CallbackInfo &info) : Napi::ObjectWrap<NbdClient>(info), conn_(std::make_shared<Conn>()) {
		Napi::Env env = info.Env();
		if (info.Length() < 1 || !info[0].IsString()) {
			ThrowUsage(env, "new NbdClient(uri)");
			return;
		}
		std::string uri = info[0].As<Napi::String>();
		conn_->h = nbd_create();
		if (!conn_->h) {
			ThrowNbd(env, "nbd_create");
			return;
		}
		int64_t timeout_ms = 0;
		if (info.Length() > 1 && (!ArgInt(info, 1, timeout_ms) || timeout_ms < 0)) {
			ThrowUsage(env, "new NbdClient(uri, connectTimeoutMs)");
			return;
		}
		// The URI's tls-psk-file and tls-certificates name local files: the caller has checked them.
		int r = nbd_set_uri_allow_local_file(conn_->h, true) == -1 ? -1 : Connect(conn_->h, uri.c_str(), timeout_ms);
		if (r == 0) return;
		if (r == -1) {
			ThrowNbd(env, "connect");
		} else {
			std::string why = r == ETIMEDOUT ? "timed out" : "the server closed the connection during the handshake";
			Napi::Error e = Napi::Error::New(env, "connect: " + why);
			e.Set("code", Napi::String::New(env, strerrorname_np(r)));
			e.Set("errno", Napi::Number::New(env, r));
			e.Set("syscall", Napi::String::New(env, "connect"));
			e.ThrowAsJavaScriptException();
		}
		nbd_close(conn_->h);
		conn_->h = nullptr;
	}

private:
	struct nbd_handle *Handle(Napi::Env env) {
		if (!conn_->h) Napi::Error::New(env, "nbd: the connection is closed").ThrowAsJavaScriptException();
		return conn_->h;
	}

	Napi::Value Flag(const Napi::CallbackInfo &info, int (*fn)(struct nbd_handle *), const char *what) {
		std::lock_guard<std::mutex> guard(conn_->lock);
		struct nbd_handle *h = Handle(info.Env());
		if (!h) return info.Env().Undefined();
		int r = fn(h);
		if (r == -1) return ThrowNbd(info.Env(), what);
		return Napi::Boolean::New(info.Env(), r != 0);
	}

	Napi::Value Size(const Napi::CallbackInfo &info) {
		std::lock_guard<std::mutex> guard(conn_->lock);
		struct nbd_handle *h = Handle(info.Env());
		if (!h) return info.Env().Undefined();
		int64_t n = nbd_get_size(h);
		if (n == -1) return ThrowNbd(info.Env(), "nbd_get_size");
		return Napi::Number::New(info.Env(), (double)n);
	}
	Napi::Value ReadOnly(const Napi::CallbackInfo &info) { return Flag(info, nbd_is_read_only, "nbd_is_read_only"); }
	Napi::Value CanFlush(const Napi::CallbackInfo &info) { return Flag(info, nbd_can_flush, "nbd_can_flush"); }
	Napi::Value CanTrim(const Napi::CallbackInfo &info) { return Flag(info, nbd_can_trim, "nbd_can_trim"); }
	Napi::Value CanZero(const Napi::CallbackInfo &info) { return Flag(info, nbd_can_zero, "nbd_can_zero"); }
	Napi::Value TlsNegotiated(const Napi::CallbackInfo &info) { return Flag(info, nbd_get_tls_negotiated, "nbd_get_tls_negotiated"); }

	// pread/pwrite(buffer, bufferOffset, length, position): exactly length bytes, in requests of at most MAX_REQUEST.
	Napi::Value Transfer(const Napi::CallbackInfo &info, bool write) {
		Napi::Env env = info.Env();
		Napi::Buffer<uint8_t> buffer;
		int64_t off, len, pos;
		if (!ArgBuffer(info, 0, buffer) || !ArgInt(info, 1, off) || !ArgInt(info, 2, len) || !ArgInt(info, 3, pos) ||
		    off < 0 || len < 0 || pos < 0 || (uint64_t)(off + len) > buffer.Length())
			return ThrowUsage(env, write ? "pwrite(buffer, bufferOffset, length, position)" : "pread(buffer, bufferOffset, length, position)");
		std::lock_guard<std::mutex> guard(conn_->lock);
		struct nbd_handle *h = Handle(env);
		if (!h) return env.Undefined();
		for (int64_t done = 0; done < len;) {
			uint64_t n = std::min<uint64_t>(len - done, MAX_REQUEST);
			uint8_t *p = buffer.Data() + off + done;
			int r = write ? nbd_pwrite(h, p, n, pos + done, 0) : nbd_pread(h, p, n, pos + done, 0);
			if (r == -1) return ThrowNbd(env, std::string(write ? "write" : "read") + " at byte " + std::to_string(pos + done), h);
			done += n;
		}
		return Napi::Number::New(env, (double)len);
	}
	Napi::Value Pread(const Napi::CallbackInfo &info) { return Transfer(info, false); }
	Napi::Value Pwrite(const Napi::CallbackInfo &info) { return Transfer(info, true); }

	Napi::Value Flush(const Napi::CallbackInfo &info) {
		std::lock_guard<std::mutex> guard(conn_->lock);
		struct nbd_handle *h = Handle(info.Env());
		if (!h) return info.Env().Undefined();
		if (nbd_flush(h, 0) == -1) return ThrowNbd(info.Env(), "flush", h);
		return info.Env().Undefined();
	}

	// trim/zero(position, length), in requests of at most 1 GiB (NBD lengths are 32-bit).
	Napi::Value Range(const Napi::CallbackInfo &info, bool zero) {
		Napi::Env env = info.Env();
		int64_t pos, len;
		if (!ArgInt(info, 0, pos) || !ArgInt(info, 1, len) || pos < 0 || len < 0)
			return ThrowUsage(env, zero ? "zero(position, length)" : "trim(position, length)");
		std::lock_guard<std::mutex> guard(conn_->lock);
		struct nbd_handle *h = Handle(env);
		if (!h) return env.Undefined();
		constexpr uint64_t most = 1u << 30;
		for (int64_t done = 0; done < len;) {
			uint64_t n = std::min<uint64_t>(len - done, most);
			int r = zero ? nbd_zero(h, n, pos + done, 0) : nbd_trim(h, n, pos + done, 0);
			if (r == -1) return ThrowNbd(env, std::string(zero ? "zero" : "trim") + " at byte " + std::to_string(pos + done), h);
			done += n;
		}
		return env.Undefined();
	}
	Napi::Value Trim(const Napi::CallbackInfo &info) { return Range(info, false); }
	Napi::Value Zero(const Napi::CallbackInfo &info) { return Range(info, true); }

	Napi::Value BatchCall(const Napi::CallbackInfo &info) {
		Napi::Env env = info.Env();
		int64_t depth;
		Napi::Buffer<uint8_t> buffer;
		if (info.Length() < 4 || !ArgBuffer(info, 1, buffer) || !info[2].IsTypedArray() ||
		    info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array || !ArgInt(info, 3, depth) ||
		    depth < 1 || depth > 1024)
			return ThrowUsage(env, "batch(write, buffer, ops: Float64Array [bufferOffset, length, position]*, depth 1..1024)");
		Napi::Float64Array flat = info[2].As<Napi::Float64Array>();
		if (flat.ElementLength() % 3 != 0) return ThrowUsage(env, "batch: ops holds triples [bufferOffset, length, position]");
		std::vector<Op> ops;
		for (size_t i = 0; i < flat.ElementLength(); i += 3) {
			double off = flat[i], len = flat[i + 1], pos = flat[i + 2];
			if (!(off >= 0 && len > 0 && pos >= 0) || off + len > (double)buffer.Length())
				return ThrowUsage(env, "batch: an op outside the buffer, or of no length");
			for (uint64_t done = 0; done < (uint64_t)len; done += MAX_REQUEST)
				ops.push_back({(uint64_t)off + done, std::min<uint64_t>((uint64_t)len - done, MAX_REQUEST), (uint64_t)pos + done});
		}
		auto *worker = new Batch(env, conn_, info[0].ToBoolean() ? Batch::WRITE : Batch::READ, buffer, std::move(ops), (unsigned)depth);
		Napi::Promise promise = worker->Promise();
		worker->Queue();
		return promise;
	}

	Napi::Value FlushAsync(const Napi::CallbackInfo &info) {
		auto *worker = new Batch(info.Env(), conn_, Batch::FLUSH, Napi::Buffer<uint8_t>(), {}, 1);
		Napi::Promise promise = worker->Promise();
		worker->Queue();
		return promise;
	}

	Napi::Value Close(const Napi::CallbackInfo &info) {
		std::lock_guard<std::mutex> guard(conn_->lock);  // after any batch still running
		if (conn_->h) {
			nbd_shutdown(conn_->h, 0);
			nbd_close(conn_->h);
			conn_->h = nullptr;
		}
		return info.Env().Undefined();
	}

	std::shared_ptr<Conn> conn_;
};

}  // namespace

void InitNbd(Napi::Env env, Napi::Object exports) {
	exports.Set("NbdClient", NbdClient::Define(env));
}
