// Block-device and file-system syscalls that Node lacks (ioctls), and
// page-aligned buffers for O_DIRECT.
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <cstdlib>

#include "errors.h"
#include "exports.h"

namespace {

bool FdArg(const Napi::CallbackInfo &info, int &fd) {
	int64_t v;
	if (!ArgInt(info, 0, v)) return false;
	fd = (int)v;
	return true;
}

Napi::Value BlkGetSize64(const Napi::CallbackInfo &info) {
	int fd;
	if (!FdArg(info, fd)) return ThrowUsage(info.Env(), "blkGetSize64(fd)");
	uint64_t bytes = 0;
	if (ioctl(fd, BLKGETSIZE64, &bytes)) return ThrowErrno(info.Env(), errno, "ioctl BLKGETSIZE64");
	return Napi::Number::New(info.Env(), (double)bytes);
}

Napi::Value IntIoctl(const Napi::CallbackInfo &info, unsigned long req, const char *name) {
	int fd;
	if (!FdArg(info, fd)) return ThrowUsage(info.Env(), std::string(name) + "(fd)");
	int v = 0;
	if (ioctl(fd, req, &v)) return ThrowErrno(info.Env(), errno, std::string("ioctl ") + name);
	return Napi::Number::New(info.Env(), v);
}

Napi::Value BlkSszGet(const Napi::CallbackInfo &info) { return IntIoctl(info, BLKSSZGET, "BLKSSZGET"); }
Napi::Value BlkPbszGet(const Napi::CallbackInfo &info) { return IntIoctl(info, BLKPBSZGET, "BLKPBSZGET"); }

Napi::Value BlkRoGet(const Napi::CallbackInfo &info) {
	Napi::Value v = IntIoctl(info, BLKROGET, "BLKROGET");
	if (info.Env().IsExceptionPending()) return v;
	return Napi::Boolean::New(info.Env(), v.As<Napi::Number>().Int32Value() != 0);
}

Napi::Value BlkRoSet(const Napi::CallbackInfo &info) {
	int fd;
	if (!FdArg(info, fd) || info.Length() < 2) return ThrowUsage(info.Env(), "blkRoSet(fd, readOnly)");
	int ro = info[1].ToBoolean() ? 1 : 0;
	if (ioctl(fd, BLKROSET, &ro)) return ThrowErrno(info.Env(), errno, "ioctl BLKROSET");
	return info.Env().Undefined();
}

Napi::Value NoArgIoctl(const Napi::CallbackInfo &info, unsigned long req, const char *name) {
	int fd;
	if (!FdArg(info, fd)) return ThrowUsage(info.Env(), std::string(name) + "(fd)");
	if (ioctl(fd, req, 0)) return ThrowErrno(info.Env(), errno, std::string("ioctl ") + name);
	return info.Env().Undefined();
}

Napi::Value FiFreeze(const Napi::CallbackInfo &info) { return NoArgIoctl(info, FIFREEZE, "FIFREEZE"); }
Napi::Value FiThaw(const Napi::CallbackInfo &info) { return NoArgIoctl(info, FITHAW, "FITHAW"); }
Napi::Value BlkFlsBuf(const Napi::CallbackInfo &info) { return NoArgIoctl(info, BLKFLSBUF, "BLKFLSBUF"); }

Napi::Value BlkDiscard(const Napi::CallbackInfo &info) {
	int fd;
	int64_t offset, length;
	if (!FdArg(info, fd) || !ArgInt(info, 1, offset) || !ArgInt(info, 2, length))
		return ThrowUsage(info.Env(), "blkDiscard(fd, offsetBytes, lengthBytes)");
	uint64_t range[2] = {(uint64_t)offset, (uint64_t)length};
	if (ioctl(fd, BLKDISCARD, range)) return ThrowErrno(info.Env(), errno, "ioctl BLKDISCARD");
	return info.Env().Undefined();
}

// alignedBuffer(bytes, alignment): O_DIRECT needs buffers aligned to the
// logical block size; Node's allocator gives no such promise.
Napi::Value AlignedBuffer(const Napi::CallbackInfo &info) {
	Napi::Env env = info.Env();
	int64_t bytes, align;
	if (!ArgInt(info, 0, bytes) || !ArgInt(info, 1, align) || bytes <= 0 || align <= 0 ||
	    (align & (align - 1)))
		return ThrowUsage(env, "alignedBuffer(bytes, alignment: power of two)");
	// A large buffer is placed on 2 MiB boundaries and asked for huge pages:
	// its first touch (an O_DIRECT read into it) then faults a page per 2 MiB
	// instead of per 4 KiB, which cost more than the read of scattered blocks.
	const size_t huge = 2u << 20;
	bool large = (size_t)bytes >= huge;
	void *p = nullptr;
	int err = posix_memalign(&p, large && (size_t)align < huge ? huge : (size_t)align, (size_t)bytes);
	if (err) return ThrowErrno(env, err, "posix_memalign");
	if (large) madvise(p, (size_t)bytes / huge * huge, MADV_HUGEPAGE);  // advice only: no THP, no harm
	return Napi::Buffer<uint8_t>::New(env, static_cast<uint8_t *>(p), (size_t)bytes,
					  [](Napi::Env, uint8_t *data) { free(data); });
}

// isAligned(buffer, alignment): whether the buffer's memory may be given to
// O_DIRECT as it is (a view into an aligned buffer at an aligned offset).
Napi::Value IsAligned(const Napi::CallbackInfo &info) {
	Napi::Env env = info.Env();
	Napi::Buffer<uint8_t> buf;
	int64_t align;
	if (!ArgBuffer(info, 0, buf) || !ArgInt(info, 1, align) || align <= 0 || (align & (align - 1)))
		return ThrowUsage(env, "isAligned(buffer, alignment: power of two)");
	return Napi::Boolean::New(env, (reinterpret_cast<uintptr_t>(buf.Data()) & (uintptr_t)(align - 1)) == 0);
}

}  // namespace

void InitSyscalls(Napi::Env env, Napi::Object exports) {
	exports.Set("blkGetSize64", Napi::Function::New(env, BlkGetSize64));
	exports.Set("blkSszGet", Napi::Function::New(env, BlkSszGet));
	exports.Set("blkPbszGet", Napi::Function::New(env, BlkPbszGet));
	exports.Set("blkRoGet", Napi::Function::New(env, BlkRoGet));
	exports.Set("blkRoSet", Napi::Function::New(env, BlkRoSet));
	exports.Set("fiFreeze", Napi::Function::New(env, FiFreeze));
	exports.Set("fiThaw", Napi::Function::New(env, FiThaw));
	exports.Set("blkFlsBuf", Napi::Function::New(env, BlkFlsBuf));
	exports.Set("blkDiscard", Napi::Function::New(env, BlkDiscard));
	exports.Set("alignedBuffer", Napi::Function::New(env, AlignedBuffer));
	exports.Set("isAligned", Napi::Function::New(env, IsAligned));
}
