// SMMUv3 benchmarks (issue 10). In process: an IOTLB hit, and a full nested
// walk (4K granule: a 4-level stage 1 whose every table address goes through
// a 4-level stage 2, then stage 2 of the output), with the IOTLB switched off
// so every access walks, both through the domain's translate(). DMA: the IOAT
// copying 4 KiB and 1 MiB through a nested domain, in process and through the
// shim.
import { openIommufd } from '../api.js';
import { deviceAttach, deviceBind } from '../core/device.js';
import { Emulator } from '../core/emulator.js';
import { HWPT_ALLOC } from '../uapi/enums.js';
import type { DmaRequest, IommuDomain } from '../drivers/driver.js';
import { onSmmuTrace, smmuDriverOf } from '../drivers/arm-smmuv3/index.js';
import { HWPT_DATA_ARM_SMMUV3, VIOMMU_TYPE_ARM_SMMUV3 } from '../drivers/arm-smmuv3/profile.js';
import { PROT } from '../drivers/arm-smmuv3/pgtable.js';
import { GuestRam, guestCd, vste, vsteBytes } from '../drivers/arm-smmuv3/test_helpers.js';
import { accelSetup, VA } from '../drivers/arm-smmuv3/accel_helpers.js';
import { CHANSTS } from '../devices/ioat.js';
import { buildProgram } from '../server/native.js';
import { writeHeaders } from '../uapi/cheader.js';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface SmmuBench {
  hitPerSec: number;
  walkPerSec: number;
  /** Descriptor reads of one full walk, counted from the walk trace. */
  walkReads: number;
}

function nestedDomain(iotlbEntries: number): { emu: Emulator; domain: IommuDomain; req: DmaRequest } {
  const emu = new Emulator();
  const fd = openIommufd({ emu });
  const drv = smmuDriverOf(emu);
  const master = drv.addMaster(drv.addSmmu({ iotlbEntries }), { sids: [1] });
  const idev = deviceBind(fd.ctx, master);
  const ioas = fd.ioasAlloc();
  const parent = fd.hwptAlloc({ devId: idev.id, ptId: ioas, flags: HWPT_ALLOC.NEST_PARENT });
  const ram = new GuestRam(fd, ioas, 0x4000_0000, 2 << 20);
  const { viommuId } = fd.viommuAlloc({ devId: idev.id, hwptId: parent, type: VIOMMU_TYPE_ARM_SMMUV3 });
  fd.vdeviceAlloc(viommuId, idev.id, 1n);
  const t = ram.table(12, 48); // 4 levels
  t.map(0x7f00_1234_5000, ram.alloc(4096), 4096, PROT.READ | PROT.WRITE | PROT.CACHE);
  const cd = ram.alloc(64);
  ram.writeWords(cd, guestCd(t, 3));
  const hwpt = fd.hwptAlloc({ devId: idev.id, ptId: viommuId, dataType: HWPT_DATA_ARM_SMMUV3, data: vsteBytes(vste({ ctxPtr: cd })) });
  deviceAttach(idev, undefined, hwpt);
  const domain = idev.attachment(0)!.hwpt.domain;
  const req: DmaRequest = { dev: master, iova: 0x7f00_1234_5040n, length: 64, write: false };
  if ('fault' in domain.translate!(req)) throw new Error('bench translation faulted');
  return { emu, domain, req };
}

function rate(fn: () => void, n: number): number {
  for (let i = 0; i < Math.min(n, 100_000); i++) fn();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) fn();
  return (n / (performance.now() - t0)) * 1000;
}

export function smmuBench(): SmmuBench {
  const hit = nestedDomain(512);
  const hitPerSec = rate(() => hit.domain.translate!(hit.req), 5_000_000);
  const walk = nestedDomain(0);
  let walkReads = 0;
  const off = onSmmuTrace(walk.emu.bus, (r) => {
    if (r.point === 'walk') walkReads++;
  });
  walk.domain.translate!(walk.req);
  off();
  const walkPerSec = rate(() => walk.domain.translate!(walk.req), 1_000_000);
  return { hitPerSec, walkPerSec, walkReads };
}

/** DMA throughput of the IOAT through a nested SMMUv3 domain: copies per second and MB/s, 4 KiB and 1 MiB copies. */
export interface DmaRates {
  readonly copies4k: number;
  readonly mbps4k: number;
  readonly copies1m: number;
  readonly mbps1m: number;
}

const rates = (n4: number, s4: number, n1m: number, s1m: number): DmaRates => ({
  copies4k: n4 / s4, mbps4k: (n4 * 4096) / s4 / 1e6, copies1m: n1m / s1m, mbps1m: (n1m * (1 << 20)) / s1m / 1e6,
});

/** In process: the engine driven through the VFIO uAPI of the emulator (no shim), same guest tables. */
export function smmuDmaInProcess(n4 = 2000, n1m = 40): DmaRates {
  const s = accelSetup({ bigCopies: true });
  const e = s.engines[0]!;
  for (let i = 0; i < n4 / 10; i++) e.copy(VA.src, VA.dst, 4096); // warm-up (JIT)
  for (let i = 0; i < n1m / 10; i++) e.copy(VA.bigSrc, VA.bigDst, 1 << 20);
  const t0 = performance.now();
  for (let i = 0; i < n4; i++) if (e.copy(VA.src, VA.dst, 4096) !== CHANSTS.DONE) throw new Error('bench 4 KiB copy halted');
  const t1 = performance.now();
  for (let i = 0; i < n1m; i++) if (e.copy(VA.bigSrc, VA.bigDst, 1 << 20) !== CHANSTS.DONE) throw new Error('bench 1 MiB copy halted');
  const t2 = performance.now();
  return rates(n4, (t1 - t0) / 1000, n1m, (t2 - t1) / 1000);
}

/** A C program's `bench N` mode under `iommufd-emu run --machine MACHINE`: its one JSON line as rates. */
function benchThroughShim(source: string[], machine: string, n4: number): DmaRates {
  const root = fileURLToPath(new URL('../../', import.meta.url));
  const inc = fs.mkdtempSync(path.join(os.tmpdir(), 'iommufd-bench-dma-'));
  writeHeaders(inc, 'mainline');
  const prog = buildProgram([path.join(root, ...source)], { includeDirs: [inc], name: path.basename(source.at(-1)!, '.c') });
  fs.rmSync(inc, { recursive: true, force: true });
  const r = spawnSync(process.execPath, [path.join(root, 'dist', 'cli', 'main.js'), 'run', '--machine', machine, '--', prog, 'bench', String(n4)],
    { encoding: 'utf8', timeout: 600_000 });
  const line = (r.stdout ?? '').split('\n').find((l) => l.startsWith('{'));
  if (r.status !== 0 || !line) throw new Error(`${source.at(-1)} bench exited ${r.status}: ${(r.stdout + r.stderr).trim().split('\n').pop()}`);
  const j = JSON.parse(line) as { copies_4k: number; s_4k: number; copies_1m: number; s_1m: number };
  return rates(j.copies_4k, j.s_4k, j.copies_1m, j.s_1m);
}

/**
 * Through the shim: native/smmu_accel.c's bench mode under `iommufd-emu run
 * --machine ioat-x2-smmu` (BAR accesses trapped and forwarded, guest RAM
 * read and written in the program's memory).
 */
export function smmuDmaThroughShim(n4 = 2000): DmaRates {
  return benchThroughShim(['native', 'smmu_accel.c'], 'ioat-x2-smmu', n4);
}

/**
 * The same copies through a plain paging domain (the default machine: the IOAT
 * behind VT-d, attached to an IOAS): examples/vfio_ioat.c's bench mode.
 */
export function vtdDmaThroughShim(n4 = 2000): DmaRates {
  return benchThroughShim(['examples', 'vfio_ioat.c'], 'ioat', n4);
}
