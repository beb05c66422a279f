// JS errors that carry errno, as lmdb-js and node-pty do: one readable line,
// with `code` (e.g. "EPERM") and `errno` on the error object.
#pragma once
#include <napi.h>
#include <cerrno>
#include <cstring>
#include <string>

inline Napi::Value ThrowErrno(Napi::Env env, int err, const std::string &what) {
	if (err < 0) err = -err;
	const char *name = strerrorname_np(err);
	Napi::Error e = Napi::Error::New(env, what + ": " + strerror(err));
	e.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
	e.Set("errno", Napi::Number::New(env, err));
	e.Set("syscall", Napi::String::New(env, what));
	e.ThrowAsJavaScriptException();
	return env.Undefined();
}

inline Napi::Value ThrowUsage(Napi::Env env, const std::string &usage) {
	Napi::TypeError::New(env, "usage: " + usage).ThrowAsJavaScriptException();
	return env.Undefined();
}

// Argument helpers: false means a TypeError is now pending.
inline bool ArgInt(const Napi::CallbackInfo &info, size_t i, int64_t &out) {
	if (info.Length() <= i || !info[i].IsNumber()) return false;
	out = info[i].As<Napi::Number>().Int64Value();
	return true;
}

inline bool ArgBuffer(const Napi::CallbackInfo &info, size_t i, Napi::Buffer<uint8_t> &out) {
	if (info.Length() <= i || !info[i].IsBuffer()) return false;
	out = info[i].As<Napi::Buffer<uint8_t>>();
	return true;
}
