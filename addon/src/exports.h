// The addon's surface, one Init per source file.
#pragma once
#include <napi.h>

void InitTracking(Napi::Env env, Napi::Object exports);
void InitRingReader(Napi::Env env, Napi::Object exports);
void InitSyscalls(Napi::Env env, Napi::Object exports);
void InitBatchIo(Napi::Env env, Napi::Object exports);
void InitExtents(Napi::Env env, Napi::Object exports);
void InitRecords(Napi::Env env, Napi::Object exports);
void InitNbd(Napi::Env env, Napi::Object exports);
