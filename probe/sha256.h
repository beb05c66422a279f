/* SHA-256 (FIPS 180-4), for the label's checksum: the probe links no library. */
#ifndef DPSR_SHA256_H
#define DPSR_SHA256_H
#include <stddef.h>
#include <stdint.h>

void sha256(const uint8_t *data, size_t len, uint8_t out[32]);

#endif
