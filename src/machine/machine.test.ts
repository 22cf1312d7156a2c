// Machine descriptions: presets, the JSON file format, validation errors that
// name the bad value, and building a machine into an emulator.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Emulator } from '../core/emulator.js';
import { vfioOf } from '../core/vfio.js';
import { VtdDevice } from '../drivers/intel_vtd/vtd.js';
import { IoatDevice } from '../devices/ioat.js';
import { buildMachine, DEFAULT_BDF, describeMachine, loadMachine, PRESETS, resolveMachine, type MachineDesc } from './machine.js';

test('the default preset: one IOAT at 0000:00:03.0 in group 3 behind VT-d, cdev vfio0', () => {
  const m = loadMachine();
  assert.equal(m.devices.length, 1);
  assert.deepEqual(m.devices[0], { model: 'ioat', bdf: DEFAULT_BDF, group: 3, iommu: 'dmar0', options: { xfercap: 14, msix_vectors: 1 } });
  const emu = new Emulator();
  const b = buildMachine(emu, m);
  const d = b.devices[0]!;
  assert.ok(d.pci instanceof IoatDevice);
  assert.ok(d.iommuDev instanceof VtdDevice);
  assert.equal(vfioOf(emu).devices[0], d.vfio);
  assert.equal(d.vfio.index, 0);
  assert.equal(vfioOf(emu).groups.get(3)!.devices[0], d.vfio);
  // BAR0 placed in the 64-bit window, aligned to its size.
  const bar = d.pci.bars[0]!;
  assert.equal(bar.addr % BigInt(bar.size), 0n);
  assert.ok(bar.addr >= 1n << 32n);
  assert.match(describeMachine(m), /0000:00:03\.0 {2}ioat {2}group 3 {2}\/dev\/vfio\/devices\/vfio0/);
});

test('every preset resolves and builds; two devices get distinct BARs and cdevs', () => {
  for (const name of Object.keys(PRESETS)) buildMachine(new Emulator(), loadMachine(name));
  const b = buildMachine(new Emulator(), loadMachine('ioat-x2'));
  assert.notEqual(b.devices[0]!.pci.bars[0]!.addr, b.devices[1]!.pci.bars[0]!.addr);
  assert.deepEqual(b.devices.map((d) => d.vfio.index), [0, 1]);
});

test('a JSON file: defaults filled in (group, IOMMU, options); BDFs normalised to lower case', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-emu-machine-'));
  try {
    const file = path.join(dir, 'm.json');
    fs.writeFileSync(file, JSON.stringify({
      iommus: [{ name: 'dmar1', type: 'intel-vtd' }],
      devices: [{ model: 'ioat', bdf: '0000:3A:00.0', options: { xfercap: 12 } }, { model: 'ioat', bdf: '0000:3a:00.1', group: 1 }],
    }));
    const m = loadMachine(file);
    assert.equal(m.devices[0]!.bdf, '0000:3a:00.0');
    assert.equal(m.devices[0]!.group, 2, 'the lowest number no other device claims');
    assert.equal(m.devices[0]!.iommu, 'dmar1');
    assert.equal(m.devices[0]!.options.xfercap, 12);
    fs.writeFileSync(file, '{ not json');
    assert.throws(() => loadMachine(file), /not JSON/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('validation errors name the bad value', () => {
  const base = { iommus: [{ name: 'dmar0', type: 'intel-vtd' }] };
  const bad = (d: unknown, re: RegExp) => assert.throws(() => resolveMachine(d as MachineDesc), re);
  bad({ ...base, devices: [{ model: 'nvme', bdf: '0000:00:01.0' }] }, /unknown device model 'nvme'/);
  bad({ ...base, devices: [{ model: 'ioat', bdf: '00:01.0' }] }, /BDF '00:01\.0'/);
  bad({ ...base, devices: [{ model: 'ioat', bdf: '0000:00:01.8' }] }, /BDF/);
  bad({ ...base, devices: [{ model: 'ioat', bdf: '0000:00:01.0' }, { model: 'ioat', bdf: '0000:00:01.0' }] }, /used twice/);
  bad({ ...base, devices: [{ model: 'ioat', bdf: '0000:00:01.0', group: 5 }, { model: 'ioat', bdf: '0000:00:02.0', group: 5 }] },
    /group 5 holds more than one device/);
  bad({ ...base, devices: [{ model: 'ioat', bdf: '0000:00:01.0', iommu: 'x' }] }, /unknown IOMMU 'x'/);
  bad({ ...base, devices: [{ model: 'ioat', bdf: '0000:00:01.0', options: { xfercap: 40 } }] }, /xfercap=40/);
  bad({ ...base, devices: [{ model: 'ioat', bdf: '0000:00:01.0', options: { speed: 1 } }] }, /unknown option 'speed'/);
  bad({ iommus: [{ name: 'a', type: 'amd-vi' }], devices: [] }, /unknown type 'amd-vi'/);
  bad({ iommus: [], devices: [{ model: 'ioat', bdf: '0000:00:01.0' }] }, /need an IOMMU/);
  bad({ iommus: [{ name: 'a', type: 'intel-vtd' }, { name: 'a', type: 'intel-vtd' }], devices: [] }, /used twice/);
  assert.throws(() => loadMachine('/nonexistent/machine.json'), /neither a preset/);
});

test('a machine is built once per emulator', () => {
  const emu = new Emulator();
  buildMachine(emu, loadMachine());
  assert.throws(() => buildMachine(emu, loadMachine()), /already has devices/);
});

test('device decisions reach the trace bus as driver events', () => {
  const emu = new Emulator();
  const b = buildMachine(emu, loadMachine());
  const seen: string[] = [];
  const off = emu.bus.subscribe((e) => {
    if (e.t === 'driver' && e.point === 'device') seen.push(`${e.data.bdf} ${e.data.text}`);
  });
  const pci = b.devices[0]!.pci;
  pci.configWrite(0x04, 2, 0x0002);
  pci.mmioWrite(0, 0x84, 1, 0x20n);
  off();
  assert.ok(seen.some((l) => /^0000:00:03\.0 ioat: CHANCMD reset/.test(l)), seen.join('\n'));
});
