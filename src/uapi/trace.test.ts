import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import { ERRNO } from './errno.js';
import { IO, VFIO } from './ioctls.js';
import { encode } from './layout.js';
import { PROFILES, type ProfileName } from './profiles.js';
import * as S from './structs.js';
import { enumText, formatIoctl, formatStruct } from './trace.js';

const P612 = PROFILES['6.12'];
const MAIN = PROFILES.mainline;

function testCmd(op: number, id: number, view: Record<string, unknown>, viewDef = S.TEST_OP_VIEWS[op]!): Uint8Array {
  const b = encode(S.iommu_test_cmd, { size: S.IOMMU_TEST_CMD_SIZE, op, id }, Infinity, S.IOMMU_TEST_CMD_SIZE);
  return Uint8Array.from(encode(viewDef, view, Infinity, S.IOMMU_TEST_CMD_SIZE).map((x, i) => x | b[i]!));
}

test('IOAS_MAP: inputs, result and outputs on one line, flags symbolic, u64 in hex', () => {
  const inb = encode(S.iommu_ioas_map, {
    size: 40, flags: 1 | 4, ioas_id: 1, user_va: 0x7f12_3400_0000n, length: 0x1000n, iova: 0x100_0000n,
  });
  assert.equal(formatIoctl(MAIN, IO(0x85), inb, inb, 0),
    'IOMMU_IOAS_MAP {flags=FIXED_IOVA|READABLE ioas_id=1 user_va=0x7f1234000000 length=0x1000 iova=0x1000000}' +
    ' = 0 -> {iova=0x1000000}');
});

test('errno results: names pass through, negative numbers become names, no copy-back prints no arrow', () => {
  const inb = encode(S.iommu_destroy, { size: 8, id: 7 });
  assert.equal(formatIoctl(MAIN, IO(0x80), inb, null, 'ENOENT'), 'IOMMU_DESTROY {id=7} = ENOENT');
  assert.equal(formatIoctl(MAIN, IO(0x80), inb, null, -ERRNO.EBUSY), 'IOMMU_DESTROY {id=7} = EBUSY');
  assert.equal(formatIoctl(MAIN, IO(0x80), null, null, 'EFAULT'), 'IOMMU_DESTROY {?} = EFAULT');
});

test('unknown requests print as ioctl(0x...): not in this profile, wrong type byte, empty slots', () => {
  const inb = new Uint8Array(40);
  assert.equal(formatIoctl(P612, IO(0x8f), inb, null, 'ENOTTY'), 'ioctl(0x3b8f) = ENOTTY');
  assert.equal(formatIoctl(MAIN, IO(0x96), null, null, -ERRNO.ENOTTY), 'ioctl(0x3b96) = ENOTTY');
  assert.equal(formatIoctl(PROFILES['6.17'], IO(0x95), null, null, -ERRNO.ENOTTY), 'ioctl(0x3b95) = ENOTTY');
  assert.equal(formatIoctl(MAIN, 0x1285, inb, null, 'ENOTTY'), 'ioctl(0x1285) = ENOTTY');
  assert.equal(formatIoctl(MAIN, 0xc0283b85, inb, null, 'ENOTTY'), 'ioctl(0xc0283b85) = ENOTTY');
  // The same number is VIOMMU_ALLOC in the original series.
  const v1 = encode(S.iommu_viommu_alloc_v1, { size: 24, type: 0, dev_id: 1, hwpt_id: 2 });
  assert.match(formatIoctl(PROFILES['viommu-v1'], IO(0x8f), v1, null, 'EOPNOTSUPP'),
    /^IOMMU_VIOMMU_ALLOC \{flags=0 type=DEFAULT dev_id=1 hwpt_id=2\} = EOPNOTSUPP$/);
});

test('size is shown only when it differs from the kernel struct; reserved words only when non-zero', () => {
  const short = encode(S.iommu_hwpt_alloc, { size: 24, dev_id: 1, pt_id: 2 }, Infinity, 24);
  assert.equal(formatIoctl(MAIN, IO(0x89), short, null, 'EINVAL'), 'IOMMU_HWPT_ALLOC {size=24 flags=0 dev_id=1 pt_id=2} = EINVAL');
  const rsv = encode(S.iommu_ioas_unmap, { size: 24, ioas_id: 3, iova: 0n, length: 0xffff_ffff_ffff_ffffn });
  assert.equal(formatIoctl(MAIN, IO(0x86), rsv, rsv, 0),
    'IOMMU_IOAS_UNMAP {ioas_id=3 iova=0x0 length=0xffffffffffffffff} = 0 -> {length=0xffffffffffffffff}');
  const r = encode(S.iommu_ioas_map, { size: 40, flags: 2, ioas_id: 1, __reserved: 9, length: 0x1000n });
  assert.match(formatIoctl(MAIN, IO(0x85), r, null, 'EOPNOTSUPP'), / __reserved=9 /);
  const r0 = encode(S.iommu_ioas_map, { size: 40, flags: 2, ioas_id: 1, length: 0x1000n });
  assert.doesNotMatch(formatIoctl(MAIN, IO(0x85), r0, null, 'EINVAL'), /__reserved/);
});

test('enums and flags: symbolic, unknown bits in hex, selftest type values by name, profile-gated members', () => {
  assert.equal(enumText('iommufd_ioas_map_flags', 0x105, MAIN), 'FIXED_IOVA|READABLE|0x100');
  assert.equal(enumText('iommufd_ioas_map_flags', 0, MAIN), '0');
  assert.equal(enumText('iommufd_hwpt_alloc_flags', 8, MAIN), 'ALLOC_PASID');
  assert.equal(enumText('iommufd_hwpt_alloc_flags', 8, P612), '0x8', 'PASID flag is 6.15+');
  assert.equal(enumText('iommu_hwpt_data_type', 0xdead, MAIN), 'SELFTEST');
  assert.equal(enumText('iommu_hw_info_type', 0xfeedbeef, P612), 'SELFTEST');
  assert.equal(enumText('iommu_hw_info_type', 0xfeedbef0, P612), '0xfeedbef0');
  assert.equal(enumText('iommufd_option', 1, MAIN), 'HUGE_PAGES');
  assert.equal(enumText('iommu_test_op', 2, MAIN), 'MOCK_DOMAIN');
  assert.equal(enumText('iommufd_hw_info_flags', 1, P612), 'INPUT_TYPE');
});

test('GET_HW_INFO: in_data_type (the input alias) in, out_data_type out', () => {
  const inb = encode(S.iommu_hw_info, { size: 40, flags: 1, dev_id: 2, data_len: 8, data_uptr: 0x5000n, out_data_type: 0xfeedbeef });
  const out = encode(S.iommu_hw_info, {
    size: 40, flags: 1, dev_id: 2, data_len: 8, data_uptr: 0x5000n, out_data_type: 0xfeedbeef,
    out_max_pasid_log2: 20, out_capabilities: 1n,
  });
  assert.equal(formatIoctl(MAIN, IO(0x8a), inb, out, 0),
    'IOMMU_GET_HW_INFO {flags=INPUT_TYPE dev_id=2 data_len=8 data_uptr=0x5000 in_data_type=SELFTEST} = 0' +
    ' -> {data_len=8 out_data_type=SELFTEST out_max_pasid_log2=20 out_capabilities=DIRTY_TRACKING}');
});

test('IOMMU_TEST_CMD: the union is decoded with the view of the op', () => {
  const inb = testCmd(12, 1, { dev_flags: 4 });
  const out = testCmd(12, 1, { dev_flags: 4, out_stdev_id: 2, out_hwpt_id: 3, out_idev_id: 4 });
  assert.equal(formatIoctl(P612, IO(0xa0), inb, out, 0),
    'IOMMU_TEST_CMD {op=MOCK_DOMAIN_FLAGS id=1 dev_flags=PASID} = 0 -> {out_stdev_id=2 out_hwpt_id=3 out_idev_id=4}');
  const dirty = testCmd(13, 5, { flags: 0, iova: 0x100_0000n, length: 0x8000n, page_size: 0x800n, uptr: 0x7000n });
  assert.equal(formatIoctl(MAIN, IO(0xa0), dirty, null, 'EINVAL'),
    'IOMMU_TEST_CMD {op=DIRTY id=5 flags=0 iova=0x1000000 length=0x8000 page_size=0x800 uptr=0x7000} = EINVAL');
  const ar = testCmd(1, 1, { start: 0n, length: 0x1000n });
  assert.equal(formatIoctl(MAIN, IO(0xa0), ar, null, 0), 'IOMMU_TEST_CMD {op=ADD_RESERVED id=1 start=0x0 length=0x1000} = 0');
  // An op the profile's kernel does not know: no union decoding.
  const pa = testCmd(18, 1, { pasid: 5, pt_id: 2 });
  assert.equal(formatIoctl(P612, IO(0xa0), pa, null, 'EOPNOTSUPP'), 'IOMMU_TEST_CMD {op=18 id=1} = EOPNOTSUPP');
  assert.equal(formatIoctl(MAIN, IO(0xa0), pa, null, 0), 'IOMMU_TEST_CMD {op=PASID_ATTACH id=1 pasid=5 pt_id=2} = 0');
  const dc = testCmd(16, 3, { id: 1, cache: 0xbaddad });
  assert.equal(formatIoctl(PROFILES['viommu-v1'], IO(0xa0), dc, null, 0),
    'IOMMU_TEST_CMD {op=DEV_CHECK_CACHE id=3 check_dev_cache.id=1 cache=0xbaddad} = 0', 'the v1 series had DEV_CHECK_CACHE');
  assert.equal(formatIoctl(P612, IO(0xa0), dc, null, 'EOPNOTSUPP'), 'IOMMU_TEST_CMD {op=16 id=3} = EOPNOTSUPP');
  const rep = testCmd(19, 1, { pasid: 5, pt_id: 2 });
  assert.equal(formatIoctl(MAIN, IO(0xa0), rep, null, 0), 'IOMMU_TEST_CMD {op=PASID_REPLACE id=1 pasid=5 pt_id=2} = 0');
});

test('VFIO compat requests on the same fd are named', () => {
  const map = encode(S.vfio_iommu_type1_dma_map, { argsz: 32, flags: 3, vaddr: 0x7000n, iova: 0x10000n, size: 0x1000n });
  assert.equal(formatIoctl(MAIN, VFIO.IOMMU_MAP_DMA, map, null, 0),
    'VFIO_IOMMU_MAP_DMA {argsz=32 flags=0x3 vaddr=0x7000 iova=0x10000 size=0x1000} = 0');
  assert.equal(formatIoctl(MAIN, VFIO.GET_API_VERSION, null, null, 0), 'VFIO_GET_API_VERSION = 0');
});

test('formatIoctl never throws and yields one line for arbitrary input (property)', () => {
  const names = Object.keys(PROFILES) as ProfileName[];
  fc.assert(fc.property(
    fc.constantFrom(...names),
    fc.oneof(fc.integer({ min: 0x3b70, max: 0x3bb0 }), fc.integer({ min: 0, max: 0xffffffff })),
    fc.option(fc.uint8Array({ maxLength: 96 })),
    fc.option(fc.uint8Array({ maxLength: 96 })),
    fc.oneof(fc.constantFrom('EINVAL', 'ENOENT'), fc.integer({ min: -200, max: 10 })),
    (p, req, inb, outb, res) => {
      const line = formatIoctl(PROFILES[p], req, inb, outb, res);
      assert.equal(typeof line, 'string');
      assert.ok(line.length > 0);
      assert.ok(!line.includes('\n'));
    }), { numRuns: 2000 });
});

test('formatStruct: records read from the event fds', () => {
  const rec = encode(S.iommu_hwpt_pgfault, { flags: 1, dev_id: 2, pasid: 3, grpid: 4, perm: 3, addr: 0x1000n, cookie: 9 });
  assert.equal(formatStruct(MAIN, S.iommu_hwpt_pgfault, rec),
    '{flags=PASID_VALID dev_id=2 pasid=3 grpid=4 perm=READ|WRITE addr=0x1000 length=0 cookie=9}');
  const hdr = encode(S.iommufd_vevent_header, { flags: 1, sequence: 5 });
  assert.equal(formatStruct(MAIN, S.iommufd_vevent_header, hdr), '{flags=LOST_EVENTS sequence=5}');
});

test('the output part is left out when there is nothing to show (tracers that always re-read the struct)', () => {
  const d = encode(S.iommu_destroy, { size: 8, id: 3 });
  assert.equal(formatIoctl(MAIN, IO(0x80), d, d, 0), 'IOMMU_DESTROY {id=3} = 0', 'no output fields');
  const m = encode(S.iommu_ioas_map, { size: 40, flags: 6, ioas_id: 1, user_va: 0x1000n, length: 0x1000n });
  assert.equal(formatIoctl(MAIN, IO(0x85), m, m.slice(), 'EINVAL'),
    'IOMMU_IOAS_MAP {flags=WRITEABLE|READABLE ioas_id=1 user_va=0x1000 length=0x1000} = EINVAL', 'failure, untouched');
  const inv = encode(S.iommu_hwpt_invalidate, { size: 32, hwpt_id: 2, data_uptr: 0x1000n, data_type: 0xdeadbeef, entry_len: 8, entry_num: 4 });
  const back = encode(S.iommu_hwpt_invalidate, { size: 32, hwpt_id: 2, data_uptr: 0x1000n, data_type: 0xdeadbeef, entry_len: 8, entry_num: 1 });
  assert.equal(formatIoctl(MAIN, IO(0x8d), inv, back, 'EINVAL'),
    'IOMMU_HWPT_INVALIDATE {hwpt_id=2 data_uptr=0x1000 data_type=HWPT_INVALIDATE_DATA_SELFTEST entry_len=8 entry_num=4}' +
    ' = EINVAL -> {entry_num=1}', 'failure with a copy-back');
  const tc = testCmd(1, 1, { start: 0n, length: 0n });
  assert.equal(formatIoctl(MAIN, IO(0xa0), tc, tc.slice(), 'EINVAL'), 'IOMMU_TEST_CMD {op=ADD_RESERVED id=1 start=0x0 length=0x0} = EINVAL');
});
