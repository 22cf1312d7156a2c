// A device's register file: registers by offset and width, accessed with any
// width at any offset. An access that covers part of a register, or several
// registers, reads or writes the bytes it covers; each register sees one call
// per access (so a doorbell rings once however it is written).

export interface Register {
  readonly name: string;
  readonly off: number;
  readonly size: 1 | 2 | 4 | 8;
  read(): bigint;
  /**
   * A write of the bits in `mask` (already shifted to the register): `value`
   * holds the written bits (others 0). Absent = read-only (writes dropped).
   */
  write?(value: bigint, mask: bigint): void;
}

export class RegisterFile {
  private readonly byByte = new Map<number, Register>();

  constructor(regs: readonly Register[]) {
    for (const r of regs) {
      for (let b = r.off; b < r.off + r.size; b++) {
        if (this.byByte.has(b)) throw new Error(`register ${r.name} overlaps ${this.byByte.get(b)!.name} at 0x${b.toString(16)}`);
        this.byByte.set(b, r);
      }
    }
  }

  /** Registers touched by [off, off+size), with their byte span inside the access. */
  private touched(off: number, size: number): Map<Register, { lo: number; hi: number }> {
    const out = new Map<Register, { lo: number; hi: number }>();
    for (let b = off; b < off + size; b++) {
      const r = this.byByte.get(b);
      if (!r) continue;
      const span = out.get(r);
      if (span) span.hi = b;
      else out.set(r, { lo: b, hi: b });
    }
    return out;
  }

  /** Read `size` bytes at `off`, little-endian; bytes with no register read 0. */
  read(off: number, size: number): bigint {
    let v = 0n;
    for (const [r, { lo, hi }] of this.touched(off, size)) {
      const cur = r.read();
      for (let b = lo; b <= hi; b++) v |= ((cur >> BigInt(8 * (b - r.off))) & 0xffn) << BigInt(8 * (b - off));
    }
    return v;
  }

  /** Write `size` bytes of `value` at `off`; bytes with no register are dropped. */
  write(off: number, size: number, value: bigint): void {
    for (const [r, { lo, hi }] of this.touched(off, size)) {
      if (!r.write) continue;
      let v = 0n;
      let mask = 0n;
      for (let b = lo; b <= hi; b++) {
        const shift = BigInt(8 * (b - r.off));
        v |= ((value >> BigInt(8 * (b - off))) & 0xffn) << shift;
        mask |= 0xffn << shift;
      }
      r.write(v, mask);
    }
  }
}

/** A plain read/write register with a writable-bits mask. */
export function rwReg(name: string, off: number, size: 1 | 2 | 4 | 8, opts: { init?: bigint; wmask?: bigint;
  onWrite?: (v: bigint) => void } = {}): Register & { value: bigint; reset(): void } {
  const init = opts.init ?? 0n;
  const wmask = opts.wmask ?? (1n << BigInt(8 * size)) - 1n;
  const reg = {
    name, off, size, value: init,
    read: () => reg.value,
    write: (v: bigint, mask: bigint) => {
      const m = mask & wmask;
      reg.value = (reg.value & ~m) | (v & m);
      opts.onWrite?.(reg.value);
    },
    reset: () => { reg.value = init; },
  };
  return reg;
}

/** A read-only register. */
export function roReg(name: string, off: number, size: 1 | 2 | 4 | 8, read: () => bigint): Register {
  return { name, off, size, read };
}
