/*
 * iommufd-emu LD_PRELOAD shim: routes /dev/iommu to the iommufd-emu server.
 *
 * Built on the user's machine by the CLI:
 *   cc -shared -fPIC -O2 -o libiommufd-emu.so native/shim.c -ldl -lpthread
 *
 * Model (see src/server/protocol.ts for the frames):
 *  - open("/dev/iommu") returns a fresh Unix-socket connection to the server
 *    (the "anchor"): the fd is a real kernel object, so dup/fork/exit/close
 *    semantics come from the kernel and the server tears the context down on
 *    EOF. close() of an emulated fd then asks the server to finish (SYNC).
 *  - ioctl/read/write on emulated fds are forwarded over one control
 *    connection per process (mutex protected); the server reads and writes
 *    our memory through /proc/<pid>/mem.
 *  - fds returned by ioctls (fault queue, vEVENTQ, selftest access) are
 *    sockets prepared before the call; readiness is one byte the server puts in.
 *  - MAP_SHARED|MAP_ANONYMOUS memory is made memfd-backed and announced to
 *    the server, so its pages have one identity in every process.
 *  - fail-nth files and /sys/kernel/debug are emulated locally.
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
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef PR_SET_PTRACER
#define PR_SET_PTRACER 0x59616d61
#endif
#ifndef PR_SET_PTRACER_ANY
#define PR_SET_PTRACER_ANY ((unsigned long)-1)
#endif
#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 1U
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

/* ---- protocol (mirrors src/server/protocol.ts) ---------------------------- */
enum { T_HELLO = 1, T_OPEN, T_IOCTL, T_SYNC, T_REGION, T_UNMAP, T_EVPREP, T_FILEOP, T_LOOKUP, T_MMAP, T_MRELEASE, T_PROVE };
enum { CAP_B_SYS_RESOURCE = 1, CAP_B_IPC_LOCK = 2, CAP_B_SYS_RAWIO = 4 };

struct __attribute__((packed)) req_hello { uint32_t len, type, pid, ppid, uid, caps; uint64_t memlock; };
struct __attribute__((packed)) req_open { uint32_t len, type, pid, tid; int32_t failnth; uint32_t fd; uint64_t ino; };
struct __attribute__((packed)) req_mmap { uint32_t len, type, token, prot; uint64_t offset, length; uint32_t flags; int32_t memfd; };
struct __attribute__((packed)) rep_mmap { uint32_t len; int32_t err; uint32_t handle, pad; };
struct __attribute__((packed)) req_mrelease { uint32_t len, type, handle, pad; };
struct __attribute__((packed)) req_lookup { uint32_t len, type; uint64_t ino; };
struct __attribute__((packed)) rep_lookup { uint32_t len, kind, token, pad; };
/* followed by inl bytes: our memory from arg on (the struct), read just before the call */
struct __attribute__((packed)) req_ioctl {
	uint32_t len, type, token, pid, tid, request; uint64_t arg;
	int32_t failnth, evfd; uint32_t evtoken, mapgen; uint64_t memlock;
	uint32_t inl;
	/* an event fd the call may look up (TEST_CMD id), checked just now: its token and secret */
	int32_t hintfd; uint32_t hinttoken, pad; uint64_t hintsecret;
};
#define IOCTL_INLINE_MAX 256
struct __attribute__((packed)) req_region { uint32_t len, type; uint64_t va, length, off; int32_t memfd; uint32_t flags; };
struct __attribute__((packed)) req_unmap { uint32_t len, type; uint64_t va, length; };
struct __attribute__((packed)) req_evprep { uint32_t len, type; uint64_t ino; };
struct __attribute__((packed)) req_fileop {
	uint32_t len, type, evtoken, op; uint64_t buf, count, pos; int32_t failnth; uint32_t mapgen;
};
struct __attribute__((packed)) rep_status { uint32_t len; int32_t status; };
struct __attribute__((packed)) rep_hello { uint32_t len; int32_t status; uint8_t nonce[16]; };
struct __attribute__((packed)) req_prove { uint32_t len, type; uint64_t addr; };
struct __attribute__((packed)) rep_open { uint32_t len; int32_t err; uint32_t token; int32_t failnth; };
/* followed by wlen bytes the call wrote at arg+woff (within the inline bytes): we store them */
struct __attribute__((packed)) rep_ioctl { uint32_t len, pad; int64_t ret; int32_t failnth; uint32_t evused, woff, wlen; };
/* secret: known to the processes holding the fd since we made it (not handed out by LOOKUP) */
struct __attribute__((packed)) rep_evprep { uint32_t len, token; uint64_t secret; };
struct __attribute__((packed)) rep_fileop { uint32_t len, pad; int64_t ret; int32_t failnth; uint32_t drain; };

/* Frame sizes: src/server/protocol.ts has the same numbers (a test compares them). */
#define SIZE_CHECK(s, n) _Static_assert(sizeof(struct s) == (n), #s " must be " #n " bytes")
SIZE_CHECK(req_hello, 32);
SIZE_CHECK(req_prove, 16);
SIZE_CHECK(req_open, 32);
SIZE_CHECK(req_ioctl, 80);
SIZE_CHECK(req_region, 40);
SIZE_CHECK(req_unmap, 24);
SIZE_CHECK(req_evprep, 16);
SIZE_CHECK(req_fileop, 48);
SIZE_CHECK(req_lookup, 16);
SIZE_CHECK(req_mmap, 40);
SIZE_CHECK(req_mrelease, 16);
SIZE_CHECK(rep_status, 8);
SIZE_CHECK(rep_hello, 24);
SIZE_CHECK(rep_open, 16);
SIZE_CHECK(rep_ioctl, 32);
SIZE_CHECK(rep_evprep, 16);
SIZE_CHECK(rep_fileop, 24);
SIZE_CHECK(rep_lookup, 16);
SIZE_CHECK(rep_mmap, 16);

/* ---- emulated fd table ------------------------------------------------------ */
#define FD_MAX 65536
enum { K_NONE = 0, K_IOMMUFD, K_EVENT, K_FAILNTH };
/* ino/dev: the file behind the fd when we recorded it (stale entries are detected) */
struct fdent { uint8_t kind; uint32_t token; int32_t tid; int64_t pos; uint64_t ino, dev, secret; };
static struct fdent fdtab[FD_MAX];
static pthread_mutex_t tab_mu = PTHREAD_MUTEX_INITIALIZER;

static inline int emulated(int fd) { return fd >= 0 && fd < FD_MAX && fdtab[fd].kind != K_NONE; }

static void set_ent(int fd, uint8_t kind, uint32_t token, int32_t tid);

/*
 * Emulated and still the same file: an fd closed behind our back (fclose,
 * raw syscalls) and reused for something else must not be taken for ours.
 */
static int live(int fd)
{
	if (!emulated(fd))
		return 0;
	struct stat st;
	if (fstat(fd, &st) == 0 && (uint64_t)st.st_ino == fdtab[fd].ino && (uint64_t)st.st_dev == fdtab[fd].dev)
		return 1;
	fdtab[fd] = (struct fdent){ 0 };
	return 0;
}

/* Record fd as emulated (call with tab_mu held). */
static void set_ent(int fd, uint8_t kind, uint32_t token, int32_t tid)
{
	struct stat st;
	memset(&st, 0, sizeof(st));
	fstat(fd, &st);
	fdtab[fd] = (struct fdent){ kind, token, tid, 0, (uint64_t)st.st_ino, (uint64_t)st.st_dev, 0 };
}

/* ---- real functions ---------------------------------------------------------- */
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
static int (*real_close)(int);
static int (*real_ioctl)(int, unsigned long, ...);
static ssize_t (*real_read)(int, void *, size_t);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pread)(int, void *, size_t, off_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pread64)(int, void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static int (*real_dup)(int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);
static int (*real_fcntl)(int, int, ...);
static int (*real_fcntl64)(int, int, ...);
static DIR *(*real_opendir)(const char *);
static int (*real_poll)(struct pollfd *, nfds_t, int);
static int (*real_ppoll)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *);

static pid_t my_tid(void) { return (pid_t)syscall(SYS_gettid); }

/* Bumped on every mapping change we see, so the server re-reads our VMAs. */
static volatile uint32_t map_gen;

/* ---- fail-nth counters (per thread, like task->fail_nth) --------------------- */
#define NTHREADS 1024
static struct { pid_t tid; int32_t val; } failnth_tab[NTHREADS];
static pthread_mutex_t failnth_mu = PTHREAD_MUTEX_INITIALIZER;

static volatile int failnth_used; /* any thread ever armed: else skip the lookup */

static int32_t failnth_get(pid_t tid)
{
	int32_t v = 0;
	if (!failnth_used)
		return 0;
	pthread_mutex_lock(&failnth_mu);
	for (int i = 0; i < NTHREADS; i++)
		if (failnth_tab[i].tid == tid) { v = failnth_tab[i].val; break; }
	pthread_mutex_unlock(&failnth_mu);
	return v;
}

static void failnth_set(pid_t tid, int32_t v)
{
	if (v)
		failnth_used = 1;
	pthread_mutex_lock(&failnth_mu);
	int slot = -1;
	for (int i = 0; i < NTHREADS; i++) {
		if (failnth_tab[i].tid == tid) { slot = i; break; }
		if (slot < 0 && failnth_tab[i].tid == 0) slot = i;
	}
	if (slot >= 0) {
		failnth_tab[slot].tid = v ? tid : 0;
		failnth_tab[slot].val = v;
	}
	pthread_mutex_unlock(&failnth_mu);
}

/* ---- the control connection ------------------------------------------------- */
static pthread_mutex_t ctl_mu = PTHREAD_MUTEX_INITIALIZER;
static int ctl_fd = -1;
static pid_t ctl_pid;    /* process the connection belongs to */
static pid_t state_pid;  /* process whose shim state we have (parent after fork) */

struct region { uint64_t va, len, off; int memfd; uint32_t flags; };
#define NREGIONS 512
static struct region regions[NREGIONS];
static int nregions;

static const char *socket_path(void)
{
	const char *p = getenv("IOMMUFD_EMU_SOCKET");
	if (p && *p)
		return p;
	static char buf[256];
	const char *rt = getenv("XDG_RUNTIME_DIR");
	if (rt && *rt)
		snprintf(buf, sizeof(buf), "%s/iommufd-emu.sock", rt);
	else
		snprintf(buf, sizeof(buf), "/tmp/iommufd-emu-%u/iommufd-emu.sock", (unsigned)getuid());
	return buf;
}

static int sock_connect(int cloexec)
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
		syscall(SYS_close, s);
		errno = (e == ECONNREFUSED || e == ENOENT) ? ENOENT : e; /* no server: as if there were no /dev/iommu */
		return -1;
	}
	return s;
}

static int send_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
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

static int recv_all(int fd, void *buf, size_t len)
{
	char *p = buf;
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
	if (HAS(CAP_SYS_RESOURCE)) bits |= CAP_B_SYS_RESOURCE;
	if (HAS(CAP_IPC_LOCK)) bits |= CAP_B_IPC_LOCK;
	if (HAS(CAP_SYS_RAWIO)) bits |= CAP_B_SYS_RAWIO;
#undef HAS
	return bits;
}

static void ctl_drop(void)
{
	if (ctl_fd >= 0)
		syscall(SYS_close, ctl_fd);
	ctl_fd = -1;
}

static int ctl_rpc_locked(const void *req, size_t reqlen, void *rep, size_t replen);

static int send_region_locked(const struct region *r)
{
	struct req_region q = { sizeof(q), T_REGION, r->va, r->len, r->off, r->memfd, r->flags };
	struct rep_status s;
	return ctl_rpc_locked(&q, sizeof(q), &s, sizeof(s));
}

/* Make sure this process (pid = getpid()) has its control connection (call with ctl_mu held). */
static int ctl_ensure_pid_locked(pid_t pid)
{
	if (ctl_fd >= 0 && ctl_pid == pid)
		return 0;
	if (ctl_fd >= 0)
		ctl_drop(); /* inherited from the parent: not ours */
	int s = sock_connect(1);
	if (s < 0)
		return -1;
	/* keep it out of the way of programs that expect low fd numbers */
	int hi = fcntl(s, F_DUPFD_CLOEXEC, 900);
	if (hi >= 0) {
		syscall(SYS_close, s);
		s = hi;
	}
	struct req_hello h = { sizeof(h), T_HELLO, (uint32_t)pid, (uint32_t)state_pid, (uint32_t)getuid(),
			       cap_bits(), memlock_limit() };
	/* the server serves our memory once we show its nonce in it */
	static uint8_t proof[16];
	struct rep_hello hr;
	struct req_prove pr = { sizeof(pr), T_PROVE, (uint64_t)(uintptr_t)proof };
	struct rep_status st;
	if (send_all(s, &h, sizeof(h)) < 0 || recv_all(s, &hr, sizeof(hr)) < 0 || hr.len != sizeof(hr) || hr.status != 0)
		goto refused;
	memcpy(proof, hr.nonce, sizeof(proof));
	if (send_all(s, &pr, sizeof(pr)) < 0 || recv_all(s, &st, sizeof(st)) < 0 || st.status != 0)
		goto refused;
	memset(proof, 0, sizeof(proof));
	ctl_fd = s;
	ctl_pid = pid;
	state_pid = pid;
	/* mappings inherited across fork are ours too */
	for (int i = 0; i < nregions; i++)
		send_region_locked(&regions[i]);
	return 0;
refused:
	syscall(SYS_close, s);
	errno = EACCES;
	return -1;
}

static int ctl_ensure_locked(void)
{
	return ctl_ensure_pid_locked(getpid());
}

static int ctl_rpc_locked(const void *req, size_t reqlen, void *rep, size_t replen)
{
	if (ctl_ensure_locked() < 0)
		return -1;
	if (send_all(ctl_fd, req, reqlen) < 0 || recv_all(ctl_fd, rep, replen) < 0) {
		ctl_drop();
		errno = EIO;
		return -1;
	}
	if (*(uint32_t *)rep != replen) {
		ctl_drop();
		errno = EIO;
		return -1;
	}
	return 0;
}

static void emu_sync(void)
{
	struct { uint32_t len, type; } q = { 8, T_SYNC };
	struct rep_status s;
	int e = errno;
	pthread_mutex_lock(&ctl_mu);
	ctl_rpc_locked(&q, sizeof(q), &s, sizeof(s));
	pthread_mutex_unlock(&ctl_mu);
	errno = e;
}

/* ---- private debugfs ------------------------------------------------------------ */
static char debugfs_dir[256];
static pthread_mutex_t debugfs_mu = PTHREAD_MUTEX_INITIALIZER;

static void put_file(const char *dir, const char *name, const char *content)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	int fd = (int)syscall(SYS_openat, AT_FDCWD, p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd >= 0) {
		(void)!syscall(SYS_write, fd, content, strlen(content));
		syscall(SYS_close, fd);
	}
}

static const char *debugfs(void)
{
	pthread_mutex_lock(&debugfs_mu);
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
			put_file(d, "fail_page_alloc/verbose", "1\n");
			put_file(d, "fail_iommufd/verbose", "1\n");
			snprintf(debugfs_dir, sizeof(debugfs_dir), "%s", d);
		}
	}
	pthread_mutex_unlock(&debugfs_mu);
	return debugfs_dir[0] ? debugfs_dir : NULL;
}

/* "/sys/kernel/debug[/rest]" -> private dir; returns path to use. */
static const char *redirect_debugfs(const char *path, char *buf, size_t n)
{
	static const char pre[] = "/sys/kernel/debug";
	if (!path || strncmp(path, pre, sizeof(pre) - 1) != 0)
		return path;
	const char *rest = path + sizeof(pre) - 1;
	if (*rest && *rest != '/')
		return path;
	const char *d = debugfs();
	if (!d)
		return path;
	snprintf(buf, n, "%s%s", d, rest);
	return buf;
}

/* ---- path classification ------------------------------------------------------- */
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

/* ---- open ---------------------------------------------------------------------- */
static int emu_open_iommu(int flags)
{
	pid_t tid = my_tid();
	pthread_mutex_lock(&ctl_mu);
	if (ctl_ensure_locked() < 0) {
		int e = errno;
		pthread_mutex_unlock(&ctl_mu);
		errno = e;
		return -1;
	}
	int s = sock_connect(flags & O_CLOEXEC);
	if (s < 0) {
		int e = errno;
		pthread_mutex_unlock(&ctl_mu);
		errno = e;
		return -1;
	}
	struct stat sst;
	fstat(s, &sst);
	struct req_open q = { sizeof(q), T_OPEN, (uint32_t)getpid(), (uint32_t)tid, failnth_get(tid), (uint32_t)s, (uint64_t)sst.st_ino };
	struct rep_open r;
	if (send_all(s, &q, sizeof(q)) < 0 || recv_all(s, &r, sizeof(r)) < 0 || r.len != sizeof(r)) {
		syscall(SYS_close, s);
		pthread_mutex_unlock(&ctl_mu);
		errno = EIO;
		return -1;
	}
	pthread_mutex_unlock(&ctl_mu);
	if (q.failnth)
		failnth_set(tid, r.failnth);
	if (r.err < 0) {
		syscall(SYS_close, s);
		errno = -r.err;
		return -1;
	}
	if (s >= FD_MAX) {
		syscall(SYS_close, s);
		errno = EMFILE;
		return -1;
	}
	pthread_mutex_lock(&tab_mu);
	set_ent(s, K_IOMMUFD, r.token, 0);
	pthread_mutex_unlock(&tab_mu);
	return s;
}

static int emu_open_failnth(pid_t task, int flags, int (*op)(const char *, int, ...))
{
	int fd = op("/dev/null", O_RDWR | (flags & O_CLOEXEC));
	if (fd < 0)
		return fd;
	if (fd >= FD_MAX)
		return fd;
	pthread_mutex_lock(&tab_mu);
	set_ent(fd, K_FAILNTH, 0, task);
	pthread_mutex_unlock(&tab_mu);
	return fd;
}

static int is_iommu_at(int dirfd, const char *path);

static int do_open(const char *path, int flags, mode_t mode, int (*op)(const char *, int, ...))
{
	if (is_iommu(path) || is_iommu_at(AT_FDCWD, path))
		return emu_open_iommu(flags);
	pid_t t = failnth_task(path);
	if (t)
		return emu_open_failnth(t, flags, op);
	char buf[512];
	path = redirect_debugfs(path, buf, sizeof(buf));
	return op(path, flags, mode);
}

static int open_plain(const char *p, int f, ...)
{
	va_list ap;
	va_start(ap, f);
	mode_t m = va_arg(ap, mode_t);
	va_end(ap);
	RESOLVE(open);
	return real_open(p, f, m);
}

static int open64_plain(const char *p, int f, ...)
{
	va_list ap;
	va_start(ap, f);
	mode_t m = va_arg(ap, mode_t);
	va_end(ap);
	RESOLVE(open64);
	if (!real_open64) { RESOLVE(open); return real_open(p, f, m); }
	return real_open64(p, f, m);
}

#define GET_MODE(flags) \
	mode_t mode = 0; \
	if ((flags) & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }

EXPORT int open(const char *path, int flags, ...)
{
	GET_MODE(flags);
	return do_open(path, flags, mode, open_plain);
}

EXPORT int open64(const char *path, int flags, ...)
{
	GET_MODE(flags);
	return do_open(path, flags, mode, open64_plain);
}

EXPORT int __open_2(const char *path, int flags)
{
	if (is_iommu(path) || failnth_task(path))
		return do_open(path, flags, 0, open_plain);
	char buf[512];
	path = redirect_debugfs(path, buf, sizeof(buf));
	RESOLVE(__open_2);
	return real___open_2(path, flags);
}

EXPORT int __open64_2(const char *path, int flags)
{
	if (is_iommu(path) || failnth_task(path))
		return do_open(path, flags, 0, open_plain);
	char buf[512];
	path = redirect_debugfs(path, buf, sizeof(buf));
	RESOLVE(__open64_2);
	return real___open64_2(path, flags);
}

static int at_dirfd;
static int openat_plain(const char *p, int f, ...)
{
	va_list ap;
	va_start(ap, f);
	mode_t m = va_arg(ap, mode_t);
	va_end(ap);
	RESOLVE(openat);
	return real_openat(at_dirfd, p, f, m);
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

static int do_openat(int dirfd, const char *path, int flags, mode_t mode, int (*real)(int, const char *, int, ...))
{
	if (is_iommu(path) || is_iommu_at(dirfd, path))
		return emu_open_iommu(flags);
	pid_t t = failnth_task(path);
	if (t) {
		at_dirfd = AT_FDCWD;
		return emu_open_failnth(t, flags, openat_plain);
	}
	char buf[512];
	if (path && path[0] == '/')
		path = redirect_debugfs(path, buf, sizeof(buf));
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
	if (is_iommu(path) || failnth_task(path)) {
		int flags = (strchr(mode, '+') ? O_RDWR : (mode[0] == 'r' ? O_RDONLY : O_WRONLY));
		if (strchr(mode, 'e'))
			flags |= O_CLOEXEC;
		int fd = do_open(path, flags, 0, open_plain);
		if (fd < 0)
			return NULL;
		FILE *f = fdopen(fd, mode);
		if (!f)
			close(fd);
		return f;
	}
	char buf[512];
	path = redirect_debugfs(path, buf, sizeof(buf));
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
static int (*real_fclose)(FILE *);
static int needs_sync(uint8_t kind);
EXPORT int fclose(FILE *f)
{
	RESOLVE(fclose);
	int fd = f ? fileno(f) : -1;
	uint8_t kind = 0;
	if (live(fd)) {
		pthread_mutex_lock(&tab_mu);
		kind = fdtab[fd].kind;
		fdtab[fd] = (struct fdent){ 0 };
		pthread_mutex_unlock(&tab_mu);
	}
	int r = real_fclose(f);
	if (needs_sync(kind))
		emu_sync();
	return r;
}

EXPORT DIR *opendir(const char *path)
{
	char buf[512];
	RESOLVE(opendir);
	return real_opendir(redirect_debugfs(path, buf, sizeof(buf)));
}

/* Existence checks of /dev/iommu (libvirt-style probes): true while a server answers. */
static int server_present(void)
{
	struct stat st;
	return stat(socket_path(), &st) == 0 && S_ISSOCK(st.st_mode);
}

static int (*real_access)(const char *, int);
static int (*real_faccessat)(int, const char *, int, int);
static int (*real_euidaccess)(const char *, int);

EXPORT int access(const char *path, int mode)
{
	if (is_iommu(path) && server_present())
		return (mode & X_OK) ? (errno = EACCES, -1) : 0;
	RESOLVE(access);
	return real_access(path, mode);
}

EXPORT int euidaccess(const char *path, int mode)
{
	if (is_iommu(path) && server_present())
		return (mode & X_OK) ? (errno = EACCES, -1) : 0;
	RESOLVE(euidaccess);
	return real_euidaccess(path, mode);
}

EXPORT int eaccess(const char *path, int mode)
{
	return euidaccess(path, mode);
}

EXPORT int faccessat(int dirfd, const char *path, int mode, int flags)
{
	if ((is_iommu(path) || is_iommu_at(dirfd, path)) && server_present())
		return (mode & X_OK) ? (errno = EACCES, -1) : 0;
	RESOLVE(faccessat);
	return real_faccessat(dirfd, path, mode, flags);
}

/* ---- close / dup ------------------------------------------------------------------- */
static int needs_sync(uint8_t kind) { return kind == K_IOMMUFD || kind == K_EVENT; }

/* The program closes (or dup2s over) our control connection: forget it. */
static void ctl_forget(int fd)
{
	if (fd >= 0 && fd == ctl_fd)
		ctl_fd = -1;
}

EXPORT int close(int fd)
{
	RESOLVE(close);
	ctl_forget(fd);
	if (!live(fd))
		return real_close(fd);
	pthread_mutex_lock(&tab_mu);
	uint8_t kind = fdtab[fd].kind;
	fdtab[fd] = (struct fdent){ 0 };
	pthread_mutex_unlock(&tab_mu);
	int r = real_close(fd);
	if (r == 0 && needs_sync(kind))
		emu_sync();
	return r;
}

static void copy_ent(int from, int to)
{
	if (to < 0 || to >= FD_MAX || from < 0 || from >= FD_MAX)
		return;
	pthread_mutex_lock(&tab_mu);
	fdtab[to] = fdtab[from];
	fdtab[to].pos = 0;
	pthread_mutex_unlock(&tab_mu);
}

EXPORT int dup(int fd)
{
	RESOLVE(dup);
	int r = real_dup(fd);
	if (r >= 0 && emulated(fd))
		copy_ent(fd, r);
	return r;
}

static int dup_onto(int fd, int newfd, int r)
{
	/* newfd was closed implicitly */
	if (r < 0)
		return r;
	uint8_t old = (newfd >= 0 && newfd < FD_MAX && newfd != fd) ? fdtab[newfd].kind : 0;
	if (emulated(fd))
		copy_ent(fd, r);
	else if (old) {
		pthread_mutex_lock(&tab_mu);
		fdtab[newfd] = (struct fdent){ 0 };
		pthread_mutex_unlock(&tab_mu);
	}
	if (needs_sync(old))
		emu_sync();
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
	if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && emulated(fd))
		copy_ent(fd, r);
	/* open("/dev/iommu") on a 64-bit kernel sets O_LARGEFILE; our socket does not have it. */
	if (r >= 0 && cmd == F_GETFL && emulated(fd) && fdtab[fd].kind == K_IOMMUFD)
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
		pthread_mutex_lock(&tab_mu);
		for (unsigned int fd = first; fd <= last && fd < FD_MAX; fd++) {
			if (fdtab[fd].kind) {
				sync |= needs_sync(fdtab[fd].kind);
				fdtab[fd] = (struct fdent){ 0 };
			}
		}
		pthread_mutex_unlock(&tab_mu);
	}
	/* never close our own control connection */
	int r;
	if (ctl_fd >= 0 && (unsigned)ctl_fd >= first && (unsigned)ctl_fd <= last && !(flags & CLOSE_RANGE_CLOEXEC)) {
		r = 0;
		if ((unsigned)ctl_fd > first)
			r = (int)syscall(SYS_close_range, first, (unsigned)ctl_fd - 1, flags);
		if (r == 0 && (unsigned)ctl_fd < last)
			r = (int)syscall(SYS_close_range, (unsigned)ctl_fd + 1, last, flags);
	} else {
		r = (int)syscall(SYS_close_range, first, last, flags);
	}
	if (sync)
		emu_sync();
	return r;
}

/* ---- ioctl ------------------------------------------------------------------------- */
#define IOMMUFD_TYPE 0x3b
#define REQ_FAULT_QUEUE_ALLOC 0x3b8e
#define REQ_VEVENTQ_ALLOC 0x3b93
#define REQ_TEST_CMD 0x3ba0
#define TEST_OP_CREATE_ACCESS 5

static int read_self(const void *addr, void *out, size_t n)
{
	struct iovec l = { out, n }, r = { (void *)addr, n };
	return syscall(SYS_process_vm_readv, getpid(), &l, 1UL, &r, 1UL, 0UL) == (ssize_t)n ? 0 : -1;
}

/* Whether the call may hand out an fd; *idfd: TEST_CMD's id (an access fd for the access ops), else -1. */
static int returns_fd(unsigned long req, void *arg, int32_t *idfd)
{
	*idfd = -1;
	if (req == REQ_FAULT_QUEUE_ALLOC || req == REQ_VEVENTQ_ALLOC)
		return 1;
	if (req == REQ_TEST_CMD) {
		uint32_t w[2];
		if (read_self((char *)arg + 4, w, 8) == 0) {
			*idfd = (int32_t)w[1];
			return w[0] == TEST_OP_CREATE_ACCESS;
		}
		if (read_self((char *)arg + 4, w, 4) == 0 && w[0] == TEST_OP_CREATE_ACCESS)
			return 1;
	}
	return 0;
}

/* A socket for the fd the next call may return, registered with the server. */
static int prepare_event_fd(uint32_t *token, uint64_t *secret)
{
	int s = sock_connect(1);
	if (s < 0)
		return -1;
	struct stat st;
	fstat(s, &st);
	struct req_evprep q = { sizeof(q), T_EVPREP, (uint64_t)st.st_ino };
	struct rep_evprep r;
	if (send_all(s, &q, sizeof(q)) < 0 || recv_all(s, &r, sizeof(r)) < 0 || r.len != sizeof(r)) {
		syscall(SYS_close, s);
		return -1;
	}
	*token = r.token;
	*secret = r.secret;
	return s;
}

static int shared_at_locked(uint64_t va, uint64_t len);

/*
 * Send the IOCTL frame with the caller's struct inline, copied by the kernel
 * straight from arg (sendmsg: unreadable memory is EFAULT, never a signal; a
 * frame this small is one skb, so a fault sends nothing). We take at most
 * IOCTL_INLINE_MAX bytes and stay in arg's page, which the call reads anyway;
 * whatever is not inline (a fault, a struct going on into the next page,
 * shared memory whose copy-back must not wait for us) the server reads through
 * /proc/<pid>/mem as before, with the same EFAULT rules.
 */
static int send_ioctl_locked(struct req_ioctl *q, void *arg)
{
	uintptr_t a = (uintptr_t)arg;
	size_t n = 4096 - (a & 4095);
	if (n > IOCTL_INLINE_MAX)
		n = IOCTL_INLINE_MAX;
	if (!a || shared_at_locked(a, n))
		n = 0;
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

static int emu_ioctl(int fd, unsigned long req, void *arg)
{
	struct fdent ent = fdtab[fd];
	if (ent.kind != K_IOMMUFD) {
		errno = ENOTTY;
		return -1;
	}
	pid_t tid = my_tid();
	uint32_t evtoken = 0;
	uint64_t evsecret = 0;
	int evfd = -1;
	int32_t idfd;
	if (returns_fd(req, arg, &idfd)) {
		evfd = prepare_event_fd(&evtoken, &evsecret);
		if (evfd < 0) {
			errno = EMFILE;
			return -1;
		}
	}
	pid_t pid = getpid();
	struct req_ioctl q = { sizeof(q), T_IOCTL, ent.token, (uint32_t)pid, (uint32_t)tid, (uint32_t)req,
			       (uint64_t)(uintptr_t)arg, failnth_get(tid), evfd, evtoken, map_gen, memlock_limit(), 0,
			       -1, 0, 0, 0 };
	/* spares the server finding out which file the fd is (/proc/<pid>/fd) when we know it */
	if (idfd >= 0 && idfd < FD_MAX && fdtab[idfd].kind == K_EVENT && fdtab[idfd].secret && live(idfd)) {
		q.hintfd = idfd;
		q.hinttoken = fdtab[idfd].token;
		q.hintsecret = fdtab[idfd].secret;
	}
	struct rep_ioctl rep, *r = &rep;
	int rc = -1, wfault = 0;
	pthread_mutex_lock(&ctl_mu);
	if (ctl_ensure_pid_locked(pid) == 0 && send_ioctl_locked(&q, arg) == 0 && recv_all(ctl_fd, r, sizeof(*r)) == 0 &&
	    r->len == sizeof(*r) + r->wlen && r->wlen <= q.inl && r->woff <= q.inl - r->wlen) {
		/*
		 * What the call wrote to our struct (the server checked that it is
		 * writable): received straight into place, the kernel copying as
		 * copy_to_user would (EFAULT, never a signal, if it is not writable
		 * after all; the bytes are then drained and the call fails).
		 */
		char *dst = (char *)arg + r->woff, scratch[IOCTL_INLINE_MAX];
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
		ctl_drop();
	pthread_mutex_unlock(&ctl_mu);
	if (rc < 0) {
		if (evfd >= 0)
			syscall(SYS_close, evfd);
		errno = EIO;
		return -1;
	}
	if (wfault && r->ret >= 0) {
		r->ret = -EFAULT; /* as a failed copy_to_user: no fd handed out either */
		r->evused = 0;
	}
	if (q.failnth)
		failnth_set(tid, r->failnth);
	if (evfd >= 0) {
		if (r->evused && evfd < FD_MAX) {
			pthread_mutex_lock(&tab_mu);
			set_ent(evfd, K_EVENT, evtoken, 0);
			fdtab[evfd].secret = evsecret;
			pthread_mutex_unlock(&tab_mu);
		} else {
			syscall(SYS_close, evfd);
			emu_sync();
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
 * which emulated fd it is.
 */
static int adopt(int fd)
{
	struct stat st;
	if (fd < 0 || fd >= FD_MAX || fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
		return 0;
	struct sockaddr_un peer;
	socklen_t len = sizeof(peer);
	memset(&peer, 0, sizeof(peer));
	if (getpeername(fd, (struct sockaddr *)&peer, &len) != 0 || peer.sun_family != AF_UNIX ||
	    strcmp(peer.sun_path, socket_path()) != 0)
		return 0;
	struct req_lookup q = { sizeof(q), T_LOOKUP, (uint64_t)st.st_ino };
	struct rep_lookup r;
	pthread_mutex_lock(&ctl_mu);
	int rc = ctl_rpc_locked(&q, sizeof(q), &r, sizeof(r));
	pthread_mutex_unlock(&ctl_mu);
	if (rc < 0 || (r.kind != K_IOMMUFD && r.kind != K_EVENT))
		return 0;
	pthread_mutex_lock(&tab_mu);
	set_ent(fd, (uint8_t)r.kind, r.token, 0);
	pthread_mutex_unlock(&tab_mu);
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
static ssize_t (*real_recvmsg)(int, struct msghdr *, int);
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
			if (!emulated(fds[i]))
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
static int user_readable(const void *p, size_t n)
{
	/* Would get_user/copy_from_user of [p, p+n) succeed? (a fault is EFAULT, not a signal) */
	char tmp[256];
	for (size_t off = 0; off < n;) {
		size_t k = n - off < sizeof(tmp) ? n - off : sizeof(tmp);
		struct iovec local = { tmp, k }, remote = { (char *)p + off, k };
		if (syscall(SYS_process_vm_readv, getpid(), &local, 1, &remote, 1, 0) != (long)k)
			return 0;
		off += k;
	}
	return 1;
}
static int user_write(void *p, const void *src, size_t n)
{
	struct iovec local = { .iov_base = (void *)src, .iov_len = n };
	struct iovec remote = { .iov_base = p, .iov_len = n };
	return syscall(SYS_process_vm_writev, getpid(), &local, 1, &remote, 1, 0) == (long)n;
}
static int has_cap(int cap)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	if (syscall(SYS_capget, &h, d) != 0)
		return 0;
	return (d[cap / 32].effective >> (cap % 32)) & 1;
}
/* Is fd on the same filesystem as our file (devtmpfs for /dev/iommu, the anonymous-inode fs
 * for the fds it hands out)? Clone requests between files of one filesystem that are not
 * regular files are EINVAL, across filesystems EXDEV. */
static int same_sb(int fd, int iommufd)
{
	if (emulated(fd))
		return (fdtab[fd].kind == K_IOMMUFD) == iommufd;
	struct stat a, b;
	if (fstat(fd, &a) != 0)
		return 0;
	if (iommufd)
		return stat("/dev", &b) == 0 && a.st_dev == b.st_dev;
	int e = (int)syscall(SYS_eventfd2, 0, O_CLOEXEC); /* an anonymous-inode file */
	int r = e >= 0 && fstat(e, &b) == 0 && a.st_dev == b.st_dev;
	if (e >= 0)
		syscall(SYS_close, e);
	return r;
}
#define VFS_RET(v) do { *ret = (v); return 1; } while (0)
#define VFS_ERR(e) do { errno = (e); *ret = -1; return 1; } while (0)
static int vfs_ioctl(int fd, unsigned long req, void *arg, int *ret)
{
	int iommufd = fdtab[fd].kind == K_IOMMUFD;
	int v;
	switch (req) {
	case FIOCLEX: case FIONCLEX: case FIONBIO:
		VFS_RET(real_ioctl(fd, req, arg));
	case FIOASYNC: /* no fasync method: switching it on is ENOTTY */
		if (!user_readable(arg, sizeof(int))) VFS_ERR(EFAULT);
		memcpy(&v, arg, sizeof(v));
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
		if (!user_write(arg, &bsz, sizeof(bsz))) VFS_ERR(EFAULT);
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
		if (!user_readable((char *)arg + 16, sizeof(count))) VFS_ERR(EFAULT);
		memcpy(&count, (char *)arg + 16, sizeof(count));
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
		syscall(SYS_close, d);
		if (r < 0) VFS_ERR(e);
		if (!user_write(arg, u, sizeof(u))) VFS_ERR(EFAULT);
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
	if (!live(fd) && !(((req >> 8) & 0xff) == IOMMUFD_TYPE && adopt(fd)))
		return real_ioctl(fd, req, arg);
	int ret;
	if (vfs_ioctl(fd, req, arg, &ret))
		return ret;
	return emu_ioctl(fd, req, arg);
}

/* ---- read / write --------------------------------------------------------------------- */
static ssize_t emu_fileop(int fd, int op, void *buf, size_t count, int64_t pos)
{
	struct fdent ent = fdtab[fd];
	pid_t tid = my_tid();
	struct req_fileop q = { sizeof(q), T_FILEOP, ent.token, (uint32_t)op, (uint64_t)(uintptr_t)buf, count,
				(uint64_t)pos, failnth_get(tid), map_gen };
	struct rep_fileop r;
	pthread_mutex_lock(&ctl_mu);
	int rc = ctl_rpc_locked(&q, sizeof(q), &r, sizeof(r));
	pthread_mutex_unlock(&ctl_mu);
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

static ssize_t failnth_read(int fd, void *buf, size_t count, int64_t pos, int advance)
{
	char num[32];
	int len = snprintf(num, sizeof(num), "%u\n", (unsigned)failnth_get(fdtab[fd].tid));
	if (pos < 0) {
		errno = EINVAL;
		return -1;
	}
	if (pos >= len)
		return 0;
	size_t n = (size_t)(len - pos) < count ? (size_t)(len - pos) : count;
	memcpy(buf, num + pos, n);
	if (advance)
		fdtab[fd].pos += (int64_t)n;
	return (ssize_t)n;
}

static ssize_t failnth_write(int fd, const void *buf, size_t count)
{
	char num[32];
	if (count == 0 || count >= sizeof(num)) {
		errno = EINVAL;
		return -1;
	}
	memcpy(num, buf, count);
	num[count] = 0;
	char *end;
	errno = 0;
	unsigned long v = strtoul(num, &end, 0);
	if (end == num || (*end && *end != '\n') || errno || v > 0x7fffffffUL) {
		errno = EINVAL;
		return -1;
	}
	failnth_set(fdtab[fd].tid, (int32_t)v);
	return (ssize_t)count;
}

EXPORT ssize_t read(int fd, void *buf, size_t count)
{
	RESOLVE(read);
	if (!live(fd))
		return real_read(fd, buf, count);
	if (fdtab[fd].kind == K_FAILNTH)
		return failnth_read(fd, buf, count, fdtab[fd].pos, 1);
	if (fdtab[fd].kind == K_EVENT)
		return emu_fileop(fd, 0, buf, count, 0);
	errno = EINVAL; /* /dev/iommu has no read */
	return -1;
}

EXPORT ssize_t write(int fd, const void *buf, size_t count)
{
	RESOLVE(write);
	if (!live(fd))
		return real_write(fd, buf, count);
	if (fdtab[fd].kind == K_FAILNTH)
		return failnth_write(fd, buf, count);
	if (fdtab[fd].kind == K_EVENT)
		return emu_fileop(fd, 1, (void *)buf, count, 0);
	errno = EINVAL;
	return -1;
}

/* The fds ioctls hand out are anonymous-inode files: no positional I/O (ESPIPE, whatever
 * the count). /dev/iommu allows it but has no read/write method (EINVAL). */
static ssize_t emu_pread(int fd, void *buf, size_t count, off_t off)
{
	if (fdtab[fd].kind == K_FAILNTH)
		return failnth_read(fd, buf, count, off, 0);
	errno = fdtab[fd].kind == K_EVENT ? ESPIPE : EINVAL;
	return -1;
}

static ssize_t emu_pwrite(int fd, const void *buf, size_t count, off_t off)
{
	if (fdtab[fd].kind == K_FAILNTH)
		return failnth_write(fd, buf, count);
	errno = fdtab[fd].kind == K_EVENT ? ESPIPE : EINVAL;
	return -1;
}

/* ---- poll: the driver's mask, not the socket's ---------------------------------------
 * /dev/iommu has no poll method (DEFAULT_POLLMASK); an event fd's mask comes from its
 * file in the server (DEFAULT_POLLMASK too for files without one). The socket's own
 * readiness still wakes a blocking wait (the server keeps a byte in it while readable). */
#define VFS_DEFAULT_POLLMASK (POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM)
static int emu_poll_mask(int fd)
{
	if (fdtab[fd].kind == K_IOMMUFD)
		return VFS_DEFAULT_POLLMASK;
	ssize_t m = emu_fileop(fd, 2, NULL, 0, 0);
	return m < 0 ? POLLERR : (int)m;
}

static int do_poll(struct pollfd *fds, nfds_t n, int timeout_ms, const struct timespec *ts, const sigset_t *sig)
{
	int any = 0, ready = 0;
	for (nfds_t i = 0; i < n; i++) {
		if (!live(fds[i].fd) || fdtab[fds[i].fd].kind == K_FAILNTH)
			continue;
		any = 1;
		if (emu_poll_mask(fds[i].fd) & (fds[i].events | POLLERR | POLLHUP))
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
		int fd = fds[i].fd;
		if (live(fd) && fdtab[fd].kind != K_FAILNTH)
			fds[i].revents = (short)(emu_poll_mask(fd) & (fds[i].events | POLLERR | POLLHUP));
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
	if (!ts) {
		/* ppoll with a mask and no timeout: wait forever under the mask. */
		return do_poll(fds, n, -1, &(struct timespec){ 0x7fffffff, 0 }, sig);
	}
	return do_poll(fds, n, 0, ts, sig);
}

EXPORT ssize_t pread(int fd, void *buf, size_t count, off_t off)
{
	RESOLVE(pread);
	return live(fd) ? emu_pread(fd, buf, count, off) : real_pread(fd, buf, count, off);
}

EXPORT ssize_t pread64(int fd, void *buf, size_t count, off_t off)
{
	RESOLVE(pread64);
	if (!real_pread64) { RESOLVE(pread); real_pread64 = real_pread; }
	return live(fd) ? emu_pread(fd, buf, count, off) : real_pread64(fd, buf, count, off);
}

EXPORT ssize_t pwrite(int fd, const void *buf, size_t count, off_t off)
{
	RESOLVE(pwrite);
	return live(fd) ? emu_pwrite(fd, buf, count, off) : real_pwrite(fd, buf, count, off);
}

EXPORT ssize_t pwrite64(int fd, const void *buf, size_t count, off_t off)
{
	RESOLVE(pwrite64);
	if (!real_pwrite64) { RESOLVE(pwrite); real_pwrite64 = real_pwrite; }
	return live(fd) ? emu_pwrite(fd, buf, count, off) : real_pwrite64(fd, buf, count, off);
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
			tail.memfd = fcntl(r->memfd, F_DUPFD_CLOEXEC, 900);
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
			syscall(SYS_close, r->memfd);
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
		struct req_unmap q = { sizeof(q), T_UNMAP, va, len };
		struct rep_status s;
		ctl_rpc_locked(&q, sizeof(q), &s, sizeof(s));
	}
}

/* Private memory is about to be unmapped or replaced (munmap, MAP_FIXED): tell the server
 * first, while the old content is still there. A page it pinned stays pinned with that
 * content (a kernel pin holds the page, not the mapping); the VA gets a new page. */
static void notify_replace(void *addr, size_t len)
{
	if (!len)
		return;
	pthread_mutex_lock(&ctl_mu);
	if (ctl_fd >= 0 && ctl_pid == getpid()) {
		struct req_unmap q = { sizeof(q), T_UNMAP, (uint64_t)(uintptr_t)addr & ~4095ULL,
				       ((uint64_t)(uintptr_t)addr % 4096 + len + 4095) / 4096 * 4096 };
		struct rep_status s;
		ctl_rpc_locked(&q, sizeof(q), &s, sizeof(s));
	}
	pthread_mutex_unlock(&ctl_mu);
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
	int hi = fcntl(mfd, F_DUPFD_CLOEXEC, 900);
	if (hi >= 0) {
		syscall(SYS_close, mfd);
		mfd = hi;
	}
	size_t flen = (len + unit - 1) / unit * unit;
	if (syscall(SYS_ftruncate, mfd, (off_t)flen) != 0) {
		syscall(SYS_close, mfd);
		errno = ENOMEM;
		return MAP_FAILED;
	}
	int nflags = (flags & ~(MAP_ANONYMOUS | MAP_HUGETLB | (0x3f << MAP_HUGE_SHIFT)));
	void *p = raw_mmap(addr, len, prot, nflags, mfd, 0);
	if (p == MAP_FAILED) {
		int e = errno;
		syscall(SYS_close, mfd);
		errno = e;
		return MAP_FAILED;
	}
	int e = errno;
	pthread_mutex_lock(&ctl_mu);
	notify_unmap_locked((uint64_t)(uintptr_t)p, len); /* MAP_FIXED over an old region */
	if (nregions < NREGIONS) {
		struct region r = { (uint64_t)(uintptr_t)p, (uint64_t)flen, 0, mfd, huge ? 1u : 0u };
		if (!huge)
			r.len = (len + 4095) / 4096 * 4096;
		regions[nregions++] = r;
		if (getenv("IOMMUFD_EMU_SOCKET") || ctl_fd >= 0)
			send_region_locked(&r);
	} else {
		syscall(SYS_close, mfd);
	}
	pthread_mutex_unlock(&ctl_mu);
	errno = e;
	return p;
}

/* mmaps of the iommufd (driver regions): each holds a reference in the server until unmapped */
#define NFDMAPS 64
static struct { uint64_t va, len; uint32_t handle; } fdmaps[NFDMAPS];
static int nfdmaps;

static void *iommufd_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	int mfd = (int)syscall(SYS_memfd_create, "iommufd-emu-region", MFD_CLOEXEC);
	if (mfd < 0)
		return MAP_FAILED;
	if (len == 0 || syscall(SYS_ftruncate, mfd, (off_t)len) != 0) {
		syscall(SYS_close, mfd);
		errno = EINVAL;
		return MAP_FAILED;
	}
	struct req_mmap q = { sizeof(q), T_MMAP, fdtab[fd].token, (uint32_t)prot, (uint64_t)off, (uint64_t)len,
			      (uint32_t)flags, mfd };
	struct rep_mmap r;
	pthread_mutex_lock(&ctl_mu);
	int rc = ctl_rpc_locked(&q, sizeof(q), &r, sizeof(r));
	pthread_mutex_unlock(&ctl_mu);
	if (rc < 0 || r.err < 0) {
		syscall(SYS_close, mfd);
		errno = rc < 0 ? EIO : -r.err;
		return MAP_FAILED;
	}
	void *p = raw_mmap(addr, len, prot, flags, mfd, 0);
	int e = errno;
	syscall(SYS_close, mfd);
	pthread_mutex_lock(&ctl_mu);
	if (p == MAP_FAILED || nfdmaps == NFDMAPS) {
		struct req_mrelease m = { sizeof(m), T_MRELEASE, r.handle, 0 };
		struct rep_status s;
		ctl_rpc_locked(&m, sizeof(m), &s, sizeof(s));
	} else {
		fdmaps[nfdmaps].va = (uint64_t)(uintptr_t)p;
		fdmaps[nfdmaps].len = (len + 4095) / 4096 * 4096;
		fdmaps[nfdmaps].handle = r.handle;
		nfdmaps++;
	}
	pthread_mutex_unlock(&ctl_mu);
	errno = e;
	return p;
}

/* [va, va+len) overlaps memory other processes may see: a shared region or an iommufd mapping (ctl_mu held). */
static int shared_at_locked(uint64_t va, uint64_t len)
{
	for (int i = 0; i < nfdmaps; i++)
		if (fdmaps[i].va < va + len && va < fdmaps[i].va + fdmaps[i].len)
			return 1;
	return overlaps_locked(va, len);
}

/* Unmapping the whole of an iommufd mapping drops its reference (ctl_mu held). */
static void fdmaps_unmap_locked(uint64_t va, uint64_t len)
{
	for (int i = 0; i < nfdmaps; i++) {
		if (fdmaps[i].va < va || fdmaps[i].va + fdmaps[i].len > va + len)
			continue;
		if (ctl_fd >= 0 && ctl_pid == getpid()) {
			struct req_mrelease m = { sizeof(m), T_MRELEASE, fdmaps[i].handle, 0 };
			struct rep_status s;
			ctl_rpc_locked(&m, sizeof(m), &s, sizeof(s));
		}
		fdmaps[i--] = fdmaps[--nfdmaps];
	}
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
	int e = errno;
	int huge = sf.f_type == (typeof(sf.f_type))HUGETLBFS_MAGIC_;
	int dupfd = fcntl(fd, F_DUPFD_CLOEXEC, 900);
	if (dupfd < 0) {
		errno = e;
		return;
	}
	pthread_mutex_lock(&ctl_mu);
	notify_unmap_locked((uint64_t)(uintptr_t)p, len);
	if (nregions < NREGIONS) {
		struct region r = { (uint64_t)(uintptr_t)p, (len + 4095) / 4096 * 4096, (uint64_t)off, dupfd, huge ? 1u : 0u };
		regions[nregions++] = r;
		if (getenv("IOMMUFD_EMU_SOCKET") || ctl_fd >= 0)
			send_region_locked(&r);
	} else {
		syscall(SYS_close, dupfd);
	}
	pthread_mutex_unlock(&ctl_mu);
	errno = e;
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	__atomic_add_fetch(&map_gen, 1, __ATOMIC_RELAXED);
	if (live(fd) && fdtab[fd].kind == K_IOMMUFD)
		return iommufd_mmap(addr, len, prot, flags, fd, off);
	if (flags & MAP_FIXED) {
		int e = errno;
		notify_replace(addr, len);
		errno = e;
	}
	int type = flags & MAP_SHARED_VALIDATE;
	if ((type == MAP_SHARED || type == MAP_SHARED_VALIDATE) && (flags & MAP_ANONYMOUS) && len > 0) {
		void *p = shared_anon_mmap(addr, len, prot, flags);
		if (p)
			return p;
	}
	void *p = raw_mmap(addr, len, prot, flags, fd, off);
	if (p != MAP_FAILED && (type == MAP_SHARED || type == MAP_SHARED_VALIDATE) && !(flags & MAP_ANONYMOUS) && fd >= 0) {
		shared_file_mapped(p, len, fd, off);
		return p;
	}
	if (p != MAP_FAILED && (flags & MAP_FIXED) && nregions) {
		int e = errno;
		pthread_mutex_lock(&ctl_mu);
		notify_unmap_locked((uint64_t)(uintptr_t)p, len);
		pthread_mutex_unlock(&ctl_mu);
		errno = e;
	}
	return p;
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return mmap(addr, len, prot, flags, fd, off);
}

EXPORT int mprotect(void *addr, size_t len, int prot)
{
	__atomic_add_fetch(&map_gen, 1, __ATOMIC_RELAXED);
	return (int)syscall(SYS_mprotect, addr, len, prot);
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
	__atomic_add_fetch(&map_gen, 1, __ATOMIC_RELAXED);
	void *p = (void *)syscall(SYS_mremap, old, old_len, new_len, flags, new_addr);
	if (p == MAP_FAILED || !nregions)
		return p;
	/* a shared region that moved or changed size: announce it at its new place */
	int e = errno;
	uint64_t o = (uint64_t)(uintptr_t)old;
	uint64_t olen = (old_len + 4095) / 4096 * 4096, nlen = (new_len + 4095) / 4096 * 4096;
	pthread_mutex_lock(&ctl_mu);
	for (int i = 0; i < nregions; i++) {
		struct region *r = &regions[i];
		if (r->va != o || r->len != olen)
			continue; /* only whole regions are followed */
		struct region moved = *r;
		moved.memfd = fcntl(r->memfd, F_DUPFD_CLOEXEC, 900);
		notify_unmap_locked(o, olen); /* drops r (and closes its memfd) */
		if (moved.memfd >= 0 && nregions < NREGIONS) {
			moved.va = (uint64_t)(uintptr_t)p;
			moved.len = nlen;
			notify_unmap_locked(moved.va, moved.len);
			regions[nregions++] = moved;
			if (ctl_fd >= 0 && ctl_pid == getpid())
				send_region_locked(&moved);
		}
		break;
	}
	pthread_mutex_unlock(&ctl_mu);
	errno = e;
	return p;
}

EXPORT int munmap(void *addr, size_t len)
{
	__atomic_add_fetch(&map_gen, 1, __ATOMIC_RELAXED);
	int e0 = errno;
	notify_replace(addr, len);
	errno = e0;
	int r = (int)syscall(SYS_munmap, addr, len);
	if (r == 0 && nfdmaps) {
		int e = errno;
		pthread_mutex_lock(&ctl_mu);
		fdmaps_unmap_locked((uint64_t)(uintptr_t)addr, (len + 4095) / 4096 * 4096);
		pthread_mutex_unlock(&ctl_mu);
		errno = e;
	}
	if (r == 0 && nregions) {
		int e = errno;
		pthread_mutex_lock(&ctl_mu);
		notify_unmap_locked((uint64_t)(uintptr_t)addr, (len + 4095) / 4096 * 4096);
		pthread_mutex_unlock(&ctl_mu);
		errno = e;
	}
	return r;
}

/* ---- process lifetime ------------------------------------------------------------------ */
static void atfork_prepare(void)
{
	pthread_mutex_lock(&ctl_mu);
	pthread_mutex_lock(&tab_mu);
}

static void atfork_parent(void)
{
	pthread_mutex_unlock(&tab_mu);
	pthread_mutex_unlock(&ctl_mu);
}

static void atfork_child(void)
{
	pthread_mutex_init(&ctl_mu, NULL);
	pthread_mutex_init(&tab_mu, NULL);
	pthread_mutex_init(&failnth_mu, NULL);
	pthread_mutex_init(&debugfs_mu, NULL);
	if (ctl_fd >= 0)
		syscall(SYS_close, ctl_fd); /* the parent's; we make our own */
	ctl_fd = -1;
	memset(failnth_tab, 0, sizeof(failnth_tab));
	nfdmaps = 0; /* the parent's references, not ours */
}

__attribute__((constructor)) static void shim_init(void)
{
	/* let the server (not necessarily our ancestor) read our memory under Yama */
	prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
	state_pid = 0;
	adopt_inherited();
}
