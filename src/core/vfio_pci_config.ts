// vfio-pci's config space virtualisation (vfio_pci_config.c): what a user
// reading and writing the config region (index 7) sees. A per-byte map says
// which capability each byte belongs to; per-capability permission tables say,
// bit by bit, what is virtualised (kept in vconfig) and what is writable;
// everything else is read from (and written to) the device. Bytes outside every
// capability are passed through raw (the IOAT registers at 0x148/0x180 rely on
// it). Structure and rules follow the kernel's; the code is ours.
import { fail } from '../uapi/errno.js';
import type { PciDeviceModel } from '../devices/device.js';
import {
  PCI, PCI_BASE_ADDRESS, PCI_CAP_FLAGS, PCI_CAP_ID, PCI_CAP_LIST_ID, PCI_CAP_LIST_NEXT, PCI_COMMAND, PCI_EXP,
  PCI_EXT_CAP_ID, PCI_MSI, PCI_STATUS, pciExtCapId, pciExtCapNext,
} from '../devices/pci/pci_regs.js';

/** Map values for bytes that belong to no capability. */
const CAP_ID_INVALID = 0xff;
const CAP_ID_INVALID_VIRT = 0xfe;
/** The fake capability ID of the standard header. */
const CAP_ID_BASIC = 0;

const PM = { PMC: 2, CTRL: 4, CAP_PME_MASK: 0xf800, CTRL_STATE_MASK: 0x3, CTRL_PME_ENABLE: 0x100, CTRL_PME_STATUS: 0x8000, SIZEOF: 8 };
const AF = { CAP: 3, CTRL: 4, CAP_TP: 0x01, CAP_FLR: 0x02, CTRL_FLR: 0x01, SIZEOF: 6 };

/** What the config code needs of the vfio-pci device. */
export interface VfioPciConfigHost {
  readonly pci: PciDeviceModel;
  /** The active interrupt index (VFIO_PCI_NUM_IRQS = none). */
  readonly irqType: number;
  readonly msiQmax: number;
  /** Memory-enable change or reset: mmaps are zapped (accesses re-check on fault). */
  zapBars(): void;
  /** pci_try_reset_function, result ignored (FLR through the virtual DEVCTL). */
  tryResetFunction(): void;
  /** Virtual INTx disable changed. */
  setVirqDisabled(disabled: boolean): void;
  /** A PM_CTRL power-state write (D0..D3hot). */
  setPowerState(state: number): void;
}

type ReadFn = (c: VfioPciConfig, pos: number, count: number, perm: Perm, offset: number) => number;
type WriteFn = (c: VfioPciConfig, pos: number, count: number, perm: Perm, offset: number, val: number) => void;

/** A permission table: virtualised bits, writable bits (per byte of the capability), and the access functions. */
interface Perm {
  virt: Uint8Array | null;
  write: Uint8Array | null;
  readfn?: ReadFn;
  writefn?: WriteFn;
}

const getLE = (b: Uint8Array | null, off: number, n: number): number => {
  if (!b) return 0;
  let v = 0;
  for (let i = n - 1; i >= 0; i--) v = v * 256 + (b[off + i] ?? 0);
  return v;
};
const setLE = (b: Uint8Array, off: number, n: number, v: number): void => {
  for (let i = 0; i < n; i++) {
    b[off + i] = v & 0xff;
    v = Math.floor(v / 256);
  }
};
const allOnes = (n: number): number => 2 ** (8 * n) - 1;
/** Bitwise helpers on up-to-32-bit unsigned values. */
const and = (a: number, b: number): number => (a & b) >>> 0;
const or = (a: number, b: number): number => (a | b) >>> 0;
const not = (a: number, n: number): number => (~a >>> 0) % (2 ** (8 * n)) >>> 0;

function allocPerm(size: number, readfn: ReadFn = defaultRead, writefn: WriteFn = defaultWrite): Perm {
  const n = Math.ceil(size / 4) * 4;
  return { virt: new Uint8Array(n), write: new Uint8Array(n), readfn, writefn };
}
const pSet = (p: Perm, off: number, n: number, virt: number, write: number): void => {
  setLE(p.virt!, off, n, virt);
  setLE(p.write!, off, n, write);
};

// ---- access functions ----------------------------------------------------------------------

function userRead(c: VfioPciConfig, pos: number, count: number): number {
  return c.host.pci.configRead(pos, count as 1 | 2 | 4);
}
function userWrite(c: VfioPciConfig, pos: number, count: number, val: number): void {
  c.host.pci.configWrite(pos, count as 1 | 2 | 4, val);
}

function defaultRead(c: VfioPciConfig, pos: number, count: number, perm: Perm, offset: number): number {
  let val = getLE(c.vconfig, pos, count);
  const virt = getLE(perm.virt, offset, count);
  // Any bits not virtualised come from the device.
  if (virt !== allOnes(count)) {
    const phys = userRead(c, pos, count);
    val = or(and(phys, not(virt, count)), and(val, virt));
  }
  return val;
}

function defaultWrite(c: VfioPciConfig, pos: number, count: number, perm: Perm, offset: number, val: number): void {
  const write = getLE(perm.write, offset, count);
  if (!write) return;
  const virt = getLE(perm.virt, offset, count);
  if (and(write, virt)) {
    const m = and(write, virt);
    setLE(c.vconfig, pos, count, or(and(getLE(c.vconfig, pos, count), not(m, count)), and(val, m)));
  }
  const hw = and(write, not(virt, count));
  if (hw) {
    const phys = userRead(c, pos, count);
    userWrite(c, pos, count, or(and(phys, not(hw, count)), and(val, hw)));
  }
}

/** Read from the device, except the capability ID/next bytes (and extended headers) which come from vconfig. */
function directRead(c: VfioPciConfig, pos: number, count: number, _perm: Perm, offset: number): number {
  let val = userRead(c, pos, count);
  if (pos >= PCI.CFG_SPACE_SIZE) {
    if (offset < 4) val = getLE(c.vconfig, pos, count);
  } else if (pos >= PCI.STD_HEADER_SIZEOF) {
    if (offset === PCI_CAP_LIST_ID && count > 1) {
      const n = Math.min(PCI_CAP_FLAGS, count);
      val = (val - (val % 2 ** (8 * n))) + getLE(c.vconfig, pos, n);
    } else if (offset === PCI_CAP_LIST_NEXT) {
      val = (val - (val % 256)) + c.vconfig[pos]!;
    }
  }
  return val;
}

const rawRead: ReadFn = (c, pos, count) => userRead(c, pos, count);
const rawWrite: WriteFn = (c, pos, count, _p, _o, val) => userWrite(c, pos, count, val);
const virtRead: ReadFn = (c, pos, count) => getLE(c.vconfig, pos, count);
const virtWrite: WriteFn = (c, pos, count, _p, _o, val) => setLE(c.vconfig, pos, count, val);

const isBar = (off: number): boolean =>
  (off >= PCI.BASE_ADDRESS_0 && off < PCI.BASE_ADDRESS_5 + 4) || (off >= PCI.ROM_ADDRESS && off < PCI.ROM_ADDRESS + 4);

function basicRead(c: VfioPciConfig, pos: number, count: number, perm: Perm, offset: number): number {
  if (isBar(offset)) c.barFixup();
  return defaultRead(c, pos, count, perm, offset);
}

function basicWrite(c: VfioPciConfig, pos: number, count: number, perm: Perm, offset: number, val: number): void {
  let newCmd = 0;
  if (offset === PCI.COMMAND) {
    const phys = c.host.pci.configRead(PCI.COMMAND, 2);
    const virtCmd = getLE(c.vconfig, PCI.COMMAND, 2);
    newCmd = val & 0xffff;
    const newMem = !!(newCmd & PCI_COMMAND.MEMORY);
    const virtMem = !!(virtCmd & PCI_COMMAND.MEMORY);
    const physMem = !!(phys & PCI_COMMAND.MEMORY);
    if (!newMem) c.host.zapBars();
    // Memory enable asked for and thought on, but off in the device: it was
    // reset behind our back, its BARs must be put back first.
    if ((newMem && virtMem && !physMem) || c.needBarRestore()) c.barRestore();
  }
  defaultWrite(c, pos, count, perm, offset, val);
  if (offset === PCI.COMMAND) {
    const mask = PCI_COMMAND.MEMORY | PCI_COMMAND.IO;
    setLE(c.vconfig, PCI.COMMAND, 2, (getLE(c.vconfig, PCI.COMMAND, 2) & ~mask) | (newCmd & mask));
  }
  if (offset >= PCI.COMMAND && offset <= PCI.COMMAND + 1) {
    c.host.setVirqDisabled(!!(getLE(c.vconfig, PCI.COMMAND, 2) & PCI_COMMAND.INTX_DISABLE));
  }
  if (isBar(offset)) c.bardirty = true;
}

function pmWrite(c: VfioPciConfig, pos: number, count: number, perm: Perm, offset: number, val: number): void {
  defaultWrite(c, pos, count, perm, offset, val);
  if (offset === PM.CTRL) c.host.setPowerState(val & PM.CTRL_STATE_MASK);
}

function expWrite(c: VfioPciConfig, pos: number, count: number, perm: Perm, offset: number, val: number): void {
  const ctrlAt = pos - offset + PCI_EXP.DEVCTL;
  const readrq = getLE(c.vconfig, ctrlAt, 2) & PCI_EXP.DEVCTL_READRQ;
  defaultWrite(c, pos, count, perm, offset, val);
  let ctrl = getLE(c.vconfig, ctrlAt, 2);
  // FLR is virtualised: reads as 0; issues a function reset if the device has FLR.
  if (ctrl & PCI_EXP.DEVCTL_BCR_FLR) {
    ctrl &= ~PCI_EXP.DEVCTL_BCR_FLR;
    setLE(c.vconfig, ctrlAt, 2, ctrl);
    const cap = c.host.pci.configRead(pos - offset + PCI_EXP.DEVCAP, 4);
    if (cap & PCI_EXP.DEVCAP_FLR) {
      c.host.zapBars();
      c.host.tryResetFunction();
    }
  }
  // MRRS is passed to the device, never below the 128-byte payload the device runs at.
  if (readrq !== (ctrl & PCI_EXP.DEVCTL_READRQ)) {
    const phys = c.host.pci.configRead(ctrlAt, 2);
    c.host.pci.configWrite(ctrlAt, 2, (phys & ~PCI_EXP.DEVCTL_READRQ) | (ctrl & PCI_EXP.DEVCTL_READRQ));
  }
}

function afWrite(c: VfioPciConfig, pos: number, count: number, perm: Perm, offset: number, val: number): void {
  defaultWrite(c, pos, count, perm, offset, val);
  const ctrlAt = pos - offset + AF.CTRL;
  if (c.vconfig[ctrlAt]! & AF.CTRL_FLR) {
    c.vconfig[ctrlAt] = c.vconfig[ctrlAt]! & ~AF.CTRL_FLR;
    const cap = c.host.pci.configRead(pos - offset + AF.CAP, 1);
    if (cap & AF.CAP_FLR && cap & AF.CAP_TP) {
      c.host.zapBars();
      c.host.tryResetFunction();
    }
  }
}

function msiRead(c: VfioPciConfig, pos: number, count: number, perm: Perm, offset: number): number {
  // The queue size the user sees is what the host allocated (msi_qmax).
  if (offset <= PCI_MSI.FLAGS && offset + count >= PCI_MSI.FLAGS) {
    const at = c.findCapStart(pos);
    const flags = getLE(c.vconfig, at + PCI_MSI.FLAGS, 2);
    setLE(c.vconfig, at + PCI_MSI.FLAGS, 2, (flags & ~PCI_MSI.FLAGS_QMASK) | (c.host.msiQmax << 1));
  }
  return defaultRead(c, pos, count, perm, offset);
}

function msiWrite(c: VfioPciConfig, pos: number, count: number, perm: Perm, offset: number, val: number): void {
  defaultWrite(c, pos, count, perm, offset, val);
  if (offset <= PCI_MSI.FLAGS && offset + count >= PCI_MSI.FLAGS) {
    const at = c.findCapStart(pos);
    let flags = getLE(c.vconfig, at + PCI_MSI.FLAGS, 2);
    // MSI is enabled through SET_IRQS only.
    if (c.host.irqType !== 1) flags &= ~PCI_MSI.FLAGS_ENABLE;
    if ((flags & PCI_MSI.FLAGS_QSIZE) >> 4 > c.host.msiQmax) flags = (flags & ~PCI_MSI.FLAGS_QSIZE) | (c.host.msiQmax << 4);
    setLE(c.vconfig, at + PCI_MSI.FLAGS, 2, flags);
    c.host.pci.configWrite(at + PCI_MSI.FLAGS, 2, flags);
  }
}

// ---- the shared tables (vfio_pci_init_perm_bits) ----------------------------------------------

const STD_CAP_LEN: Record<number, number> = {
  [CAP_ID_BASIC]: PCI.STD_HEADER_SIZEOF, [PCI_CAP_ID.PM]: PM.SIZEOF, 0x02: 12 /* AGP */, 0x03: 8 /* VPD */,
  [PCI_CAP_ID.MSI]: 0xff, 0x07: 0xff /* PCI-X */, 0x08: 0xff /* HT */, [PCI_CAP_ID.VNDR]: 0xff,
  [PCI_CAP_ID.EXP]: 0xff, [PCI_CAP_ID.MSIX]: 12, 0x12: 0xff /* SATA */, [PCI_CAP_ID.AF]: AF.SIZEOF,
};
/** Extended capabilities VFIO knows the length of (the others are hidden). */
const EXT_CAP_LEN: Record<number, number> = {
  [PCI_EXT_CAP_ID.ERR]: 0x2c, 0x03: 12 /* DSN */, 0x04: 16 /* PWR */, [PCI_EXT_CAP_ID.VNDR]: 0xff,
  0x0e: 8 /* ARI */, 0x0f: 8 /* ATS */, [PCI_EXT_CAP_ID.SRIOV]: 0x40, 0x12: 40 /* MCAST */, 0x13: 0x10 /* PRI */,
  0x18: 8 /* LTR */, [PCI_EXT_CAP_ID.DVSEC]: 0xff,
};

const directRo: Perm = { virt: null, write: null, readfn: directRead };
const unassigned: Perm = { virt: null, write: null, readfn: rawRead, writefn: rawWrite };
const virtPerms: Perm = { virt: null, write: null, readfn: virtRead, writefn: virtWrite };

function basicPerm(): Perm {
  const p = allocPerm(PCI.STD_HEADER_SIZEOF, basicRead, basicWrite);
  pSet(p, PCI.VENDOR_ID, 2, 0xffff, 0);
  pSet(p, PCI.DEVICE_ID, 2, 0xffff, 0);
  pSet(p, PCI.COMMAND, 2, PCI_COMMAND.INTX_DISABLE, 0xffff);
  pSet(p, PCI.STATUS, 2, PCI_STATUS.CAP_LIST, 0);
  pSet(p, PCI.CACHE_LINE_SIZE, 1, 0, 0xff);
  pSet(p, PCI.LATENCY_TIMER, 1, 0, 0xff);
  pSet(p, PCI.BIST, 1, 0, 0xff);
  for (let off = PCI.BASE_ADDRESS_0; off <= PCI.BASE_ADDRESS_5; off += 4) pSet(p, off, 4, 0xffffffff, 0xffffffff);
  pSet(p, PCI.ROM_ADDRESS, 4, 0xffffffff, 0xffffffff);
  pSet(p, PCI.CAPABILITY_LIST, 1, 0xff, 0);
  pSet(p, PCI.INTERRUPT_LINE, 1, 0xff, 0xff);
  pSet(p, PCI.INTERRUPT_PIN, 1, 0xff, 0);
  return p;
}

function pmPerm(): Perm {
  const p = allocPerm(PM.SIZEOF, defaultRead, pmWrite);
  pSet(p, PCI_CAP_LIST_NEXT, 1, 0xff, 0);
  pSet(p, PM.PMC, 2, PM.CAP_PME_MASK, 0);
  const pme = PM.CTRL_PME_ENABLE | PM.CTRL_PME_STATUS;
  pSet(p, PM.CTRL, 4, pme, not(pme | PM.CTRL_STATE_MASK, 4));
  return p;
}

function expPerm(): Perm {
  const p = allocPerm(PCI_EXP.ENDPOINT_SIZEOF_V2, defaultRead, expWrite);
  pSet(p, PCI_CAP_LIST_NEXT, 1, 0xff, 0);
  pSet(p, PCI_EXP.DEVCTL, 2, PCI_EXP.DEVCTL_BCR_FLR | PCI_EXP.DEVCTL_PAYLOAD | PCI_EXP.DEVCTL_READRQ,
    not(PCI_EXP.DEVCTL_PHANTOM, 2));
  pSet(p, PCI_EXP.DEVCTL2, 2, 0, not(PCI_EXP.DEVCTL2_ARI, 2));
  return p;
}

function afPerm(): Perm {
  const p = allocPerm(AF.SIZEOF, defaultRead, afWrite);
  pSet(p, PCI_CAP_LIST_NEXT, 1, 0xff, 0);
  pSet(p, AF.CTRL, 1, AF.CTRL_FLR, AF.CTRL_FLR);
  return p;
}

function errPerm(): Perm {
  const p = allocPerm(0x2c);
  pSet(p, 0, 4, 0xffffffff, 0);
  const unc = 0x03fff031; // undefined, DLP, surprise down, poisoned TLP .. TLP prefix blocked
  pSet(p, 0x04, 4, 0, unc);
  pSet(p, 0x08, 4, 0, unc);
  pSet(p, 0x0c, 4, 0, unc);
  const cor = 0x0000f1c1; // receiver .. header log overflow
  pSet(p, 0x10, 4, 0, cor);
  pSet(p, 0x14, 4, 0, cor);
  pSet(p, 0x18, 4, 0, 0x00000140); // ECRC generation/check enable
  return p;
}

function pwrPerm(): Perm {
  const p = allocPerm(16);
  pSet(p, 0, 4, 0xffffffff, 0);
  pSet(p, 4, 1, 0, 0xff);
  return p;
}

const CAP_PERMS = new Map<number, Perm>([
  [CAP_ID_BASIC, basicPerm()], [PCI_CAP_ID.PM, pmPerm()], [PCI_CAP_ID.EXP, expPerm()], [PCI_CAP_ID.AF, afPerm()],
  [PCI_CAP_ID.VNDR, { virt: null, write: null, readfn: directRead, writefn: rawWrite }],
]);
const ECAP_PERMS = new Map<number, Perm>([
  [PCI_EXT_CAP_ID.ERR, errPerm()], [0x04, pwrPerm()],
  [PCI_EXT_CAP_ID.VNDR, { virt: null, write: null, readfn: directRead, writefn: rawWrite }],
  [PCI_EXT_CAP_ID.DVSEC, { virt: null, write: null, readfn: directRead, writefn: rawWrite }],
]);

function msiPerm(len: number, flags: number): Perm {
  const p = allocPerm(len, msiRead, msiWrite);
  pSet(p, PCI_CAP_LIST_NEXT, 1, 0xff, 0);
  pSet(p, PCI_MSI.FLAGS, 1, 0xff, 0xff);
  pSet(p, PCI_MSI.ADDRESS_LO, 4, 0xffffffff, 0xffffffff);
  if (flags & PCI_MSI.FLAGS_64BIT) {
    pSet(p, PCI_MSI.ADDRESS_HI, 4, 0xffffffff, 0xffffffff);
    pSet(p, PCI_MSI.DATA_64, 2, 0xffff, 0xffff);
    if (flags & PCI_MSI.FLAGS_MASKBIT) {
      pSet(p, PCI_MSI.MASK_64, 4, 0, 0xffffffff);
      pSet(p, PCI_MSI.MASK_64 + 4, 4, 0, 0xffffffff);
    }
  } else {
    pSet(p, PCI_MSI.DATA_32, 2, 0xffff, 0xffff);
    if (flags & PCI_MSI.FLAGS_MASKBIT) {
      pSet(p, PCI_MSI.MASK_32, 4, 0, 0xffffffff);
      pSet(p, PCI_MSI.MASK_32 + 4, 4, 0, 0xffffffff);
    }
  }
  return p;
}

// ---- per-device state (vfio_config_init) -----------------------------------------------------

export class VfioPciConfig {
  readonly size: number;
  readonly map: Uint8Array;
  readonly vconfig: Uint8Array;
  bardirty = true;
  /** The physical BAR values at open, for restore after a backdoor reset. */
  readonly rbar: number[] = [];
  private msiPermBits: Perm | null = null;
  private extendedCaps: boolean;

  constructor(readonly host: VfioPciConfigHost) {
    const pci = host.pci;
    this.size = pci.cfgSize;
    this.map = new Uint8Array(this.size).fill(CAP_ID_INVALID);
    this.map.fill(CAP_ID_BASIC, 0, PCI.STD_HEADER_SIZEOF);
    this.vconfig = new Uint8Array(this.size);
    this.extendedCaps = this.size === PCI.CFG_SPACE_EXP_SIZE;
    this.fill(0, PCI.STD_HEADER_SIZEOF);
    for (let i = 0; i < 6; i++) this.rbar.push(getLE(this.vconfig, PCI.BASE_ADDRESS_0 + 4 * i, 4));
    this.rbar.push(getLE(this.vconfig, PCI.ROM_ADDRESS, 4));
    // No INTx is modelled: the interrupt pin reads 0 (as for a function without a routed IRQ).
    this.vconfig[PCI.INTERRUPT_PIN] = 0;
    this.capInit();
    this.ecapInit();
  }

  /** Copy device config bytes into vconfig (dword reads where aligned). */
  private fill(off: number, size: number): void {
    while (size) {
      const n = size >= 4 && !(off % 4) ? 4 : size >= 2 && !(off % 2) ? 2 : 1;
      setLE(this.vconfig, off, n, this.host.pci.configRead(off, n as 1 | 2 | 4));
      off += n;
      size -= n;
    }
  }

  private capLen(cap: number, pos: number): number {
    const pci = this.host.pci;
    switch (cap) {
      case PCI_CAP_ID.MSI: {
        const flags = pci.configRead(pos + PCI_MSI.FLAGS, 2);
        let len = 10;
        if (flags & PCI_MSI.FLAGS_64BIT) len += 4;
        if (flags & PCI_MSI.FLAGS_MASKBIT) len += 10;
        this.msiPermBits ??= msiPerm(len, flags);
        return len;
      }
      case PCI_CAP_ID.VNDR:
        return pci.configRead(pos + PCI_CAP_FLAGS, 1);
      case PCI_CAP_ID.EXP: {
        if (pci.cfgSize > PCI.CFG_SPACE_SIZE) this.extendedCaps = pci.configRead(PCI.CFG_SPACE_SIZE, 4) !== 0;
        const flags = pci.configRead(pos + PCI_EXP.FLAGS, 2);
        const rcEnd = ((flags & PCI_EXP.FLAGS_TYPE) >> 4) === PCI_EXP.TYPE_RC_END;
        if ((flags & PCI_EXP.FLAGS_VERS) === 1) return rcEnd ? 0xc : 0x14;
        return rcEnd ? 0x2c : PCI_EXP.ENDPOINT_SIZEOF_V2;
      }
      default:
        // PCI-X, HyperTransport, SATA: no emulated device has them.
        return 0;
    }
  }

  private capInit(): void {
    const pci = this.host.pci;
    if (!(pci.configRead(PCI.STATUS, 2) & PCI_STATUS.CAP_LIST)) return;
    let pos = pci.configRead(PCI.CAPABILITY_LIST, 1);
    let prev = PCI.CAPABILITY_LIST;
    let loops = (PCI.CFG_SPACE_SIZE - PCI.STD_HEADER_SIZEOF) / 4;
    let caps = 0;
    while (pos && loops--) {
      const cap = pci.configRead(pos, 1);
      const next = pci.configRead(pos + PCI_CAP_LIST_NEXT, 1);
      let len = 0;
      if (cap && cap <= PCI_CAP_ID.MAX) {
        len = STD_CAP_LEN[cap] ?? 0;
        if (len === 0xff) len = this.capLen(cap, pos);
      }
      if (!len) {
        // Hidden from the user: the previous next pointer skips it.
        this.vconfig[prev] = next;
        pos = next;
        continue;
      }
      this.map.fill(cap, pos, pos + len);
      this.fill(pos, len);
      if (cap === PCI_CAP_ID.PM) {
        setLE(this.vconfig, pos + PM.PMC, 2, getLE(this.vconfig, pos + PM.PMC, 2) & ~PM.CAP_PME_MASK);
        setLE(this.vconfig, pos + PM.CTRL, 2, getLE(this.vconfig, pos + PM.CTRL, 2) & ~(PM.CTRL_PME_ENABLE | PM.CTRL_PME_STATUS));
      }
      prev = pos + PCI_CAP_LIST_NEXT;
      pos = next;
      caps++;
    }
    if (!caps) setLE(this.vconfig, PCI.STATUS, 2, getLE(this.vconfig, PCI.STATUS, 2) & ~PCI_STATUS.CAP_LIST);
  }

  private ecapInit(): void {
    if (!this.extendedCaps) return;
    const pci = this.host.pci;
    let epos: number = PCI.CFG_SPACE_SIZE;
    let prev = -1;
    let loops = (this.size - PCI.CFG_SPACE_SIZE) / 4;
    let ecaps = 0;
    while (loops-- && epos >= PCI.CFG_SPACE_SIZE) {
      const header = pci.configRead(epos, 4);
      const ecap = pciExtCapId(header);
      let len = 0;
      let hidden = false;
      if (ecap <= PCI_EXT_CAP_ID.MAX) {
        len = EXT_CAP_LEN[ecap] ?? 0;
        if (len === 0xff) {
          len = ecap === PCI_EXT_CAP_ID.VNDR ? pci.configRead(epos + 4, 4) >>> 20
            : ecap === PCI_EXT_CAP_ID.DVSEC ? (pci.configRead(epos + 4, 4) >>> 20) & 0xfff : 0;
        }
      }
      if (!len) {
        if (prev >= 0) {
          const val = (epos = pciExtCapNext(header));
          setLE(this.vconfig, prev, 4, ((getLE(this.vconfig, prev, 4) & 0x000fffff) | (val << 20)) >>> 0);
          continue;
        }
        // The first one anchors the list: keep a placeholder whose ID is hidden.
        len = 4;
        hidden = true;
      }
      this.map.fill(ecap & 0xff, epos, epos + len);
      this.fill(epos, len);
      if (hidden) setLE(this.vconfig, epos, 4, (getLE(this.vconfig, epos, 4) & (0xffc << 20)) >>> 0);
      else ecaps++;
      prev = epos;
      epos = pciExtCapNext(header);
    }
    if (!ecaps) setLE(this.vconfig, PCI.CFG_SPACE_SIZE, 4, 0);
  }

  findCapStart(pos: number): number {
    const base = pos >= PCI.CFG_SPACE_SIZE ? PCI.CFG_SPACE_SIZE : PCI.STD_HEADER_SIZEOF;
    const cap = this.map[pos]!;
    if (cap === CAP_ID_BASIC && pos < PCI.STD_HEADER_SIZEOF) return 0;
    while (pos - 1 >= base && this.map[pos - 1] === cap) pos--;
    return pos;
  }

  /** Virtual BARs reflect the real sizes and types (BAR sizing through the user's writes). */
  barFixup(): void {
    if (!this.bardirty) return;
    const bars = this.host.pci.bars;
    for (let i = 0; i < 6; i++) {
      const off = PCI.BASE_ADDRESS_0 + 4 * i;
      const bar = bars[i];
      if (!bar || !bar.addr) {
        setLE(this.vconfig, off, 4, 0);
        continue;
      }
      const mask = ((1n << 64n) - BigInt(bar.size)) & ((1n << 64n) - 1n);
      let flags = 0;
      if (bar.prefetch) flags |= PCI_BASE_ADDRESS.MEM_PREFETCH;
      if (bar.is64) flags |= PCI_BASE_ADDRESS.MEM_TYPE_64;
      setLE(this.vconfig, off, 4, or(and(getLE(this.vconfig, off, 4), Number(mask & 0xffffffffn)), flags));
      if (bar.is64) {
        setLE(this.vconfig, off + 4, 4, and(getLE(this.vconfig, off + 4, 4), Number(mask >> 32n)));
        i++;
      }
    }
    // No expansion ROM.
    setLE(this.vconfig, PCI.ROM_ADDRESS, 4, 0);
    this.bardirty = false;
  }

  needBarRestore(): boolean {
    for (let i = 0; i < 6; i++) {
      if (this.rbar[i] && this.host.pci.configRead(PCI.BASE_ADDRESS_0 + 4 * i, 4) !== this.rbar[i]) return true;
    }
    return false;
  }

  /** Put the real BARs back after a reset the config code did not see. */
  barRestore(): void {
    for (let i = 0; i < 6; i++) this.host.pci.configWrite(PCI.BASE_ADDRESS_0 + 4 * i, 4, this.rbar[i]!);
    this.host.pci.configWrite(PCI.ROM_ADDRESS, 4, this.rbar[6]!);
  }

  /** Remaining bytes of the dword at `pos` that belong to the same capability. */
  private remainingDword(pos: number): number {
    const cap = this.map[pos]!;
    let i = 1;
    while ((pos + i) % 4 && this.map[pos + i] === cap) i++;
    return i;
  }

  /**
   * One chunk of a config access (vfio_pci_config_rw_single): returns the
   * bytes done. `buf` supplies (write) or receives (read) the chunk's bytes.
   */
  rwSingle(pos: number, count: number, iswrite: boolean, buf: { get(n: number): number; put(n: number, v: number): void }): number {
    if (pos < 0 || pos >= this.size || pos + count > this.size) fail('EFAULT', `config offset 0x${pos.toString(16)}+${count} outside ${this.size}`);
    count = Math.min(count, this.remainingDword(pos));
    count = count >= 4 && !(pos % 4) ? 4 : count >= 2 && !(pos % 2) ? 2 : 1;
    const capId = this.map[pos]!;
    let perm: Perm;
    let capStart = 0;
    if (capId === CAP_ID_INVALID) {
      perm = unassigned;
      capStart = pos;
    } else if (capId === CAP_ID_INVALID_VIRT) {
      perm = virtPerms;
      capStart = pos;
    } else if (pos >= PCI.CFG_SPACE_SIZE) {
      perm = capId > PCI_EXT_CAP_ID.MAX ? directRo : ECAP_PERMS.get(capId) ?? directRo;
      capStart = this.findCapStart(pos);
    } else {
      perm = capId === PCI_CAP_ID.MSI ? this.msiPermBits ?? directRo : CAP_PERMS.get(capId) ?? directRo;
      if (capId > CAP_ID_BASIC) capStart = this.findCapStart(pos);
    }
    const offset = pos - capStart;
    if (iswrite) {
      if (!perm.writefn) return count;
      const val = buf.get(count);
      perm.writefn(this, pos, count, perm, offset, val);
    } else {
      const val = perm.readfn ? perm.readfn(this, pos, count, perm, offset) : 0;
      buf.put(count, val);
    }
    return count;
  }
}

