// Public entry point of the iommufd-emu package.
export { openIommufd, IommuFd, zeroed, type MapArgs } from './api.js';
export { Emulator, type EmulatorOptions } from './core/emulator.js';
export { IommufdCtx, Ucmd, type Caller } from './core/context.js';
export { SimMemory, PROT_READ, PROT_WRITE } from './core/simmem.js';
export { SimpleFdTable, type FdTable, type IommufdFile } from './core/file.js';
export type { UserMemory, PhysPage, ProcessInfo } from './core/usermem.js';
export { IommufdError, ERRNO, type ErrnoName } from './uapi/errno.js';
export { PROFILES, getProfile, type ProfileName, type Profile } from './uapi/profiles.js';
export { IOCTLS, IO, VFIO } from './uapi/ioctls.js';
export * as structs from './uapi/structs.js';
export * as enums from './uapi/enums.js';
export { decode, encode, structSize, type Decoded } from './uapi/layout.js';
export { formatIoctl } from './uapi/trace.js';
export { generateHeaders, writeHeaders } from './uapi/cheader.js';
