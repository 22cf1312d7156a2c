// The bundled C example (examples/demo.c), built against headers generated
// from the uAPI table for a profile: what `npm start` runs.
import * as path from 'node:path';
import type { ProfileName } from '../uapi/profiles.js';
import { buildProgram, cacheDir, PACKAGE_ROOT } from '../server/native.js';

/** Build the demo for `profile` (cached); returns the executable's path. */
export async function buildDemo(profile: ProfileName): Promise<string> {
  const { writeHeaders } = await import('../uapi/cheader.js');
  const inc = path.join(cacheDir(), 'include', profile);
  writeHeaders(inc, profile);
  const src = path.join(PACKAGE_ROOT, 'examples', 'demo.c');
  return buildProgram([src], { includeDirs: [inc], cflags: ['-isystem', inc], name: `iommufd-demo-${profile}` });
}
