// Restore points seen from a test: a point's image hashed through the same
// read-only device restore --at and rollback --at read.
import { Store } from '../../src/state/store.js';
import { openPointImage } from '../../src/restore/point-image.js';
import { sha256Of } from './fixture.js';

/** sha256 of restore point `at` of pair `name` (the state directory of `env`). */
export async function pointHash(env: NodeJS.ProcessEnv, name: string, at: string): Promise<string> {
  const store = Store.open(env.DPSR_STATE_DIR!);
  const pair = store.pair(name)!;
  await store.close();
  const image = await openPointImage(pair, at);
  try {
    return sha256Of(image.device, pair.dataSectors * 512);
  } finally {
    image.close();
  }
}
