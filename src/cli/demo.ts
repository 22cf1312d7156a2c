// The bundled C examples (examples/), built against headers generated from the
// uAPI table for a profile: what `npm start` and `npm run example:vfio` run.
import * as path from 'node:path';
import type { ProfileName } from '../uapi/profiles.js';
import { buildProgram, cacheDir, PACKAGE_ROOT } from '../server/native.js';

export interface Example {
  readonly source: string;
  readonly description: string;
  /** The machine preset it runs on (--machine), if it needs devices. */
  readonly machine?: string;
  /** Its --trace spec: true = ioctls only; categories add driver events. */
  readonly trace: true | string;
}

/** The examples `iommufd-emu demo --example NAME` builds and runs. */
export const EXAMPLES: Readonly<Record<string, Example>> = {
  demo: { source: 'demo.c', description: 'IOAS, mock device, vIOMMU, vDEVICE, nested HWPT, vEVENTQ, fault queue', trace: true },
  'vfio-ioat': {
    source: 'vfio_ioat.c',
    description: 'a user-space driver: the IOAT bound through /dev/vfio/devices, a buffer mapped with iommufd, the engine copying',
    machine: 'ioat',
    trace: 'devices',
  },
};

/** Build example `name` for `profile` (cached); returns the executable's path. */
export async function buildDemo(profile: ProfileName, name = 'demo'): Promise<string> {
  const ex = EXAMPLES[name];
  if (!ex) throw new Error(`demo: no example '${name}' (known: ${Object.keys(EXAMPLES).join(', ')})`);
  const { writeHeaders } = await import('../uapi/cheader.js');
  const inc = path.join(cacheDir(), 'include', profile);
  writeHeaders(inc, profile);
  const src = path.join(PACKAGE_ROOT, 'examples', ex.source);
  return buildProgram([src], { includeDirs: [inc], cflags: ['-isystem', inc], name: `iommufd-${name}-${profile}` });
}
