/*
 * iommufd-emu LD_PRELOAD shim: routes /dev/iommu to the iommufd-emu server.
 *
 * Built on the user's machine by the CLI (src/server/native.ts), against the
 * wire protocol's header generated from src/server/wire.ts:
 *   cc -shared -fPIC -O2 -I <cache>/wire-<hash> -o libiommufd-emu.so native/shim.c -ldl -lpthread
 *
 * Model (frames: src/server/wire.ts):
 *  - open("/dev/iommu") returns a fresh Unix-socket connection to the server
 *    (the "anchor"): the fd is a real kernel object, so dup/fork/exit/close
 *    semantics come from the kernel and the server tears the context down on
 *    EOF. close() of an emulated fd then asks the server to finish (SYNC).
 *  - ioctl/read/write/mmap on emulated fds are forwarded over one control
 *    connection per process, as the fd's kind says (the server's tables); the
 *    server reads and writes our memory through /proc/<pid>/mem.
 *  - fds returned by ioctls (the server's fd rules say which) are sockets
 *    prepared before the call; readiness is one byte the server puts in.
 *  - MAP_SHARED|MAP_ANONYMOUS memory is made memfd-backed and announced to
 *    the server, so its pages have one identity in every process.
 *  - fail-nth files and /sys/kernel/debug are emulated locally.
 *
 * Signals and threads: every shared table is read and written under its lock,
 * and all signals are blocked while a lock is held (sig_block), so a signal
 * handler that calls an async-signal-safe function on an emulated fd (close,
 * read, write, open, dup...) never finds a lock its own thread holds. Lock
 * order: ctl_mu, then tab_mu, then failnth_mu, then debugfs_mu, then dirs_mu. Inside the
 * shim, calls that would re-enter our wrappers use raw syscalls.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "iommufd_emu_wire.h"
#include "mmio_decode.h"
#include <ucontext.h>

#ifndef PR_SET_PTRACER
#define PR_SET_PTRACER 0x59616d61
#endif
#ifndef PR_SET_PTRACER_ANY
#define PR_SET_PTRACER_ANY ((unsigned long)-1)
#endif
#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 1U
#endif
#ifndef MFD_ALLOW_SEALING
#define MFD_ALLOW_SEALING 2U
#endif
#ifndef MFD_HUGETLB
#define MFD_HUGETLB 4U
#endif
#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif
#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif

#define EXPORT __attribute__((visibility("default")))
#define TLS __thread __attribute__((tls_model("initial-exec")))

static void *raw_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
#define PAGE_ALIGN_(x) (((uint64_t)(x) + 4095) & ~(uint64_t)4095)

/* ---- locks: held only with every signal blocked ------------------------------ */
static TLS int sig_depth;
static TLS sigset_t sig_saved;

static void sig_block(void)
{
	if (sig_depth++ == 0) {
		sigset_t all;
		sigfillset(&all);
		pthread_sigmask(SIG_BLOCK, &all, &sig_saved);
	}
}

static void sig_unblock(void)
{
	if (--sig_depth == 0)
		pthread_sigmask(SIG_SETMASK, &sig_saved, NULL);
}

static pthread_mutex_t ctl_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t tab_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t failnth_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t debugfs_mu = PTHREAD_MUTEX_INITIALIZER;

static void lock(pthread_mutex_t *m)
{
	int e = errno;
	sig_block();
	pthread_mutex_lock(m);
	errno = e;
}

static void unlock(pthread_mutex_t *m)
{
	int e = errno;
	pthread_mutex_unlock(m);
	sig_unblock();
	errno = e;
}

static long raw_close(int fd) { return syscall(SYS_close, fd); }
/* The shim's own stats never go through its stat wrappers (which show device nodes as the program should see them). */
static int raw_fstat(int fd, struct stat *st) { return (int)syscall(SYS_fstat, fd, st); }
static int raw_stat(const char *p, struct stat *st) { return (int)syscall(SYS_newfstatat, AT_FDCWD, p, st, 0); }
static int raw_dupfd_hi(int fd) { return (int)syscall(SYS_fcntl, fd, F_DUPFD_CLOEXEC, 900); }

/* Move fd out of the way of programs that expect low fd numbers (close-on-exec). */
static int move_high(int fd)
{
	int hi = raw_dupfd_hi(fd);
	if (hi < 0)
		return fd;
	raw_close(fd);
	return hi;
}

/* ---- user memory: copies that fail with EFAULT, never a signal ------------------- */
/*
 * The highest user address + 1 the kernel accepts (x86-64 TASK_SIZE_MAX: 4 or
 * 5 paging levels, told apart by where our stack is).
 */
static uintptr_t user_ptr_max(void)
{
	int local;
	return (uintptr_t)&local > ((uintptr_t)1 << 47) ? ((uintptr_t)1 << 56) - 4096 : ((uintptr_t)1 << 47) - 4096;
}

/* access_ok(): the range lies in user space (it need not be mapped). */
static int access_ok_(const void *p, size_t n)
{
	uintptr_t a = (uintptr_t)p, sum = a + n;
	return sum >= a && sum <= user_ptr_max();
}

/*
 * Copy n bytes between our memory and a buffer the program gave us, as
 * copy_{to,from}_user: page by page through process_vm_{read,write}v on
 * ourselves (the kernel checks the mapping), so an unmapped or protected
 * page ends the copy. Returns the bytes copied.
 */
static size_t user_copy(void *dst, const void *src, size_t n, int to_user)
{
	size_t done = 0;
	pid_t self = getpid();
	while (done < n) {
		uintptr_t u = (uintptr_t)(to_user ? (char *)dst + done : (const char *)src + done);
		size_t chunk = 4096 - (u & 4095);
		if (chunk > n - done)
			chunk = n - done;
		struct iovec l = { to_user ? (void *)((const char *)src + done) : (char *)dst + done, chunk };
		struct iovec r = { (void *)u, chunk };
		ssize_t k = to_user ? syscall(SYS_process_vm_writev, self, &l, 1UL, &r, 1UL, 0UL)
				    : syscall(SYS_process_vm_readv, self, &l, 1UL, &r, 1UL, 0UL);
		if (k <= 0)
			break;
		done += (size_t)k;
		if ((size_t)k < chunk)
			break;
	}
	return done;
}

static int read_self(const void *addr, void *out, size_t n)
{
	return user_copy(out, addr, n, 0) == n ? 0 : -1;
}

/*
 * Our copy of a path the program passed, read as strncpy_from_user would (an
 * unreadable one is never touched directly): NULL if it cannot be read or is
 * longer than any path we emulate. The real call then gets the original
 * pointer and the kernel answers (EFAULT, ENAMETOOLONG) itself.
 */
#define SAFE_PATH_MAX 512
static const char *safe_path(const char *p, char *buf)
{
	if (!p)
		return NULL;
	size_t done = 0;
	while (done < SAFE_PATH_MAX - 1) {
		uintptr_t a = (uintptr_t)p + done;
		size_t chunk = 4096 - (a & 4095);
		if (chunk > SAFE_PATH_MAX - 1 - done)
			chunk = SAFE_PATH_MAX - 1 - done;
		size_t got = user_copy(buf + done, p + done, chunk, 0);
		if (memchr(buf + done, 0, got))
			return buf;
		if (got < chunk)
			return NULL;
		done += got;
	}
	return NULL;
}

/* ---- real functions (resolved in the constructor; lazily before it) ----------------- */
#define REAL(name) real_##name
#define RESOLVE(name) do { if (!REAL(name)) REAL(name) = dlsym(RTLD_NEXT, #name); } while (0)
static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real___open_2)(const char *, int);
static int (*real___open64_2)(const char *, int);
static FILE *(*real_fopen)(const char *, const char *);
static FILE *(*real_fopen64)(const char *, const char *);
static int (*real_fclose)(FILE *);
static int (*real_close)(int);
static int (*real_ioctl)(int, unsigned long, ...);
static ssize_t (*real_read)(int, void *, size_t);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pread)(int, void *, size_t, off_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pread64)(int, void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static off_t (*real_lseek)(int, off_t, int);
static off_t (*real_lseek64)(int, off_t, int);
static int (*real_dup)(int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);
static int (*real_fcntl)(int, int, ...);
static int (*real_fcntl64)(int, int, ...);
static DIR *(*real_opendir)(const char *);
static int (*real_poll)(struct pollfd *, nfds_t, int);
static int (*real_ppoll)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *);
static ssize_t (*real_recvmsg)(int, struct msghdr *, int);
static int (*real_access)(const char *, int);
static int (*real_faccessat)(int, const char *, int, int);
static int (*real_euidaccess)(const char *, int);

static void resolve_all(void)
{
	RESOLVE(open); RESOLVE(open64); RESOLVE(openat); RESOLVE(openat64); RESOLVE(__open_2); RESOLVE(__open64_2);
	RESOLVE(fopen); RESOLVE(fopen64); RESOLVE(fclose); RESOLVE(close); RESOLVE(ioctl);
	RESOLVE(read); RESOLVE(write); RESOLVE(pread); RESOLVE(pwrite); RESOLVE(pread64); RESOLVE(pwrite64);
	RESOLVE(lseek); RESOLVE(lseek64); RESOLVE(dup); RESOLVE(dup2); RESOLVE(dup3); RESOLVE(fcntl); RESOLVE(fcntl64);
	RESOLVE(opendir); RESOLVE(poll); RESOLVE(ppoll); RESOLVE(recvmsg); RESOLVE(access); RESOLVE(faccessat); RESOLVE(euidaccess);
	if (!real_open64) real_open64 = real_open;
	if (!real_openat64) real_openat64 = real_openat;
	if (!real_fopen64) real_fopen64 = real_fopen;
	if (!real_pread64) real_pread64 = real_pread;
	if (!real_pwrite64) real_pwrite64 = real_pwrite;
	if (!real_lseek64) real_lseek64 = real_lseek;
	if (!real_fcntl64) real_fcntl64 = real_fcntl;
}

static pid_t my_tid(void) { return (pid_t)syscall(SYS_gettid); }

/* Bumped on every mapping change we see, so the server re-reads our VMAs. */
static uint32_t map_gen;
static void map_changed(void) { __atomic_add_fetch(&map_gen, 1, __ATOMIC_RELAXED); }
static uint32_t map_gen_now(void) { return __atomic_load_n(&map_gen, __ATOMIC_RELAXED); }

/* ---- the server's tables (PROVE reply): fd kinds and fd rules -------------------------- */
#define NKINDS 16
#define NRULES 64
static struct wire_kind kinds[NKINDS];
static struct wire_fdrule rules[NRULES];
static int nkinds, nrules; /* written under ctl_mu before any fd of a kind exists */

/* What the shim forwards for fds of `kind` (WIRE_OPS bits). */
static uint32_t kind_ops(uint32_t kind)
{
	for (int i = 0; i < nkinds; i++)
		if (kinds[i].kind == kind)
			return kinds[i].ops;
	return 0;
}

/* ---- emulated fd table ------------------------------------------------------------ */
#define FD_MAX 65536
/* kinds of our own, beside the server's (WIRE_KIND_*): the fail-nth files, /proc status files */
#define K_FAILNTH 0x100
#define K_STATUS 0x101
#define LOCAL_KIND(k) ((k) >= 0x100)
/* ino/dev: the file behind the fd when we recorded it (stale entries are detected) */
struct fdent { uint32_t kind; int32_t tid; uint64_t token, ino, dev, rdev; /* rdev: a device node's (fstat shows it) */ };
static struct fdent fdtab[FD_MAX];

static uint32_t kind_hint(int fd)
{
	return fd >= 0 && fd < FD_MAX ? __atomic_load_n(&fdtab[fd].kind, __ATOMIC_RELAXED) : 0;
}

/* Record fd as emulated (tab_mu held). */
static int emu_fds_ever; /* this image had an emulated fd: a child may hold one */

static void set_ent_locked(int fd, uint32_t kind, uint64_t token, int32_t tid)
{
	if (kind != K_FAILNTH)
		__atomic_store_n(&emu_fds_ever, 1, __ATOMIC_RELAXED);
	struct stat st;
	memset(&st, 0, sizeof(st));
	raw_fstat(fd, &st);
	fdtab[fd] = (struct fdent){ 0, tid, token, (uint64_t)st.st_ino, (uint64_t)st.st_dev };
	__atomic_store_n(&fdtab[fd].kind, kind, __ATOMIC_RELEASE);
}

static void set_ent(int fd, uint32_t kind, uint64_t token, int32_t tid)
{
	if (fd < 0 || fd >= FD_MAX)
		return;
	lock(&tab_mu);
	set_ent_locked(fd, kind, token, tid);
	unlock(&tab_mu);
}

/* Forget fd's entry (tab_mu held); returns its kind. */
static uint32_t clear_ent_locked(int fd)
{
	uint32_t k = fdtab[fd].kind;
	__atomic_store_n(&fdtab[fd].kind, 0, __ATOMIC_RELAXED);
	fdtab[fd] = (struct fdent){ 0 };
	return k;
}

/*
 * The entry of an emulated fd that is still the same file (an fd closed
 * behind our back -- fclose, raw syscalls -- and reused for something else
 * must not be taken for ours): copied into *out. 0 if fd is not ours.
 */
static int ent_get(int fd, struct fdent *out)
{
	if (!kind_hint(fd))
		return 0;
	struct stat st;
	int ok = raw_fstat(fd, &st) == 0;
	int r = 0;
	lock(&tab_mu);
	if (fdtab[fd].kind) {
		if (ok && (uint64_t)st.st_ino == fdtab[fd].ino && (uint64_t)st.st_dev == fdtab[fd].dev) {
			if (out)
				*out = fdtab[fd];
			r = 1;
		} else {
			clear_ent_locked(fd);
		}
	}
	unlock(&tab_mu);
	return r;
}

static int live(int fd) { return ent_get(fd, NULL); }

/* Another fd in the table holds the same file (tab_mu held). */
static int token_held_locked(uint64_t token, int except)
{
	for (int i = 0; i < FD_MAX; i++)
		if (i != except && fdtab[i].kind && fdtab[i].token == token)
			return 1;
	return 0;
}

/* ---- fail-nth counters (per thread, like task->fail_nth) --------------------------- */
#define NTHREADS 1024
static struct { pid_t tid; uint32_t val; } failnth_tab[NTHREADS];
static int failnth_used; /* any thread ever armed: else skip the lookup */

static uint32_t failnth_get(pid_t tid)
{
	uint32_t v = 0;
	if (!__atomic_load_n(&failnth_used, __ATOMIC_RELAXED))
		return 0;
	lock(&failnth_mu);
	for (int i = 0; i < NTHREADS; i++)
		if (failnth_tab[i].tid == tid) { v = failnth_tab[i].val; break; }
	unlock(&failnth_mu);
	return v;
}

static void failnth_set(pid_t tid, uint32_t v)
{
	if (v)
		__atomic_store_n(&failnth_used, 1, __ATOMIC_RELAXED);
	lock(&failnth_mu);
	int slot = -1;
	for (int i = 0; i < NTHREADS; i++) {
		if (failnth_tab[i].tid == tid) { slot = i; break; }
		if (slot < 0 && failnth_tab[i].tid == 0) slot = i;
	}
	if (slot >= 0) {
		failnth_tab[slot].tid = v ? tid : 0;
		failnth_tab[slot].val = v;
	}
	unlock(&failnth_mu);
}

/* ---- transport: the Unix socket (all frame I/O goes through these) -------------------- */
static char sock_path[108];

static const char *socket_path(void)
{
	if (!sock_path[0]) {
		const char *p = getenv("IOMMUFD_EMU_SOCKET");
		const char *rt = getenv("XDG_RUNTIME_DIR");
		if (p && *p)
			snprintf(sock_path, sizeof(sock_path), "%s", p);
		else if (rt && *rt)
			snprintf(sock_path, sizeof(sock_path), "%s/iommufd-emu.sock", rt);
		else
			snprintf(sock_path, sizeof(sock_path), "/tmp/iommufd-emu-%u/iommufd-emu.sock", (unsigned)getuid());
	}
	return sock_path;
}

static int tp_connect(int cloexec)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	strncpy(sa.sun_path, socket_path(), sizeof(sa.sun_path) - 1);
	int s = socket(AF_UNIX, SOCK_STREAM | (cloexec ? SOCK_CLOEXEC : 0), 0);
	if (s < 0)
		return -1;
	while (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno == EINTR)
			continue;
		int e = errno;
		raw_close(s);
		errno = (e == ECONNREFUSED || e == ENOENT) ? ENOENT : e; /* no server: as if there were no /dev/iommu */
		return -1;
	}
	return s;
}

static int ctl_fd;
static struct wire_slot *slot;

/*
 * A frame on the control socket while the slot carries them would never be
 * answered (the server refuses it, transport.ts): a call that tries fails
 * (EPROTO) instead. Every control exchange goes through ctl_call_locked.
 */
static int behind_slot(int fd)
{
	if (!slot || fd != ctl_fd)
		return 0;
	errno = EPROTO;
	return 1;
}

static int tp_send(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	if (behind_slot(fd))
		return -1;
	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int tp_recv(int fd, void *buf, size_t len)
{
	char *p = buf;
	if (behind_slot(fd))
		return -1;
	while (len) {
		ssize_t n = recv(fd, p, len, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0) {
			errno = ECONNRESET;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* A request and its fixed-size reply on `fd` (the reply's len and type checked). */
static int tp_rpc(int fd, const void *req, size_t reqlen, void *rep, size_t replen)
{
	const uint32_t *q = req;
	const uint32_t *r = rep;
	if (tp_send(fd, req, reqlen) < 0 || tp_recv(fd, rep, replen) < 0)
		return -1;
	if (r[0] != replen || r[1] != q[1]) {
		errno = EPROTO;
		return -1;
	}
	return 0;
}

#define REQ(T, name) struct wire_req_##name q = { .len = sizeof(q), .type = WIRE_T_##T }

/*
 * A new connection that will be one of our fds (anchor, event, holder), and
 * its inode: OPEN, EVPREP and HOLDER show the server it is ours (CLAIM).
 */
static int claim_socket(int cloexec, uint64_t *ino)
{
	int s = tp_connect(cloexec);
	struct stat st;
	if (s >= 0 && raw_fstat(s, &st) == 0)
		*ino = (uint64_t)st.st_ino;
	return s;
}
#define CLAIM(q, s, ino) \
	do { (q).pid = (uint32_t)getpid(); (q).fd = (s); (q).ino = (ino); (q).session = ctl_session; } while (0)

/* ---- the control connection --------------------------------------------------------- */
static int ctl_fd = -1;
static pid_t ctl_pid;         /* process the connection belongs to */
static pid_t state_pid;       /* process whose shim state we have (parent after fork) */
static uint64_t ctl_session;  /* shown in OPEN/EVPREP: the server gave it to this process only */

struct region { uint64_t va, len, off; int memfd; uint32_t flags; };
#define NREGIONS 512
static struct region regions[NREGIONS];
static int nregions; /* ctl_mu; read without it only as a hint (atomic) */

static uint64_t memlock_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
		return UINT64_MAX;
	return rl.rlim_cur;
}

static uint32_t cap_bits(void)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2];
	memset(data, 0, sizeof(data));
	if (syscall(SYS_capget, &hdr, data) != 0)
		return 0;
	uint32_t bits = 0;
#define HAS(c) (data[(c) / 32].effective & (1u << ((c) % 32)))
	if (HAS(CAP_SYS_RESOURCE)) bits |= WIRE_CAP_SYS_RESOURCE;
	if (HAS(CAP_IPC_LOCK)) bits |= WIRE_CAP_IPC_LOCK;
	if (HAS(CAP_SYS_RAWIO)) bits |= WIRE_CAP_SYS_RAWIO;
#undef HAS
	return bits;
}

/*
 * ---- the fast path: one request/reply slot per process image (wire.ts SLOT) ----------
 * A sealed memfd both we and the server map. We write the request frame, then
 * publish its number (seq_req) and ring the server's doorbell (one byte on the
 * control socket) only if it is not polling (srv_spin). We spin on seq_rep for
 * a short window (IOMMUFD_EMU_SPIN_US), then sleep in recv on the control
 * socket after telling the server (cli_sleep), which then rings us. A dead
 * server is EOF there, as before. The mapping is MADV_DONTFORK and the memfd
 * is closed once the server has it: a child (or anything exec'ed) can never
 * reach our slot, and makes its own with its own control connection.
 * Everything here runs under ctl_mu, so one slot serves all our threads.
 */
/*
 * The client's spin window adapts to how fast replies come (like an adaptive
 * mutex): it is twice the recent reply time (an average over about 8 calls,
 * measured whether we spun or slept) plus 2 us, capped at IOMMUFD_EMU_SPIN_US
 * (default 50), and 0 (sleep at once) while replies take longer than the cap.
 * So a client spins while the server answers within a few microseconds (a quiet
 * machine), and stops spinning when the server is slow or loses its CPU to
 * other work (a loaded machine, where a fixed spin was slower than the socket),
 * until replies get fast again (see spin_window); bench/RESULTS.md has the
 * measurements. IOMMUFD_EMU_SPIN_US=0 never spins; IOMMUFD_EMU_SPIN_ADAPT=0
 * spins the whole cap on every call (for a client with a CPU of its own).
 */
#define DEFAULT_SPIN_US 50

static struct wire_slot *slot;  /* NULL: frames go through the socket */
static char *slot_req, *slot_rep;
static pid_t slot_pid;          /* the process that mapped it (a raw fork's child has no such mapping) */
static uint32_t slot_seq;
static long spin_ns = -1;       /* the cap of the client's spin window; -1: not read yet */
static int64_t reply_avg_ns;    /* recent reply time (ctl_mu held) */
static int spin_fixed;          /* IOMMUFD_EMU_SPIN_ADAPT=0 */
static int fast_off = -1;       /* IOMMUFD_EMU_FASTPATH=0 */


static void fast_config(void)
{
	if (fast_off >= 0)
		return;
	const char *f = getenv("IOMMUFD_EMU_FASTPATH");
	fast_off = f && strcmp(f, "0") == 0;
	const char *sp = getenv("IOMMUFD_EMU_SPIN_US");
	long us = DEFAULT_SPIN_US;
	cpu_set_t cs;
	if (sp && *sp)
		us = strtol(sp, NULL, 10);
	if (sched_getaffinity(0, sizeof(cs), &cs) == 0 && CPU_COUNT(&cs) < 2)
		us = 0; /* one CPU: spinning only keeps the server from running */
	spin_ns = us < 0 ? 0 : us * 1000;
	reply_avg_ns = spin_ns / 4; /* start out spinning */
	const char *ad = getenv("IOMMUFD_EMU_SPIN_ADAPT");
	spin_fixed = ad && strcmp(ad, "0") == 0;
}

/*
 * This call's spin window (ns), from the recent reply time. While replies are
 * slow, every 16th call still spins the whole cap: a reply time measured asleep
 * includes our own wake-up, so without these probes a client that once stopped
 * spinning might never see that the server got fast again.
 */
static uint64_t spin_window(void)
{
	static unsigned asleep;
	if (spin_ns <= 0 || spin_fixed)
		return spin_ns > 0 ? (uint64_t)spin_ns : 0;
	if (reply_avg_ns > spin_ns)
		return ++asleep % 16 ? 0 : (uint64_t)spin_ns;
	uint64_t w = (uint64_t)reply_avg_ns * 2 + 2000;
	return w < (uint64_t)spin_ns ? w : (uint64_t)spin_ns;
}

/* Fold one reply time into the average (one long call moves it by at most spin_ns/2). */
static void reply_took(uint64_t ns)
{
	int64_t t = ns > (uint64_t)spin_ns * 4 ? spin_ns * 4 : (int64_t)ns;
	reply_avg_ns += (t - reply_avg_ns) / 8;
}

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ volatile("yield");
#endif
}

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void slot_drop_locked(void)
{
	if (slot && slot_pid == getpid())
		syscall(SYS_munmap, slot, (size_t)WIRE_SLOT_SIZE);
	slot = NULL;
}

static void ctl_drop_locked(void)
{
	slot_drop_locked();
	if (ctl_fd >= 0)
		raw_close(ctl_fd);
	__atomic_store_n(&ctl_fd, -1, __ATOMIC_RELAXED);
}

/* One byte on the control socket: wakes the other side (its content means nothing). */
static int ring(void)
{
	char b = 0;
	for (;;) {
		ssize_t n = send(ctl_fd, &b, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n == 1 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)))
			return 0; /* a full buffer is doorbells already */
		if (n < 0 && errno == EINTR)
			continue;
		return -1;
	}
}

/* Wait for one doorbell byte from the server: -1 if it is gone. */
static int await_ring(void)
{
	char b;
	for (;;) {
		ssize_t n = recv(ctl_fd, &b, 1, 0);
		if (n == 1)
			return 0;
		if (n < 0 && errno == EINTR)
			continue;
		return -1;
	}
}

/* Wait for the reply to seq at slot_rep (ctl_mu held): spin up to window ns from t0, then sleep. */
static int slot_wait_locked(uint32_t seq, uint64_t t0, uint64_t window)
{
	if (window) {
		/*
		 * No sched_yield() here: on a busy machine it hands the CPU to
		 * whoever else is runnable for a whole time slice (measured: worse
		 * than sleeping); the server yields instead (transport.ts).
		 */
		uint64_t seen = t0;
		for (unsigned i = 1;; i++) {
			if (__atomic_load_n(&slot->seq_rep, __ATOMIC_ACQUIRE) == seq)
				return 0;
			cpu_relax();
			if (i & 31)
				continue;
			uint64_t t = mono_ns();
			if (t - t0 >= window)
				break;
			if (t - seen >= 1000000) {
				/* a long window: notice a dead server (its end of the socket closed) once a millisecond */
				seen = t;
				struct pollfd p = { .fd = ctl_fd, .events = POLLRDHUP };
				if (syscall(SYS_poll, &p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)))
					return -1;
			}
		}
	}
	/*
	 * Sleep. The server publishes seq_rep, then takes cli_sleep if it holds this
	 * seq (a compare-exchange: never our next call's): exactly one of us sees the other.
	 */
	uint32_t none = 0;
	if (!__atomic_compare_exchange_n(&slot->cli_sleep, &none, seq, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
		__atomic_store_n(&slot->cli_sleep, seq, __ATOMIC_SEQ_CST); /* a stale value: ours now */
	}
	if (__atomic_load_n(&slot->seq_rep, __ATOMIC_SEQ_CST) == seq) {
		uint32_t mine = seq;
		if (__atomic_compare_exchange_n(&slot->cli_sleep, &mine, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
			return 0; /* the server will not ring */
		return await_ring(); /* it took the flag: its byte is on the way */
	}
	if (await_ring() < 0)
		return -1;
	return __atomic_load_n(&slot->seq_rep, __ATOMIC_SEQ_CST) == seq ? 0 : -1;
}

/* Publish the request already written at slot_req and wait for its reply at slot_rep (ctl_mu held). */
static int slot_call_locked(void)
{
	uint32_t seq = slot_seq + 1;
	if (seq == 0)
		seq = 1; /* 0 means "nobody" in cli_sleep */
	slot_seq = seq;
	uint64_t window = spin_window();
	uint64_t t0 = spin_ns > 0 ? mono_ns() : 0;
	__atomic_store_n(&slot->seq_req, seq, __ATOMIC_SEQ_CST);
	if (!__atomic_load_n(&slot->srv_spin, __ATOMIC_SEQ_CST) && ring() < 0)
		return -1;
	int rc = slot_wait_locked(seq, t0, window);
	if (rc == 0 && spin_ns > 0)
		reply_took(mono_ns() - t0);
	return rc;
}

/* Move the new control connection s to the fast path (ctl_mu held); -1 only if s is broken. */
static int fast_setup_locked(int s)
{
	fast_config();
	if (fast_off)
		return 0;
	int fd = (int)syscall(SYS_memfd_create, "iommufd-emu-slot", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return 0;
	void *p = MAP_FAILED;
	if (ftruncate(fd, WIRE_SLOT_SIZE) == 0 &&
	    syscall(SYS_fcntl, fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0)
		p = raw_mmap(NULL, WIRE_SLOT_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		raw_close(fd);
		return 0;
	}
	syscall(SYS_madvise, p, (size_t)WIRE_SLOT_SIZE, MADV_DONTFORK);
	REQ(FAST, fast);
	q.memfd = fd;
	q.size = WIRE_SLOT_SIZE;
	struct wire_rep_status r;
	int rc = tp_rpc(s, &q, sizeof(q), &r, sizeof(r));
	raw_close(fd); /* the server has its own now */
	if (rc < 0 || r.status != 0) {
		syscall(SYS_munmap, p, (size_t)WIRE_SLOT_SIZE);
		return rc; /* refused (an old server, no addon): the socket it is */
	}
	slot = p;
	slot_req = (char *)p + WIRE_SLOT_REQ_OFF;
	slot_rep = (char *)p + WIRE_SLOT_REP_OFF;
	slot_pid = getpid();
	slot_seq = 0;
	return 0;
}

/*
 * A request and its reply on the control connection, whichever way it goes:
 * through the slot once FAST took, else the socket. Every control exchange
 * comes here (IOCTL's own, slot_ioctl_locked, too): a frame written to the
 * socket behind the slot's back is one the server refuses (transport.ts), as
 * tp_send/tp_recv do here. The reply's fixed part (replen bytes; its len and
 * type checked) goes to rep; a reply with a variable tail (MACHINE's path)
 * may have up to tailmax more bytes, stored at tail, their count in *taillen.
 */
static int ctl_call_locked(const void *req, size_t reqlen, void *rep, size_t replen, void *tail, size_t tailmax,
			   size_t *taillen)
{
	const uint32_t *q = req, *r = rep;
	if (!slot) {
		if (tp_send(ctl_fd, req, reqlen) < 0 || tp_recv(ctl_fd, rep, replen) < 0)
			return -1;
	} else {
		memcpy(slot_req, req, reqlen);
		if (slot_call_locked() < 0)
			return -1;
		memcpy(rep, slot_rep, replen);
	}
	if (r[1] != q[1] || r[0] < replen || r[0] - replen > tailmax) {
		errno = EPROTO;
		return -1;
	}
	size_t n = r[0] - replen;
	if (n && slot)
		memcpy(tail, slot_rep + replen, n);
	else if (n && tp_recv(ctl_fd, tail, n) < 0)
		return -1;
	if (taillen)
		*taillen = n;
	return 0;
}

static int ctl_rpc_locked(const void *req, size_t reqlen, void *rep, size_t replen);

static int send_region_locked(const struct region *r)
{
	REQ(REGION, region);
	q.va = r->va;
	q.length = r->len;
	q.off = r->off;
	q.memfd = r->memfd;
	q.flags = r->flags;
	struct wire_rep_status s;
	return ctl_rpc_locked(&q, sizeof(q), &s, sizeof(s));
}

/* The PROVE reply's tables: fd kinds, then fd rules. */
static int take_tables(const struct wire_rep_prove *p, const char *tab)
{
	if (p->nkinds > NKINDS || p->nrules > NRULES ||
	    p->tablen != p->nkinds * sizeof(struct wire_kind) + p->nrules * sizeof(struct wire_fdrule))
		return -1;
	if (__atomic_load_n(&nkinds, __ATOMIC_ACQUIRE))
		return 0; /* one server: the tables we have (inherited or received) are its */
	memcpy(kinds, tab, p->nkinds * sizeof(struct wire_kind));
	memcpy(rules, tab + p->nkinds * sizeof(struct wire_kind), p->nrules * sizeof(struct wire_fdrule));
	__atomic_store_n(&nrules, (int)p->nrules, __ATOMIC_RELEASE);
	__atomic_store_n(&nkinds, (int)p->nkinds, __ATOMIC_RELEASE);
	return 0;
}

/* Make sure this process (pid = getpid()) has its control connection (ctl_mu held). */
static int ctl_ensure_pid_locked(pid_t pid)
{
	if (ctl_fd >= 0 && ctl_pid == pid)
		return 0;
	if (slot_pid != pid)
		slot = NULL; /* a child made without our fork handlers: that mapping is not here */
	if (ctl_fd >= 0)
		ctl_drop_locked(); /* inherited from the parent: not ours */
	int s = tp_connect(1);
	if (s < 0)
		return -1;
	s = move_high(s);
	REQ(HELLO, hello);
	q.pid = (uint32_t)pid;
	q.ppid = (uint32_t)state_pid;
	q.uid = (uint32_t)getuid();
	q.caps = cap_bits();
	q.memlock = memlock_limit();
	q.version = WIRE_VERSION;
	/* the server serves our memory once we show its nonce in it */
	static uint8_t proof[16];
	struct wire_rep_hello hr;
	struct wire_req_prove pr = { .len = sizeof(pr), .type = WIRE_T_PROVE, .addr = (uint64_t)(uintptr_t)proof };
	struct wire_rep_prove st;
	char tab[WIRE_REP_PROVE_TAIL_MAX];
	if (tp_rpc(s, &q, sizeof(q), &hr, sizeof(hr)) < 0 || hr.status != 0)
		goto refused;
	memcpy(proof, hr.nonce, sizeof(proof));
	if (tp_send(s, &pr, sizeof(pr)) < 0 || tp_recv(s, &st, sizeof(st)) < 0 || st.type != WIRE_T_PROVE || st.status != 0 ||
	    st.tablen > sizeof(tab) || st.len != sizeof(st) + st.tablen || tp_recv(s, tab, st.tablen) < 0 || take_tables(&st, tab) < 0)
		goto refused;
	memset(proof, 0, sizeof(proof));
	if (fast_setup_locked(s) < 0)
		goto refused;
	__atomic_store_n(&ctl_fd, s, __ATOMIC_RELAXED);
	ctl_pid = pid;
	state_pid = pid;
	ctl_session = st.session;
	/* mappings inherited across fork are ours too */
	for (int i = 0; i < nregions; i++)
		send_region_locked(&regions[i]);
	return 0;
refused:
	raw_close(s);
	errno = EACCES;
	return -1;
}

static int ctl_ensure_locked(void)
{
	return ctl_ensure_pid_locked(getpid());
}

/* A control request and its reply with a variable tail (see ctl_call_locked); a broken connection is dropped (EIO). */
static int ctl_rpc_tail_locked(const void *req, size_t reqlen, void *rep, size_t replen, void *tail, size_t tailmax,
			       size_t *taillen)
{
	if (ctl_ensure_locked() < 0)
		return -1;
	if (ctl_call_locked(req, reqlen, rep, replen, tail, tailmax, taillen) < 0) {
		ctl_drop_locked();
		errno = EIO;
		return -1;
	}
	return 0;
}

static int ctl_rpc_locked(const void *req, size_t reqlen, void *rep, size_t replen)
{
	return ctl_rpc_tail_locked(req, reqlen, rep, replen, NULL, 0, NULL);
}

/* Wait until the server has processed every hang-up so far; `forget`: a file we no longer hold. */
static void emu_sync(uint64_t forget)
{
	REQ(SYNC, sync);
	q.forget = forget;
	struct wire_rep_status s;
	lock(&ctl_mu);
	ctl_rpc_locked(&q, sizeof(q), &s, sizeof(s));
	unlock(&ctl_mu);
}

/* A file fd was closed: finish its teardown before close() returns (and tell the server if it was our last fd of it). */
static void closed_file(uint32_t kind, uint64_t token, int fd)
{
	if (kind == 0 || LOCAL_KIND(kind))
		return;
	lock(&tab_mu);
	int still = token_held_locked(token, fd);
	unlock(&tab_mu);
	emu_sync(still ? 0 : token);
}

/* ---- private debugfs ------------------------------------------------------------------- */
static char debugfs_dir[256];

static void put_file(const char *dir, const char *name, const char *content)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	int fd = (int)syscall(SYS_openat, AT_FDCWD, p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd >= 0) {
		(void)!syscall(SYS_write, fd, content, strlen(content));
		raw_close(fd);
	}
}

static const char *debugfs(void)
{
	lock(&debugfs_mu);
	if (!debugfs_dir[0]) {
		const char *env = getenv("IOMMUFD_EMU_DEBUGFS");
		char d[256];
		if (env && *env) {
			snprintf(d, sizeof(d), "%s", env);
			mkdir(d, 0700);
		} else {
			snprintf(d, sizeof(d), "/tmp/iommufd-emu-debugfs.XXXXXX");
			if (!mkdtemp(d))
				d[0] = 0;
		}
		if (d[0]) {
			char sub[400];
			snprintf(sub, sizeof(sub), "%s/failslab", d);
			mkdir(sub, 0755);
			snprintf(sub, sizeof(sub), "%s/fail_page_alloc", d);
			mkdir(sub, 0755);
			snprintf(sub, sizeof(sub), "%s/fail_iommufd", d);
			mkdir(sub, 0755);
			put_file(d, "failslab/ignore-gfp-wait", "Y\n");
			put_file(d, "failslab/verbose", "1\n");
			put_file(d, "fail_page_alloc/ignore-gfp-wait", "Y\n");
			put_file(d, "fail_page_alloc/ignore-gfp-highmem", "Y\n");
			put_file(d, "failslab/cache-filter", "N\n");
			put_file(d, "fail_page_alloc/min-order", "1\n");
			put_file(d, "fail_page_alloc/verbose", "1\n");
			put_file(d, "fail_iommufd/verbose", "1\n");
			snprintf(debugfs_dir, sizeof(debugfs_dir), "%s", d);
		}
	}
	unlock(&debugfs_mu);
	return debugfs_dir[0] ? debugfs_dir : NULL;
}

/* A debugfs file's first bytes (0 if absent). */
static int get_file(const char *dir, const char *name, char *buf, size_t n)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	int fd = (int)syscall(SYS_openat, AT_FDCWD, p, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t r = syscall(SYS_read, fd, buf, n - 1);
	raw_close(fd);
	if (r <= 0)
		return 0;
	buf[r] = 0;
	return 1;
}

/* A debugfs bool as the kernel parses it (kstrtobool: y/Y/1/on true, n/N/0/off false). */
static int get_bool(const char *dir, const char *name, int dflt)
{
	char b[8];
	if (!get_file(dir, name, b, sizeof(b)))
		return dflt;
	if (b[0] == 'y' || b[0] == 'Y' || b[0] == '1' || (b[0] == 'o' && b[1] == 'n'))
		return 1;
	if (b[0] == 'n' || b[0] == 'N' || b[0] == '0' || (b[0] == 'o' && b[1] == 'f'))
		return 0;
	return dflt;
}

/* The fault-injection switches of our debugfs, as the wire's FAULT bits (sent with armed calls). */
static uint32_t fault_bits(void)
{
	const char *d = debugfs();
	if (!d)
		return 0; /* the kernel's defaults */
	char b[16];
	unsigned order = get_file(d, "fail_page_alloc/min-order", b, sizeof(b)) ? (unsigned)atoi(b) : 1;
	return WIRE_FAULT_PRESENT
		| (get_bool(d, "failslab/ignore-gfp-wait", 1) ? WIRE_FAULT_SLAB_WAIT : 0)
		| (get_bool(d, "failslab/cache-filter", 0) ? WIRE_FAULT_SLAB_CACHE : 0)
		| (get_bool(d, "fail_page_alloc/ignore-gfp-wait", 1) ? WIRE_FAULT_PAGE_WAIT : 0)
		| (get_bool(d, "fail_page_alloc/ignore-gfp-highmem", 1) ? WIRE_FAULT_PAGE_HIGHMEM : 0)
		| ((order & 0xff) << WIRE_FAULT_MIN_ORDER_SHIFT);
}

/* "/sys/kernel/debug[/rest]" -> private dir; returns path to use. */
static const char *redirect_debugfs(const char *upath, char *buf, size_t n)
{
	static const char pre[] = "/sys/kernel/debug";
	char pb[SAFE_PATH_MAX];
	const char *path = safe_path(upath, pb);
	if (!path || strncmp(path, pre, sizeof(pre) - 1) != 0)
		return upath;
	const char *rest = path + sizeof(pre) - 1;
	if (*rest && *rest != '/')
		return path;
	const char *d = debugfs();
	if (!d)
		return upath;
	snprintf(buf, n, "%s%s", d, rest);
	return buf;
}

/* ---- the machine's view: /sys/bus/pci/devices/<BDF>, /sys/kernel/iommu_groups, /dev/vfio ----
 * The server writes the emulated machine's sysfs entries and device nodes as a real
 * directory tree (src/server/sysfs.ts) and tells us where (MACHINE). Paths under the
 * prefixes the tree owns (its `owned` file) are served from it, so readlink, opendir,
 * stat and open+read are the kernel's own calls on real files; every other path is
 * untouched. A regular file under dev/vfio is a device node: opening it is an OPEN. */
static char machine_dir[400];
static size_t machine_dir_len;
#define NOWNED 128
static char owned[NOWNED][128];
static int nowned;
static int machine_known; /* 1: machine_dir and owned[] are loaded (never changes after) */
static int server_present(void);
static int ctl_rpc_tail_locked(const void *req, size_t reqlen, void *rep, size_t replen, void *tail, size_t tailmax,
			       size_t *taillen);

/* Could `p` (absolute) be in the machine's view? (cheap, before asking the server) */
static int machine_candidate(const char *p)
{
	return strncmp(p, "/dev/vfio", 9) == 0 || strncmp(p, "/sys/kernel/iommu_groups", 24) == 0 ||
	       strncmp(p, "/sys/bus/pci/", 13) == 0 || strncmp(p, "/sys/devices/pci", 16) == 0;
}

/* Ask the server where its machine's view is (once per server; ctl_mu taken here). */
static int machine_load(void)
{
	if (__atomic_load_n(&machine_known, __ATOMIC_ACQUIRE))
		return 1;
	if (!getenv("IOMMUFD_EMU_SOCKET") && !server_present())
		return 0;
	int e = errno, ok = 0;
	lock(&ctl_mu);
	if (machine_known) {
		unlock(&ctl_mu);
		return 1;
	}
	struct wire_req_machine q = { .len = sizeof(q), .type = WIRE_T_MACHINE };
	struct wire_rep_machine r;
	char dir[sizeof(machine_dir)];
	size_t n = 0;
	if (ctl_rpc_tail_locked(&q, sizeof(q), &r, sizeof(r), dir, sizeof(dir) - 1, &n) == 0) {
		if (n != r.pathlen) {
			ctl_drop_locked();
		} else if (r.status == 0 && r.pathlen > 0) {
			dir[r.pathlen] = 0;
			char p[sizeof(dir) + 16], text[NOWNED * 128];
			snprintf(p, sizeof(p), "%s/owned", dir);
			int fd = (int)syscall(SYS_openat, AT_FDCWD, p, O_RDONLY | O_CLOEXEC);
			ssize_t n = 0, k;
			while (fd >= 0 && n < (ssize_t)sizeof(text) - 1 && (k = syscall(SYS_read, fd, text + n, sizeof(text) - 1 - (size_t)n)) > 0)
				n += k;
			if (fd >= 0)
				raw_close(fd);
			text[n > 0 ? n : 0] = 0;
			nowned = 0;
			for (char *l = text, *nl; *l && nowned < NOWNED; l = nl + 1) {
				nl = strchr(l, '\n');
				if (!nl)
					break;
				*nl = 0;
				if (*l == '/' && strlen(l) < sizeof(owned[0]))
					snprintf(owned[nowned++], sizeof(owned[0]), "%s", l);
			}
			snprintf(machine_dir, sizeof(machine_dir), "%s", dir);
			machine_dir_len = strlen(machine_dir);
			__atomic_store_n(&machine_known, 1, __ATOMIC_RELEASE);
			ok = 1;
		}
	}
	unlock(&ctl_mu);
	errno = e;
	return ok;
}

/* Is absolute `p` under a prefix the machine's view owns? */
static int machine_owns(const char *p)
{
	if (!machine_candidate(p) || !machine_load())
		return 0;
	for (int i = 0; i < nowned; i++) {
		size_t l = strlen(owned[i]);
		if (strncmp(p, owned[i], l) == 0 && (p[l] == 0 || p[l] == '/'))
			return 1;
	}
	return 0;
}

/* A device node's numbers: misc 10:196 (the vfio container), vfio 243:N (groups), vfio-dev 511:N (cdevs). */
static uint64_t node_rdev(const char *node)
{
	unsigned minor = 0;
	const char *d = strrchr(node, '/');
	if (d)
		minor = (unsigned)strtoul(d + 1 + (d[1] == 'v' ? 4 : 0), NULL, 10);
	return strcmp(node, "vfio/vfio") == 0 ? makedev(10, 196)
	       : strncmp(node, "vfio/devices/", 13) == 0 ? makedev(511, minor) : makedev(243, minor);
}

/* A device node of the view (a regular file under <dir>/dev/vfio): 1 and its path under /dev in `node`. */
static int machine_node(const char *abs, const char *redirected, char *node, size_t n)
{
	struct stat st;
	if (strncmp(abs, "/dev/vfio/", 10) != 0 || syscall(SYS_newfstatat, AT_FDCWD, redirected, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
	    !S_ISREG(st.st_mode) || strlen(abs + 5) >= n)
		return 0;
	snprintf(node, n, "%s", abs + 5);
	return 1;
}

/* A path relative to dirfd (or the cwd) that lies inside the view: its absolute name as the program sees it. */
static const char *machine_relative(int dirfd, const char *path, char *buf, size_t n)
{
	if (!path || path[0] == '/' || !__atomic_load_n(&machine_known, __ATOMIC_ACQUIRE))
		return NULL;
	char link[64], dir[sizeof(machine_dir) + 256];
	if (dirfd == AT_FDCWD)
		snprintf(link, sizeof(link), "/proc/self/cwd");
	else
		snprintf(link, sizeof(link), "/proc/self/fd/%d", dirfd);
	ssize_t d = readlink(link, dir, sizeof(dir) - 1);
	if (d <= 0 || (size_t)d < machine_dir_len || strncmp(dir, machine_dir, machine_dir_len) != 0 ||
	    (dir[machine_dir_len] != '/' && (size_t)d != machine_dir_len))
		return NULL;
	dir[d] = 0;
	if ((size_t)d - machine_dir_len + 1 + strlen(path) + 1 > n)
		return NULL;
	snprintf(buf, n, "%s/%s", dir + machine_dir_len, path);
	return buf;
}

/*
 * Where a path the program names really is: its copy in the machine's view, or
 * the private debugfs, or itself. *node is set (to the node's path under /dev)
 * for a device node of the view.
 */
static const char *redirect_path(const char *upath, char *buf, size_t n, char *node, size_t nodelen)
{
	char pb[SAFE_PATH_MAX];
	const char *path = safe_path(upath, pb);
	if (node)
		node[0] = 0;
	if (!path)
		return upath;
	if (path[0] == '/' && machine_owns(path)) {
		snprintf(buf, n, "%s%s", machine_dir, path);
		if (node)
			machine_node(path, buf, node, nodelen);
		return buf;
	}
	return redirect_debugfs(upath, buf, n);
}

/* ---- path classification --------------------------------------------------------------- */
static int is_iommu(const char *p) { return p && strcmp(p, "/dev/iommu") == 0; }

static int parse_num(const char **p, long *out)
{
	char *end;
	if (**p < '0' || **p > '9')
		return 0;
	*out = strtol(*p, &end, 10);
	*p = end;
	return 1;
}

/* The task a fail-nth path names, or 0 if the path is not a fail-nth file. */
static pid_t failnth_task(const char *p)
{
	if (!p || strncmp(p, "/proc/", 6) != 0)
		return 0;
	const char *s = p + 6;
	pid_t task;
	long n;
	if (strncmp(s, "thread-self/", 12) == 0) {
		s += 12;
		task = my_tid();
		return strcmp(s, "fail-nth") == 0 ? task : 0;
	}
	if (strncmp(s, "self/", 5) == 0) {
		s += 5;
		task = getpid();
	} else if (parse_num(&s, &n) && *s == '/') {
		s++;
		task = (pid_t)n;
	} else {
		return 0;
	}
	if (strcmp(s, "fail-nth") == 0)
		return task;
	if (strncmp(s, "task/", 5) != 0)
		return 0;
	s += 5;
	if (!parse_num(&s, &n))
		return 0;
	return strcmp(s, "/fail-nth") == 0 ? (pid_t)n : 0;
}

/* "iommu" relative to a directory that is /dev */
static int is_iommu_at(int dirfd, const char *path)
{
	if (!path || strcmp(path, "iommu") != 0)
		return 0;
	char link[64], dir[16];
	if (dirfd == AT_FDCWD)
		snprintf(link, sizeof(link), "/proc/self/cwd");
	else
		snprintf(link, sizeof(link), "/proc/self/fd/%d", dirfd);
	ssize_t n = readlink(link, dir, sizeof(dir) - 1);
	if (n <= 0)
		return 0;
	dir[n] = 0;
	return strcmp(dir, "/dev") == 0;
}

/* ---- open ---------------------------------------------------------------------------------- */
/* open() of /dev/iommu (node NULL) or of a device node of the machine ("vfio/3", "vfio/devices/vfio0"). */
static int emu_open_node(int flags, const char *node)
{
	pid_t tid = my_tid();
	lock(&ctl_mu);
	int s = -1;
	uint64_t ino = 0;
	struct wire_rep_open r;
	if (ctl_ensure_locked() < 0 || (s = claim_socket(flags & O_CLOEXEC, &ino)) < 0) {
		unlock(&ctl_mu);
		return -1;
	}
	struct { struct wire_req_open q; char path[WIRE_NODE_PATH_MAX]; } __attribute__((packed)) m;
	struct wire_req_open q = { .len = sizeof(q), .type = WIRE_T_OPEN };
	CLAIM(q, s, ino);
	q.tid = (uint32_t)tid;
	q.failnth = failnth_get(tid);
	q.fault = q.failnth ? fault_bits() : 0;
	q.node = node ? WIRE_NODE_PATH : WIRE_NODE_IOMMU;
	q.flags = (uint32_t)flags;
	q.pathlen = node ? (uint32_t)strnlen(node, WIRE_NODE_PATH_MAX) : 0;
	q.len = (uint32_t)sizeof(q) + q.pathlen;
	m.q = q;
	if (q.pathlen)
		memcpy(m.path, node, q.pathlen);
	if (tp_send(s, &m, q.len) < 0 || tp_recv(s, &r, sizeof(r)) < 0 || r.len != sizeof(r) || r.type != WIRE_T_OPEN) {
		raw_close(s);
		unlock(&ctl_mu);
		errno = EIO;
		return -1;
	}
	unlock(&ctl_mu);
	if (q.failnth)
		failnth_set(tid, r.failnth);
	if (r.err < 0 || s >= FD_MAX) {
		raw_close(s);
		errno = r.err < 0 ? -r.err : EMFILE;
		return -1;
	}
	set_ent(s, r.kind ? r.kind : WIRE_KIND_IOMMUFD, r.token, 0);
	if (node) {
		lock(&tab_mu);
		fdtab[s].rdev = node_rdev(node);
		unlock(&tab_mu);
	}
	return s;
}

/*
 * A fail-nth file: backed by a memfd reopened with the caller's access mode
 * (so F_GETFL, O_RDONLY/O_WRONLY and the file position, shared by dup and
 * fork, are a real open file's), the counter kept in our per-thread table.
 */
static int emu_open_failnth(pid_t task, int flags)
{
	int m = (int)syscall(SYS_memfd_create, "iommufd-emu-fail-nth", MFD_CLOEXEC);
	if (m < 0)
		return -1;
	m = move_high(m);
	char p[64];
	snprintf(p, sizeof(p), "/proc/self/fd/%d", m);
	int fd = (int)syscall(SYS_openat, AT_FDCWD, p, (flags & (O_ACCMODE | O_CLOEXEC)));
	if (fd < 0) {
		int e = errno;
		raw_close(m);
		errno = e;
		return -1;
	}
	raw_close(m);
	if (fd >= FD_MAX) {
		raw_close(fd);
		errno = EMFILE;
		return -1;
	}
	set_ent(fd, K_FAILNTH, 0, task);
	return fd;
}

/*
 * ---- /proc/<pid>/status: VmPin and VmLck count the emulator's pins ----------------------
 * The kernel counts pages iommufd pins in the mm's pinned_vm (VmPin) and, in per-process
 * accounting, locked_vm (VmLck). Opening a status file read-only gives a memfd holding the
 * real file's text with the server's counts added to those two lines; every other line is
 * the real one. A read()/pread() at offset 0 regenerates it (seq_file rereads there).
 */
/* Is `p` (absolute) a status file: /proc/{self,thread-self,N}/[task/T/]status. */
static int is_status_path(const char *p)
{
	if (!p || strncmp(p, "/proc/", 6) != 0)
		return 0;
	const char *s = p + 6;
	long n;
	if (strncmp(s, "thread-self/", 12) == 0)
		return strcmp(s + 12, "status") == 0;
	if (strncmp(s, "self/", 5) == 0)
		s += 5;
	else if (parse_num(&s, &n) && *s == '/')
		s++;
	else
		return 0;
	if (strcmp(s, "status") == 0)
		return 1;
	if (strncmp(s, "task/", 5) != 0)
		return 0;
	s += 5;
	return parse_num(&s, &n) && strcmp(s, "/status") == 0;
}

/* A status file named relative to dirfd (or the cwd): its absolute path in buf, else NULL. */
static const char *status_at(int dirfd, const char *path, char *buf, size_t n)
{
	if (!path)
		return NULL;
	if (path[0] == '/')
		return is_status_path(path) ? path : NULL;
	size_t pl = strlen(path);
	if (pl < 6 || strcmp(path + pl - 6, "status") != 0 || (pl > 6 && path[pl - 7] != '/'))
		return NULL;
	char link[64];
	if (dirfd == AT_FDCWD)
		snprintf(link, sizeof(link), "/proc/self/cwd");
	else
		snprintf(link, sizeof(link), "/proc/self/fd/%d", dirfd);
	ssize_t d = readlink(link, buf, n - 1);
	if (d <= 0 || (size_t)d + 1 + pl + 1 > n)
		return NULL;
	buf[d] = 0;
	snprintf(buf + d, n - (size_t)d, "/%s", path);
	return is_status_path(buf) ? buf : NULL;
}

/* The value of a "Name:\tN" line of a status text (-1 if absent). */
static long status_field(const char *text, const char *name)
{
	size_t nl = strlen(name);
	for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL)
		if (strncmp(l, name, nl) == 0)
			return strtol(l + nl, NULL, 10);
	return -1;
}

/* Rewrite line "Name:\t  N kB" of `in` with N + add_kb (unsigned, as the kernel's counters) into out. */
static size_t status_patch(const char *in, char *out, size_t cap, const char *name, uint64_t add_kb)
{
	size_t nl = strlen(name), o = 0;
	for (const char *l = in; *l;) {
		const char *e = strchr(l, '\n');
		size_t len = e ? (size_t)(e - l) + 1 : strlen(l);
		if (strncmp(l, name, nl) == 0 && o + 64 < cap) {
			uint64_t v = strtoull(l + nl, NULL, 10) + add_kb;
			o += (size_t)snprintf(out + o, cap - o, "%s\t%8llu kB\n", name, (unsigned long long)v);
		} else if (o + len < cap) {
			memcpy(out + o, l, len);
			o += len;
		}
		l += len;
	}
	out[o < cap ? o : cap - 1] = 0;
	return o;
}

#define STATUS_MAX 16384
/* The patched text of the status file at `path` into out (STATUS_MAX bytes); its length or -1 (errno). */
static ssize_t status_text(const char *path, char *out, pid_t *tgid, pid_t *tid)
{
	static __thread char raw[STATUS_MAX], tmp[STATUS_MAX];
	int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t n = 0;
	ssize_t r;
	while (n < STATUS_MAX - 1 && (r = syscall(SYS_read, fd, raw + n, STATUS_MAX - 1 - n)) > 0)
		n += (size_t)r;
	raw_close(fd);
	raw[n] = 0;
	*tgid = (pid_t)status_field(raw, "Tgid:");
	*tid = (pid_t)status_field(raw, "Pid:");
	uint64_t pinned = 0, locked = 0;
	if (*tgid > 0) {
		REQ(PROCSTAT, procstat);
		q.pid = (uint32_t)*tgid;
		struct wire_rep_procstat rep;
		int e = errno;
		lock(&ctl_mu);
		if (ctl_rpc_locked(&q, sizeof(q), &rep, sizeof(rep)) == 0 && rep.status == 0) {
			pinned = rep.pinned;
			locked = rep.locked;
		}
		unlock(&ctl_mu);
		errno = e;
	}
	unsigned shift = 0;
	for (long ps = sysconf(_SC_PAGESIZE) >> 10; ps > 1; ps >>= 1)
		shift++;
	status_patch(raw, tmp, STATUS_MAX, "VmPin:", pinned << shift);
	return (ssize_t)status_patch(tmp, out, STATUS_MAX, "VmLck:", locked << shift);
}

static int memfd_with(const char *text, size_t len)
{
	int m = (int)syscall(SYS_memfd_create, "iommufd-emu-status", MFD_CLOEXEC);
	if (m < 0)
		return -1;
	for (size_t done = 0; done < len;) {
		ssize_t w = syscall(SYS_write, m, text + done, len - done);
		if (w <= 0) {
			raw_close(m);
			return -1;
		}
		done += (size_t)w;
	}
	return m;
}

static int emu_open_status(const char *path, int flags)
{
	static __thread char text[STATUS_MAX];
	pid_t tgid, tid;
	ssize_t len = status_text(path, text, &tgid, &tid);
	if (len < 0)
		return -1;
	int m = memfd_with(text, (size_t)len);
	if (m < 0)
		return -1;
	char p[64];
	snprintf(p, sizeof(p), "/proc/self/fd/%d", m);
	int fd = (int)syscall(SYS_openat, AT_FDCWD, p, O_RDONLY | (flags & O_CLOEXEC));
	int e = errno;
	raw_close(m);
	if (fd < 0)
		return errno = e, -1;
	/* token: the process, tid: the task, for the rereads at offset 0 */
	set_ent(fd, K_STATUS, (uint64_t)tgid, tid);
	return fd;
}

/* A read at offset 0 of a status fd: its text as of now. */
static void status_refresh(int fd, const struct fdent *e, int64_t off, int positional)
{
	int64_t pos = positional ? off : (int64_t)syscall(SYS_lseek, fd, 0, SEEK_CUR);
	if (pos != 0)
		return;
	static __thread char text[STATUS_MAX];
	char path[64], self[64];
	snprintf(path, sizeof(path), "/proc/%u/task/%d/status", (unsigned)e->token, e->tid);
	pid_t tgid, tid;
	ssize_t len = status_text(path, text, &tgid, &tid);
	if (len < 0)
		return; /* the task is gone: keep what was read */
	snprintf(self, sizeof(self), "/proc/self/fd/%d", fd);
	int w = (int)syscall(SYS_openat, AT_FDCWD, self, O_WRONLY | O_TRUNC | O_CLOEXEC);
	if (w < 0)
		return;
	for (ssize_t done = 0; done < len;) {
		ssize_t r = syscall(SYS_pwrite64, w, text + done, (size_t)(len - done), (off_t)done);
		if (r <= 0)
			break;
		done += r;
	}
	raw_close(w);
}

/* open(2) and friends: an emulated node or file, or -2 (not ours: the caller opens it). */
static int emu_open_path(int dirfd, const char *upath, int flags)
{
	char pb[SAFE_PATH_MAX];
	const char *path = safe_path(upath, pb);
	if (!path)
		return -2;
	if (is_iommu(path) || is_iommu_at(dirfd, path))
		return emu_open_node(flags, NULL);
	char rb[SAFE_PATH_MAX], nb[SAFE_PATH_MAX + 400], node[WIRE_NODE_PATH_MAX];
	const char *abs = path[0] == '/' ? path : machine_relative(dirfd, path, rb, sizeof(rb));
	if (abs && machine_owns(abs)) {
		snprintf(nb, sizeof(nb), "%s%s", machine_dir, abs);
		if (machine_node(abs, nb, node, sizeof(node))) {
			if (flags & (O_DIRECTORY | O_PATH))
				return -2; /* the kernel answers (ENOTDIR) on the tree's file, or gives an O_PATH fd */
			return emu_open_node(flags, node);
		}
	}
	pid_t t = failnth_task(path);
	if (t)
		return emu_open_failnth(t, flags);
	char sb[SAFE_PATH_MAX];
	const char *sp = (flags & O_ACCMODE) == O_RDONLY && !(flags & (O_DIRECTORY | O_PATH)) ? status_at(dirfd, path, sb, sizeof(sb)) : NULL;
	if (sp)
		return emu_open_status(sp, flags);
	return -2;
}

#define GET_MODE(flags) \
	mode_t mode = 0; \
	if ((flags) & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }

EXPORT int open(const char *path, int flags, ...)
{
	GET_MODE(flags);
	int r = emu_open_path(AT_FDCWD, path, flags);
	if (r != -2)
		return r;
	char buf[SAFE_PATH_MAX + 400];
	RESOLVE(open);
	return real_open(redirect_path(path, buf, sizeof(buf), NULL, 0), flags, mode);
}

EXPORT int open64(const char *path, int flags, ...)
{
	GET_MODE(flags);
	int r = emu_open_path(AT_FDCWD, path, flags);
	if (r != -2)
		return r;
	char buf[SAFE_PATH_MAX + 400];
	RESOLVE(open64);
	if (!real_open64) { RESOLVE(open); real_open64 = real_open; }
	return real_open64(redirect_path(path, buf, sizeof(buf), NULL, 0), flags, mode);
}

EXPORT int __open_2(const char *path, int flags)
{
	int r = emu_open_path(AT_FDCWD, path, flags);
	if (r != -2)
		return r;
	char buf[SAFE_PATH_MAX + 400];
	RESOLVE(__open_2);
	return real___open_2(redirect_path(path, buf, sizeof(buf), NULL, 0), flags);
}

EXPORT int __open64_2(const char *path, int flags)
{
	int r = emu_open_path(AT_FDCWD, path, flags);
	if (r != -2)
		return r;
	char buf[SAFE_PATH_MAX + 400];
	RESOLVE(__open64_2);
	return real___open64_2(redirect_path(path, buf, sizeof(buf), NULL, 0), flags);
}

static int do_openat(int dirfd, const char *path, int flags, mode_t mode, int (*real)(int, const char *, int, ...))
{
	int r = emu_open_path(dirfd, path, flags);
	if (r != -2)
		return r;
	char buf[SAFE_PATH_MAX + 400];
	path = redirect_path(path, buf, sizeof(buf), NULL, 0);
	return real(dirfd, path, flags, mode);
}

EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
	GET_MODE(flags);
	RESOLVE(openat);
	return do_openat(dirfd, path, flags, mode, real_openat);
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
	GET_MODE(flags);
	RESOLVE(openat64);
	if (!real_openat64) { RESOLVE(openat); real_openat64 = real_openat; }
	return do_openat(dirfd, path, flags, mode, real_openat64);
}

EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
	RESOLVE(openat);
	return do_openat(dirfd, path, flags, 0, real_openat);
}

EXPORT int __openat64_2(int dirfd, const char *path, int flags)
{
	RESOLVE(openat);
	return do_openat(dirfd, path, flags, 0, real_openat);
}

static FILE *do_fopen(const char *path, const char *mode, FILE *(*real)(const char *, const char *))
{
	char pb[SAFE_PATH_MAX];
	const char *sp = safe_path(path, pb);
	char sb[SAFE_PATH_MAX], rb[SAFE_PATH_MAX + 400], node[WIRE_NODE_PATH_MAX];
	redirect_path(path, rb, sizeof(rb), node, sizeof(node));
	if (sp && (is_iommu(sp) || node[0] || failnth_task(sp) || (mode[0] == 'r' && !strchr(mode, '+') && status_at(AT_FDCWD, sp, sb, sizeof(sb))))) {
		int flags = (strchr(mode, '+') ? O_RDWR : (mode[0] == 'r' ? O_RDONLY : O_WRONLY));
		if (strchr(mode, 'e'))
			flags |= O_CLOEXEC;
		int fd = emu_open_path(AT_FDCWD, path, flags);
		if (fd < 0)
			return NULL;
		FILE *f = fdopen(fd, mode);
		if (!f)
			close(fd);
		return f;
	}
	char buf[SAFE_PATH_MAX + 400];
	path = redirect_path(path, buf, sizeof(buf), NULL, 0);
	return real(path, mode);
}

EXPORT FILE *fopen(const char *path, const char *mode)
{
	RESOLVE(fopen);
	return do_fopen(path, mode, real_fopen);
}

EXPORT FILE *fopen64(const char *path, const char *mode)
{
	RESOLVE(fopen64);
	if (!real_fopen64) { RESOLVE(fopen); real_fopen64 = real_fopen; }
	return do_fopen(path, mode, real_fopen64);
}

/* glibc's fclose closes the fd internally, past close(): catch it here */
EXPORT int fclose(FILE *f)
{
	RESOLVE(fclose);
	int fd = f ? fileno(f) : -1;
	struct fdent e = { 0 };
	if (ent_get(fd, &e)) {
		lock(&tab_mu);
		clear_ent_locked(fd);
		unlock(&tab_mu);
	}
	int r = real_fclose(f);
	closed_file(e.kind, e.token, fd);
	return r;
}

/*
 * /sys/bus/pci/devices lists the host's functions and the machine's: the
 * directory is not the view's (host functions stay reachable), so its
 * listing is merged: the real entries, then the view's (a DIR of
 * <view>/sys/bus/pci/devices read after the real one ends).
 */
static pthread_mutex_t dirs_mu = PTHREAD_MUTEX_INITIALIZER;
#define NMERGED 16
static struct { DIR *d, *ours; int phase; } merged[NMERGED];
static int nmerged;

static int merged_find_locked(DIR *d)
{
	for (int i = 0; i < nmerged; i++)
		if (merged[i].d == d)
			return i;
	return -1;
}

static void merge_pci_devices(const char *upath, DIR *d)
{
	char pb[SAFE_PATH_MAX];
	const char *p = safe_path(upath, pb);
	if (!p || (strcmp(p, "/sys/bus/pci/devices") != 0 && strcmp(p, "/sys/bus/pci/devices/") != 0) || !machine_load())
		return;
	char ours[SAFE_PATH_MAX + 400];
	snprintf(ours, sizeof(ours), "%s/sys/bus/pci/devices", machine_dir);
	DIR *o = real_opendir(ours);
	if (!o)
		return;
	lock(&dirs_mu);
	if (nmerged < NMERGED) {
		merged[nmerged].d = d;
		merged[nmerged].ours = o;
		merged[nmerged].phase = 0;
		__atomic_store_n(&nmerged, nmerged + 1, __ATOMIC_RELAXED);
		o = NULL;
	}
	unlock(&dirs_mu);
	if (o) {
		static int (*real_closedir)(DIR *);
		if (!real_closedir)
			real_closedir = (int (*)(DIR *))dlsym(RTLD_NEXT, "closedir");
		real_closedir(o);
	}
}

EXPORT DIR *opendir(const char *path)
{
	char buf[SAFE_PATH_MAX + 400];
	RESOLVE(opendir);
	DIR *d = real_opendir(redirect_path(path, buf, sizeof(buf), NULL, 0));
	if (d)
		merge_pci_devices(path, d);
	return d;
}

/* readdir of /sys/bus/pci/devices: the host's functions, then the machine's (which replace a host one of the same BDF). */
static struct dirent *merged_next(DIR *d, struct dirent *(*real)(DIR *))
{
	lock(&dirs_mu);
	int i = merged_find_locked(d);
	if (i < 0) {
		unlock(&dirs_mu);
		return real(d);
	}
	struct dirent *e;
	if (!merged[i].phase) {
		while ((e = real(d))) {
			char p[SAFE_PATH_MAX + 400];
			snprintf(p, sizeof(p), "%s/sys/bus/pci/devices/%s", machine_dir, e->d_name);
			if (e->d_name[0] == '.' || syscall(SYS_newfstatat, AT_FDCWD, p, &(struct stat){ 0 }, AT_SYMLINK_NOFOLLOW) != 0)
				break; /* a host function (or . and ..) */
		}
		if (e) {
			unlock(&dirs_mu);
			return e;
		}
		merged[i].phase = 1;
	}
	while ((e = real(merged[i].ours)) && e->d_name[0] == '.')
		;
	unlock(&dirs_mu);
	return e;
}

EXPORT struct dirent *readdir(DIR *d)
{
	static struct dirent *(*real)(DIR *);
	if (!real)
		real = (struct dirent *(*)(DIR *))dlsym(RTLD_NEXT, "readdir");
	return __atomic_load_n(&nmerged, __ATOMIC_RELAXED) ? merged_next(d, real) : real(d);
}

EXPORT struct dirent64 *readdir64(DIR *d)
{
	static struct dirent *(*real)(DIR *);
	if (!real)
		real = (struct dirent *(*)(DIR *))dlsym(RTLD_NEXT, "readdir64");
	/* x86-64: struct dirent and struct dirent64 are the same layout */
	return (struct dirent64 *)(__atomic_load_n(&nmerged, __ATOMIC_RELAXED) ? merged_next(d, real) : real(d));
}

EXPORT void rewinddir(DIR *d)
{
	static void (*real)(DIR *);
	if (!real)
		real = (void (*)(DIR *))dlsym(RTLD_NEXT, "rewinddir");
	if (__atomic_load_n(&nmerged, __ATOMIC_RELAXED)) {
		lock(&dirs_mu);
		int i = merged_find_locked(d);
		if (i >= 0) {
			merged[i].phase = 0;
			real(merged[i].ours);
		}
		unlock(&dirs_mu);
	}
	real(d);
}

EXPORT int closedir(DIR *d)
{
	static int (*real)(DIR *);
	if (!real)
		real = (int (*)(DIR *))dlsym(RTLD_NEXT, "closedir");
	if (__atomic_load_n(&nmerged, __ATOMIC_RELAXED)) {
		lock(&dirs_mu);
		int i = merged_find_locked(d);
		if (i >= 0) {
			real(merged[i].ours);
			merged[i] = merged[--nmerged];
		}
		unlock(&dirs_mu);
	}
	return real(d);
}

/* Existence checks of /dev/iommu (libvirt-style probes): true while a server answers. */
static int server_present(void)
{
	struct stat st;
	return raw_stat(socket_path(), &st) == 0 && S_ISSOCK(st.st_mode);
}

static int is_iommu_user(const char *upath)
{
	char pb[SAFE_PATH_MAX];
	return is_iommu(safe_path(upath, pb));
}

static int is_iommu_at_user(int dirfd, const char *upath)
{
	char pb[SAFE_PATH_MAX];
	const char *p = safe_path(upath, pb);
	return p && (is_iommu(p) || is_iommu_at(dirfd, p));
}

EXPORT int access(const char *path, int mode)
{
	if (is_iommu_user(path) && server_present())
		return (mode & X_OK) ? (errno = EACCES, -1) : 0;
	char buf[SAFE_PATH_MAX + 400];
	RESOLVE(access);
	return real_access(redirect_path(path, buf, sizeof(buf), NULL, 0), mode);
}

EXPORT int euidaccess(const char *path, int mode)
{
	if (is_iommu_user(path) && server_present())
		return (mode & X_OK) ? (errno = EACCES, -1) : 0;
	char buf[SAFE_PATH_MAX + 400];
	RESOLVE(euidaccess);
	return real_euidaccess(redirect_path(path, buf, sizeof(buf), NULL, 0), mode);
}

EXPORT int eaccess(const char *path, int mode)
{
	return euidaccess(path, mode);
}

EXPORT int faccessat(int dirfd, const char *path, int mode, int flags)
{
	if (is_iommu_at_user(dirfd, path) && server_present())
		return (mode & X_OK) ? (errno = EACCES, -1) : 0;
	char buf[SAFE_PATH_MAX + 400];
	RESOLVE(faccessat);
	return real_faccessat(dirfd, redirect_path(path, buf, sizeof(buf), NULL, 0), mode, flags);
}

/*
 * stat, readlink and realpath of the machine's view: the tree's files, device
 * nodes shown as the character devices they are (VFIO group nodes and cdevs).
 */
static void node_stat(struct stat *st, const char *node)
{
	if (!node[0])
		return;
	st->st_mode = S_IFCHR | 0600;
	st->st_size = 0;
	st->st_blocks = 0;
	st->st_rdev = node_rdev(node);
}

/* fstat of an fd an OPEN of a device node returned: the node, not our socket (QEMU checks st_rdev). */
static void fd_stat(int fd, struct stat *st)
{
	struct fdent e;
	if (fd < 0 || !kind_hint(fd) || !ent_get(fd, &e) || !e.rdev)
		return;
	st->st_mode = S_IFCHR | 0600;
	st->st_size = 0;
	st->st_blocks = 0;
	st->st_blksize = 4096;
	st->st_rdev = e.rdev;
}

#define STAT_WRAP(name, call, ...) \
	char buf[SAFE_PATH_MAX + 400], node[WIRE_NODE_PATH_MAX]; \
	const char *q = redirect_path(path, buf, sizeof(buf), node, sizeof(node)); \
	static int (*real)(); \
	if (!real) real = (int (*)())dlsym(RTLD_NEXT, name); \
	if (!real) return errno = ENOSYS, -1; \
	int r = call; \
	if (r == 0) node_stat((struct stat *)st, node); \
	if (r == 0 && EMPTY_AT(path, flags)) fd_stat(dirfd, (struct stat *)st); \
	return r;
#define EMPTY_AT(path, fl) ((fl) & AT_EMPTY_PATH && path && !path[0])
#define FD_STAT_WRAP(name, call) \
	static int (*real)(); \
	if (!real) real = (int (*)())dlsym(RTLD_NEXT, name); \
	if (!real) return errno = ENOSYS, -1; \
	int r = call; \
	if (r == 0) fd_stat(fd, (struct stat *)st); \
	return r;

#define NO_AT int dirfd = AT_FDCWD, flags = 0;
EXPORT int stat(const char *path, struct stat *st) { NO_AT STAT_WRAP("stat", real(q, st)) }
EXPORT int lstat(const char *path, struct stat *st) { NO_AT STAT_WRAP("lstat", real(q, st)) }
EXPORT int stat64(const char *path, struct stat64 *st) { NO_AT STAT_WRAP("stat64", real(q, st)) }
EXPORT int lstat64(const char *path, struct stat64 *st) { NO_AT STAT_WRAP("lstat64", real(q, st)) }
EXPORT int fstat(int fd, struct stat *st) { FD_STAT_WRAP("fstat", real(fd, st)) }
EXPORT int fstat64(int fd, struct stat64 *st) { FD_STAT_WRAP("fstat64", real(fd, st)) }
EXPORT int __fxstat(int ver, int fd, struct stat *st) { FD_STAT_WRAP("__fxstat", real(ver, fd, st)) }
EXPORT int __fxstat64(int ver, int fd, struct stat64 *st) { FD_STAT_WRAP("__fxstat64", real(ver, fd, st)) }
EXPORT int fstatat(int dirfd, const char *path, struct stat *st, int flags) { STAT_WRAP("fstatat", real(dirfd, q, st, flags)) }
EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags) { STAT_WRAP("fstatat64", real(dirfd, q, st, flags)) }
EXPORT int __xstat(int ver, const char *path, struct stat *st) { NO_AT STAT_WRAP("__xstat", real(ver, q, st)) }
EXPORT int __lxstat(int ver, const char *path, struct stat *st) { NO_AT STAT_WRAP("__lxstat", real(ver, q, st)) }
EXPORT int __xstat64(int ver, const char *path, struct stat64 *st) { NO_AT STAT_WRAP("__xstat64", real(ver, q, st)) }
EXPORT int __lxstat64(int ver, const char *path, struct stat64 *st) { NO_AT STAT_WRAP("__lxstat64", real(ver, q, st)) }
EXPORT int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags) { STAT_WRAP("__fxstatat", real(ver, dirfd, q, st, flags)) }
EXPORT int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags) { STAT_WRAP("__fxstatat64", real(ver, dirfd, q, st, flags)) }

EXPORT int statx(int dirfd, const char *path, int flags, unsigned mask, struct statx *stx)
{
	char buf[SAFE_PATH_MAX + 400], node[WIRE_NODE_PATH_MAX];
	static int (*real)(int, const char *, int, unsigned, struct statx *);
	if (!real)
		real = (int (*)(int, const char *, int, unsigned, struct statx *))dlsym(RTLD_NEXT, "statx");
	if (!real)
		return errno = ENOSYS, -1;
	int r = real(dirfd, redirect_path(path, buf, sizeof(buf), node, sizeof(node)), flags, mask, stx);
	if (r != 0)
		return r;
	struct stat st;
	memset(&st, 0, sizeof(st));
	node_stat(&st, node);
	if (EMPTY_AT(path, flags))
		fd_stat(dirfd, &st);
	if (st.st_rdev) {
		stx->stx_mode = (uint16_t)st.st_mode;
		stx->stx_size = 0;
		stx->stx_blocks = 0;
		stx->stx_rdev_major = major(st.st_rdev);
		stx->stx_rdev_minor = minor(st.st_rdev);
	}
	return 0;
}

EXPORT ssize_t readlink(const char *path, char *out, size_t n)
{
	char buf[SAFE_PATH_MAX + 400];
	return syscall(SYS_readlinkat, AT_FDCWD, redirect_path(path, buf, sizeof(buf), NULL, 0), out, n);
}

EXPORT ssize_t readlinkat(int dirfd, const char *path, char *out, size_t n)
{
	char buf[SAFE_PATH_MAX + 400];
	return syscall(SYS_readlinkat, dirfd, redirect_path(path, buf, sizeof(buf), NULL, 0), out, n);
}

/* realpath of a path in the view: resolved in the tree, named as the program sees it. */
EXPORT char *realpath(const char *path, char *resolved)
{
	static char *(*real)(const char *, char *);
	if (!real)
		real = (char *(*)(const char *, char *))dlsym(RTLD_NEXT, "realpath");
	char buf[SAFE_PATH_MAX + 400];
	const char *q = redirect_path(path, buf, sizeof(buf), NULL, 0);
	if (q != buf || !machine_dir_len || strncmp(buf, machine_dir, machine_dir_len) != 0)
		return real(path, resolved);
	char tmp[4096];
	if (!real(q, tmp))
		return NULL;
	const char *in = strncmp(tmp, machine_dir, machine_dir_len) == 0 ? tmp + machine_dir_len : tmp;
	if (!*in)
		in = "/";
	if (!resolved) {
		resolved = malloc(strlen(in) + 1);
		if (!resolved)
			return errno = ENOMEM, NULL;
	}
	strcpy(resolved, in);
	return resolved;
}

/* ---- close / dup ----------------------------------------------------------------------- */
/* The program closes (or dup2s over) our control connection: forget it. */
static void ctl_forget(int fd)
{
	if (fd < 0 || fd != __atomic_load_n(&ctl_fd, __ATOMIC_RELAXED))
		return;
	lock(&ctl_mu);
	if (fd == ctl_fd) {
		slot_drop_locked();
		__atomic_store_n(&ctl_fd, -1, __ATOMIC_RELAXED);
	}
	unlock(&ctl_mu);
}

EXPORT int close(int fd)
{
	RESOLVE(close);
	ctl_forget(fd);
	struct fdent e;
	if (!ent_get(fd, &e))
		return real_close(fd);
	lock(&tab_mu);
	clear_ent_locked(fd);
	unlock(&tab_mu);
	int r = real_close(fd);
	if (r == 0)
		closed_file(e.kind, e.token, fd);
	return r;
}

static void copy_ent(int from, int to)
{
	if (to < 0 || to >= FD_MAX || from < 0 || from >= FD_MAX)
		return;
	lock(&tab_mu);
	fdtab[to] = fdtab[from];
	unlock(&tab_mu);
}

EXPORT int dup(int fd)
{
	RESOLVE(dup);
	int r = real_dup(fd);
	if (r >= 0 && live(fd))
		copy_ent(fd, r);
	return r;
}

static int dup_onto(int fd, int newfd, int r)
{
	/* newfd was closed implicitly */
	if (r < 0)
		return r;
	struct fdent old = { 0 };
	if (newfd != fd && kind_hint(newfd)) {
		lock(&tab_mu);
		old = fdtab[newfd];
		clear_ent_locked(newfd);
		unlock(&tab_mu);
	}
	if (live(fd))
		copy_ent(fd, r);
	closed_file(old.kind, old.token, newfd);
	return r;
}

EXPORT int dup2(int fd, int newfd)
{
	RESOLVE(dup2);
	if (fd != newfd)
		ctl_forget(newfd);
	return dup_onto(fd, newfd, real_dup2(fd, newfd));
}

EXPORT int dup3(int fd, int newfd, int flags)
{
	RESOLVE(dup3);
	ctl_forget(newfd);
	return dup_onto(fd, newfd, real_dup3(fd, newfd, flags));
}

static int do_fcntl(int (*real)(int, int, ...), int fd, int cmd, va_list ap)
{
	/* every fcntl argument is an int, a long or a pointer: pass a word */
	unsigned long arg = va_arg(ap, unsigned long);
	int r = real(fd, cmd, arg);
	if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && live(fd))
		copy_ent(fd, r);
	/* open("/dev/iommu") on a 64-bit kernel sets O_LARGEFILE; our socket does not have it. */
	if (r >= 0 && cmd == F_GETFL && kind_hint(fd) == WIRE_KIND_IOMMUFD && live(fd))
		r |= 00100000;
	return r;
}

EXPORT int fcntl(int fd, int cmd, ...)
{
	RESOLVE(fcntl);
	va_list ap;
	va_start(ap, cmd);
	int r = do_fcntl(real_fcntl, fd, cmd, ap);
	va_end(ap);
	return r;
}

EXPORT int fcntl64(int fd, int cmd, ...)
{
	RESOLVE(fcntl64);
	if (!real_fcntl64) { RESOLVE(fcntl); real_fcntl64 = real_fcntl; }
	va_list ap;
	va_start(ap, cmd);
	int r = do_fcntl(real_fcntl64, fd, cmd, ap);
	va_end(ap);
	return r;
}

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
EXPORT int close_range(unsigned int first, unsigned int last, int flags)
{
	int sync = 0;
	if (!(flags & CLOSE_RANGE_CLOEXEC)) {
		lock(&tab_mu);
		for (unsigned int fd = first; fd <= last && fd < FD_MAX; fd++) {
			uint32_t k = fdtab[fd].kind;
			if (k) {
				sync |= !LOCAL_KIND(k);
				clear_ent_locked((int)fd);
			}
		}
		unlock(&tab_mu);
	}
	/* never close our own control connection */
	lock(&ctl_mu);
	int c = ctl_fd;
	unlock(&ctl_mu);
	int r;
	if (c >= 0 && (unsigned)c >= first && (unsigned)c <= last && !(flags & CLOSE_RANGE_CLOEXEC)) {
		r = 0;
		if ((unsigned)c > first)
			r = (int)syscall(SYS_close_range, first, (unsigned)c - 1, flags);
		if (r == 0 && (unsigned)c < last)
			r = (int)syscall(SYS_close_range, (unsigned)c + 1, last, flags);
	} else {
		r = (int)syscall(SYS_close_range, first, last, flags);
	}
	if (sync)
		emu_sync(0);
	return r;
}

/* ---- ioctl ------------------------------------------------------------------------------ */
/* ioctls of this type on an fd we do not know may be on one we were given: worth a LOOKUP */
#define IOMMUFD_TYPE 0x3b

/* A socket for the fd the next call may return, registered with the server (ctl_mu held). */
static int prepare_event_fd_locked(uint64_t *token)
{
	uint64_t ino = 0;
	int s = claim_socket(1, &ino);
	if (s < 0)
		return -1;
	REQ(EVPREP, evprep);
	CLAIM(q, s, ino);
	struct wire_rep_evprep r;
	if (tp_rpc(s, &q, sizeof(q), &r, sizeof(r)) < 0 || r.status != 0) {
		raw_close(s);
		return -1;
	}
	*token = r.token;
	return s;
}

/* What the server's fd rules say about this call (ctl_mu held: the rules are loaded). */
struct call_fds { int returns; uint32_t kind; int32_t named; };

static struct call_fds fd_rules(unsigned long req, void *arg)
{
	struct call_fds c = { 0, WIRE_KIND_EVENT, -1 };
	int n = __atomic_load_n(&nrules, __ATOMIC_ACQUIRE);
	for (int i = 0; i < n; i++) {
		const struct wire_fdrule *r = &rules[i];
		if (r->request != (uint32_t)req)
			continue;
		uint32_t v;
		if (r->when_off >= 0 && (read_self((char *)arg + r->when_off, &v, 4) < 0 || v != r->when_value))
			continue;
		if (r->action == WIRE_FDRULE_RETURNS) {
			c.returns = 1;
			if (r->kind)
				c.kind = r->kind;
		}
		else if (r->action == WIRE_FDRULE_NAMES && r->field_off >= 0 && read_self((char *)arg + r->field_off, &v, 4) == 0)
			c.named = (int32_t)v;
	}
	return c;
}

static int shared_at_locked(uint64_t va, uint64_t len);

/*
 * Send the IOCTL frame with the caller's struct inline, copied by the kernel
 * straight from arg (sendmsg: unreadable memory is EFAULT, never a signal; a
 * frame this small is one skb, so a fault sends nothing). We take at most
 * WIRE_IOCTL_INLINE_MAX bytes and stay in arg's page, which the call reads anyway;
 * whatever is not inline (a fault, a struct going on into the next page,
 * shared memory whose copy-back must not wait for us) the server reads through
 * /proc/<pid>/mem as before, with the same EFAULT rules.
 */
/* How many bytes of arg go inline: at most WIRE_IOCTL_INLINE_MAX, within arg's page, none from shared memory. */
static size_t inline_len_locked(void *arg)
{
	uintptr_t a = (uintptr_t)arg;
	size_t n = 4096 - (a & 4095);
	if (n > WIRE_IOCTL_INLINE_MAX)
		n = WIRE_IOCTL_INLINE_MAX;
	if (!a || shared_at_locked(a, n))
		n = 0;
	return n;
}

static int send_ioctl_locked(struct wire_req_ioctl *q, void *arg)
{
	size_t n = inline_len_locked(arg);
	for (;;) {
		q->inl = (uint32_t)n;
		q->len = (uint32_t)(sizeof(*q) + n);
		struct iovec iov[2] = { { q, sizeof(*q) }, { arg, n } };
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = n ? 2 : 1 };
		ssize_t r = sendmsg(ctl_fd, &mh, MSG_NOSIGNAL);
		if (r == (ssize_t)q->len)
			return 0;
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EFAULT && n) {
			n = 0; /* the struct is not readable (here): the server finds out */
			continue;
		}
		return -1; /* a partial frame cannot be repaired */
	}
}

/* Is the reply `r` to the request `q` well formed (its written span inside what went inline)? */
static int ioctl_reply_ok(const struct wire_req_ioctl *q, const struct wire_rep_ioctl *r)
{
	return r->type == WIRE_T_IOCTL && r->len == sizeof(*r) + r->wlen && r->wlen <= q->inl && r->woff <= q->inl - r->wlen;
}

/*
 * The IOCTL exchange through the slot: the struct is copied in and the
 * written span back out as copy_{from,to}_user would (user_copy: EFAULT,
 * never a signal). 0 with *wfault set if the span could not be stored.
 */
static int slot_ioctl_locked(struct wire_req_ioctl *q, void *arg, struct wire_rep_ioctl *r, int *wfault)
{
	size_t n = inline_len_locked(arg);
	if (n && user_copy(slot_req + sizeof(*q), arg, n, 0) != n)
		n = 0; /* not readable (here): the server finds out */
	q->inl = (uint32_t)n;
	q->len = (uint32_t)(sizeof(*q) + n);
	memcpy(slot_req, q, sizeof(*q));
	if (slot_call_locked() < 0)
		return -1;
	memcpy(r, slot_rep, sizeof(*r));
	if (!ioctl_reply_ok(q, r))
		return -1;
	if (r->wlen && user_copy((char *)arg + r->woff, slot_rep + sizeof(*r), r->wlen, 1) != r->wlen)
		*wfault = 1;
	return 0;
}

static int emu_ioctl(int fd, const struct fdent *ent, unsigned long req, void *arg)
{
	if (!(kind_ops(ent->kind) & WIRE_OPS_IOCTL)) {
		errno = ENOTTY;
		return -1;
	}
	pid_t tid = my_tid();
	pid_t pid = getpid();
	REQ(IOCTL, ioctl);
	q.token = ent->token;
	q.fd = fd;
	q.tid = (uint32_t)tid;
	q.request = (uint32_t)req;
	q.failnth = failnth_get(tid);
	q.fault = q.failnth ? fault_bits() : 0;
	q.arg = (uint64_t)(uintptr_t)arg;
	q.evfd = -1;
	q.memlock = memlock_limit();
	q.caps = cap_bits(); /* capable() is asked at the call, of this thread */
	q.hintfd = -1;
	struct wire_rep_ioctl rep, *r = &rep;
	int rc = -1, wfault = 0;
	lock(&ctl_mu);
	if (ctl_ensure_pid_locked(pid) < 0)
		goto out;
	struct call_fds cf = fd_rules(req, arg);
	uint32_t evkind = cf.kind;
	if (cf.returns) {
		uint64_t evtoken = 0;
		q.evfd = prepare_event_fd_locked(&evtoken);
		q.evtoken = evtoken;
		if (q.evfd < 0) {
			unlock(&ctl_mu);
			errno = EMFILE;
			return -1;
		}
	}
	/* spares the server finding out which file the fd is (/proc/<pid>/fd) when we know it */
	struct fdent named;
	if (cf.named >= 0 && ent_get(cf.named, &named) && named.kind == WIRE_KIND_EVENT) {
		q.hintfd = cf.named;
		q.hinttoken = named.token;
	}
	q.mapgen = map_gen_now();
	if (slot) {
		rc = slot_ioctl_locked(&q, arg, r, &wfault);
	} else if (send_ioctl_locked(&q, arg) == 0 && tp_recv(ctl_fd, r, sizeof(*r)) == 0 && ioctl_reply_ok(&q, r)) {
		/*
		 * What the call wrote to our struct (the server checked that it is
		 * writable): received straight into place, the kernel copying as
		 * copy_to_user would (EFAULT, never a signal, if it is not writable
		 * after all; the bytes are then drained and the call fails).
		 */
		char *dst = (char *)arg + r->woff, scratch[WIRE_IOCTL_INLINE_MAX];
		size_t done = 0;
		rc = 0;
		while (done < r->wlen) {
			ssize_t n = recv(ctl_fd, wfault ? scratch : dst + done, r->wlen - done, 0);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && errno == EFAULT && !wfault) {
				wfault = 1;
				continue;
			}
			if (n <= 0) {
				rc = -1;
				break;
			}
			done += (size_t)n;
		}
	}
	if (rc < 0)
		ctl_drop_locked();
out:
	unlock(&ctl_mu);
	if (rc < 0) {
		if (q.evfd >= 0)
			raw_close(q.evfd);
		errno = EIO;
		return -1;
	}
	if (wfault && r->ret >= 0) {
		r->ret = -EFAULT; /* as a failed copy_to_user: no fd handed out either */
		r->evused = 0;
	}
	if (q.failnth)
		failnth_set(tid, r->failnth);
	if (q.evfd >= 0) {
		if (r->evused && q.evfd < FD_MAX) {
			if (r->evused & WIRE_EVUSED_KEEP_ON_EXEC)
				syscall(SYS_fcntl, q.evfd, F_SETFD, 0);
			set_ent(q.evfd, evkind, q.evtoken, 0);
		} else {
			raw_close(q.evfd);
			emu_sync(q.evtoken);
		}
	}
	if (r->ret < 0) {
		errno = (int)-r->ret;
		return -1;
	}
	return (int)r->ret;
}

/*
 * An fd we did not open ourselves (inherited across exec, received over
 * SCM_RIGHTS): if it is a socket connected to the server, ask the server
 * which emulated file it is (it answers only if the fd really is ours).
 */
static int adopt(int fd)
{
	struct stat st;
	if (fd < 0 || fd >= FD_MAX || raw_fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
		return 0;
	struct sockaddr_un peer;
	socklen_t len = sizeof(peer);
	memset(&peer, 0, sizeof(peer));
	if (getpeername(fd, (struct sockaddr *)&peer, &len) != 0 || peer.sun_family != AF_UNIX ||
	    strcmp(peer.sun_path, socket_path()) != 0)
		return 0;
	REQ(LOOKUP, lookup);
	q.fd = fd;
	struct wire_rep_lookup r;
	lock(&ctl_mu);
	int rc = ctl_rpc_locked(&q, sizeof(q), &r, sizeof(r));
	unlock(&ctl_mu);
	if (rc < 0 || r.kind == WIRE_KIND_NONE || !kind_ops(r.kind))
		return 0;
	set_ent(fd, r.kind, r.token, 0);
	return 1;
}

/* After exec, find the emulated fds we inherited. */
static void adopt_inherited(void)
{
	if (!getenv("IOMMUFD_EMU_SOCKET"))
		return;
	RESOLVE(opendir);
	DIR *d = real_opendir("/proc/self/fd");
	if (!d)
		return;
	int self = dirfd(d);
	struct dirent *e;
	while ((e = readdir(d))) {
		int fd = atoi(e->d_name);
		if (e->d_name[0] < '0' || e->d_name[0] > '9' || fd == self)
			continue;
		char link[64], path[64];
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		ssize_t n = readlink(path, link, sizeof(link) - 1);
		if (n <= 0)
			continue;
		link[n] = 0;
		if (strncmp(link, "socket:", 7) == 0)
			adopt(fd);
	}
	closedir(d);
}

/* fds received over SCM_RIGHTS may be emulated ones */
EXPORT ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	RESOLVE(recvmsg);
	ssize_t r = real_recvmsg(fd, msg, flags);
	if (r < 0 || !msg || !msg->msg_control || !getenv("IOMMUFD_EMU_SOCKET"))
		return r;
	int e = errno;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		int *fds = (int *)CMSG_DATA(c);
		for (size_t i = 0; i < n; i++)
			if (!live(fds[i]))
				adopt(fds[i]);
	}
	errno = e;
	return r;
}

/* ---- ioctls the VFS answers before the driver (fs/ioctl.c), for our files ---------------
 * /dev/iommu is a character device on devtmpfs, the fds it hands out are anonymous-inode
 * files: neither is a regular file, neither has fasync, fiemap, freeze or fileattr methods.
 * Our fds are sockets, whose VFS answers differ, so the answers are given here (as measured
 * on a 6.12.117 kernel); everything else goes to the emulated driver. */
#define VFS_FS_IOC_GETFSUUID 0x80111500UL
static int has_cap(int cap)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	if (syscall(SYS_capget, &h, d) != 0)
		return 0;
	return (d[cap / 32].effective >> (cap % 32)) & 1;
}
static int user_readable(const void *p, size_t n)
{
	char tmp[256];
	for (size_t off = 0; off < n;) {
		size_t k = n - off < sizeof(tmp) ? n - off : sizeof(tmp);
		if (user_copy(tmp, (const char *)p + off, k, 0) != k)
			return 0;
		off += k;
	}
	return 1;
}
/* Is fd on the same filesystem as our file (devtmpfs for /dev/iommu, the anonymous-inode fs
 * for the fds it hands out)? Clone requests between files of one filesystem that are not
 * regular files are EINVAL, across filesystems EXDEV. */
static int same_sb(int fd, int iommufd)
{
	struct fdent e;
	if (ent_get(fd, &e))
		return (e.kind == WIRE_KIND_IOMMUFD) == iommufd;
	struct stat a, b;
	if (raw_fstat(fd, &a) != 0)
		return 0;
	if (iommufd)
		return raw_stat("/dev", &b) == 0 && a.st_dev == b.st_dev;
	int ev = (int)syscall(SYS_eventfd2, 0, O_CLOEXEC); /* an anonymous-inode file */
	int r = ev >= 0 && raw_fstat(ev, &b) == 0 && a.st_dev == b.st_dev;
	if (ev >= 0)
		raw_close(ev);
	return r;
}
#define VFS_RET(v) do { *ret = (v); return 1; } while (0)
#define VFS_ERR(e) do { errno = (e); *ret = -1; return 1; } while (0)
/* 1 (and *ret, errno set) if the VFS answers req on our fd, 0 if it goes to the driver. */
static int vfs_ioctl(int fd, const struct fdent *ent, unsigned long req, void *arg, int *ret)
{
	int iommufd = ent->kind == WIRE_KIND_IOMMUFD;
	int v;
	switch (req) {
	case FIOCLEX: case FIONCLEX: case FIONBIO:
		VFS_RET(real_ioctl(fd, req, arg));
	case FIOASYNC: /* no fasync method: switching it on is ENOTTY */
		if (user_copy(&v, arg, sizeof(v), 0) != sizeof(v)) VFS_ERR(EFAULT);
		if (v) VFS_ERR(ENOTTY);
		VFS_RET(0);
	case FIOQSIZE: /* not a directory, regular file or link */
		VFS_ERR(ENOTTY);
	case FIFREEZE: case FITHAW:
		if (!has_cap(CAP_SYS_ADMIN)) VFS_ERR(EPERM);
		VFS_ERR(req == FIFREEZE ? EOPNOTSUPP : EINVAL);
	case FS_IOC_FIEMAP:
		VFS_ERR(EOPNOTSUPP);
	case FIGETBSZ: {
		int bsz = 4096;
		if (user_copy(arg, &bsz, sizeof(bsz), 1) != sizeof(bsz)) VFS_ERR(EFAULT);
		VFS_RET(0);
	}
	case FICLONE: {
		int src = (int)(long)arg;
		if (src < 0 || fcntl(src, F_GETFD) < 0) VFS_ERR(EBADF);
		VFS_ERR(same_sb(src, iommufd) ? EINVAL : EXDEV);
	}
	case FICLONERANGE: {
		int64_t src;
		if (!user_readable(arg, 32)) VFS_ERR(EFAULT);
		memcpy(&src, arg, sizeof(src));
		if ((int)src < 0 || fcntl((int)src, F_GETFD) < 0) VFS_ERR(EBADF);
		VFS_ERR(same_sb((int)src, iommufd) ? EINVAL : EXDEV);
	}
	case FIDEDUPERANGE: {
		uint16_t count;
		if (user_copy(&count, (char *)arg + 16, sizeof(count), 0) != sizeof(count)) VFS_ERR(EFAULT);
		if (24 + (size_t)count * 32 > 4096) VFS_ERR(ENOMEM);
		if (!user_readable(arg, 24 + (size_t)count * 32)) VFS_ERR(EFAULT);
		VFS_ERR(EINVAL);
	}
	case FS_IOC_SETFLAGS:
		if (!user_readable(arg, sizeof(int))) VFS_ERR(EFAULT);
		return 0; /* then no fileattr method: the driver */
	case FS_IOC_FSSETXATTR:
		if (!user_readable(arg, 28)) VFS_ERR(EFAULT);
		return 0;
	case VFS_FS_IOC_GETFSUUID: {
		/* devtmpfs has a UUID (this host's, asked of /dev), the anonymous-inode fs none. */
		if (!iommufd) VFS_ERR(ENOTTY);
		int d = (int)syscall(SYS_openat, AT_FDCWD, "/dev", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (d < 0) VFS_ERR(ENOTTY);
		unsigned char u[17];
		int r = real_ioctl(d, req, u);
		int e = errno;
		raw_close(d);
		if (r < 0) VFS_ERR(e);
		if (user_copy(arg, u, sizeof(u), 1) != sizeof(u)) VFS_ERR(EFAULT);
		VFS_RET(0);
	}
	}
	return 0;
}

EXPORT int ioctl(int fd, unsigned long req, ...)
{
	va_list ap;
	va_start(ap, req);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	RESOLVE(ioctl);
	struct fdent e;
	if (!ent_get(fd, &e)) {
		if (((req >> 8) & 0xff) != IOMMUFD_TYPE || !adopt(fd) || !ent_get(fd, &e))
			return real_ioctl(fd, req, arg);
	}
	int r;
	if (vfs_ioctl(fd, &e, req, arg, &r))
		return r;
	sig_block();
	r = emu_ioctl(fd, &e, req, arg);
	int err = errno;
	sig_unblock();
	errno = err;
	return r;
}

/* ---- read / write ------------------------------------------------------------------------ */
static ssize_t emu_fileop(int fd, const struct fdent *ent, int op, void *buf, size_t count, int64_t pos)
{
	pid_t tid = my_tid();
	REQ(FILEOP, fileop);
	q.token = ent->token;
	q.fd = fd;
	q.op = (uint32_t)op;
	q.buf = (uint64_t)(uintptr_t)buf;
	q.count = count;
	q.pos = (uint64_t)pos;
	q.failnth = failnth_get(tid);
	q.fault = q.failnth ? fault_bits() : 0;
	q.tid = (uint32_t)tid;
	struct wire_rep_fileop r;
	lock(&ctl_mu);
	q.mapgen = map_gen_now();
	int rc = ctl_rpc_locked(&q, sizeof(q), &r, sizeof(r));
	unlock(&ctl_mu);
	if (rc < 0) {
		errno = EIO;
		return -1;
	}
	if (q.failnth)
		failnth_set(tid, r.failnth);
	if (r.drain) {
		/* the server wrote the byte before replying: it is already queued */
		char b;
		ssize_t n;
		while ((n = recv(fd, &b, 1, MSG_DONTWAIT)) < 0 && errno == EINTR)
			;
		if (n < 0 && errno == EAGAIN) {
			struct pollfd p = { .fd = fd, .events = POLLIN };
			if (syscall(SYS_poll, &p, 1, 100) == 1)
				(void)!recv(fd, &b, 1, MSG_DONTWAIT);
		}
	}
	if (r.ret < 0) {
		errno = (int)-r.ret;
		return -1;
	}
	return (ssize_t)r.ret;
}

#define MAX_RW_COUNT ((size_t)0x7ffff000)

/*
 * The kernel's checks before a file's read/write method runs (vfs_read,
 * vfs_write, ksys_pread64): access mode, access_ok of the buffer, the size and
 * position. 0 or a negative errno.
 */
static int vfs_checks(int fd, int write, const void *buf, size_t count, int64_t pos)
{
	int fl = (int)syscall(SYS_fcntl, fd, F_GETFL);
	int acc = fl & O_ACCMODE;
	if (fl < 0 || (write ? acc != O_WRONLY && acc != O_RDWR : acc != O_RDONLY && acc != O_RDWR))
		return -EBADF;
	if (!access_ok_(buf, count))
		return -EFAULT;
	if ((ssize_t)count < 0 || pos < 0 || (int64_t)((uint64_t)pos + count) < 0)
		return -EINVAL;
	return 0;
}

/* The fail-nth file of `task`: "%u\n" of its counter (simple_read_from_buffer). */
static ssize_t failnth_read(int fd, const struct fdent *e, void *buf, size_t count, int64_t off, int positional)
{
	int64_t pos = positional ? off : (int64_t)syscall(SYS_lseek, fd, 0, SEEK_CUR);
	int err = positional && off < 0 ? -EINVAL : vfs_checks(fd, 0, buf, count, pos);
	if (err)
		return errno = -err, -1;
	if (count > MAX_RW_COUNT)
		count = MAX_RW_COUNT;
	if (kill(e->tid, 0) < 0 && errno == ESRCH)
		return errno = ESRCH, -1;
	char num[16];
	uint32_t v = failnth_get(e->tid);
	int len = 0;
	char rev[12];
	do { rev[len++] = (char)('0' + v % 10); v /= 10; } while (v);
	for (int i = 0; i < len; i++)
		num[i] = rev[len - 1 - i];
	num[len++] = '\n';
	if (pos >= len || !count)
		return 0;
	size_t n = (size_t)(len - pos) < count ? (size_t)(len - pos) : count;
	size_t done = user_copy(buf, num + pos, n, 1);
	if (done == 0)
		return errno = EFAULT, -1;
	if (!positional)
		syscall(SYS_lseek, fd, (off_t)(pos + (int64_t)done), SEEK_SET);
	return (ssize_t)done;
}

/* kstrtouint(s, 0): the kernel's parser, not strtoul (no sign, no spaces, one trailing newline). */
static int kstrtouint_(const char *s, uint32_t *out)
{
	unsigned base = 10;
	if (s[0] == '+')
		s++;
	if (s[0] == '0') {
		int x = (s[1] | 0x20) == 'x';
		char c = s[2];
		int hex = (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
		base = x && hex ? 16 : 8;
		if (base == 16)
			s += 2;
	}
	unsigned long long res = 0;
	int digits = 0, overflow = 0;
	for (;; s++, digits++) {
		unsigned c = (unsigned char)*s, lc = c | 0x20, val;
		if (c >= '0' && c <= '9')
			val = c - '0';
		else if (lc >= 'a' && lc <= 'f')
			val = lc - 'a' + 10;
		else
			break;
		if (val >= base)
			break;
		if (res & (~0ull << 60)) {
			if (res > (~0ull - val) / base)
				overflow = 1;
		}
		res = res * base + val;
	}
	if (overflow)
		return -ERANGE;
	if (!digits)
		return -EINVAL;
	if (*s == '\n')
		s++;
	if (*s)
		return -EINVAL;
	if (res > 0xffffffffull)
		return -ERANGE;
	*out = (uint32_t)res;
	return 0;
}

static ssize_t failnth_write(int fd, const struct fdent *e, const void *buf, size_t count, int64_t off, int positional)
{
	int64_t pos = positional ? off : (int64_t)syscall(SYS_lseek, fd, 0, SEEK_CUR);
	int err = positional && off < 0 ? -EINVAL : vfs_checks(fd, 1, buf, count, pos);
	if (err)
		return errno = -err, -1;
	if (count > MAX_RW_COUNT)
		count = MAX_RW_COUNT;
	/* kstrtouint_from_user: at most sizeof(buf) - 1 bytes of "sign, 32 digits, newline" */
	char num[1 + 32 + 1 + 1];
	size_t n = count < sizeof(num) - 1 ? count : sizeof(num) - 1;
	if (user_copy(num, buf, n, 0) != n)
		return errno = EFAULT, -1;
	num[n] = 0;
	uint32_t v;
	if ((err = kstrtouint_(num, &v)) < 0)
		return errno = -err, -1;
	if (kill(e->tid, 0) < 0 && errno == ESRCH)
		return errno = ESRCH, -1;
	failnth_set(e->tid, v);
	return (ssize_t)count;
}

/* read/write/pread/pwrite of an emulated fd, as its kind says. */
static ssize_t emu_rw(int fd, const struct fdent *e, int write, void *buf, size_t count, int64_t off, int positional)
{
	if (e->kind == K_FAILNTH)
		return write ? failnth_write(fd, e, buf, count, off, positional) : failnth_read(fd, e, buf, count, off, positional);
	if (e->kind == K_STATUS) {
		if (!write)
			status_refresh(fd, e, off, positional);
		if (positional)
			return syscall(write ? SYS_pwrite64 : SYS_pread64, fd, buf, count, off);
		return syscall(write ? SYS_write : SYS_read, fd, buf, count);
	}
	/* The fds iommufd hands out are anonymous-inode files: no positional I/O (ESPIPE,
	 * whatever the count); VFIO files have it (region offsets). /dev/iommu allows it
	 * but has no read/write method (EINVAL). */
	uint32_t ops = kind_ops(e->kind);
	if (positional && (ops & (WIRE_OPS_READ | WIRE_OPS_WRITE)) && !(ops & WIRE_OPS_PREAD))
		return errno = ESPIPE, -1;
	if (positional && off < 0)
		return errno = EINVAL, -1;
	if (kind_ops(e->kind) & (write ? WIRE_OPS_WRITE : WIRE_OPS_READ)) {
		sig_block();
		int op = positional ? (write ? WIRE_FILEOP_PWRITE : WIRE_FILEOP_PREAD) : (write ? WIRE_FILEOP_WRITE : WIRE_FILEOP_READ);
		ssize_t r = emu_fileop(fd, e, op, buf, count, positional ? off : 0);
		int err = errno;
		sig_unblock();
		errno = err;
		return r;
	}
	errno = EINVAL; /* no read/write method (/dev/iommu) */
	return -1;
}

/* ---- poll: the driver's mask, not the socket's ---------------------------------------
 * /dev/iommu has no poll method (DEFAULT_POLLMASK); an event fd's mask comes from its
 * file in the server (DEFAULT_POLLMASK too for files without one). The socket's own
 * readiness still wakes a blocking wait (the server keeps a byte in it while readable). */
#define VFS_DEFAULT_POLLMASK (POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM)
static int emu_poll_mask(int fd, const struct fdent *e)
{
	if (e->kind == WIRE_KIND_IOMMUFD)
		return VFS_DEFAULT_POLLMASK;
	sig_block();
	ssize_t m = emu_fileop(fd, e, WIRE_FILEOP_POLL, NULL, 0, 0);
	sig_unblock();
	return m < 0 ? POLLERR : (int)m;
}

/* The server's fd (not a fail-nth or status file, which are real files): its entry in *e. */
static int pollable(int fd, struct fdent *e)
{
	return ent_get(fd, e) && e->kind < K_FAILNTH; /* our own kinds are real files */
}

static int do_poll(struct pollfd *fds, nfds_t n, int timeout_ms, const struct timespec *ts, const sigset_t *sig)
{
	int any = 0, ready = 0;
	struct fdent e;
	for (nfds_t i = 0; i < n; i++) {
		if (!pollable(fds[i].fd, &e))
			continue;
		any = 1;
		if (emu_poll_mask(fds[i].fd, &e) & (fds[i].events | POLLERR | POLLHUP))
			ready = 1;
	}
	if (!any)
		return ts || sig ? real_ppoll(fds, n, ts, sig) : real_poll(fds, n, timeout_ms);
	/* Something of ours is ready now: do not wait. */
	static const struct timespec zero = { 0, 0 };
	int rc = ready ? (ts || sig ? real_ppoll(fds, n, &zero, sig) : real_poll(fds, n, 0))
		       : (ts || sig ? real_ppoll(fds, n, ts, sig) : real_poll(fds, n, timeout_ms));
	if (rc < 0)
		return rc;
	rc = 0;
	for (nfds_t i = 0; i < n; i++) {
		if (pollable(fds[i].fd, &e))
			fds[i].revents = (short)(emu_poll_mask(fds[i].fd, &e) & (fds[i].events | POLLERR | POLLHUP));
		if (fds[i].revents)
			rc++;
	}
	return rc;
}

EXPORT int poll(struct pollfd *fds, nfds_t n, int timeout)
{
	RESOLVE(poll);
	RESOLVE(ppoll);
	return do_poll(fds, n, timeout, NULL, NULL);
}

EXPORT int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *ts, const sigset_t *sig)
{
	RESOLVE(poll);
	RESOLVE(ppoll);
	if (!ts && !sig)
		return do_poll(fds, n, -1, NULL, NULL);
	if (!ts) /* a mask and no timeout: wait forever under the mask */
		return do_poll(fds, n, -1, &(struct timespec){ 0x7fffffff, 0 }, sig);
	return do_poll(fds, n, 0, ts, sig);
}

EXPORT ssize_t read(int fd, void *buf, size_t count)
{
	RESOLVE(read);
	struct fdent e;
	return ent_get(fd, &e) ? emu_rw(fd, &e, 0, buf, count, 0, 0) : real_read(fd, buf, count);
}

EXPORT ssize_t write(int fd, const void *buf, size_t count)
{
	RESOLVE(write);
	struct fdent e;
	return ent_get(fd, &e) ? emu_rw(fd, &e, 1, (void *)buf, count, 0, 0) : real_write(fd, buf, count);
}

EXPORT ssize_t pread(int fd, void *buf, size_t count, off_t off)
{
	RESOLVE(pread);
	struct fdent e;
	return ent_get(fd, &e) ? emu_rw(fd, &e, 0, buf, count, off, 1) : real_pread(fd, buf, count, off);
}

EXPORT ssize_t pread64(int fd, void *buf, size_t count, off_t off)
{
	RESOLVE(pread64);
	if (!real_pread64) { RESOLVE(pread); real_pread64 = real_pread; }
	struct fdent e;
	return ent_get(fd, &e) ? emu_rw(fd, &e, 0, buf, count, off, 1) : real_pread64(fd, buf, count, off);
}

EXPORT ssize_t pwrite(int fd, const void *buf, size_t count, off_t off)
{
	RESOLVE(pwrite);
	struct fdent e;
	return ent_get(fd, &e) ? emu_rw(fd, &e, 1, (void *)buf, count, off, 1) : real_pwrite(fd, buf, count, off);
}

EXPORT ssize_t pwrite64(int fd, const void *buf, size_t count, off_t off)
{
	RESOLVE(pwrite64);
	if (!real_pwrite64) { RESOLVE(pwrite); real_pwrite64 = real_pwrite; }
	struct fdent e;
	return ent_get(fd, &e) ? emu_rw(fd, &e, 1, (void *)buf, count, off, 1) : real_pwrite64(fd, buf, count, off);
}

/* The fail-nth file has no llseek method: ESPIPE (its backing memfd would seek). */
EXPORT off_t lseek(int fd, off_t off, int whence)
{
	RESOLVE(lseek);
	if (kind_hint(fd) == K_FAILNTH && live(fd))
		return errno = ESPIPE, (off_t)-1;
	return real_lseek(fd, off, whence);
}

EXPORT off_t lseek64(int fd, off_t off, int whence)
{
	RESOLVE(lseek64);
	if (!real_lseek64) { RESOLVE(lseek); real_lseek64 = real_lseek; }
	if (kind_hint(fd) == K_FAILNTH && live(fd))
		return errno = ESPIPE, (off_t)-1;
	return real_lseek64(fd, off, whence);
}

/* ---- mmap: shared anonymous memory becomes memfd-backed ---------------------------------- */
static void *raw_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

/* Forget [va, va+len) in the local region list (ctl_mu held). */
static void regions_remove_locked(uint64_t va, uint64_t len)
{
	uint64_t end = va + len;
	for (int i = 0; i < nregions; i++) {
		struct region *r = &regions[i];
		uint64_t rend = r->va + r->len;
		if (rend <= va || r->va >= end)
			continue;
		if (r->va < va && rend > end && nregions < NREGIONS) {
			/* hole in the middle: split; both halves keep the memfd */
			struct region tail = *r;
			tail.off += end - r->va;
			tail.va = end;
			tail.len = rend - end;
			tail.memfd = raw_dupfd_hi(r->memfd);
			r->len = va - r->va;
			regions[nregions++] = tail;
			continue;
		}
		if (r->va < va) {
			r->len = va - r->va;
		} else if (rend > end) {
			r->off += end - r->va;
			r->va = end;
			r->len = rend - end;
		} else {
			raw_close(r->memfd);
			regions[i] = regions[--nregions];
			i--;
		}
	}
}

static int overlaps_locked(uint64_t va, uint64_t len)
{
	for (int i = 0; i < nregions; i++)
		if (regions[i].va < va + len && va < regions[i].va + regions[i].len)
			return 1;
	return 0;
}

static void notify_unmap_locked(uint64_t va, uint64_t len)
{
	if (!overlaps_locked(va, len))
		return;
	regions_remove_locked(va, len);
	if (ctl_fd >= 0 && ctl_pid == getpid()) {
		REQ(UNMAP, unmap);
		q.va = va;
		q.length = len;
		struct wire_rep_status s;
		ctl_rpc_locked(&q, sizeof(q), &s, sizeof(s));
	}
}

/* Record a new shared region and announce it (ctl_mu held); closes memfd if there is no room. */
static void pieces_unmap_locked(uint64_t va, uint64_t len);

static void add_region_locked(uint64_t va, uint64_t len, uint64_t off, int memfd, uint32_t flags)
{
	notify_unmap_locked(va, len); /* MAP_FIXED over an old region (or an iommufd mapping) */
	pieces_unmap_locked(va, len);
	if (nregions < NREGIONS) {
		struct region r = { va, len, off, memfd, flags };
		regions[nregions] = r;
		__atomic_store_n(&nregions, nregions + 1, __ATOMIC_RELAXED);
		if (getenv("IOMMUFD_EMU_SOCKET") || ctl_fd >= 0)
			send_region_locked(&r);
	} else {
		raw_close(memfd);
	}
}

/* Private memory is about to be unmapped or replaced (munmap, MAP_FIXED): tell the server
 * first, while the old content is still there. A page it pinned stays pinned with that
 * content (a kernel pin holds the page, not the mapping); the VA gets a new page. */
static void notify_replace(void *addr, size_t len)
{
	if (!len || !__atomic_load_n(&emu_fds_ever, __ATOMIC_RELAXED))
		return;
	int e = errno;
	lock(&ctl_mu);
	if (ctl_fd >= 0 && ctl_pid == getpid()) {
		REQ(UNMAP, unmap);
		q.va = (uint64_t)(uintptr_t)addr & ~4095ULL;
		q.length = ((uint64_t)(uintptr_t)addr % 4096 + len + 4095) / 4096 * 4096;
		struct wire_rep_status st;
		ctl_rpc_locked(&q, sizeof(q), &st, sizeof(st));
	}
	unlock(&ctl_mu);
	errno = e;
}

static void *shared_anon_mmap(void *addr, size_t len, int prot, int flags)
{
	int huge = (flags & MAP_HUGETLB) != 0;
	unsigned mfd_flags = MFD_CLOEXEC;
	size_t unit = 4096;
	if (huge) {
		mfd_flags |= MFD_HUGETLB | (unsigned)(flags & (0x3f << MAP_HUGE_SHIFT));
		unit = (flags >> MAP_HUGE_SHIFT) & 0x3f ? (size_t)1 << ((flags >> MAP_HUGE_SHIFT) & 0x3f) : 2u << 20;
	}
	int mfd = (int)syscall(SYS_memfd_create, "iommufd-emu-shared", mfd_flags);
	if (mfd < 0)
		return NULL; /* caller falls back */
	mfd = move_high(mfd);
	size_t flen = (len + unit - 1) / unit * unit;
	if (syscall(SYS_ftruncate, mfd, (off_t)flen) != 0) {
		raw_close(mfd);
		errno = ENOMEM;
		return MAP_FAILED;
	}
	int nflags = (flags & ~(MAP_ANONYMOUS | MAP_HUGETLB | (0x3f << MAP_HUGE_SHIFT)));
	void *p = raw_mmap(addr, len, prot, nflags, mfd, 0);
	if (p == MAP_FAILED) {
		int e = errno;
		raw_close(mfd);
		errno = e;
		return MAP_FAILED;
	}
	lock(&ctl_mu);
	add_region_locked((uint64_t)(uintptr_t)p, huge ? (uint64_t)flen : (len + 4095) / 4096 * 4096, 0, mfd,
			  huge ? WIRE_REGION_HUGE : 0);
	unlock(&ctl_mu);
	return p;
}

/*
 * mmaps of the iommufd fd: one reference per VMA piece. The kernel maps a
 * driver region as a VM_PFNMAP|VM_DONTEXPAND VMA whose vm_ops open/close take
 * and drop a reference on the region's owner: every piece a split (munmap or
 * mprotect of part of it), a move (mremap) or a fork makes holds its own, and
 * such VMAs never merge again and never grow. Our mapping is a memfd mapping,
 * which the kernel would merge and let grow, so the VMA list lives here and
 * the server is told how many pieces each mapping has (MREF). A forked
 * child's pieces are held by a socket it inherits (HOLDER, MDUP).
 */
struct piece { uint64_t va, len, handle, child_handle; int prot; int via; /* -1: our control connection, else a holder fd */ };
#define NPIECES 1024
static struct piece pieces[NPIECES];
static int npieces;       /* ctl_mu; read without it only as a hint (atomic) */
static int holder_fd = -1; /* made in atfork_prepare: the child's copy of our mappings */
static int children_hold;  /* a child may hold emulated files or mappings: wait() syncs */

static void set_npieces(int n) { __atomic_store_n(&npieces, n, __ATOMIC_RELAXED); }

/* Mapping `handle` (of our control connection, or of the holder fd `via`) has delta more pieces (ctl_mu held). */
static void mref_locked(uint64_t handle, int via, int delta)
{
	if (!delta || !handle)
		return;
	REQ(MREF, mref);
	q.handle = handle;
	q.delta = delta;
	struct wire_rep_status s;
	if (via >= 0)
		tp_rpc(via, &q, sizeof(q), &s, sizeof(s));
	else if (ctl_fd >= 0 && ctl_pid == getpid())
		ctl_rpc_locked(&q, sizeof(q), &s, sizeof(s));
	/* else: that connection is gone, and the server dropped its references with it */
}

static void pieces_add_locked(uint64_t va, uint64_t len, int prot, uint64_t handle, int via)
{
	pieces[npieces] = (struct piece){ va, len, handle, 0, prot, via };
	set_npieces(npieces + 1);
}

static void pieces_remove_locked(int i)
{
	pieces[i] = pieces[npieces - 1];
	set_npieces(npieces - 1);
}

/*
 * [va, va+len) is unmapped (munmap, MAP_FIXED over it, mremap's unmaps), as
 * do_vmi_munmap: pieces split at the edges (each new piece +1), covered
 * pieces closed (-1). ctl_mu held.
 */
static void pieces_unmap_locked(uint64_t va, uint64_t len)
{
	uint64_t end = va + len;
	for (int i = 0; i < npieces; i++) {
		struct piece *p = &pieces[i];
		uint64_t pend = p->va + p->len;
		if (pend <= va || p->va >= end)
			continue;
		int head = p->va < va, tail = pend > end;
		if (head && tail && npieces < NPIECES) {
			struct piece t = *p;
			t.va = end;
			t.len = pend - end;
			p->len = va - p->va;
			pieces_add_locked(t.va, t.len, t.prot, t.handle, t.via);
			mref_locked(t.handle, t.via, 1);
		} else if (head) {
			p->len = va - p->va;
		} else if (tail) {
			p->len = pend - end;
			p->va = end;
		} else {
			mref_locked(p->handle, p->via, -1);
			pieces_remove_locked(i--);
		}
	}
}

/* mprotect of [va, va+len): pieces whose protection changes split at the edges (ctl_mu held). */
static void pieces_protect_locked(uint64_t va, uint64_t len, int prot)
{
	uint64_t end = va + len;
	for (int i = 0, n = npieces; i < n; i++) {
		struct piece *p = &pieces[i];
		uint64_t pend = p->va + p->len;
		if (pend <= va || p->va >= end || p->prot == prot)
			continue;
		if (p->va < va && npieces < NPIECES) {
			pieces_add_locked(p->va, va - p->va, p->prot, p->handle, p->via);
			mref_locked(p->handle, p->via, 1);
			p->len = pend - va;
			p->va = va;
		}
		if (pend > end && npieces < NPIECES) {
			pieces_add_locked(end, pend - end, p->prot, p->handle, p->via);
			mref_locked(p->handle, p->via, 1);
			p->len = end - p->va;
		}
		p->prot = prot;
	}
}

static int piece_at_locked(uint64_t va)
{
	for (int i = 0; i < npieces; i++)
		if (pieces[i].va <= va && va < pieces[i].va + pieces[i].len)
			return i;
	return -1;
}

static void bars_unmap_locked(uint64_t va, uint64_t len);

/* Something was unmapped over [va, va+len): shared regions, iommufd pieces, BAR mappings (ctl_mu held). */
static void unmapped_locked(uint64_t va, uint64_t len)
{
	notify_unmap_locked(va, len);
	pieces_unmap_locked(va, len);
	bars_unmap_locked(va, len);
}

/*
 * The checks the syscall and do_mmap() make before they reach the file's mmap
 * method, in their order: an unaligned offset, a zero length, a length that
 * wraps when rounded up to pages or exceeds the address space, an offset whose
 * pages wrap or pass the file's limit, an unknown mapping type, MAP_SHARED_VALIDATE with a flag it does
 * not know. 0 when the call gets as far as the file.
 */
#define TASK_SIZE_ ((1ULL << 47) - 4096)
static int mm_mmap_errno(size_t len, int flags, off_t off)
{
	if ((uint64_t)off & 4095)
		return EINVAL;
	if ((flags & MAP_HUGETLB) != 0)
		return EINVAL; /* not a hugetlbfs file */
	if (len == 0)
		return EINVAL;
	uint64_t alen = ((uint64_t)len + 4095) & ~4095ULL;
	if (alen == 0)
		return ENOMEM;
	uint64_t pgoff = (uint64_t)off >> 12;
	if (pgoff + (alen >> 12) < pgoff)
		return EOVERFLOW;
	if (alen > TASK_SIZE_)
		return ENOMEM;
	/* file_mmap_ok(): an anonymous inode's files may be mapped up to ULONG_MAX */
	if (pgoff > (UINT64_MAX - alen) >> 12)
		return EOVERFLOW;
	int type = flags & 0x0f; /* MAP_TYPE */
	if (type != MAP_SHARED && type != MAP_PRIVATE && type != MAP_SHARED_VALIDATE)
		return EINVAL;
	/* LEGACY_MAP_MASK: what MAP_SHARED_VALIDATE accepts on a file without MAP_SYNC support */
	const int legacy = MAP_SHARED | MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS | MAP_DENYWRITE | MAP_EXECUTABLE |
			   0x4000000 /* MAP_UNINITIALIZED */ | MAP_GROWSDOWN | MAP_LOCKED | MAP_NORESERVE | MAP_POPULATE |
			   MAP_NONBLOCK | MAP_STACK | MAP_HUGETLB;
	if (type == MAP_SHARED_VALIDATE && (flags & ~legacy))
		return EOPNOTSUPP;
	return 0;
}

static void *iommufd_mmap(void *addr, size_t len, int prot, int flags, int fd, const struct fdent *ent, off_t off)
{
	int mme = mm_mmap_errno(len, flags, off);
	if (mme) {
		errno = mme;
		return MAP_FAILED;
	}
	if (!(kind_ops(ent->kind) & WIRE_OPS_MMAP)) {
		errno = ENODEV;
		return MAP_FAILED;
	}
	int mfd = (int)syscall(SYS_memfd_create, "iommufd-emu-region", MFD_CLOEXEC);
	if (mfd < 0)
		return MAP_FAILED;
	mfd = move_high(mfd);
	if (len == 0 || syscall(SYS_ftruncate, mfd, (off_t)len) != 0) {
		raw_close(mfd);
		errno = EINVAL;
		return MAP_FAILED;
	}
	REQ(MMAP, mmap);
	q.token = ent->token;
	q.fd = fd;
	q.prot = (uint32_t)prot;
	q.offset = (uint64_t)off;
	q.length = (uint64_t)len;
	q.flags = (uint32_t)flags;
	q.memfd = mfd;
	struct wire_rep_mmap r;
	lock(&ctl_mu);
	int rc = ctl_rpc_locked(&q, sizeof(q), &r, sizeof(r));
	if (rc < 0 || r.err < 0) {
		unlock(&ctl_mu);
		raw_close(mfd);
		errno = rc < 0 ? EIO : -r.err;
		return MAP_FAILED;
	}
	void *p = npieces < NPIECES ? raw_mmap(addr, len, prot, flags, mfd, 0) : MAP_FAILED;
	int e = npieces < NPIECES ? errno : ENOMEM;
	raw_close(mfd);
	if (p == MAP_FAILED) {
		mref_locked(r.handle, -1, -1);
	} else {
		uint64_t va = (uint64_t)(uintptr_t)p, l = (len + 4095) / 4096 * 4096;
		unmapped_locked(va, l); /* MAP_FIXED over whatever was there */
		pieces_add_locked(va, l, prot, r.handle, -1);
	}
	unlock(&ctl_mu);
	errno = e;
	return p;
}

/* [va, va+len) overlaps memory other processes may see: a shared region or an iommufd mapping (ctl_mu held). */
static int shared_at_locked(uint64_t va, uint64_t len)
{
	for (int i = 0; i < npieces; i++)
		if (pieces[i].va < va + len && va < pieces[i].va + pieces[i].len)
			return 1;
	return overlaps_locked(va, len);
}

/* ---- BAR mappings: PROT_NONE pages whose loads and stores are trapped ----------------------
 * mmap of a VFIO device file (a kind with OPS_MMIO) maps anonymous PROT_NONE memory; the
 * SIGSEGV handler decodes the faulting MOV (mmio_decode.c), sends the access to the server
 * (MMIO), writes a load's value into the saved registers and resumes after the instruction,
 * as the kernel's TDX/SEV MMIO emulation does for a guest. Each access reaches the device
 * exactly once, in program order (one thread at a time, on the control connection). The
 * server holds the device file while it is mapped (pieces counted with MREF, as iommufd
 * mappings); forked children inherit the mapping and its handle. */
struct bar { uint64_t va, len, base, handle, token; int fd; int prot; pid_t owner; };
#define NBARS 256
static struct bar bars[NBARS];
static int nbars; /* ctl_mu; read by the handler under ctl_mu */

static void bar_mref_locked(const struct bar *b, int delta)
{
	if (b->owner != getpid() || ctl_fd < 0 || ctl_pid != getpid())
		return; /* a child's copy: the mapping process's pieces are what the server counts */
	REQ(MREF, mref);
	q.handle = b->handle;
	q.delta = delta;
	struct wire_rep_status st;
	ctl_rpc_locked(&q, sizeof(q), &st, sizeof(st));
}

/* [va, va+len) was unmapped: BAR pieces trimmed, split (+1) or dropped (-1). ctl_mu held. */
static void bars_unmap_locked(uint64_t va, uint64_t len)
{
	uint64_t end = va + len;
	for (int i = 0; i < nbars; i++) {
		struct bar *b = &bars[i];
		uint64_t bend = b->va + b->len;
		if (bend <= va || b->va >= end)
			continue;
		int head = b->va < va, tail = bend > end;
		if (head && tail && nbars < NBARS) {
			struct bar t = *b;
			t.va = end;
			t.len = bend - end;
			b->len = va - b->va;
			bars[nbars++] = t;
			bar_mref_locked(&t, 1);
		} else if (head) {
			b->len = va - b->va;
		} else if (tail) {
			b->len = bend - end;
			b->va = end;
		} else {
			bar_mref_locked(b, -1);
			bars[i--] = bars[--nbars];
		}
	}
}

static void segv_install(void);

static void *bar_mmap(void *addr, size_t len, int prot, int flags, int fd, const struct fdent *ent, off_t off)
{
	REQ(MMAP, mmap);
	q.token = ent->token;
	q.fd = fd;
	q.prot = (uint32_t)prot;
	q.offset = (uint64_t)off;
	q.length = PAGE_ALIGN_(len); /* the VMA's size: every byte of its pages reaches the device */
	q.flags = (uint32_t)flags;
	q.memfd = -1;
	struct wire_rep_mmap r;
	segv_install();
	lock(&ctl_mu);
	if (nbars >= NBARS) {
		unlock(&ctl_mu);
		return errno = ENOMEM, MAP_FAILED;
	}
	int rc = ctl_rpc_locked(&q, sizeof(q), &r, sizeof(r));
	if (rc < 0 || r.err < 0) {
		unlock(&ctl_mu);
		errno = rc < 0 ? EIO : -r.err;
		return MAP_FAILED;
	}
	int mflags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE));
	void *p = raw_mmap(addr, len, PROT_NONE, mflags, -1, 0);
	int e = errno;
	if (p == MAP_FAILED) {
		struct bar tmp = { .handle = r.handle, .owner = getpid() };
		bar_mref_locked(&tmp, -1);
	} else {
		uint64_t va = (uint64_t)(uintptr_t)p, l = PAGE_ALIGN_(len);
		unmapped_locked(va, l); /* MAP_FIXED over whatever was there */
		bars_unmap_locked(va, l);
		bars[nbars++] = (struct bar){ va, l, va, r.handle, ent->token, fd, prot, getpid() };
	}
	unlock(&ctl_mu);
	errno = e;
	return p;
}

/* The program's own SIGSEGV disposition (ours is installed in its place while BARs may be mapped). */
static struct sigaction prog_segv;
static int segv_ours;

static uint64_t *greg(ucontext_t *uc, int r)
{
	static const int map[16] = { REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP, REG_RSI, REG_RDI,
				     REG_R8, REG_R9, REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15 };
	return (uint64_t *)&uc->uc_mcontext.gregs[map[r]];
}

/* A fault that is not a BAR access: what the program asked for (its handler, or the default action). */
static void segv_chain(int sig, siginfo_t *si, void *uc)
{
	struct sigaction a = prog_segv;
	if (a.sa_flags & SA_SIGINFO) {
		if (a.sa_sigaction) {
			if (a.sa_flags & SA_RESETHAND)
				prog_segv.sa_handler = SIG_DFL;
			a.sa_sigaction(sig, si, uc);
			return;
		}
	} else if (a.sa_handler != SIG_DFL && a.sa_handler != SIG_IGN) {
		if (a.sa_flags & SA_RESETHAND)
			prog_segv.sa_handler = SIG_DFL;
		a.sa_handler(sig);
		return;
	}
	/* default (a synchronous SIGSEGV cannot be ignored): re-fault with the default action */
	struct sigaction dfl;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	syscall(SYS_rt_sigaction, SIGSEGV, &dfl, NULL, 8);
	__atomic_store_n(&segv_ours, 0, __ATOMIC_RELAXED);
}

/* One access of `size` bytes at offset `off` of BAR mapping b (ctl_mu held). 0 or a negative errno. */
static int bar_access_locked(const struct bar *b, uint64_t off, uint32_t size, int write, uint64_t *value)
{
	REQ(MMIO, mmio);
	q.token = b->token;
	q.handle = b->handle;
	q.off = off;
	q.value = write ? *value : 0;
	q.fd = b->fd;
	q.size = size;
	q.write = (uint32_t)write;
	q.tid = (uint32_t)my_tid();
	struct wire_rep_mmio r;
	if (ctl_rpc_locked(&q, sizeof(q), &r, sizeof(r)) < 0)
		return -EIO;
	if (!write)
		*value = r.value;
	return r.status;
}

static void segv_handler(int sig, siginfo_t *si, void *ucv)
{
	ucontext_t *uc = ucv;
	int saved = errno;
	uint64_t fa = (uint64_t)(uintptr_t)si->si_addr;
	if (si->si_code != SEGV_ACCERR || !__atomic_load_n(&nbars, __ATOMIC_RELAXED))
		goto chain;
	uint64_t rip = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
	uint8_t code[15];
	size_t avail = user_copy(code, (const void *)(uintptr_t)rip, sizeof(code), 0);
	struct mmio_insn in;
	if (mmio_decode(code, avail, &in) != MMIO_OK)
		goto chain;
	uint64_t regs[16];
	for (int i = 0; i < 16; i++)
		regs[i] = *greg(uc, i);
	uint64_t ea = in.movdir64b ? regs[in.reg] : mmio_effective_address(&in, regs, rip);
	lock(&ctl_mu);
	struct bar b = { 0 };
	int found = 0;
	for (int i = 0; i < nbars; i++)
		if (bars[i].va <= fa && fa < bars[i].va + bars[i].len) {
			b = bars[i];
			found = 1;
			break;
		}
	/* the whole access inside the mapping, allowed by its protection */
	int write = in.dir == MMIO_STORE;
	if (!found || ea < b.va || ea + in.width > b.va + b.len || !(b.prot & (write ? PROT_WRITE : PROT_READ))) {
		unlock(&ctl_mu);
		goto chain;
	}
	int rc = 0;
	if (in.movdir64b) {
		/* 64 bytes from the source operand to the device: eight 8-byte stores, in order */
		uint64_t src[8];
		if (user_copy(src, (const void *)(uintptr_t)mmio_effective_address(&in, regs, rip), sizeof(src), 0) != sizeof(src)) {
			unlock(&ctl_mu);
			goto chain;
		}
		for (int i = 0; i < 8 && rc == 0; i++)
			rc = bar_access_locked(&b, ea - b.base + 8 * (uint64_t)i, 8, 1, &src[i]);
	} else {
		uint64_t v = write ? mmio_store_value(&in, regs) : 0;
		rc = bar_access_locked(&b, ea - b.base, in.width, write, &v);
		if (rc == 0 && !write)
			mmio_apply_load(&in, regs, v);
	}
	unlock(&ctl_mu);
	if (rc < 0) {
		/* the device refused the access (memory decode off, low power): SIGBUS, as a zapped BAR */
		errno = saved;
		raise(SIGBUS);
		return;
	}
	for (int i = 0; i < 16; i++)
		*greg(uc, i) = regs[i];
	uc->uc_mcontext.gregs[REG_RIP] = (greg_t)(rip + in.len);
	errno = saved;
	return;
chain:
	errno = saved;
	segv_chain(sig, si, ucv);
}

/* Put our SIGSEGV handler in place (first BAR mapping); the program's disposition is kept as prog_segv. */
static void segv_install(void)
{
	if (__atomic_load_n(&segv_ours, __ATOMIC_ACQUIRE))
		return;
	lock(&ctl_mu);
	if (!segv_ours) {
		struct sigaction a, old;
		memset(&a, 0, sizeof(a));
		a.sa_sigaction = segv_handler;
		a.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
		sigemptyset(&a.sa_mask);
		static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);
		if (!real_sigaction)
			real_sigaction = dlsym(RTLD_NEXT, "sigaction");
		if (real_sigaction && real_sigaction(SIGSEGV, &a, &old) == 0) {
			prog_segv = old;
			__atomic_store_n(&segv_ours, 1, __ATOMIC_RELEASE);
		}
	}
	unlock(&ctl_mu);
}

/* sigaction/signal for SIGSEGV while ours is installed: the program's disposition is recorded, ours stays. */
EXPORT int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
	static int (*real)(int, const struct sigaction *, struct sigaction *);
	if (!real)
		real = dlsym(RTLD_NEXT, "sigaction");
	if (sig != SIGSEGV || !__atomic_load_n(&segv_ours, __ATOMIC_ACQUIRE))
		return real(sig, act, old);
	if (act && (uintptr_t)act >= 4096 && !access_ok_(act, sizeof(*act)))
		return errno = EFAULT, -1;
	lock(&ctl_mu);
	struct sigaction prev = prog_segv;
	if (act)
		prog_segv = *act;
	unlock(&ctl_mu);
	if (old)
		*old = prev;
	return 0;
}

EXPORT int __sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
	return sigaction(sig, act, old);
}

EXPORT sighandler_t signal(int sig, sighandler_t h)
{
	static sighandler_t (*real)(int, sighandler_t);
	if (!real)
		real = (sighandler_t (*)(int, sighandler_t))dlsym(RTLD_NEXT, "signal");
	if (sig != SIGSEGV || !__atomic_load_n(&segv_ours, __ATOMIC_ACQUIRE))
		return real(sig, h);
	struct sigaction a, old;
	memset(&a, 0, sizeof(a));
	a.sa_handler = h;
	a.sa_flags = SA_RESTART; /* BSD semantics, as glibc's signal() */
	sigaction(SIGSEGV, &a, &old);
	return old.sa_handler;
}

static int any_mappings(void)
{
	return __atomic_load_n(&nregions, __ATOMIC_RELAXED) || __atomic_load_n(&npieces, __ATOMIC_RELAXED) ||
	       __atomic_load_n(&nbars, __ATOMIC_RELAXED);
}

/*
 * A MAP_SHARED mapping of a shmem or hugetlbfs file (memfd, /dev/shm,
 * hugetlbfs): its pages are the file's, as IOAS_MAP_FILE of the same file sees
 * them. Announce it like the memfd-backed anonymous ones (on a private dup).
 */
#define TMPFS_MAGIC_ 0x01021994
#define HUGETLBFS_MAGIC_ 0x958458f6
static void shared_file_mapped(void *p, size_t len, int fd, off_t off)
{
	struct statfs sf;
	if (fstatfs(fd, &sf) != 0 || (sf.f_type != TMPFS_MAGIC_ && sf.f_type != (typeof(sf.f_type))HUGETLBFS_MAGIC_))
		return;
	int huge = sf.f_type == (typeof(sf.f_type))HUGETLBFS_MAGIC_;
	int dupfd = raw_dupfd_hi(fd);
	if (dupfd < 0)
		return;
	lock(&ctl_mu);
	add_region_locked((uint64_t)(uintptr_t)p, (len + 4095) / 4096 * 4096, (uint64_t)off, dupfd, huge ? WIRE_REGION_HUGE : 0);
	unlock(&ctl_mu);
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	map_changed();
	struct fdent e;
	if (ent_get(fd, &e) && !LOCAL_KIND(e.kind)) {
		sig_block();
		void *p = kind_ops(e.kind) & WIRE_OPS_MMIO ? bar_mmap(addr, len, prot, flags, fd, &e, off)
							   : iommufd_mmap(addr, len, prot, flags, fd, &e, off);
		int err = errno;
		sig_unblock();
		errno = err;
		return p;
	}
	if (flags & MAP_FIXED)
		notify_replace(addr, len);
	int type = flags & MAP_SHARED_VALIDATE;
	int e0 = errno;
	if ((type == MAP_SHARED || type == MAP_SHARED_VALIDATE) && (flags & MAP_ANONYMOUS) && len > 0) {
		void *p = shared_anon_mmap(addr, len, prot, flags);
		if (p) {
			if (p != MAP_FAILED)
				errno = e0;
			return p;
		}
	}
	void *p = raw_mmap(addr, len, prot, flags, fd, off);
	if (p == MAP_FAILED)
		return p;
	if ((type == MAP_SHARED || type == MAP_SHARED_VALIDATE) && !(flags & MAP_ANONYMOUS) && fd >= 0) {
		shared_file_mapped(p, len, fd, off);
	} else if ((flags & MAP_FIXED) && any_mappings()) {
		lock(&ctl_mu);
		unmapped_locked((uint64_t)(uintptr_t)p, (len + 4095) / 4096 * 4096);
		unlock(&ctl_mu);
	}
	errno = e0;
	return p;
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return mmap(addr, len, prot, flags, fd, off);
}

EXPORT int mprotect(void *addr, size_t len, int prot)
{
	map_changed();
	int r = (int)syscall(SYS_mprotect, addr, len, prot);
	if (r == 0 && __atomic_load_n(&nbars, __ATOMIC_RELAXED)) {
		/* BAR pages stay PROT_NONE (every access trapped); the protection asked for is what the handler allows */
		uint64_t va = (uint64_t)(uintptr_t)addr, end = va + PAGE_ALIGN_(len);
		lock(&ctl_mu);
		for (int i = 0; i < nbars; i++) {
			uint64_t lo = bars[i].va > va ? bars[i].va : va, hi = bars[i].va + bars[i].len < end ? bars[i].va + bars[i].len : end;
			if (lo < hi) {
				syscall(SYS_mprotect, lo, hi - lo, PROT_NONE);
				bars[i].prot = prot;
			}
		}
		unlock(&ctl_mu);
	}
	if (r == 0 && __atomic_load_n(&npieces, __ATOMIC_RELAXED)) {
		lock(&ctl_mu);
		pieces_protect_locked((uint64_t)(uintptr_t)addr, (len + 4095) / 4096 * 4096, prot);
		unlock(&ctl_mu);
	}
	return r;
}


/*
 * mremap of [old, old+old_len) inside an iommufd mapping, as the kernel does it
 * for a VM_PFNMAP|VM_DONTEXPAND VMA (mm/mremap.c): shrinking unmaps the tail;
 * growing is EFAULT (after MREMAP_FIXED has unmapped the target, as there);
 * MREMAP_DONTUNMAP is EINVAL; a move makes a new piece (vm_ops open) and
 * unmaps the old range. Returns the result, or NULL if `old` is not in one of
 * our pieces (the caller does the plain mremap). ctl_mu held.
 */
static void *pfnmap_mremap_locked(uint64_t o, uint64_t olen, uint64_t nlen, int flags, uint64_t na)
{
	int i = piece_at_locked(o);
	if (i < 0)
		return NULL;
	if (flags & (MREMAP_FIXED | MREMAP_DONTUNMAP)) {
		/* mremap_to() */
		if ((flags & MREMAP_FIXED) && (na & 4095))
			return errno = EINVAL, MAP_FAILED;
		if ((flags & MREMAP_FIXED) && (nlen > user_ptr_max() || na > user_ptr_max() - nlen))
			return errno = EINVAL, MAP_FAILED;
		if ((flags & MREMAP_FIXED) && o + olen > na && na + nlen > o)
			return errno = EINVAL, MAP_FAILED;
		/*
		 * The kernel unmaps the target, then the tail, then refuses what it
		 * cannot do. On those refusals we unmap as it does; a move that
		 * succeeds lets the real mremap replace the target itself
		 * (atomically: unmapping it first here would let another thread map
		 * into the gap, and lose that mapping to the move).
		 */
		uint64_t keep = olen < nlen ? olen : nlen;
		int err = 0;
		if (keep > pieces[i].va + pieces[i].len - o)
			err = EFAULT; /* across VMAs */
		else if (flags & MREMAP_DONTUNMAP)
			err = EINVAL;
		else if (nlen != keep)
			err = EFAULT; /* growing a VM_DONTEXPAND mapping */
		else if (npieces == NPIECES)
			err = ENOMEM;
		if (err) {
			if ((flags & MREMAP_FIXED) && syscall(SYS_munmap, na, nlen) == 0)
				unmapped_locked(na, nlen);
			if (olen > nlen && syscall(SYS_munmap, o + nlen, olen - nlen) == 0)
				unmapped_locked(o + nlen, olen - nlen);
			return errno = err, MAP_FAILED;
		}
		if (olen > nlen) {
			if (syscall(SYS_munmap, o + nlen, olen - nlen) != 0)
				return MAP_FAILED;
			unmapped_locked(o + nlen, olen - nlen);
			olen = nlen;
		}
		if ((i = piece_at_locked(o)) < 0)
			return errno = EFAULT, MAP_FAILED;
		void *p = (void *)syscall(SYS_mremap, o, olen, nlen, flags, na);
		if (p == MAP_FAILED)
			return p;
		if (flags & MREMAP_FIXED)
			unmapped_locked(na, nlen); /* what the move replaced */
		i = piece_at_locked(o);
		struct piece moved = pieces[i];
		pieces_add_locked((uint64_t)(uintptr_t)p, nlen, moved.prot, moved.handle, moved.via);
		mref_locked(moved.handle, moved.via, 1);
		pieces_unmap_locked(o, olen);
		return p;
	}
	if (olen >= nlen) {
		if (olen > nlen) {
			if (syscall(SYS_munmap, o + nlen, olen - nlen) != 0)
				return MAP_FAILED;
			unmapped_locked(o + nlen, olen - nlen);
		}
		return (void *)(uintptr_t)o;
	}
	return errno = EFAULT, MAP_FAILED; /* vma_to_resize(): a VM_PFNMAP mapping never grows */
}

EXPORT void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
	void *new_addr = NULL;
	if (flags & MREMAP_FIXED) {
		va_list ap;
		va_start(ap, flags);
		new_addr = va_arg(ap, void *);
		va_end(ap);
	}
	map_changed();
	uint64_t o = (uint64_t)(uintptr_t)old;
	/* the kernel's argument checks come first; the real call makes them */
	int args_ok = !(flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP)) &&
		      !((flags & MREMAP_FIXED) && !(flags & MREMAP_MAYMOVE)) &&
		      !((flags & MREMAP_DONTUNMAP) && (!(flags & MREMAP_MAYMOVE) || old_len != new_len)) && !(o & 4095) &&
		      PAGE_ALIGN_(new_len) != 0;
	if (args_ok && __atomic_load_n(&npieces, __ATOMIC_RELAXED)) {
		lock(&ctl_mu);
		void *p = pfnmap_mremap_locked(o, PAGE_ALIGN_(old_len), PAGE_ALIGN_(new_len), flags, (uint64_t)(uintptr_t)new_addr);
		unlock(&ctl_mu);
		if (p)
			return p;
	}
	void *p = (void *)syscall(SYS_mremap, old, old_len, new_len, flags, new_addr);
	if (p == MAP_FAILED || !any_mappings())
		return p;
	int e = errno;
	uint64_t olen = PAGE_ALIGN_(old_len), nlen = PAGE_ALIGN_(new_len);
	lock(&ctl_mu);
	if (flags & MREMAP_FIXED)
		pieces_unmap_locked((uint64_t)(uintptr_t)new_addr, nlen); /* the target was unmapped first */
	/* a shared region that moved or changed size: announce it at its new place */
	for (int i = 0; i < nregions; i++) {
		struct region *r = &regions[i];
		if (r->va != o || r->len != olen)
			continue; /* only whole regions are followed */
		struct region moved = *r;
		moved.memfd = raw_dupfd_hi(r->memfd);
		notify_unmap_locked(o, olen); /* drops r (and closes its memfd) */
		if (moved.memfd >= 0)
			add_region_locked((uint64_t)(uintptr_t)p, nlen, moved.off, moved.memfd, moved.flags);
		break;
	}
	unlock(&ctl_mu);
	errno = e;
	return p;
}

EXPORT int munmap(void *addr, size_t len)
{
	map_changed();
	notify_replace(addr, len);
	int r = (int)syscall(SYS_munmap, addr, len);
	if (r == 0 && any_mappings()) {
		lock(&ctl_mu);
		unmapped_locked((uint64_t)(uintptr_t)addr, PAGE_ALIGN_(len));
		unlock(&ctl_mu);
	}
	return r;
}

/* ---- process lifetime ------------------------------------------------------------------ */
/*
 * fork: the child gets copies of our iommufd mappings (dup_mmap calls vm_ops
 * open for each), so it needs references of its own before fork returns: a
 * holder socket the child inherits gets them (MDUP), and exit or exec of the
 * child drops them with the socket (ctl_mu held).
 */
static void prepare_holder_locked(void)
{
	if (!npieces || ctl_ensure_locked() < 0)
		return;
	uint64_t ino = 0;
	int s = claim_socket(1, &ino);
	if (s < 0)
		return;
	s = move_high(s); /* same socket, same inode */
	REQ(HOLDER, holder);
	CLAIM(q, s, ino);
	struct wire_rep_holder hr;
	if (tp_rpc(s, &q, sizeof(q), &hr, sizeof(hr)) < 0 || hr.status != 0) {
		raw_close(s);
		return;
	}
	for (int i = 0; i < npieces; i++)
		pieces[i].child_handle = 0;
	for (int i = 0; i < npieces; i++) {
		if (pieces[i].child_handle)
			continue;
		uint32_t n = 0;
		for (int j = i; j < npieces; j++)
			n += pieces[j].handle == pieces[i].handle && pieces[j].via == pieces[i].via;
		struct wire_req_mdup d = { .len = sizeof(d), .type = WIRE_T_MDUP, .handle = pieces[i].handle, .holder = hr.token,
					   .fd = pieces[i].via >= 0 ? pieces[i].via : ctl_fd, .pieces = n };
		struct wire_rep_mmap dr;
		int rc = pieces[i].via >= 0 ? tp_rpc(pieces[i].via, &d, sizeof(d), &dr, sizeof(dr))
					    : ctl_rpc_locked(&d, sizeof(d), &dr, sizeof(dr));
		if (rc < 0 || dr.err < 0)
			continue; /* that mapping's copy holds nothing in the child */
		for (int j = i; j < npieces; j++)
			if (pieces[j].handle == pieces[i].handle && pieces[j].via == pieces[i].via)
				pieces[j].child_handle = dr.handle;
	}
	holder_fd = s;
}

static void atfork_prepare(void)
{
	lock(&ctl_mu);
	children_hold |= emu_fds_ever || npieces;
	prepare_holder_locked();
	lock(&tab_mu);
	lock(&failnth_mu);
	lock(&debugfs_mu);
	lock(&dirs_mu);
}

static void atfork_parent(void)
{
	if (holder_fd >= 0)
		raw_close(holder_fd); /* the child's */
	holder_fd = -1;
	unlock(&dirs_mu);
	unlock(&debugfs_mu);
	unlock(&failnth_mu);
	unlock(&tab_mu);
	unlock(&ctl_mu);
}

static void atfork_child(void)
{
	if (ctl_fd >= 0)
		raw_close(ctl_fd); /* the parent's; we make our own */
	__atomic_store_n(&ctl_fd, -1, __ATOMIC_RELAXED);
	slot = NULL; /* MADV_DONTFORK: the parent's slot is not mapped here */
	memset(failnth_tab, 0, sizeof(failnth_tab));
	/* our copies of the mappings are the holder's; the parent's holders are not ours */
	for (int i = 0; i < npieces; i++) {
		int via = pieces[i].via;
		if (via >= 0 && via != holder_fd) {
			raw_close(via);
			for (int j = i; j < npieces; j++)
				if (pieces[j].via == via)
					pieces[j].via = -2; /* closed */
		}
	}
	for (int i = 0; i < npieces; i++) {
		if (holder_fd >= 0 && pieces[i].child_handle) {
			pieces[i].handle = pieces[i].child_handle;
			pieces[i].via = holder_fd;
			pieces[i].child_handle = 0;
		} else {
			pieces_remove_locked(i--); /* no reference could be taken for it */
		}
	}
	holder_fd = -1;
	children_hold = 0;
	unlock(&dirs_mu);
	unlock(&debugfs_mu);
	unlock(&failnth_mu);
	unlock(&tab_mu);
	unlock(&ctl_mu);
}

/* A reaped child's files and mappings are released before wait() returns, as its exit released them. */
static void reaped(pid_t r)
{
	if (r > 0 && __atomic_load_n(&children_hold, __ATOMIC_RELAXED))
		emu_sync(0);
}

EXPORT pid_t waitpid(pid_t pid, int *status, int options)
{
	pid_t r = (pid_t)syscall(SYS_wait4, pid, status, options, NULL);
	int e = errno;
	reaped(r);
	errno = e;
	return r;
}

EXPORT pid_t wait(int *status)
{
	return waitpid(-1, status, 0);
}

EXPORT pid_t wait4(pid_t pid, int *status, int options, struct rusage *ru)
{
	pid_t r = (pid_t)syscall(SYS_wait4, pid, status, options, ru);
	int e = errno;
	reaped(r);
	errno = e;
	return r;
}

EXPORT int waitid(idtype_t idtype, id_t id, siginfo_t *info, int options)
{
	int r = (int)syscall(SYS_waitid, idtype, id, info, options, NULL);
	int e = errno;
	if (r == 0 && !(options & WNOWAIT) && info && info->si_pid)
		reaped(info->si_pid);
	errno = e;
	return r;
}

__attribute__((constructor)) static void shim_init(void)
{
	resolve_all();
	socket_path();
	/* let the server (not necessarily our ancestor) read our memory under Yama */
	prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
	state_pid = 0;
	adopt_inherited();
}

/* _FORTIFY_SOURCE builds (Debian's QEMU) call the checked read and pread: the same paths, with the check. */
EXPORT ssize_t __read_chk(int fd, void *buf, size_t nbytes, size_t buflen)
{
	if (nbytes > buflen)
		abort();
	return read(fd, buf, nbytes);
}
EXPORT ssize_t __pread64_chk(int fd, void *buf, size_t nbytes, off_t off, size_t buflen)
{
	if (nbytes > buflen)
		abort();
	return pread64(fd, buf, nbytes, off);
}
EXPORT ssize_t __pread_chk(int fd, void *buf, size_t nbytes, off_t off, size_t buflen)
{
	if (nbytes > buflen)
		abort();
	return pread(fd, buf, nbytes, off);
}
