/*
 * iommufd-emu server addon (Node-API, C): maps a client's fast-path slot
 * (a sealed memfd, see src/server/wire.ts SLOT and src/server/transport.ts)
 * into the server as an ArrayBuffer. Node cannot mmap a file by itself; this
 * is the only native code the server loads, built on the user's machine with
 * cc against the Node-API headers Node installs (src/server/native.ts), like
 * the shim. Without it the server keeps to the Unix socket.
 *
 *   map(fd, size) -> ArrayBuffer   fd: a memfd sealed against shrinking and
 *                                  further sealing, at least size bytes
 *   unmap(ab)                      detach the ArrayBuffer, then munmap
 *   yield()                        sched_yield(): a spinning server lets a
 *                                  client that shares its CPU run
 *   seq(ab)                        the slot's seq_req (acquire)
 *   spin(ab, on)                   store srv_spin (seq_cst), then return seq_req
 *   publish(ab, seq)               store seq_rep = seq (seq_cst), then take
 *                                  cli_sleep if it is seq (compare-exchange
 *                                  with 0): true if the client sleeps waiting
 *                                  for seq (ring it)
 *   vmas(fd, start, end, out)      the VMAs from the one covering start (or the
 *                                  next above it) up to end, by PROCMAP_QUERY on
 *                                  fd (a /proc/<pid>/maps): 4 numbers each in the
 *                                  Float64Array out (start, end, flags, page
 *                                  size); their count, or -errno (-ENOTTY: the
 *                                  kernel has no PROCMAP_QUERY, before 6.11)
 *
 * The slot's words are touched only here, with the C11 atomics the shim uses:
 * the mapping is an ordinary (not shared) ArrayBuffer to V8, for which
 * Atomics promises nothing across processes (it may well compile them to
 * plain loads and stores: an exchange that is not one loses a wake-up).
 * The word offsets come from the wire header (wire.ts RECORD.slot).
 *
 * The seals matter: a client that could shrink the file would make the
 * server's next access to the mapping a SIGBUS.
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <stdint.h>

#include "iommufd_emu_wire.h"

#ifndef F_GET_SEALS
#define F_GET_SEALS 1034
#endif
#ifndef F_SEAL_SEAL
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#endif

static napi_value fail(napi_env env, const char *what, int err)
{
	char msg[160];
	snprintf(msg, sizeof(msg), "%s%s%s", what, err ? ": " : "", err ? strerror(err) : "");
	napi_throw_error(env, NULL, msg);
	return NULL;
}

static napi_value map(napi_env env, napi_callback_info info)
{
	size_t argc = 2;
	napi_value argv[2];
	int32_t fd;
	uint32_t size;
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2 ||
	    napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_uint32(env, argv[1], &size) != napi_ok ||
	    size == 0)
		return fail(env, "map(fd, size)", 0);
	struct stat st;
	if (fstat(fd, &st) != 0)
		return fail(env, "fstat", errno);
	if (!S_ISREG(st.st_mode) || st.st_size < (off_t)size)
		return fail(env, "slot: not a regular file of the slot's size", 0);
	int seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0)
		return fail(env, "slot: not a memfd (F_GET_SEALS)", errno);
	if ((seals & (F_SEAL_SHRINK | F_SEAL_SEAL)) != (F_SEAL_SHRINK | F_SEAL_SEAL))
		return fail(env, "slot: memfd not sealed against shrinking and sealing", 0);
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return fail(env, "mmap", errno);
	napi_value ab;
	if (napi_create_external_arraybuffer(env, p, size, NULL, NULL, &ab) != napi_ok) {
		munmap(p, size);
		return fail(env, "napi_create_external_arraybuffer", 0);
	}
	return ab;
}

static napi_value unmap(napi_env env, napi_callback_info info)
{
	size_t argc = 1;
	napi_value argv[1];
	void *p = NULL;
	size_t len = 0;
	bool detached = false;
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1)
		return fail(env, "unmap(ab)", 0);
	if (napi_is_detached_arraybuffer(env, argv[0], &detached) != napi_ok || detached)
		return NULL;
	if (napi_get_arraybuffer_info(env, argv[0], &p, &len) != napi_ok)
		return fail(env, "unmap: not an ArrayBuffer", 0);
	if (napi_detach_arraybuffer(env, argv[0]) != napi_ok)
		return fail(env, "unmap: cannot detach", 0);
	if (p && len)
		munmap(p, len);
	return NULL;
}

static napi_value yield_(napi_env env, napi_callback_info info)
{
	(void)env;
	(void)info;
	sched_yield();
	return NULL;
}

/* The slot behind argv[0] (NULL after an exception). */
static struct wire_slot *slot_of(napi_env env, napi_callback_info info, size_t want, napi_value *argv)
{
	size_t argc = want;
	void *p = NULL;
	size_t len = 0;
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != want ||
	    napi_get_arraybuffer_info(env, argv[0], &p, &len) != napi_ok || !p || len < WIRE_SLOT_SIZE) {
		napi_throw_error(env, NULL, "not a mapped slot");
		return NULL;
	}
	return p;
}

static napi_value u32(napi_env env, uint32_t v)
{
	napi_value r;
	napi_create_uint32(env, v, &r);
	return r;
}

static napi_value i32(napi_env env, int32_t v)
{
	napi_value r;
	napi_create_int32(env, v, &r);
	return r;
}

static napi_value seq(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	struct wire_slot *s = slot_of(env, info, 1, argv);
	return s ? u32(env, __atomic_load_n(&s->seq_req, __ATOMIC_ACQUIRE)) : NULL;
}

static napi_value spin(napi_env env, napi_callback_info info)
{
	napi_value argv[2];
	bool on = false;
	struct wire_slot *s = slot_of(env, info, 2, argv);
	if (!s || napi_get_value_bool(env, argv[1], &on) != napi_ok)
		return NULL;
	__atomic_store_n(&s->srv_spin, on ? 1 : 0, __ATOMIC_SEQ_CST);
	return u32(env, __atomic_load_n(&s->seq_req, __ATOMIC_SEQ_CST));
}

static napi_value publish(napi_env env, napi_callback_info info)
{
	napi_value argv[2];
	uint32_t seq = 0;
	struct wire_slot *s = slot_of(env, info, 2, argv);
	if (!s || napi_get_value_uint32(env, argv[1], &seq) != napi_ok)
		return NULL;
	__atomic_store_n(&s->seq_rep, seq, __ATOMIC_SEQ_CST);
	/*
	 * Only our own call's flag. A client that saw seq_rep may already be in its
	 * next call, asleep with cli_sleep = seq + 1, before we get here: an exchange
	 * would take that flag too, and nobody would ring for seq + 1 (a client hung
	 * in recv with seq_req == seq_rep, seen about once in ten selftest runs).
	 */
	uint32_t expect = seq;
	bool sleeping = seq != 0 && __atomic_compare_exchange_n(&s->cli_sleep, &expect, 0, 0, __ATOMIC_SEQ_CST,
								__ATOMIC_SEQ_CST);
	napi_value r;
	napi_get_boolean(env, sleeping, &r);
	return r;
}

/*
 * PROCMAP_QUERY (Linux 6.11, include/uapi/linux/fs.h): one VMA by address, in
 * binary, instead of the whole of /proc/<pid>/maps as text. Declared here for
 * C libraries whose headers predate it.
 */
struct emu_procmap_query {
	uint64_t size, query_flags, query_addr;
	uint64_t vma_start, vma_end, vma_flags, vma_page_size, vma_offset, inode;
	uint32_t dev_major, dev_minor, vma_name_size, build_id_size;
	uint64_t vma_name_addr, build_id_addr;
};
#define EMU_PROCMAP_QUERY _IOWR('f', 17, struct emu_procmap_query)
#define EMU_PROCMAP_QUERY_COVERING_OR_NEXT_VMA 0x10

static napi_value vmas(napi_env env, napi_callback_info info)
{
	size_t argc = 4;
	napi_value argv[4];
	int32_t fd;
	double start, end;
	napi_typedarray_type t;
	size_t n = 0;
	void *data = NULL;
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 4 ||
	    napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_double(env, argv[1], &start) != napi_ok ||
	    napi_get_value_double(env, argv[2], &end) != napi_ok ||
	    napi_get_typedarray_info(env, argv[3], &t, &n, &data, NULL, NULL) != napi_ok || t != napi_float64_array)
		return fail(env, "vmas(fd, start, end, Float64Array)", 0);
	double *out = data;
	int32_t count = 0;
	uint64_t addr = (uint64_t)start;
	while (addr < (uint64_t)end && (size_t)(count + 1) * 4 <= n) {
		struct emu_procmap_query q = { .size = sizeof(q), .query_flags = EMU_PROCMAP_QUERY_COVERING_OR_NEXT_VMA,
					       .query_addr = addr };
		if (ioctl(fd, EMU_PROCMAP_QUERY, &q) != 0) {
			if (errno == ENOENT)
				break; /* nothing at or above addr */
			return i32(env, -errno);
		}
		out[count * 4] = (double)q.vma_start;
		out[count * 4 + 1] = (double)q.vma_end;
		out[count * 4 + 2] = (double)q.vma_flags;
		out[count * 4 + 3] = (double)q.vma_page_size;
		count++;
		addr = q.vma_end;
	}
	return i32(env, count);
}

static napi_value init(napi_env env, napi_value exports)
{
	napi_property_descriptor props[] = {
		{ "map", NULL, map, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "unmap", NULL, unmap, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "yield", NULL, yield_, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "seq", NULL, seq, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "spin", NULL, spin, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "publish", NULL, publish, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "vmas", NULL, vmas, NULL, NULL, NULL, napi_enumerable, NULL },
	};
	napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
	return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
