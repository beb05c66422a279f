// The pinned tracking objects: load and attach the BPF programs once, pin
// their maps and links so tracking outlives every process, reopen them
// later, detach; plus raw map access, consumer rings, membarrier and flock.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/magic.h>
#include <linux/membarrier.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "dpsr.skel.h"
#include "errors.h"
#include "exports.h"

namespace {

// The maps user space needs, by their names in bpf/dpsr.bpf.c.
const char *const kMapNames[] = {"disks",     "slots",       "slot_stats", "bitmaps",
				 "control",   "ring_stats",  "epoch_drops", "rings", "consumers"};
// Maps added after v1, absent from the pins of versions before them: the
// issue log (v3 on), the last write's time per slot (v4 on), the issue
// log's entries by tag (v5 on).
const char *const kLogMapNames[] = {"issued", "missed", "log_stats"};
const char *const kLaterMapNames[] = {"last_write"};
const char *const kTagMapNames[] = {"issued_by_tag"};
// The complete link is pinned last: its pin means the set is whole.
const char kLinkIssue[] = "link_issue";
const char kLinkRequeue[] = "link_requeue";
const char kLinkComplete[] = "link_complete";

std::string Join(const std::string &dir, const char *name) { return dir + "/" + name; }

bool Exists(const std::string &path) { return access(path.c_str(), F_OK) == 0; }

void UnpinAll(const std::string &dir) {
	unlink(Join(dir, kLinkComplete).c_str());
	unlink(Join(dir, kLinkRequeue).c_str());
	unlink(Join(dir, kLinkIssue).c_str());
	for (const char *name : kMapNames) unlink(Join(dir, name).c_str());
	for (const char *name : kLogMapNames) unlink(Join(dir, name).c_str());
	for (const char *name : kLaterMapNames) unlink(Join(dir, name).c_str());
	for (const char *name : kTagMapNames) unlink(Join(dir, name).c_str());
}

// Settings applied when the programs are loaded; all but the defaults are for tests.
struct Knobs {
	uint32_t skip_every_n = 0;	 // skip every Nth completion
	uint32_t malformed_every_n = 0;	 // emit every Nth record malformed
	bool without_issue_log = false;	 // load as a version without the issue log would (v2)
	bool without_last_write = false; // pin as a version without the last write's time would (v3)
	bool without_tag_log = false;	 // log every request in the hash, pinned as v4 was
	int64_t tags_per_disk = -1;	 // -1: the header's; fewer send the tags beyond to the hash
	uint32_t issued_entries = 0;	 // 0: the header's sizes
	uint32_t missed_entries = 0;
};

int PinMaps(struct dpsr *skel, const std::string &dir, const char *const *names, size_t n) {
	for (size_t i = 0; i < n; i++) {
		struct bpf_map *map = bpf_object__find_map_by_name(skel->obj, names[i]);
		int err = map ? bpf_map__pin(map, Join(dir, names[i]).c_str()) : -ENOENT;
		if (err) return err;
	}
	return 0;
}

// Attaches a program and pins its link.
int AttachPinned(struct bpf_program *prog, const std::string &path, struct bpf_link **link) {
	*link = bpf_program__attach(prog);
	if (!*link) return -errno;
	return bpf_link__pin(*link, path.c_str());
}

// Loads, pins the maps, attaches and pins the links. Returns 0 or -errno,
// with `what` naming the step that failed.
int LoadAndPin(const std::string &dir, const Knobs &knobs, std::string &what) {
	struct dpsr *skel = nullptr;
	struct bpf_link *issue = nullptr, *requeue = nullptr, *complete = nullptr;
	int err = 0;

	what = "open BPF object";
	skel = dpsr__open();
	if (!skel) return -errno;
	skel->rodata->skip_every_n = knobs.skip_every_n;
	skel->rodata->malformed_every_n = knobs.malformed_every_n;
	skel->rodata->log_issues = !knobs.without_issue_log;
	if (knobs.without_tag_log) skel->rodata->tags_per_disk = 0;
	else if (knobs.tags_per_disk >= 0) skel->rodata->tags_per_disk = (uint32_t)knobs.tags_per_disk;
	if (knobs.issued_entries) bpf_map__set_max_entries(skel->maps.issued, knobs.issued_entries);
	if (knobs.missed_entries) bpf_map__set_max_entries(skel->maps.missed, knobs.missed_entries);
	bpf_program__set_autoload(skel->progs.dpsr_requeue, !knobs.without_issue_log);

	what = "load BPF programs";
	err = dpsr__load(skel);
	if (err) goto cleanup;

	what = "pin BPF maps";
	err = PinMaps(skel, dir, kMapNames, sizeof(kMapNames) / sizeof(kMapNames[0]));
	if (!err && !knobs.without_issue_log) err = PinMaps(skel, dir, kLogMapNames, sizeof(kLogMapNames) / sizeof(kLogMapNames[0]));
	if (!err && !knobs.without_issue_log && !knobs.without_last_write)
		err = PinMaps(skel, dir, kLaterMapNames, sizeof(kLaterMapNames) / sizeof(kLaterMapNames[0]));
	if (!err && !knobs.without_issue_log && !knobs.without_last_write && !knobs.without_tag_log)
		err = PinMaps(skel, dir, kTagMapNames, sizeof(kTagMapNames) / sizeof(kTagMapNames[0]));
	if (err) goto cleanup;

	// Requeue before issue: an issue is never logged without the requeue that clears it.
	if (!knobs.without_issue_log) {
		what = "attach tp_btf/block_rq_requeue";
		err = AttachPinned(skel->progs.dpsr_requeue, Join(dir, kLinkRequeue), &requeue);
		if (err) goto cleanup;
	}

	what = "attach tp_btf/block_rq_issue";
	err = AttachPinned(skel->progs.dpsr_issue, Join(dir, kLinkIssue), &issue);
	if (err) goto cleanup;

	what = "attach tp_btf/block_rq_complete";
	err = AttachPinned(skel->progs.dpsr_complete, Join(dir, kLinkComplete), &complete);

cleanup:
	if (err) UnpinAll(dir);
	bpf_link__destroy(complete);
	bpf_link__destroy(issue);
	bpf_link__destroy(requeue);
	dpsr__destroy(skel);
	return err;
}

// Reads a knob object { skipEveryN, malformedEveryN, withoutIssueLog, withoutLastWrite, withoutTagLog, tagsPerDisk,
// issuedEntries, missedEntries },
// or a number (skipEveryN: the form of dpsr before v3, while both are installed side by side).
bool ReadKnobs(const Napi::Value &v, Knobs &k) {
	if (v.IsNumber()) {
		k.skip_every_n = v.As<Napi::Number>().Uint32Value();
		return true;
	}
	if (!v.IsObject()) return false;
	Napi::Object o = v.As<Napi::Object>();
	auto num = [&](const char *name, uint32_t &out) {
		Napi::Value x = o.Get(name);
		if (x.IsNumber()) out = x.As<Napi::Number>().Uint32Value();
	};
	num("skipEveryN", k.skip_every_n);
	num("malformedEveryN", k.malformed_every_n);
	num("issuedEntries", k.issued_entries);
	num("missedEntries", k.missed_entries);
	k.without_issue_log = o.Get("withoutIssueLog").ToBoolean();
	k.without_last_write = o.Get("withoutLastWrite").ToBoolean();
	k.without_tag_log = o.Get("withoutTagLog").ToBoolean() || k.without_last_write || k.without_issue_log;
	Napi::Value tags = o.Get("tagsPerDisk");
	if (tags.IsNumber()) k.tags_per_disk = tags.As<Napi::Number>().Uint32Value();
	return true;
}

Napi::Value EnsureBpffs(const Napi::CallbackInfo &info) {
	Napi::Env env = info.Env();
	if (info.Length() < 1 || !info[0].IsString()) return ThrowUsage(env, "ensureBpffs(mountPoint)");
	std::string path = info[0].As<Napi::String>();
	struct statfs st;
	if (statfs(path.c_str(), &st)) return ThrowErrno(env, errno, "statfs " + path);
	if ((unsigned long)st.f_type == BPF_FS_MAGIC) return Napi::Boolean::New(env, false);
	if (mount("bpf", path.c_str(), "bpf", 0, nullptr))
		return ThrowErrno(env, errno, "mount -t bpf bpf " + path);
	return Napi::Boolean::New(env, true);
}

// open(pinDir, knobs) -> { created, maps: { name: fd } }; the issue log's
// maps only where they are pinned. The caller holds the pin directory's flock.
Napi::Value Open(const Napi::CallbackInfo &info) {
	Napi::Env env = info.Env();
	Knobs knobs;
	if (info.Length() < 2 || !info[0].IsString() || !ReadKnobs(info[1], knobs))
		return ThrowUsage(env, "open(pinDir, knobs)");
	std::string dir = info[0].As<Napi::String>();
	struct statfs st;
	if (statfs(dir.c_str(), &st)) return ThrowErrno(env, errno, "statfs " + dir);
	if ((unsigned long)st.f_type != BPF_FS_MAGIC)
		return ThrowErrno(env, EXDEV, dir + " is not on a bpf file system");

	bool created = false;
	if (!Exists(Join(dir, kLinkComplete))) {
		UnpinAll(dir);  // leftovers of a load that died half-way
		std::string what;
		int err = LoadAndPin(dir, knobs, what);
		if (err) return ThrowErrno(env, err, what);
		created = true;
	}

	Napi::Object maps = Napi::Object::New(env);
	std::vector<int> fds;
	for (const char *name : kMapNames) {
		int fd = bpf_obj_get(Join(dir, name).c_str());
		if (fd < 0) {
			int err = errno;
			for (int f : fds) close(f);
			return ThrowErrno(env, err, "reopen pinned map " + Join(dir, name));
		}
		fds.push_back(fd);
		maps.Set(name, Napi::Number::New(env, fd));
	}
	for (const char *name : kLogMapNames) {
		int fd = bpf_obj_get(Join(dir, name).c_str());
		if (fd >= 0) maps.Set(name, Napi::Number::New(env, fd));
	}
	for (const char *name : kLaterMapNames) {
		int fd = bpf_obj_get(Join(dir, name).c_str());
		if (fd >= 0) maps.Set(name, Napi::Number::New(env, fd));
	}
	for (const char *name : kTagMapNames) {
		int fd = bpf_obj_get(Join(dir, name).c_str());
		if (fd >= 0) maps.Set(name, Napi::Number::New(env, fd));
	}
	Napi::Object result = Napi::Object::New(env);
	result.Set("created", Napi::Boolean::New(env, created));
	result.Set("maps", maps);
	return result;
}

// detach(pinDir): unpins links (the programs stop) and maps, removes the dir.
Napi::Value Detach(const Napi::CallbackInfo &info) {
	Napi::Env env = info.Env();
	if (info.Length() < 1 || !info[0].IsString()) return ThrowUsage(env, "detach(pinDir)");
	std::string dir = info[0].As<Napi::String>();
	UnpinAll(dir);
	if (rmdir(dir.c_str()) && errno != ENOENT) return ThrowErrno(env, errno, "rmdir " + dir);
	return env.Undefined();
}

Napi::Value CloseFd(const Napi::CallbackInfo &info) {
	int64_t fd;
	if (!ArgInt(info, 0, fd)) return ThrowUsage(info.Env(), "closeFd(fd)");
	close((int)fd);
	return info.Env().Undefined();
}

Napi::Value MapInfo(const Napi::CallbackInfo &info) {
	Napi::Env env = info.Env();
	int64_t fd;
	if (!ArgInt(info, 0, fd)) return ThrowUsage(env, "mapInfo(fd)");
	struct bpf_map_info mi = {};
	__u32 len = sizeof(mi);
	int err = bpf_obj_get_info_by_fd((int)fd, &mi, &len);
	if (err) return ThrowErrno(env, err, "bpf_obj_get_info_by_fd");
	Napi::Object o = Napi::Object::New(env);
	o.Set("type", mi.type);
	o.Set("id", mi.id);
	o.Set("keySize", mi.key_size);
	o.Set("valueSize", mi.value_size);
	o.Set("maxEntries", mi.max_entries);
	o.Set("name", std::string(mi.name));
	return o;
}

// programInfo(linkPath) -> the counters of the program a pinned link
// attaches: recursionMisses (runs the kernel skipped because the program was
// already running on that CPU) always, runCnt and runTimeNs while
// kernel.bpf_stats_enabled is on.
Napi::Value ProgramInfo(const Napi::CallbackInfo &info) {
	Napi::Env env = info.Env();
	if (info.Length() < 1 || !info[0].IsString()) return ThrowUsage(env, "programInfo(linkPath)");
	std::string path = info[0].As<Napi::String>();
	int link_fd = bpf_obj_get(path.c_str());
	if (link_fd < 0) return ThrowErrno(env, errno, "bpf_obj_get");
	struct bpf_link_info li = {};
	__u32 len = sizeof(li);
	int err = bpf_obj_get_info_by_fd(link_fd, &li, &len);
	close(link_fd);
	if (err) return ThrowErrno(env, -err, "bpf_obj_get_info_by_fd");
	int prog_fd = bpf_prog_get_fd_by_id(li.prog_id);
	if (prog_fd < 0) return ThrowErrno(env, errno, "bpf_prog_get_fd_by_id");
	struct bpf_prog_info pi = {};
	len = sizeof(pi);
	err = bpf_obj_get_info_by_fd(prog_fd, &pi, &len);
	close(prog_fd);
	if (err) return ThrowErrno(env, -err, "bpf_obj_get_info_by_fd");
	Napi::Object o = Napi::Object::New(env);
	o.Set("id", pi.id);
	o.Set("name", std::string(pi.name));
	o.Set("runCnt", (double)pi.run_cnt);
	o.Set("runTimeNs", (double)pi.run_time_ns);
	o.Set("recursionMisses", (double)pi.recursion_misses);
	return o;
}

// mapLookup(fd, key, valueSize) -> Buffer | null. For per-CPU maps the
// caller passes round_up(value, 8) * possibleCpus().
Napi::Value MapLookup(const Napi::CallbackInfo &info) {
	Napi::Env env = info.Env();
	int64_t fd, size;
	Napi::Buffer<uint8_t> key;
	if (!ArgInt(info, 0, fd) || !ArgBuffer(info, 1, key) || !ArgInt(info, 2, size) || size <= 0)
		return ThrowUsage(env, "mapLookup(fd, key, valueSize)");
	Napi::Buffer<uint8_t> value = Napi::Buffer<uint8_t>::New(env, (size_t)size);
	if (bpf_map_lookup_elem((int)fd, key.Data(), value.Data())) {
		if (errno == ENOENT) return env.Null();
		return ThrowErrno(env, errno, "bpf_map_lookup_elem");
	}
	return value;
}

Napi::Value MapUpdate(const Napi::CallbackInfo &info) {
	Napi::Env env = info.Env();
	int64_t fd, flags = BPF_ANY;
	Napi::Buffer<uint8_t> key, value;
	if (!ArgInt(info, 0, fd) || !ArgBuffer(info, 1, key) || !ArgBuffer(info, 2, value))
		return ThrowUsage(env, "mapUpdate(fd, key, value[, flags])");
	if (info.Length() > 3) ArgInt(info, 3, flags);
	if (bpf_map_update_elem((int)fd, key.Data(), value.Data(), (__u64)flags))
		return ThrowErrno(env, errno, "bpf_map_update_elem");
	return env.Undefined();
}

Napi::Value MapDelete(const Napi::CallbackInfo &info) {
	Napi::Env env = info.Env();
	int64_t fd;
	Napi::Buffer<uint8_t> key;
	if (!ArgInt(info, 0, fd) || !ArgBuffer(info, 1, key)) return ThrowUsage(env, "mapDelete(fd, key)");
	if (bpf_map_delete_elem((int)fd, key.Data())) {
		if (errno == ENOENT) return Napi::Boolean::New(env, false);
		return ThrowErrno(env, errno, "bpf_map_delete_elem");
	}
	return Napi::Boolean::New(env, true);
}

// mapKeys(fd, keySize) -> Buffer[]
Napi::Value MapKeys(const Napi::CallbackInfo &info) {
	Napi::Env env = info.Env();
	int64_t fd, size;
	if (!ArgInt(info, 0, fd) || !ArgInt(info, 1, size) || size <= 0 || size > 64)
		return ThrowUsage(env, "mapKeys(fd, keySize)");
	Napi::Array keys = Napi::Array::New(env);
	std::vector<uint8_t> cur(size), next(size);
	bool first = true;
	uint32_t n = 0;
	for (;;) {
		if (bpf_map_get_next_key((int)fd, first ? nullptr : cur.data(), next.data())) {
			if (errno == ENOENT) break;
			return ThrowErrno(env, errno, "bpf_map_get_next_key");
		}
		keys.Set(n++, Napi::Buffer<uint8_t>::Copy(env, next.data(), next.size()));
		cur.swap(next);
		first = false;
	}
	return keys;
}

// mapDump(fd, keySize, valueSize) -> { keys: Buffer, values: Buffer, count }:
// a hash map's entries in batches (bucket by bucket), so that entries added
// and removed meanwhile cannot restart the walk as get_next_key would.
Napi::Value MapDump(const Napi::CallbackInfo &info) {
	Napi::Env env = info.Env();
	int64_t fd, ksize, vsize;
	if (!ArgInt(info, 0, fd) || !ArgInt(info, 1, ksize) || !ArgInt(info, 2, vsize) || ksize <= 0 || vsize <= 0)
		return ThrowUsage(env, "mapDump(fd, keySize, valueSize)");
	struct bpf_map_info mi = {};
	__u32 len = sizeof(mi);
	if (bpf_obj_get_info_by_fd((int)fd, &mi, &len)) return ThrowErrno(env, errno, "bpf_obj_get_info_by_fd");
	const __u32 room = mi.max_entries;
	std::vector<uint8_t> keys((size_t)room * ksize), values((size_t)room * vsize);
	__u32 total = 0, token = 0;
	bool first = true;
	while (total < room) {
		__u32 count = room - total;
		int err = bpf_map_lookup_batch((int)fd, first ? nullptr : &token, &token, keys.data() + (size_t)total * ksize,
					       values.data() + (size_t)total * vsize, &count, nullptr);
		int e = errno;
		if (err && e != ENOENT) return ThrowErrno(env, e, "bpf_map_lookup_batch");
		total += count;
		first = false;
		if (err) break;  // ENOENT: the last batch
	}
	Napi::Object o = Napi::Object::New(env);
	o.Set("keys", Napi::Buffer<uint8_t>::Copy(env, keys.data(), (size_t)total * ksize));
	o.Set("values", Napi::Buffer<uint8_t>::Copy(env, values.data(), (size_t)total * vsize));
	o.Set("count", total);
	return o;
}

Napi::Value PossibleCpus(const Napi::CallbackInfo &info) {
	int n = libbpf_num_possible_cpus();
	if (n < 0) return ThrowErrno(info.Env(), n, "libbpf_num_possible_cpus");
	return Napi::Number::New(info.Env(), n);
}

// ringCreate(outerFd, index, bytes): a new ring buffer for one consumer.
Napi::Value RingCreate(const Napi::CallbackInfo &info) {
	Napi::Env env = info.Env();
	int64_t outer, index, bytes;
	if (!ArgInt(info, 0, outer) || !ArgInt(info, 1, index) || !ArgInt(info, 2, bytes))
		return ThrowUsage(env, "ringCreate(outerFd, index, bytes)");
	int fd = bpf_map_create(BPF_MAP_TYPE_RINGBUF, "dpsr_ring", 0, 0, (__u32)bytes, nullptr);
	if (fd < 0) return ThrowErrno(env, errno, "create ring buffer of " + std::to_string(bytes) + " bytes");
	__u32 key = (__u32)index;
	int err = bpf_map_update_elem((int)outer, &key, &fd, BPF_ANY) ? errno : 0;
	close(fd);
	if (err) return ThrowErrno(env, err, "insert ring buffer");
	return env.Undefined();
}

Napi::Value Membarrier(const Napi::CallbackInfo &info) {
	// MEMBARRIER_CMD_GLOBAL waits for an RCU grace period (membarrier(2)):
	// every BPF program run that began before it has finished.
	if (syscall(__NR_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0))
		return ThrowErrno(info.Env(), errno, "membarrier(MEMBARRIER_CMD_GLOBAL)");
	return info.Env().Undefined();
}

// flock(fd, exclusive, wait) -> true, or false if it would block.
Napi::Value Flock(const Napi::CallbackInfo &info) {
	Napi::Env env = info.Env();
	int64_t fd;
	if (!ArgInt(info, 0, fd) || info.Length() < 3) return ThrowUsage(env, "flock(fd, mode: 'ex'|'sh'|'un', wait)");
	std::string mode = info[1].ToString();
	int op = mode == "ex" ? LOCK_EX : mode == "sh" ? LOCK_SH : LOCK_UN;
	if (!info[2].ToBoolean()) op |= LOCK_NB;
	if (flock((int)fd, op)) {
		if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
		return ThrowErrno(env, errno, "flock");
	}
	return Napi::Boolean::New(env, true);
}

}  // namespace

void InitTracking(Napi::Env env, Napi::Object exports) {
	exports.Set("ensureBpffs", Napi::Function::New(env, EnsureBpffs));
	exports.Set("open", Napi::Function::New(env, Open));
	exports.Set("detach", Napi::Function::New(env, Detach));
	exports.Set("closeFd", Napi::Function::New(env, CloseFd));
	exports.Set("mapInfo", Napi::Function::New(env, MapInfo));
	exports.Set("programInfo", Napi::Function::New(env, ProgramInfo));
	exports.Set("mapLookup", Napi::Function::New(env, MapLookup));
	exports.Set("mapUpdate", Napi::Function::New(env, MapUpdate));
	exports.Set("mapDelete", Napi::Function::New(env, MapDelete));
	exports.Set("mapKeys", Napi::Function::New(env, MapKeys));
	exports.Set("mapDump", Napi::Function::New(env, MapDump));
	exports.Set("possibleCpus", Napi::Function::New(env, PossibleCpus));
	exports.Set("ringCreate", Napi::Function::New(env, RingCreate));
	exports.Set("membarrier", Napi::Function::New(env, Membarrier));
	exports.Set("flock", Napi::Function::New(env, Flock));
}
