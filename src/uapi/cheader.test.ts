import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import test from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  coreStructs, DRIVER_PAYLOAD_STRUCTS, generateHeaders, generateLayoutCheck, HELPER_STRUCTS, NOT_IN_HEADERS,
  RECORD_STRUCTS, TEST_PAYLOAD_STRUCTS, testUnionMembers, writeHeaders,
} from './cheader.js';
import { IOCTLS } from './ioctls.js';
import type { StructDef } from './layout.js';
import { PROFILES, type ProfileName } from './profiles.js';
import * as S from './structs.js';

const PROFILE_NAMES = Object.keys(PROFILES) as ProfileName[];

const CC = process.env.CC ?? 'cc';
const CXX = process.env.CXX ?? 'c++';
const ccMissing = spawnSync(CC, ['--version']).error !== undefined;
const NO_CC = ccMissing ? `no C compiler ('${CC}' not found): the generated headers are not compiled` : false;

function compile(dir: string, file: string, extra: string[] = []): void {
  const r = spawnSync(CC, ['-fsyntax-only', '-std=gnu11', '-Wall', '-Werror', '-isystem', dir, '-I', dir, ...extra, file],
    { encoding: 'utf8' });
  assert.equal(r.status, 0, `cc failed on ${file}:\n${r.stderr}`);
}

// Our own user of the 6.12 headers: the identifiers the 6.12 selftests need (spec 05 §1.3),
// used the way a test program would.
const USER_612 = `
#include <stddef.h>
#include <sys/ioctl.h>
#include <linux/iommufd.h>
#include "iommufd_test.h"

int probe(int fd, unsigned int dev_id)
{
	struct iommu_test_hw_info info;
	struct iommu_hw_info cmd = {
		.size = sizeof(cmd),
		.flags = IOMMU_HW_INFO_FLAG_INPUT_TYPE,
		.dev_id = dev_id,
		.data_len = sizeof(info),
		.data_uptr = (unsigned long)&info,
		.in_data_type = IOMMU_HW_INFO_TYPE_DEFAULT,
	};
	struct iommu_test_cmd mock = {
		.size = sizeof(mock),
		.op = IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS,
		.mock_domain_flags = { .dev_flags = MOCK_FLAGS_DEVICE_PASID | MOCK_FLAGS_DEVICE_HUGE_IOVA },
	};
	struct iommu_hwpt_selftest data = { .iotlb = IOMMU_TEST_IOTLB_DEFAULT };
	_Static_assert(sizeof(data) == 4, "6.12 nested data is 4 bytes");
	_Static_assert(MOCK_PASID_WIDTH == 20, "pasid width");
	_Static_assert(offsetof(struct iommu_hw_info, in_data_type) == offsetof(struct iommu_hw_info, out_data_type),
		       "in_data_type aliases out_data_type");
	_Static_assert(IOMMU_TEST_CMD == 0x3ba0, "test cmd number");
	if (ioctl(fd, IOMMU_TEST_CMD, &mock))
		return -1;
	return ioctl(fd, IOMMU_GET_HW_INFO, &cmd) ? -1 : (int)cmd.out_data_type + (int)data.iotlb;
}
`;

function isStruct(v: unknown): v is StructDef {
  return typeof v === 'object' && v !== null && 'fields' in v && 'name' in v;
}

test('every struct of the table is placed in a header (or deliberately left out)', () => {
  const placed = new Set<StructDef>([
    ...HELPER_STRUCTS, ...DRIVER_PAYLOAD_STRUCTS, ...RECORD_STRUCTS, ...TEST_PAYLOAD_STRUCTS, ...NOT_IN_HEADERS,
    ...IOCTLS.map((d) => d.struct), ...Object.values(S.TEST_OP_VIEWS).filter(isStruct),
  ]);
  const missing = Object.entries(S).filter(([, v]) => isStruct(v) && !placed.has(v)).map(([k]) => k);
  assert.deepEqual(missing, []);
});

for (const name of PROFILE_NAMES) {
  test(`profile ${name}: generated headers compile and match every offset, size, value and ioctl number`,
    { skip: NO_CC }, () => {
      const dir = mkdtempSync(join(tmpdir(), `iommufd-h-${name}-`));
      try {
        writeHeaders(dir, name);
        const check = join(dir, 'check.c');
        writeFileSync(check, generateLayoutCheck(PROFILES[name]));
        compile(dir, check);
        // The headers must also stand alone, in either include order.
        const alone = join(dir, 'alone.c');
        writeFileSync(alone, '#include "iommufd_test.h"\n#include <linux/iommufd.h>\nint x;\n');
        compile(dir, alone, ['-pedantic', '-Wno-pedantic']);
        // ... and from C++ (the size checks switch to static_assert).
        const r = spawnSync(CXX, ['-fsyntax-only', '-std=c++11', '-Wall', '-Werror', '-x', 'c++', '-isystem', dir, '-I', dir, alone],
          { encoding: 'utf8' });
        if (!r.error) assert.equal(r.status, 0, `c++ failed:\n${r.stderr}`);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
}

test('6.12 headers carry what the 6.12 selftests need and nothing newer', () => {
  const h = generateHeaders(PROFILES['6.12']);
  const core = h['linux/iommufd.h'];
  const t = h['iommufd_test.h'];
  for (const id of ['in_data_type', 'IOMMU_HW_INFO_TYPE_DEFAULT', 'IOMMU_HW_INFO_FLAG_INPUT_TYPE', 'IOMMU_FAULT_QUEUE_ALLOC']) {
    assert.match(core, new RegExp(`\\b${id}\\b`), id);
  }
  for (const id of ['MOCK_FLAGS_DEVICE_PASID', 'MOCK_PASID_WIDTH', 'MOCK_FLAGS_DEVICE_HUGE_IOVA',
    'IOMMU_TEST_OP_TRIGGER_IOPF', 'IOMMU_TEST_INVALIDATE_FLAG_ALL', 'MOCK_NESTED_DOMAIN_IOTLB_NUM']) {
    assert.match(t, new RegExp(`\\b${id}\\b`), id);
  }
  // Newer than 6.12: must be absent (MOCK_PAGE_SIZE would even clash with the test's own macro).
  for (const id of ['IOMMU_IOAS_MAP_FILE', 'IOMMU_VIOMMU_ALLOC', 'IOMMU_HWPT_ALLOC_PASID', 'IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED']) {
    assert.doesNotMatch(core, new RegExp(`\\b${id}\\b`), id);
  }
  for (const id of ['MOCK_PAGE_SIZE', 'IOMMU_TEST_OP_DEV_CHECK_CACHE', 'IOMMU_TEST_OP_PASID_ATTACH', 'pagetable_type',
    'IOMMU_VIOMMU_TYPE_SELFTEST', 'MOCK_DEV_CACHE_NUM']) {
    assert.doesNotMatch(t, new RegExp(`\\b${id}\\b`), id);
  }
  assert.match(t, /sizeof\(struct iommu_hwpt_selftest\) == 4\b/);
  assert.match(t, /sizeof\(struct iommu_test_cmd\) == 72\b/);
});

test('viommu-v1 headers use the original series numbering; mainline has the newest test header', () => {
  const v1 = generateHeaders(PROFILES['viommu-v1'])['linux/iommufd.h'];
  assert.match(v1, /IOMMUFD_CMD_VIOMMU_ALLOC = 0x8f,/);
  assert.match(v1, /IOMMUFD_CMD_VIOMMU_SET_VDEV_ID = 0x90,/);
  assert.match(v1, /IOMMUFD_CMD_VIOMMU_INVALIDATE = 0x92,/);
  assert.match(v1, /struct iommu_viommu_vdev_id \{/);
  assert.doesNotMatch(v1, /IOMMU_IOAS_MAP_FILE/);
  // Two ioctls share one struct: one definition, two macros.
  assert.equal(v1.match(/struct iommu_viommu_vdev_id \{/g)?.length, 1);
  // The original series' mock already had DEV_CHECK_CACHE.
  const v1t = generateHeaders(PROFILES['viommu-v1'])['iommufd_test.h'];
  assert.match(v1t, /IOMMU_TEST_OP_DEV_CHECK_CACHE = 16,/);
  assert.match(v1t, /\} check_dev_cache;/);
  assert.match(v1t, /MOCK_DEV_CACHE_NUM = 4,/);
  assert.match(v1t, /#define IOMMU_TEST_DEV_CACHE_DEFAULT 0xbaddad/);
  assert.doesNotMatch(generateHeaders(PROFILES['6.12'])['iommufd_test.h'], /DEV_CACHE/);

  const main = generateHeaders(PROFILES.mainline);
  assert.match(main['iommufd_test.h'], /\bMOCK_PAGE_SIZE = 0x800,/);
  assert.doesNotMatch(main['iommufd_test.h'], /MOCK_FLAGS_DEVICE_HUGE_IOVA/);
  assert.match(main['iommufd_test.h'], /sizeof\(struct iommu_hwpt_selftest\) == 8\b/);
  assert.match(main['iommufd_test.h'], /\} pasid_replace;/);
  assert.match(main['linux/iommufd.h'], /IOMMUFD_CMD_HW_QUEUE_ALLOC = 0x94,/);
});

test('iommu_test_cmd union: one member per op view, present by op version', () => {
  const m612 = testUnionMembers(PROFILES['6.12']).map((m) => m.name);
  assert.deepEqual(m612.sort(), ['access_pages', 'access_replace_ioas', 'access_rw', 'add_reserved', 'check_iotlb',
    'check_map', 'check_refs', 'create_access', 'destroy_access_pages', 'dirty', 'memory_limit', 'mock_domain',
    'mock_domain_flags', 'mock_domain_replace', 'trigger_iopf'].sort());
  const mMain = testUnionMembers(PROFILES.mainline).map((m) => m.name);
  for (const n of ['check_dev_cache', 'trigger_vevent', 'pasid_attach', 'pasid_replace', 'pasid_detach', 'pasid_check']) {
    assert.ok(mMain.includes(n), n);
  }
});

test('struct sets grow monotonically from 6.12 to mainline', () => {
  const names = (p: ProfileName): Set<string> => new Set(coreStructs(PROFILES[p]).map((s) => s.name));
  const order: ProfileName[] = ['6.12', '6.13', '6.15', '6.17', 'mainline'];
  for (let i = 1; i < order.length; i++) {
    const prev = names(order[i - 1]!);
    const cur = names(order[i]!);
    for (const n of prev) assert.ok(cur.has(n), `${n} in ${order[i - 1]} but not ${order[i]}`);
  }
});

// The real thing: build the kernel's own 6.12 selftests against the generated headers
// (spec 05 §1). Needs the Debian linux-source-6.12 tarball; skipped without it.
const TARBALL = process.env.LINUX_TARBALL ?? '/usr/src/linux-source-6.12.tar.xz';
const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const script = join(repo, 'scripts', 'build-selftests.sh');
const NO_SRC = NO_CC || (!existsSync(TARBALL) ? `${TARBALL} missing (apt-get install linux-source-6.12 xz-utils)` : false)
  || (!existsSync(script) ? 'scripts/build-selftests.sh missing' : false);

test('the 6.12 iommufd selftests compile against the generated 6.12 headers', { skip: NO_SRC, timeout: 300_000 }, () => {
  const out = mkdtempSync(join(tmpdir(), 'iommufd-selftests-'));
  try {
    execFileSync('bash', [script, out], { env: { ...process.env, PROFILE: '6.12', WERROR: '1' }, stdio: 'pipe' });
    for (const b of ['iommufd', 'iommufd_fail_nth']) {
      assert.ok(existsSync(join(out, b)), `${b} built`);
      assert.equal(readFileSync(join(out, b)).subarray(0, 4).toString('latin1'), '\x7fELF');
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

// Cross-check of the table against the real 6.12.117 uAPI headers from the same package:
// every offset, size, value and ioctl number must agree, except the five identifiers the
// 6.12 profile adds on top of 6.12.117 for the backported tests (spec 05 §1.3).
const BACKPORT_ONLY = ['in_data_type', 'IOMMU_HW_INFO_TYPE_DEFAULT', 'IOMMU_HW_INFO_FLAG_INPUT_TYPE',
  'MOCK_FLAGS_DEVICE_PASID', 'MOCK_PASID_WIDTH'];

test('the 6.12 table matches the real linux-source-6.12 uAPI headers (but for the backport identifiers)',
  { skip: NO_SRC, timeout: 300_000 }, () => {
    const dir = mkdtempSync(join(tmpdir(), 'iommufd-real612-'));
    try {
      const top = 'linux-source-6.12';
      execFileSync('tar', ['-xJf', TARBALL, '-C', dir, `${top}/include/uapi/linux/iommufd.h`,
        `${top}/drivers/iommu/iommufd/iommufd_test.h`]);
      const inc = join(dir, 'inc');
      execFileSync('mkdir', ['-p', join(inc, 'linux')]);
      execFileSync('cp', [join(dir, top, 'include/uapi/linux/iommufd.h'), join(inc, 'linux')]);
      execFileSync('cp', [join(dir, top, 'drivers/iommu/iommufd/iommufd_test.h'), inc]);
      const lines = generateLayoutCheck(PROFILES['6.12']).split('\n');
      const backport = new RegExp(`\\b(${BACKPORT_ONLY.join('|')})\\b`);
      const common = lines.filter((l) => !backport.test(l));
      assert.ok(lines.length - common.length >= BACKPORT_ONLY.length);
      const f = join(dir, 'check.c');
      writeFileSync(f, common.join('\n'));
      compile(inc, f);
      // And each backport identifier really is missing from 6.12.117 (else it should not be special).
      for (const id of BACKPORT_ONLY) {
        const one = join(dir, `${id}.c`);
        writeFileSync(one, [...lines.slice(0, 5), ...lines.filter((l) => new RegExp(`\\b${id}\\b`).test(l))].join('\n'));
        const r = spawnSync(CC, ['-fsyntax-only', '-isystem', inc, '-I', inc, one], { encoding: 'utf8' });
        assert.notEqual(r.status, 0, `${id} unexpectedly present in the real 6.12 headers`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

test('user code written against the 6.12 identifiers compiles', { skip: NO_CC }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'iommufd-user-'));
  try {
    writeHeaders(dir, '6.12');
    const f = join(dir, 'user.c');
    writeFileSync(f, USER_612);
    compile(dir, f);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
