// The layout the drive's own metadata blocks share (the label, the shutdown
// record): an 8-byte magic, a u32 format, the payload's u32 length, the
// payload's sha256, then the payload. A torn or damaged block fails the hash.
import crypto from 'node:crypto';

/** Bytes before the payload. */
export const CHECKED_HEADER_BYTES = 8 + 4 + 4 + 32;

/** Writes the header and `payload` at the start of `b` (which must have room). */
export function putChecked(b: Buffer, magic: Buffer, format: number, payload: Buffer): void {
  magic.copy(b, 0);
  b.writeUInt32LE(format, 8);
  b.writeUInt32LE(payload.length, 12);
  sha256(payload).copy(b, 16);
  payload.copy(b, CHECKED_HEADER_BYTES);
}

/** The payload length the header of `b` claims. */
export const checkedLength = (b: Buffer): number => b.readUInt32LE(12);

/** The payload of a whole block whose header was read already, or null when its hash does not match. */
export function checkedPayload(b: Buffer): Buffer | null {
  const payload = b.subarray(CHECKED_HEADER_BYTES, CHECKED_HEADER_BYTES + checkedLength(b));
  return sha256(payload).equals(b.subarray(16, CHECKED_HEADER_BYTES)) ? payload : null;
}

const sha256 = (data: Buffer): Buffer => crypto.createHash('sha256').update(data).digest();
