// Machine descriptions with ARM SMMUv3 instances: the options (ID registers,
// stages, nesting, ATS, granules, caches) reach the emulated hardware, devices
// sit behind an instance with their StreamIDs, and every bad value is refused
// with an error that names it, when the description is read.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Emulator } from '../core/emulator.js';
import { smmuDriverOf, SmmuMaster } from '../drivers/arm-smmuv3/index.js';
import { IDR0, IDR1, IDR5, reg } from '../drivers/arm-smmuv3/regs.js';
import { buildMachine, describeMachine, loadMachine, resolveMachine, type MachineDesc } from './machine.js';

const smmu = (options?: Record<string, unknown>, devices: MachineDesc['devices'] = [{ model: 'ioat', bdf: '0000:00:03.0' }]): MachineDesc =>
  ({ iommus: [{ name: 'smmu0', type: 'arm-smmuv3', ...(options ? { options } : {}) }], devices });

test('preset ioat-x2-smmu: one SMMUv3, two IOATs behind it with StreamIDs 0x18 and 0x20', () => {
  const emu = new Emulator();
  const b = buildMachine(emu, loadMachine('ioat-x2-smmu'));
  assert.equal(b.devices.length, 2);
  const [m0, m1] = b.devices.map((d) => d.iommuDev);
  assert.ok(m0 instanceof SmmuMaster && m1 instanceof SmmuMaster);
  assert.equal(m0.smmu, m1.smmu, 'the same instance');
  assert.deepEqual([m0.sids, m1.sids], [[0x18], [0x20]]);
  const drv = smmuDriverOf(emu);
  assert.deepEqual(drv.smmus.map((s) => s.name), ['smmu0']);
  assert.deepEqual([...drv.smmus[0]!.streams.keys()], [0x18, 0x20]);
  assert.ok(m0.smmu.features.nesting);
  const text = describeMachine(b.machine);
  assert.match(text, /iommu smmu0: arm-smmuv3 — stage 1 \+ stage 2, nesting \(vIOMMU\), 4K\/16K\/64K granules, 48-bit output/);
  assert.match(text, /0000:00:04\.0 {2}ioat {2}group 4 {2}\/dev\/vfio\/devices\/vfio1 {2}behind smmu0 {2}StreamID 0x20/);
});

test('options reach the ID registers and the probe: stage 1 only, 4K, 40-bit OAS, ATS, SubstreamIDs, small IOTLB', () => {
  const m = resolveMachine(smmu({ stage2: false, granules: [4096], oasBits: 40, ats: true, ssidBits: 8, iotlbEntries: 16, nesting: false }));
  assert.deepEqual(m.iommus[0]!.options, { stage2: false, granules: [4096], oasBits: 40, ats: true, ssidBits: 8, iotlbEntries: 16 });
  const emu = new Emulator();
  const b = buildMachine(emu, m);
  const s = (b.devices[0]!.iommuDev as SmmuMaster).smmu;
  const [i0, i1, , , , i5] = s.cfg.idr;
  assert.deepEqual([reg(i0, IDR0.S1P), reg(i0, IDR0.S2P), reg(i0, IDR0.ATS)], [1, 0, 1]);
  assert.equal(reg(i1, IDR1.SSIDSIZE), 8);
  assert.deepEqual([reg(i5, IDR5.GRAN4K), reg(i5, IDR5.GRAN16K), reg(i5, IDR5.GRAN64K), reg(i5, IDR5.OAS)], [1, 0, 0, 2]);
  assert.equal(s.features.nesting, false);
  assert.equal(s.features.oas, 40);
  assert.equal(s.hw.iotlb.capacity, 16);
  assert.match(describeMachine(m), /stage 1, no nesting, 4K granules, 40-bit output, 16-bit StreamIDs, 8-bit SubstreamIDs, ATS/);
});

test('raw IDR/IIDR/AIDR values: overrides applied last, IIDR fields, an MMU-600 r0 loses nesting (erratum)', () => {
  const m = resolveMachine(smmu({ idr: { 3: 0x1014 }, aidr: 0x02, iidr: { implementer: 0x43b, productId: 0x483, variant: 0, revision: 1 }, nesting: false }));
  const s = (buildMachine(new Emulator(), m).devices[0]!.iommuDev as SmmuMaster).smmu;
  assert.equal(s.cfg.idr[3], 0x1014);
  assert.equal(s.cfg.aidr, 0x02);
  assert.equal(s.cfg.iidr, (0x483 << 20) | (1 << 12) | 0x43b);
  assert.equal(s.features.rangeInv, false, 'IDR3.RIL cleared by the override');
  assert.equal(s.features.nesting, false);
});

test('devices: explicit StreamIDs (several), CANWBS, the requester ID by default', () => {
  const m = resolveMachine(smmu({}, [
    { model: 'ioat', bdf: '0000:00:03.0', sids: [0x200, 0x201], canwbs: false },
    { model: 'ioat', bdf: '0000:01:00.1' },
  ]));
  assert.deepEqual(m.devices.map((d) => [d.sids, d.canwbs]), [[[0x200, 0x201], false], [[0x101], true]]);
  const b = buildMachine(new Emulator(), m);
  const [a, c] = b.devices.map((d) => d.iommuDev as SmmuMaster);
  assert.deepEqual([a!.sids, a!.canwbs], [[0x200, 0x201], false]);
  assert.deepEqual(c!.sids, [0x101], 'bus 1, device 0, function 1');
});

test('VT-d devices carry no StreamIDs; the VT-d type takes no options', () => {
  const m = loadMachine('ioat');
  assert.equal('sids' in m.devices[0]!, false);
  assert.deepEqual(m.iommus[0]!.options, {});
});

test('bad descriptions: errors name the instance, the option and the value', () => {
  const bad = (d: MachineDesc, re: RegExp) => assert.throws(() => resolveMachine(d), re);
  bad(smmu({ stage3: true }), /IOMMU 'smmu0': unknown option 'stage3'/);
  bad(smmu({ stage1: 'yes' }), /option stage1="yes" must be true or false/);
  bad(smmu({ granules: [8192] }), /option granules=\[8192\] must be a non-empty list/);
  bad(smmu({ granules: [] }), /option granules=\[\] must be/);
  bad(smmu({ oasBits: 52 }), /option oasBits=52 must be an integer in 32\.\.48/);
  bad(smmu({ oasBits: 38 }), /option oasBits=38 must be one of 32, 36, 40, 42, 44, 48/);
  bad(smmu({ iidr: { vendor: 1 } }), /option iidr=.* must be an object with only .* \(not 'vendor'\)/);
  bad(smmu({ idr: { 6: 0 } }), /keyed by register index 0\.\.5 \(not '6'\)/);
  bad(smmu({ idr: { 0: 0x0d4c301b | (1 << 6) } }), /IOMMU 'smmu0': SMMU smmu0: IDR0\.HTTU=1 .* not modelled/);
  bad(smmu({ stage1: false, stage2: false }), /neither S1P nor S2P/);
  bad(smmu({ stage2: false, nesting: true }), /option nesting=true, but the registers give no nesting \(stage1 true, stage2 false\)/);
  bad(smmu({ nesting: false }), /option nesting=false, but the registers give nesting/);
  bad(smmu({ iidr: { implementer: 0x43b, productId: 0x483 }, nesting: true }), /no nesting .*an IIDR with a nesting erratum/);
  bad(smmu(['x'] as unknown as Record<string, unknown>), /"options" must be an object/);
  bad(smmu({}, [{ model: 'ioat', bdf: '0000:00:03.0', sids: [] }]), /device 0000:00:03\.0 behind 'smmu0': "sids" must be a non-empty list/);
  bad(smmu({}, [{ model: 'ioat', bdf: '0000:00:03.0', sids: [1, 1] }]), /lists a StreamID twice/);
  bad(smmu({ sidBits: 8 }, [{ model: 'ioat', bdf: '0000:00:03.0', sids: [0x100] }]), /StreamID 256 must be an integer in 0\.\.0xff \(SIDSIZE 8\)/);
  bad(smmu({ sidBits: 8 }, [{ model: 'ioat', bdf: '0000:01:00.0' }]), /requester ID 0x100 needs more than 8 StreamID bits; give "sids"/);
  bad(smmu({}, [{ model: 'ioat', bdf: '0000:00:03.0', sids: [7] }, { model: 'ioat', bdf: '0000:00:04.0', sids: [7] }]),
    /StreamID 0x7 of smmu0 given to both 0000:00:03\.0 and 0000:00:04\.0/);
  bad(smmu({}, [{ model: 'ioat', bdf: '0000:00:03.0', canwbs: 1 as unknown as boolean }]), /"canwbs" must be true or false/);
  const vtd = (d: Partial<MachineDesc['devices'][number]>, options?: Record<string, unknown>): MachineDesc =>
    ({ iommus: [{ name: 'dmar0', type: 'intel-vtd', ...(options ? { options } : {}) }], devices: [{ model: 'ioat', bdf: '0000:00:03.0', ...d }] });
  bad(vtd({ sids: [1] }), /device 0000:00:03\.0: "sids" is for devices behind an arm-smmuv3, not intel-vtd 'dmar0'/);
  bad(vtd({}, { stage1: true }), /IOMMU 'dmar0': type intel-vtd takes no options/);
});

test('two SMMU instances: each device behind the one it names, StreamIDs per instance', () => {
  const m = resolveMachine({
    iommus: [{ name: 'smmu0', type: 'arm-smmuv3' }, { name: 'smmu1', type: 'arm-smmuv3', options: { granules: [65536] } }],
    devices: [{ model: 'ioat', bdf: '0000:00:03.0', sids: [5] }, { model: 'ioat', bdf: '0000:00:04.0', iommu: 'smmu1', sids: [5] }],
  });
  const b = buildMachine(new Emulator(), m);
  const [a, c] = b.devices.map((d) => d.iommuDev as SmmuMaster);
  assert.notEqual(a!.smmu, c!.smmu);
  assert.deepEqual([a!.smmu.name, c!.smmu.name], ['smmu0', 'smmu1']);
  assert.deepEqual(c!.smmu.features.granules, [16]);
});
