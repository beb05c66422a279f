#!/usr/bin/env python3
"""fresh-loop.py /dev/loopN: the loop device detached, removed (LOOP_CTL_REMOVE) and made again over the
same backing file with direct I/O, in one process, so that no `losetup -f` elsewhere takes the number in
between: the device keeps its node and number, and its /sys/block/loopN/stat counters start at zero, as a
disk's do at boot. For tests and benchmarks that simulate a reboot (tests/reboot.test.ts, tools/bench/reboot.ts)."""
import errno, fcntl, os, sys, time

LOOP_SET_FD, LOOP_CLR_FD, LOOP_SET_DIRECT_IO = 0x4C00, 0x4C01, 0x4C08
LOOP_CTL_ADD, LOOP_CTL_REMOVE = 0x4C80, 0x4C81


def retry(fn):
    """The kernel finishes a detach after the last close: EBUSY (or a node not there yet) for a moment."""
    for i in range(200):
        try:
            return fn()
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.ENOENT, errno.ENXIO) or i == 199:
                raise
            time.sleep(0.05)


dev = sys.argv[1]
n = int(dev.rsplit('loop', 1)[1])
with open('/sys/block/loop%d/loop/backing_file' % n) as f:
    img = f.read().strip()
d = os.open(dev, os.O_RDONLY)
fcntl.ioctl(d, LOOP_CLR_FD)
os.close(d)
ctl = os.open('/dev/loop-control', os.O_RDWR)
retry(lambda: fcntl.ioctl(ctl, LOOP_CTL_REMOVE, n))
fcntl.ioctl(ctl, LOOP_CTL_ADD, n)
d = retry(lambda: os.open(dev, os.O_RDWR))
fcntl.ioctl(d, LOOP_SET_FD, os.open(img, os.O_RDWR))
fcntl.ioctl(d, LOOP_SET_DIRECT_IO, 1)
