{
  "targets": [
    {
      "target_name": "dpsr",
      "sources": ["src/addon.cc", "src/tracking.cc", "src/ring_reader.cc", "src/syscalls.cc", "src/batch_io.cc", "src/extents.cc", "src/records.cc", "src/nbd.cc"],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "../build/bpf",
        "../bpf"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "_GNU_SOURCE"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
      "libraries": ["-lbpf", "-lelf", "-lz", "-luring", "-lnbd"]
    }
  ]
}
