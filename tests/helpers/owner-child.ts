// A separate owner process for the reopen tests: tracks a device in a pin
// directory, writes, then leaves cleanly (`stop`) or as a crash would (`crash`).
import { resolveBlockDevice } from '../../src/devices/devices.js';
import { Tracker } from '../../src/kernel/tracker.js';
import { KernelTracking } from '../../src/kernel/tracking.js';
import { ddDirect } from './fixture.js';

const [pinDir, lockPath, dev, how] = process.argv.slice(2);
const kt = KernelTracking.open({ pinDir });
const tracker = Tracker.start(kt, { ownerLockPath: lockPath, ringBytes: 1 << 20 });
const range = await tracker.track(resolveBlockDevice(dev), 'test');
ddDirect(dev, 64, 8);
if (how === 'stop') {
  await tracker.cycle();
  await tracker.stop();
} else {
  tracker.drain(); // read, never persisted: a crash right here
}
process.stdout.write(JSON.stringify({ created: kt.created, dirty: range.dirty.toArray() }));
process.exit(0); // without detaching: the pins must outlive this process
