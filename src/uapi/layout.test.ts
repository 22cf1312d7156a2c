import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import { ENUMS } from './enums.js';
import { IO, IOCTLS, ioctlTable } from './ioctls.js';
import {
  decode, encode, endOf, fieldPresent, fieldSize, structSize, TYPE_SIZE, type FieldDef, type StructDef,
} from './layout.js';
import { PROFILES, V, type ProfileName } from './profiles.js';
import * as S from './structs.js';

const ALL_STRUCTS: [string, StructDef][] = Object.entries(S as Record<string, unknown>)
  .filter((e): e is [string, StructDef] => typeof e[1] === 'object' && e[1] !== null && 'fields' in e[1]);
const PROFILE_NAMES = Object.keys(PROFILES) as ProfileName[];
const VERSIONS = [...new Set(PROFILE_NAMES.map((p) => PROFILES[p].version))];

// ---- Sizes from spec 01 §2 (ioctl table), §3.1–3.3 and spec 03 §2/§6 (newest tree) -----------

const SPEC_SIZES_NEWEST: Record<string, number> = {
  iommu_destroy: 8, iommu_ioas_alloc: 12, iommu_iova_range: 16, iommu_ioas_iova_ranges: 32,
  iommu_ioas_allow_iovas: 24, iommu_ioas_map: 40, iommu_ioas_map_file: 40, iommu_ioas_copy: 40,
  iommu_ioas_unmap: 24, iommu_ioas_noiommu_get_pa: 40, iommu_ioas_change_process: 8, iommu_option: 24,
  iommu_vfio_ioas: 12, iommu_hwpt_alloc: 48, iommu_hw_info: 40, iommu_hwpt_set_dirty_tracking: 16,
  iommu_hwpt_get_dirty_bitmap: 48, iommu_hwpt_invalidate: 32, iommu_fault_alloc: 16, iommu_viommu_alloc: 40,
  iommu_vdevice_alloc: 24, iommu_veventq_alloc: 32, iommu_hw_queue_alloc: 40,
  // §3.2 driver payloads
  iommu_hwpt_vtd_s1: 24, iommu_hwpt_arm_smmuv3: 16, iommu_hwpt_amd_guest: 32, iommu_hw_info_vtd: 24,
  iommu_hw_info_arm_smmuv3: 40, iommu_hw_info_tegra241_cmdqv: 8, iommu_hw_info_amd: 16,
  iommu_hwpt_vtd_s1_invalidate: 24, iommu_viommu_arm_smmuv3_invalidate: 16, iommu_viommu_tegra241_cmdqv: 16,
  iommu_vevent_arm_smmuv3: 32, iommu_vevent_tegra241_cmdqv: 16,
  // §3.3 records
  iommu_hwpt_pgfault: 40, iommu_hwpt_page_response: 8, iommufd_vevent_header: 8,
  // spec 03 §6 selftest payloads (newest = gen B)
  iommu_test_hw_info: 8, iommu_hwpt_selftest: 8, iommu_hwpt_invalidate_selftest: 8, iommu_viommu_selftest: 24,
  iommu_viommu_invalidate_selftest: 12, iommu_viommu_event_selftest: 4,
};

/** Where an older profile's kernel declares a shorter struct. */
const SPEC_SIZES_OLDER: Record<string, Partial<Record<ProfileName, number>>> = {
  iommu_hwpt_selftest: { '6.12': 4, 'viommu-v1': 4, '6.13': 4, '6.15': 4, '6.17': 4 },
  iommu_viommu_alloc: { '6.13': 24, '6.15': 24 },
};

/** spec 01 §2: the minimum accepted size (end of the last mandatory member) per ioctl. */
const SPEC_MIN: Record<string, number> = {
  IOMMU_DESTROY: 8, IOMMU_IOAS_ALLOC: 12, IOMMU_IOAS_ALLOW_IOVAS: 24, IOMMU_IOAS_COPY: 40,
  IOMMU_IOAS_IOVA_RANGES: 32, IOMMU_IOAS_MAP: 40, IOMMU_IOAS_UNMAP: 24, IOMMU_OPTION: 24, IOMMU_VFIO_IOAS: 12,
  IOMMU_HWPT_ALLOC: 24, IOMMU_GET_HW_INFO: 32, IOMMU_HWPT_SET_DIRTY_TRACKING: 16, IOMMU_HWPT_GET_DIRTY_BITMAP: 48,
  IOMMU_HWPT_INVALIDATE: 32, IOMMU_FAULT_QUEUE_ALLOC: 16, IOMMU_IOAS_MAP_FILE: 40, IOMMU_VIOMMU_ALLOC: 24,
  IOMMU_VDEVICE_ALLOC: 24, IOMMU_IOAS_CHANGE_PROCESS: 8, IOMMU_VEVENTQ_ALLOC: 28, IOMMU_HW_QUEUE_ALLOC: 40, IOMMU_IOAS_NOIOMMU_GET_PA: 40,
  IOMMU_TEST_CMD: 68,
};

test('every struct size matches the spec tables, per profile', () => {
  for (const p of PROFILE_NAMES) {
    const v = PROFILES[p].version;
    for (const [key, s] of ALL_STRUCTS) {
      if (key.endsWith('_v1') || key.startsWith('test_') || key.startsWith('vfio_')) continue;
      if (s.since !== undefined && s.since > v) continue;
      const want = SPEC_SIZES_OLDER[s.name]?.[p] ?? SPEC_SIZES_NEWEST[s.name];
      if (s === S.iommu_test_cmd) continue; // checked below (the union is not in the header fields)
      assert.notEqual(want, undefined, `no spec size for ${s.name}`);
      assert.equal(structSize(s, v), want, `sizeof(${s.name}) in ${p}`);
    }
  }
});

test('the original vIOMMU series structs and the VFIO compat structs have their spec sizes', () => {
  assert.equal(structSize(S.iommu_viommu_alloc_v1), 24);
  assert.equal(structSize(S.iommu_viommu_vdev_id_v1), 24);
  assert.equal(structSize(S.iommu_viommu_invalidate_v1), 32);
  assert.equal(structSize(S.vfio_iommu_type1_info), 24);
  assert.equal(structSize(S.vfio_iommu_type1_dma_map), 32);
  assert.equal(structSize(S.vfio_iommu_type1_dma_unmap), 24);
  assert.equal(structSize(S.vfio_iova_range), 16);
});

test('iommu_test_cmd: header, union views at 16..63, last at 64, 72 bytes (spec 03 §2)', () => {
  assert.equal(S.iommu_test_cmd.fields.last.offset, 64);
  assert.equal(endOf(S.iommu_test_cmd, 'last'), 68);
  assert.equal(S.IOMMU_TEST_CMD_SIZE, 72);
  let maxEnd = 0;
  for (const view of Object.values(S.TEST_OP_VIEWS)) {
    assert.ok(view);
    for (const f of Object.values(view.fields)) {
      assert.ok(f.offset >= 16, `${view.name} starts in the union`);
      maxEnd = Math.max(maxEnd, f.offset + fieldSize(f));
    }
  }
  assert.equal(maxEnd, 64, 'the largest member (dirty) ends where `last` starts');
  assert.equal(S.test_dirty.fields.out_nr_dirty.offset, 56);
  // Every op of the enum has a view, and every view is used.
  for (const m of ENUMS.iommu_test_op!.members) assert.ok(S.TEST_OP_VIEWS[m.value], m.name);
});

test('minimum sizes per ioctl match spec 01 §2', () => {
  for (const d of IOCTLS) {
    const want = SPEC_MIN[d.cname];
    if (d.v1Only) {
      // The original series: every listed member is mandatory.
      assert.equal(endOf(d.struct, d.last), structSize(d.struct), d.cname);
      continue;
    }
    assert.notEqual(want, undefined, d.cname);
    assert.equal(endOf(d.struct, d.last), want, d.cname);
  }
});

test('ioctl numbers: _IO(\';\', nr), contiguous from 0x80, per-profile tables (spec 01 §1.1, §2; 05 §3.1)', () => {
  assert.equal(IO(0x80), 0x3b80);
  const nrs = (p: ProfileName): number[] => [...ioctlTable(PROFILES[p]).keys()].sort((a, b) => a - b);
  const range = (a: number, b: number): number[] => Array.from({ length: b - a + 1 }, (_, i) => a + i);
  assert.deepEqual(nrs('6.12'), [...range(0x80, 0x8e), 0xa0]);
  assert.deepEqual(nrs('viommu-v1'), [...range(0x80, 0x92), 0xa0]);
  assert.deepEqual(nrs('6.13'), [...range(0x80, 0x91), 0xa0]);
  assert.deepEqual(nrs('6.15'), [...range(0x80, 0x93), 0xa0]);
  assert.deepEqual(nrs('6.17'), [...range(0x80, 0x94), 0xa0]);
  assert.deepEqual(nrs('7.3'), [...range(0x80, 0x95), 0xa0]);
  assert.deepEqual(nrs('mainline'), nrs('7.3'));
  assert.deepEqual([...ioctlTable(PROFILES.mainline, false).keys()].includes(0xa0), false);
  for (const p of PROFILE_NAMES) {
    for (const [nr, d] of ioctlTable(PROFILES[p])) {
      assert.equal(d.request, 0x3b00 | nr);
      assert.equal(d.nr, nr);
      assert.ok(d.minSize <= d.knownSize, `${p} ${d.cname}: min ${d.minSize} <= known ${d.knownSize}`);
    }
  }
  const v1 = ioctlTable(PROFILES['viommu-v1']);
  assert.equal(v1.get(0x8f)?.cname, 'IOMMU_VIOMMU_ALLOC');
  assert.equal(v1.get(0x90)?.cname, 'IOMMU_VIOMMU_SET_VDEV_ID');
  assert.equal(v1.get(0x91)?.cname, 'IOMMU_VIOMMU_UNSET_VDEV_ID');
  assert.equal(v1.get(0x92)?.cname, 'IOMMU_VIOMMU_INVALIDATE');
  const main = ioctlTable(PROFILES.mainline);
  const names = [...main.values()].map((d) => d.cname);
  assert.deepEqual(names.slice(0, 21), [
    'IOMMU_DESTROY', 'IOMMU_IOAS_ALLOC', 'IOMMU_IOAS_ALLOW_IOVAS', 'IOMMU_IOAS_COPY', 'IOMMU_IOAS_IOVA_RANGES',
    'IOMMU_IOAS_MAP', 'IOMMU_IOAS_UNMAP', 'IOMMU_OPTION', 'IOMMU_VFIO_IOAS', 'IOMMU_HWPT_ALLOC', 'IOMMU_GET_HW_INFO',
    'IOMMU_HWPT_SET_DIRTY_TRACKING', 'IOMMU_HWPT_GET_DIRTY_BITMAP', 'IOMMU_HWPT_INVALIDATE', 'IOMMU_FAULT_QUEUE_ALLOC',
    'IOMMU_IOAS_MAP_FILE', 'IOMMU_VIOMMU_ALLOC', 'IOMMU_VDEVICE_ALLOC', 'IOMMU_IOAS_CHANGE_PROCESS',
    'IOMMU_VEVENTQ_ALLOC', 'IOMMU_HW_QUEUE_ALLOC']);
  assert.equal(main.get(0xa0)?.knownSize, 72);
});

test('every table struct is naturally aligned and free of overlaps (except declared aliases)', () => {
  for (const [key, s] of [...ALL_STRUCTS, ...Object.values(S.TEST_OP_VIEWS).map((v) => [v!.name, v!] as const)]) {
    const fs = Object.entries(s.fields).sort((a, b) => a[1].offset - b[1].offset);
    let end = 0;
    for (const [name, f] of fs) {
      assert.equal(f.offset % TYPE_SIZE[f.type], 0, `${key}.${name} aligned`);
      if (f.alias) {
        const twin = fs.find(([n, g]) => n !== name && !g.alias && g.offset === f.offset);
        assert.ok(twin, `${key}.${name}: an alias needs a field at the same offset`);
        assert.equal(fieldSize(twin[1]), fieldSize(f));
        continue;
      }
      assert.ok(f.offset >= end, `${key}.${name} overlaps the previous field`);
      end = f.offset + fieldSize(f);
    }
  }
});

test('every enumName in a field names a table in ENUMS', () => {
  for (const [key, s] of [...ALL_STRUCTS, ...Object.values(S.TEST_OP_VIEWS).map((v) => [v!.name, v!] as const)]) {
    for (const [name, f] of Object.entries(s.fields)) {
      if (f.enumName) assert.ok(ENUMS[f.enumName], `${key}.${name} -> ${f.enumName}`);
    }
  }
});

// ---- Codec properties ---------------------------------------------------------------

const U64_MAX = (1n << 64n) - 1n;

function arbScalar(f: FieldDef): fc.Arbitrary<number | bigint> {
  switch (f.type) {
    case 'u8': return fc.integer({ min: 0, max: 0xff });
    case 'u16': return fc.integer({ min: 0, max: 0xffff });
    case 'u32': return fc.integer({ min: 0, max: 0xffffffff });
    case 's32': return fc.integer({ min: -0x80000000, max: 0x7fffffff });
    case 'u64': return fc.bigInt({ min: 0n, max: U64_MAX });
  }
}

function arbStruct(s: StructDef, version: number): fc.Arbitrary<Record<string, unknown>> {
  const rec: Record<string, fc.Arbitrary<unknown>> = {};
  for (const [name, f] of Object.entries(s.fields)) {
    if (f.alias || !fieldPresent(f, version)) continue;
    rec[name] = f.count ? fc.array(arbScalar(f), { minLength: f.count, maxLength: f.count }) : arbScalar(f);
  }
  return fc.record(rec);
}

const CODEC_STRUCTS: [string, StructDef][] = [
  ...ALL_STRUCTS, ...Object.values(S.TEST_OP_VIEWS).map((v) => [`view ${v!.name}`, v!] as [string, StructDef]),
];

test('codec: decode(encode(x)) == x for every struct and ABI version (property)', () => {
  for (const [key, s] of CODEC_STRUCTS) {
    for (const v of VERSIONS) {
      fc.assert(fc.property(arbStruct(s, v), (x) => {
        const buf = encode(s, x, v, Math.max(structSize(s, v), s === S.iommu_test_cmd ? S.IOMMU_TEST_CMD_SIZE : 0));
        const back = decode(s, buf, v) as Record<string, unknown>;
        for (const [name, f] of Object.entries(s.fields)) {
          if (!fieldPresent(f, v)) {
            assert.deepEqual(back[name], f.count ? new Array(f.count).fill(f.type === 'u64' ? 0n : 0) : f.type === 'u64' ? 0n : 0);
          } else if (f.alias) {
            const twin = Object.entries(s.fields).find(([n, g]) => n !== name && !g.alias && g.offset === f.offset)!;
            assert.deepEqual(back[name], x[twin[0]], `${key}.${name} reads its twin's storage`);
          } else {
            assert.deepEqual(back[name], x[name], `${key}.${name} @${v}`);
          }
        }
      }), { numRuns: 25 });
    }
  }
});

test('codec: encode(decode(bytes)) reproduces every byte the fields cover (property)', () => {
  for (const [key, s] of CODEC_STRUCTS) {
    const v = Infinity;
    const size = s === S.iommu_test_cmd ? S.IOMMU_TEST_CMD_SIZE : structSize(s, v);
    const covered = new Uint8Array(size);
    for (const f of Object.values(s.fields)) covered.fill(1, f.offset, f.offset + fieldSize(f));
    fc.assert(fc.property(fc.uint8Array({ minLength: size, maxLength: size }), (bytes) => {
      const again = encode(s, decode(s, bytes, v) as Record<string, unknown>, v, size);
      for (let i = 0; i < size; i++) {
        assert.equal(again[i], covered[i] ? bytes[i] : 0, `${key} byte ${i}`);
      }
    }), { numRuns: 25 });
  }
});

test('codec: a short user struct decodes with the missing tail as zero; encode never writes past the buffer', () => {
  fc.assert(fc.property(fc.integer({ min: 0, max: 48 }), fc.bigInt({ min: 1n, max: U64_MAX }), (len, val) => {
    const full = encode(S.iommu_hwpt_alloc, { size: 48, flags: 1, dev_id: 2, pt_id: 3, data_uptr: val, fault_id: 7 });
    const short = full.slice(0, len);
    const d = decode(S.iommu_hwpt_alloc, short);
    assert.equal(d.data_uptr, len >= 40 ? val : 0n);
    assert.equal(d.fault_id, len >= 44 ? 7 : 0);
    const again = encode(S.iommu_hwpt_alloc, d as unknown as Record<string, unknown>, Infinity, len);
    assert.equal(again.length, len);
    // Every field that fits entirely in the short struct survives; a partial trailing field reads as 0.
    const whole = Math.max(0, ...Object.values(S.iommu_hwpt_alloc.fields)
      .map((f) => f.offset + fieldSize(f)).filter((e) => e <= len));
    assert.deepEqual(again.subarray(0, whole), short.subarray(0, whole));
    assert.ok(again.subarray(whole).every((b) => b === 0));
  }));
});

test('codec: fields newer than the version are neither decoded nor encoded', () => {
  const buf = new Uint8Array(48).fill(0xff);
  const d = decode(S.iommu_hwpt_alloc, buf, V.V6_6);
  assert.equal(d.data_type, 0);
  assert.equal(d.data_uptr, 0n);
  assert.equal(d.out_hwpt_id, 0xffffffff);
  const e = encode(S.iommu_hwpt_alloc, { size: 48, data_type: 5, fault_id: 9 }, V.V6_7, 48);
  assert.equal(decode(S.iommu_hwpt_alloc, e).data_type, 5);
  assert.equal(decode(S.iommu_hwpt_alloc, e).fault_id, 0, 'fault_id is 6.11+');
  assert.equal(structSize(S.iommu_hwpt_alloc, V.V6_6), 24);
  assert.equal(structSize(S.iommu_hwpt_alloc, V.V6_7), 40);
  assert.equal(structSize(S.iommu_hwpt_alloc, V.V6_11), 48);
});
