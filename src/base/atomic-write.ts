// Replacing a file so that a reader sees the old one or the new one, never
// half of either: write a hidden temporary file beside it, set its mode (the
// umask does not decide who may read it), rename it over the old one.
import fs from 'node:fs';
import path from 'node:path';

export function writeFileAtomic(file: string, content: string | Uint8Array, mode: number): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  try {
    fs.writeFileSync(tmp, content);
    fs.chmodSync(tmp, mode);
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}
