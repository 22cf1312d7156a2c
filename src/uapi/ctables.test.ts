import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { headerIoctls } from './cheader.js';
import { fieldKind, generateTables, writeTables } from './ctables.js';
import { IO, IOCTL_BY_NAME } from './ioctls.js';
import { structSize } from './layout.js';
import { PROFILES, type ProfileName } from './profiles.js';
import * as S from './structs.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const cc = process.env.CC || 'cc';
const haveCc = (() => {
  try {
    execFileSync(cc, ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

// Prints every ioctl row and every field row of the generated tables, as C sees them.
const DUMP = `#include <stdio.h>
#include "iommufd_uapi_tables.h"
int main(void) {
  for (size_t i = 0; i < GT_N(gt_ioctls); i++) {
    const struct gt_ioctl *io = &gt_ioctls[i];
    printf("ioctl %s %#lx %u %u\\n", io->name, io->request, io->min_size, io->st ? io->st->size : 0);
    for (uint32_t j = 0; io->st && j < io->st->nfields; j++)
      printf("field %s.%s %u %u %u\\n", io->st->name, io->st->fields[j].name, io->st->fields[j].offset,
             io->st->fields[j].width, io->st->fields[j].count);
  }
  for (size_t i = 0; i < GT_N(gt_test_ops); i++) printf("op %s %u\\n", gt_test_ops[i].name, gt_test_ops[i].op);
  return 0;
}
`;

describe('uAPI tables for C (iommufd_uapi_tables.h)', () => {
  test('field kinds follow the kernel names', () => {
    const f = S.iommu_ioas_map.fields;
    assert.equal(fieldKind('size', f.size, true), 'SIZE');
    assert.equal(fieldKind('ioas_id', f.ioas_id, false), 'ID');
    assert.equal(fieldKind('user_va', f.user_va, false), 'PTR');
    assert.equal(fieldKind('length', f.length, false), 'LEN');
    assert.equal(fieldKind('iova', f.iova, false), 'IOVA');
    assert.equal(fieldKind('flags', f.flags, false), 'FLAGS');
    assert.equal(fieldKind('__reserved', f.__reserved, false), 'RSVD');
    assert.equal(fieldKind('fd', S.iommu_ioas_map_file.fields.fd, false), 'FD');
    // the size of a VFIO DMA map is a length, its argsz the struct's size
    assert.equal(fieldKind('size', S.vfio_iommu_type1_dma_map.fields.size, false), 'LEN');
    assert.equal(fieldKind('argsz', S.vfio_iommu_type1_dma_map.fields.argsz, true), 'SIZE');
  });

  test('each profile lists exactly its ioctls, and 6.12 has no vIOMMU', () => {
    const t612 = generateTables(PROFILES['6.12']);
    assert.doesNotMatch(t612, /IOMMU_VIOMMU_ALLOC/);
    assert.match(t612, /"IOMMU_FAULT_QUEUE_ALLOC", 0x3b8e/);
    const t73 = generateTables(PROFILES['7.3']);
    assert.match(t73, /"IOMMU_HW_QUEUE_ALLOC", 0x3b94/);
    assert.match(t73, /"IOMMU_TEST_OP_DMABUF_REVOKE", 23/);
    assert.doesNotMatch(t612, /IOMMU_TEST_OP_DMABUF_GET/);
  });

  for (const name of Object.keys(PROFILES) as ProfileName[]) {
    test(`${name}: C reads back the table's requests, sizes and offsets; golden.c compiles`, { skip: haveCc ? false : 'no C compiler' }, () => {
      const profile = PROFILES[name];
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ctables-'));
      try {
        writeTables(dir, name);
        fs.writeFileSync(path.join(dir, 'dump.c'), DUMP);
        execFileSync(cc, ['-O0', '-Wall', '-Werror', '-I', dir, '-o', path.join(dir, 'dump'), path.join(dir, 'dump.c')]);
        const out = execFileSync(path.join(dir, 'dump'), { encoding: 'utf8' }).trim().split('\n');
        for (const d of headerIoctls(profile)) {
          const size = structSize(d.struct, profile.version);
          assert.ok(out.some((l) => l.startsWith(`ioctl ${d.cname} 0x${IO(d.nr).toString(16)} `) && l.endsWith(` ${size}`)),
            `${d.cname} (size ${size}) missing from the ${name} tables`);
          for (const [fname, f] of Object.entries(d.struct.fields)) {
            if (f.alias || (f.since !== undefined && f.since > profile.version && !(profile.headerBackports && f.backport))) continue;
            assert.ok(out.includes(`field ${d.struct.name}.${fname} ${f.offset} ${({ u8: 1, u16: 2, u32: 4, s32: 4, u64: 8 })[f.type]} ${f.count ?? 0}`),
              `${d.struct.name}.${fname} in ${name}`);
          }
        }
        assert.ok(out.some((l) => l.startsWith(`ioctl IOMMU_TEST_CMD 0x${IO(IOCTL_BY_NAME.get('TEST_CMD')!.nr).toString(16)} 68 72`)));
        execFileSync(cc, ['-fsyntax-only', '-Wall', '-Werror', '-I', dir, path.join(ROOT, 'native', 'golden', 'golden.c')]);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
