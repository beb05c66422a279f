// The layering of src/ (.dependency-cruiser.cjs): no import cycle, no
// folder importing from a folder above it. Checked on the real tree, and on
// a small tree that breaks each rule, so the check is shown able to fail.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CONFIG = path.join(ROOT, '.dependency-cruiser.cjs');
const DEPCRUISE = path.join(ROOT, 'node_modules/dependency-cruiser/bin/dependency-cruise.mjs');

function cruise(cwd: string): { status: number | null; output: string } {
  const r = spawnSync(process.execPath, [DEPCRUISE, '--config', CONFIG, '--output-type', 'err', 'src'], { cwd, encoding: 'utf8' });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

test('src/ has no import cycle and every import points down the layers', () => {
  const { status, output } = cruise(ROOT);
  assert.is(status, 0, output);
  assert.match(output, /no dependency violations found/);
});

test('the check fails on a cycle, an upward import and a module outside the folders', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dpsr-layers-'));
  try {
    const write = (file: string, text: string) => {
      fs.mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
      fs.writeFileSync(path.join(dir, file), text);
    };
    write('tsconfig.json', JSON.stringify({ compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext' } }));
    write('src/base/a.ts', "import { b } from './b.js';\nexport const a = () => b;\n");
    write('src/base/b.ts', "import { a } from './a.js';\nexport const b = () => a;\n");
    write('src/kernel/k.ts', "import { s } from '../sync/s.js';\nexport const k = s;\n");
    write('src/sync/s.ts', 'export const s = 1;\n');
    write('src/loose.ts', "import { s } from './sync/s.js';\nexport const l = s;\n");
    const { status, output } = cruise(dir);
    assert.is.not(status, 0, output);
    assert.match(output, /no-cycle: src\/base\/a\.ts/);
    assert.match(output, /kernel-below-[a-z-]+: src\/kernel\/k\.ts → src\/sync\/s\.ts/);
    assert.match(output, /src-in-folders: src\/loose\.ts/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
