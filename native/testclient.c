/*
 * Test client for the server/shim tests (src/server/server.test.ts): an
 * ordinary program using /dev/iommu, built with the system cc against headers
 * generated from the uAPI table. Each mode prints "OK ..." lines on success
 * and exits non-zero on the first unexpected result.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/iommufd.h>
#include "iommufd_test.h"
#include "iommufd_emu_wire.h"
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>

#define DIE(...) do { printf("FAIL line %d: ", __LINE__); printf(__VA_ARGS__); printf(" (errno %d %s)\n", errno, strerror(errno)); exit(1); } while (0)

static int xopen(void)
{
	int fd = open("/dev/iommu", O_RDWR);
	if (fd < 0)
		DIE("open /dev/iommu");
	return fd;
}

static __u32 ioas_alloc(int fd)
{
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	if (ioctl(fd, IOMMU_IOAS_ALLOC, &a))
		DIE("IOAS_ALLOC");
	return a.out_ioas_id;
}

static int destroy(int fd, __u32 id)
{
	struct iommu_destroy d = { .size = sizeof(d), .id = id };
	return ioctl(fd, IOMMU_DESTROY, &d);
}

static void *worker(void *p)
{
	int fd = *(int *)p;
	for (int i = 0; i < 300; i++) {
		__u32 id = ioas_alloc(fd);
		if (destroy(fd, id))
			DIE("DESTROY %u", id);
	}
	return NULL;
}

static int mode_basic(void)
{
	int fd = xopen();
	__u32 ioas = ioas_alloc(fd);
	size_t len = 16384;
	char *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	memset(buf, 1, len);
	struct iommu_test_cmd mock = { .size = sizeof(mock), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	if (ioctl(fd, IOMMU_TEST_CMD, &mock))
		DIE("MOCK_DOMAIN");
	struct iommu_ioas_map map = { .size = sizeof(map), .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
				      .ioas_id = ioas, .user_va = (__u64)(unsigned long)buf, .length = len };
	if (ioctl(fd, IOMMU_IOAS_MAP, &map))
		DIE("MAP");
	struct iommu_test_cmd chk = { .size = sizeof(chk), .op = IOMMU_TEST_OP_MD_CHECK_MAP, .id = mock.mock_domain.out_hwpt_id };
	chk.check_map.iova = map.iova;
	chk.check_map.length = len;
	chk.check_map.uptr = (__u64)(unsigned long)buf;
	if (ioctl(fd, IOMMU_TEST_CMD, &chk))
		DIE("MD_CHECK_MAP");
	/* a pointer the kernel cannot read: EFAULT */
	if (ioctl(fd, IOMMU_IOAS_ALLOC, (void *)8) != -1 || errno != EFAULT)
		DIE("IOAS_ALLOC(bad pointer) should be EFAULT");
	/* protections hold although the server writes through /proc/pid/mem */
	struct iommu_ioas_alloc *ro = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ro->size = sizeof(*ro);
	mprotect(ro, 4096, PROT_READ);
	if (ioctl(fd, IOMMU_IOAS_ALLOC, ro) != -1 || errno != EFAULT)
		DIE("IOAS_ALLOC into read-only memory should be EFAULT");
	mprotect(ro, 4096, PROT_NONE);
	if (ioctl(fd, IOMMU_IOAS_ALLOC, ro) != -1 || errno != EFAULT)
		DIE("IOAS_ALLOC from PROT_NONE memory should be EFAULT");
	mprotect(ro, 4096, PROT_READ | PROT_WRITE);
	if (ioctl(fd, IOMMU_IOAS_ALLOC, ro) || ro->out_ioas_id == 0)
		DIE("IOAS_ALLOC after mprotect back: id %u", ro->out_ioas_id);
	/* a shared buffer moved with mremap keeps its pages' identity */
	char *moved = mremap(buf, len, 2 * len, MREMAP_MAYMOVE);
	if (moved == MAP_FAILED)
		DIE("mremap");
	struct iommu_ioas_map map2 = { .size = sizeof(map2), .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
				       .ioas_id = ioas, .user_va = (__u64)(unsigned long)moved, .length = len };
	if (ioctl(fd, IOMMU_IOAS_MAP, &map2))
		DIE("MAP after mremap");
	chk.check_map.uptr = (__u64)(unsigned long)moved;
	chk.check_map.iova = map.iova; /* pinned before the move: still the same pages */
	if (ioctl(fd, IOMMU_TEST_CMD, &chk))
		DIE("MD_CHECK_MAP of the first mapping at the moved address");
	chk.check_map.iova = map2.iova;
	if (ioctl(fd, IOMMU_TEST_CMD, &chk))
		DIE("MD_CHECK_MAP after mremap");
	buf = moved;
	if (close(fd))
		DIE("close");
	/* pins are gone once close returned */
	fd = xopen();
	struct iommu_test_cmd refs = { .size = sizeof(refs), .op = IOMMU_TEST_OP_MD_CHECK_REFS };
	refs.check_refs.length = len;
	refs.check_refs.uptr = (__u64)(unsigned long)buf;
	refs.check_refs.refs = 0;
	if (ioctl(fd, IOMMU_TEST_CMD, &refs))
		DIE("MD_CHECK_REFS after close");
	close(fd);
	printf("OK basic ioas=%u\n", ioas);
	return 0;
}

static int mode_hold(void)
{
	int fd = xopen();
	__u32 ioas = ioas_alloc(fd);
	printf("READY ioas=%u\n", ioas);
	fflush(stdout);
	for (;;)
		pause();
	return 0;
}

static int mode_fork(void)
{
	int fd = xopen();
	__u32 a = ioas_alloc(fd);
	char *buf = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	pid_t pid = fork();
	if (pid == 0) {
		/* the child shares the context: the next ID continues the parent's */
		__u32 b = ioas_alloc(fd);
		buf[0] = (char)b;
		_exit(b == a + 1 ? 0 : 3);
	}
	int st;
	waitpid(pid, &st, 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		DIE("child status %d", st);
	__u32 c = ioas_alloc(fd);
	if (c != a + 2 || buf[0] != (char)(a + 1))
		DIE("after fork: c=%u", c);
	/* the context outlives the child's exit and our dup+close */
	int fd2 = dup(fd);
	close(fd);
	if (destroy(fd2, a))
		DIE("DESTROY on dup");
	close(fd2);
	printf("OK fork ids=%u,%u,%u\n", a, a + 1, c);
	return 0;
}

/* issue ioctls from 4 threads until killed */
static void *spinner(void *p)
{
	int fd = *(int *)p;
	for (;;) {
		__u32 id = ioas_alloc(fd);
		destroy(fd, id);
	}
	return NULL;
}

static int mode_spin(void)
{
	static int fd;
	fd = xopen();
	ioas_alloc(fd);
	pthread_t t[4];
	for (int i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, spinner, &fd);
	printf("READY spinning\n");
	fflush(stdout);
	for (;;)
		pause();
	return 0;
}

/* N IOAS_ALLOC/DESTROY pairs after one warm-up call: print this process's CPU time (user + system) over them, microseconds */
static int mode_calls(int n)
{
	int fd = xopen();
	destroy(fd, ioas_alloc(fd));
	struct rusage a, b;
	getrusage(RUSAGE_SELF, &a);
	for (int i = 0; i < n; i++)
		destroy(fd, ioas_alloc(fd));
	getrusage(RUSAGE_SELF, &b);
	long us = (b.ru_utime.tv_sec - a.ru_utime.tv_sec + b.ru_stime.tv_sec - a.ru_stime.tv_sec) * 1000000L +
		  (b.ru_utime.tv_usec - a.ru_utime.tv_usec + b.ru_stime.tv_usec - a.ru_stime.tv_usec);
	printf("CPU_US %ld\n", us);
	return 0;
}

/* ioctls until one fails (the server is killed meanwhile): print how it failed */
static int mode_serverdeath(void)
{
	int fd = xopen();
	printf("READY\n");
	fflush(stdout);
	for (;;) {
		struct iommu_ioas_alloc a = { .size = sizeof(a) };
		if (ioctl(fd, IOMMU_IOAS_ALLOC, &a)) {
			printf("FAILED %s\n", strerror(errno));
			return 0;
		}
		destroy(fd, a.out_ioas_id);
	}
}

/*
 * fork while another thread is in the middle of calls: the children (fork,
 * and a raw fork that runs no fork handlers) call on the inherited fd and on
 * a fresh one, and the parent's thread keeps going.
 */
static volatile int forkcall_stop;
static void *forkcall_thread(void *p)
{
	int fd = *(int *)p;
	long n = 0;
	while (!forkcall_stop) {
		__u32 id = ioas_alloc(fd);
		if (destroy(fd, id))
			DIE("DESTROY in thread");
		n++;
	}
	return (void *)n;
}

static int forkcall_child(int fd)
{
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	if (ioctl(fd, IOMMU_IOAS_ALLOC, &a) || destroy(fd, a.out_ioas_id))
		return 2;
	int f2 = open("/dev/iommu", O_RDWR);
	if (f2 < 0 || ioctl(f2, IOMMU_IOAS_ALLOC, &a) || a.out_ioas_id != 1)
		return 3;
	close(f2);
	return 0;
}

static int mode_forkcall(void)
{
	static int fd;
	fd = xopen();
	pthread_t t;
	pthread_create(&t, NULL, forkcall_thread, &fd);
	for (int i = 0; i < 20; i++) {
		pid_t pid = fork();
		if (pid == 0)
			_exit(forkcall_child(fd));
		int st;
		if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st))
			DIE("fork child %d: status %d", i, st);
	}
	forkcall_stop = 1;
	void *n;
	pthread_join(t, &n);
	/* a raw fork runs no fork handlers: the child must not use our slot (not mapped there) */
	pid_t pid = (pid_t)syscall(SYS_fork);
	if (pid == 0)
		_exit(forkcall_child(fd));
	int st;
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st))
		DIE("raw fork child: status %d", st);
	if (destroy(fd, ioas_alloc(fd)))
		DIE("DESTROY after forks");
	printf("OK forkcall thread-calls=%ld\n", (long)n);
	return 0;
}

/* round-trip latency of a minimal ioctl */
static int mode_latency(void)
{
	int fd = xopen();
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	int n = 20000;
	for (int i = 0; i < n; i++) {
		struct iommu_destroy d = { .size = sizeof(d), .id = 12345 };
		ioctl(fd, IOMMU_DESTROY, &d);
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	double us = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / n;
	close(fd);
	printf("OK latency %.1f us\n", us);
	return 0;
}

#ifdef IOMMU_IOAS_MAP_FILE
/* IOAS_MAP_FILE of a memfd: the domain maps the file's pages, which a MAP_SHARED mapping of it shows */
static int mode_mapfile(void)
{
	size_t len = 65536;
	int mfd = memfd_create("testclient", 0);
	if (mfd < 0 || ftruncate(mfd, (off_t)len))
		DIE("memfd");
	char *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (buf == MAP_FAILED)
		DIE("mmap memfd");
	memset(buf, 0x77, len);
	int fd = xopen();
	__u32 ioas = ioas_alloc(fd);
	struct iommu_test_cmd mock = { .size = sizeof(mock), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	if (ioctl(fd, IOMMU_TEST_CMD, &mock))
		DIE("MOCK_DOMAIN");
	struct iommu_ioas_map_file mf = { .size = sizeof(mf), .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
					  .ioas_id = ioas, .fd = mfd, .start = 0, .length = len };
	if (ioctl(fd, IOMMU_IOAS_MAP_FILE, &mf))
		DIE("IOAS_MAP_FILE");
	close(mfd); /* the mapping and the IOAS keep the file */
	struct iommu_test_cmd chk = { .size = sizeof(chk), .op = IOMMU_TEST_OP_MD_CHECK_MAP, .id = mock.mock_domain.out_hwpt_id };
	chk.check_map.iova = mf.iova;
	chk.check_map.length = len;
	chk.check_map.uptr = (__u64)(unsigned long)buf;
	if (ioctl(fd, IOMMU_TEST_CMD, &chk))
		DIE("MD_CHECK_MAP of the file's pages through a shared mapping");
	struct iommu_test_cmd refs = { .size = sizeof(refs), .op = IOMMU_TEST_OP_MD_CHECK_REFS };
	refs.check_refs.length = len;
	refs.check_refs.uptr = (__u64)(unsigned long)buf;
	refs.check_refs.refs = 1;
	if (ioctl(fd, IOMMU_TEST_CMD, &refs))
		DIE("MD_CHECK_REFS 1");
	close(fd);
	printf("OK mapfile\n");
	return 0;
}
#endif

/* dup2/dup3/F_DUPFD_CLOEXEC copies are the same context; close_range closes them all */
static int mode_dups(void)
{
	int fd = xopen();
	if (dup2(fd, 50) != 50 || dup3(fd, 51, O_CLOEXEC) != 51 || fcntl(fd, F_DUPFD_CLOEXEC, 60) != 60)
		DIE("dups");
	if (!(fcntl(51, F_GETFD) & FD_CLOEXEC) || (fcntl(50, F_GETFD) & FD_CLOEXEC))
		DIE("cloexec flags");
	if (ioas_alloc(50) != 1 || ioas_alloc(51) != 2 || ioas_alloc(60) != 3)
		DIE("dups are not one context");
	close(fd);
	if (ioas_alloc(50) != 4)
		DIE("context lost with the original fd");
	if (close_range(50, 70, 0))
		DIE("close_range");
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	if (ioctl(50, IOMMU_IOAS_ALLOC, &a) != -1 || errno != EBADF)
		DIE("fd 50 still open after close_range");
	/* everything was released when close_range returned: a new context starts at 1 */
	fd = xopen();
	if (ioas_alloc(fd) != 1)
		DIE("fresh context");
	close(fd);
	printf("OK dups\n");
	return 0;
}

/* fail-nth is per thread: arming another thread's file leaves ours alone */
static int armed_result;
static void *armed_thread(void *p)
{
	int fd = *(int *)p;
	int f = open("/proc/thread-self/fail-nth", O_RDWR);
	if (f < 0 || write(f, "1", 1) != 1)
		return (void *)1;
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	armed_result = ioctl(fd, IOMMU_IOAS_ALLOC, &a) == -1 ? errno : 0;
	close(f);
	return NULL;
}

static int mode_failnth_threads(void)
{
	int fd = xopen();
	pthread_t t;
	pthread_create(&t, NULL, armed_thread, &fd);
	void *rv;
	pthread_join(t, &rv);
	if (rv || armed_result != EFAULT) /* point 1: the command's copy-in */
		DIE("armed thread: ioctl should fail EFAULT, got %d", armed_result);
	if (ioas_alloc(fd) != 1) /* the failed call left nothing behind */
		DIE("main thread affected");
	close(fd);
	printf("OK failnth-threads\n");
	return 0;
}

/* the debugfs the fault-injection tests probe is a private prepared directory */
static int mode_debugfs(void)
{
	DIR *d = opendir("/sys/kernel/debug/");
	if (!d)
		DIE("opendir debugfs");
	int seen = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		seen |= (!strcmp(e->d_name, "failslab")) | ((!strcmp(e->d_name, "fail_page_alloc")) << 1);
	int fd = openat(dirfd(d), "failslab/ignore-gfp-wait", O_WRONLY);
	if (seen != 3 || fd < 0 || write(fd, "N", 1) != 1)
		DIE("debugfs contents");
	close(fd);
	closedir(d);
	printf("OK debugfs\n");
	return 0;
}

/* hugetlb memory (shared and private) is made of compound pages: MD_CHECK_REFS skips them */
static int mode_huge(void)
{
	size_t len = 2u << 20;
	int fd = xopen();
	for (int shared = 0; shared < 2; shared++) {
		char *buf = mmap(NULL, len, PROT_READ | PROT_WRITE,
				 (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
		if (buf == MAP_FAILED)
			DIE("hugetlb mmap (shared %d)", shared);
		struct iommu_test_cmd refs = { .size = sizeof(refs), .op = IOMMU_TEST_OP_MD_CHECK_REFS };
		refs.check_refs.length = len;
		refs.check_refs.uptr = (__u64)(unsigned long)buf;
		refs.check_refs.refs = 12345; /* never true of an ordinary page */
		if (ioctl(fd, IOMMU_TEST_CMD, &refs))
			DIE("hugetlb pages not compound (shared %d)", shared);
		munmap(buf, len);
	}
	close(fd);
	printf("OK huge\n");
	return 0;
}

/* other spellings of the same node */
static int mode_paths(void)
{
	if (access("/dev/iommu", R_OK | W_OK) || faccessat(AT_FDCWD, "/dev/iommu", F_OK, 0))
		DIE("access(/dev/iommu)");
	int d = open("/dev", O_RDONLY | O_DIRECTORY);
	int a = openat(d, "iommu", O_RDWR);
	if (a < 0)
		DIE("openat(/dev, iommu)");
	if (chdir("/dev"))
		DIE("chdir");
	int b = open("iommu", O_RDWR);
	if (b < 0)
		DIE("open(iommu) in /dev");
	FILE *f = fopen("/dev/iommu", "r+");
	if (!f)
		DIE("fopen");
	/* three independent contexts: each starts at ID 1 */
	if (ioas_alloc(a) != 1 || ioas_alloc(b) != 1 || ioas_alloc(fileno(f)) != 1)
		DIE("contexts not independent");
	/* fclose closes the fd behind the shim's back: a new file on that number is not ours */
	int num = fileno(f);
	fclose(f);
	int nul = open("/dev/null", O_WRONLY);
	if (nul != num)
		DIE("expected fd %d to be reused, got %d", num, nul);
	if (write(nul, "x", 1) != 1)
		DIE("write to /dev/null on a reused fd number");
	close(nul);
	close(a);
	close(b);
	close(d);
	printf("OK paths\n");
	return 0;
}

static int mode_threads(void)
{
	int fd = xopen();
	pthread_t t[8];
	for (int i = 0; i < 8; i++)
		pthread_create(&t[i], NULL, worker, &fd);
	for (int i = 0; i < 8; i++)
		pthread_join(t[i], NULL);
	close(fd);
	printf("OK threads\n");
	return 0;
}

static int mode_event(void)
{
	int fd = xopen();
	struct pollfd pi = { .fd = fd, .events = POLLIN | POLLOUT };
	if (poll(&pi, 1, 0) != 1 || (pi.revents & (POLLIN | POLLOUT)) != (POLLIN | POLLOUT))
		DIE("/dev/iommu should poll readable and writable (revents %x)", pi.revents);
	struct iommu_fault_alloc fa = { .size = sizeof(fa) };
	if (ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa))
		DIE("FAULT_QUEUE_ALLOC");
	int ffd = (int)fa.out_fault_fd;
	if (fcntl(ffd, F_GETFD) < 0)
		DIE("fault fd %d is not a real fd", ffd);
	if (!(fcntl(ffd, F_GETFD) & FD_CLOEXEC))
		DIE("fault fd not close-on-exec");
	struct pollfd p = { .fd = ffd, .events = POLLIN };
	if (poll(&p, 1, 0) != 0)
		DIE("fault fd readable while empty");
	struct iommu_hwpt_pgfault rec[2];
	if (read(ffd, rec, sizeof(rec)) != 0)
		DIE("read of an empty queue");
	if (read(ffd, rec, 7) != -1 || errno != ESPIPE)
		DIE("read of 7 bytes should be ESPIPE");
	/* while the fd is open the object is busy */
	if (destroy(fd, fa.out_fault_id) != -1 || errno != EBUSY)
		DIE("DESTROY with open fd should be EBUSY");
	if (close(ffd))
		DIE("close fault fd");
	/* close is synchronous: the object can go right away */
	if (destroy(fd, fa.out_fault_id))
		DIE("DESTROY after close");
	close(fd);
	printf("OK event\n");
	return 0;
}

#ifdef IOMMU_VEVENTQ_ALLOC
/* IOAS, a mock device attached to it, and a nest-parent HWPT for vIOMMUs */
struct nest_fixture {
	__u32 ioas, stdev, idev, parent;
};

static struct nest_fixture nest_fixture(int fd)
{
	struct nest_fixture f = { .ioas = ioas_alloc(fd) };
	struct iommu_test_cmd mock = { .size = sizeof(mock), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = f.ioas };
	if (ioctl(fd, IOMMU_TEST_CMD, &mock))
		DIE("MOCK_DOMAIN");
	f.stdev = mock.mock_domain.out_stdev_id;
	f.idev = mock.mock_domain.out_idev_id;
	struct iommu_hwpt_alloc hw = { .size = sizeof(hw), .flags = IOMMU_HWPT_ALLOC_NEST_PARENT, .dev_id = f.idev, .pt_id = f.ioas };
	if (ioctl(fd, IOMMU_HWPT_ALLOC, &hw))
		DIE("HWPT_ALLOC");
	f.parent = hw.out_hwpt_id;
	return f;
}

/* vIOMMU + vDEVICE + vEVENTQ: readiness of the event fd follows the queue */
static int mode_vevent(void)
{
	int fd = xopen();
	struct nest_fixture f = nest_fixture(fd);
	__u32 idev = f.idev;
	struct iommu_viommu_alloc va = { .size = sizeof(va), .type = IOMMU_VIOMMU_TYPE_SELFTEST, .dev_id = idev, .hwpt_id = f.parent };
	if (ioctl(fd, IOMMU_VIOMMU_ALLOC, &va))
		DIE("VIOMMU_ALLOC");
	struct iommu_vdevice_alloc vd = { .size = sizeof(vd), .viommu_id = va.out_viommu_id, .dev_id = idev, .virt_id = 0x99 };
	if (ioctl(fd, IOMMU_VDEVICE_ALLOC, &vd))
		DIE("VDEVICE_ALLOC");
	/* attach the device to a nested HWPT on the vIOMMU */
	struct iommu_hwpt_selftest data = { .iotlb = IOMMU_TEST_IOTLB_DEFAULT };
	struct iommu_hwpt_alloc nest = { .size = sizeof(nest), .dev_id = idev, .pt_id = va.out_viommu_id,
					 .data_type = IOMMU_HWPT_DATA_SELFTEST, .data_len = sizeof(data),
					 .data_uptr = (__u64)(unsigned long)&data };
	if (ioctl(fd, IOMMU_HWPT_ALLOC, &nest))
		DIE("HWPT_ALLOC nested");
	struct iommu_test_cmd rep = { .size = sizeof(rep), .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, .id = f.stdev };
	rep.mock_domain_replace.pt_id = nest.out_hwpt_id;
	if (ioctl(fd, IOMMU_TEST_CMD, &rep))
		DIE("MOCK_DOMAIN_REPLACE");
	struct iommu_veventq_alloc vq = { .size = sizeof(vq), .viommu_id = va.out_viommu_id, .type = IOMMU_VEVENTQ_TYPE_SELFTEST, .veventq_depth = 4 };
	if (ioctl(fd, IOMMU_VEVENTQ_ALLOC, &vq))
		DIE("VEVENTQ_ALLOC");
	int qfd = (int)vq.out_veventq_fd;
	struct pollfd p = { .fd = qfd, .events = POLLIN };
	if (poll(&p, 1, 0) != 0)
		DIE("empty vEVENTQ readable");
	struct iommu_test_cmd trig = { .size = sizeof(trig), .op = IOMMU_TEST_OP_TRIGGER_VEVENT };
	trig.trigger_vevent.dev_id = idev;
	if (ioctl(fd, IOMMU_TEST_CMD, &trig))
		DIE("TRIGGER_VEVENT");
	if (poll(&p, 1, 1000) != 1 || !(p.revents & POLLIN))
		DIE("vEVENTQ not readable after an event");
	struct { struct iommufd_vevent_header h; __u32 virt_id; } ev;
	if (read(qfd, &ev, sizeof(ev)) != sizeof(ev))
		DIE("read event");
	if (ev.virt_id != 0x99 || ev.h.sequence != 0)
		DIE("event virt_id %x seq %u", ev.virt_id, ev.h.sequence);
	p.revents = 0;
	if (poll(&p, 1, 0) != 0)
		DIE("vEVENTQ still readable after draining");
	if (close(qfd) || destroy(fd, vq.out_veventq_id))
		DIE("close/destroy vEVENTQ");
	close(fd);
	printf("OK vevent\n");
	return 0;
}

/* mmap of the iommufd: a driver region; the mapping holds its owner */
static int mode_mmap(void)
{
	int fd = xopen();
	struct nest_fixture f = nest_fixture(fd);
	__u32 idev = f.idev;
	struct iommu_viommu_selftest data = { .in_data = 0xbadbeef };
	struct iommu_viommu_alloc va = { .size = sizeof(va), .type = IOMMU_VIOMMU_TYPE_SELFTEST, .dev_id = idev,
					 .hwpt_id = f.parent, .data_len = sizeof(data), .data_uptr = (__u64)(unsigned long)&data };
	if (ioctl(fd, IOMMU_VIOMMU_ALLOC, &va))
		DIE("VIOMMU_ALLOC");
	if (!data.out_mmap_offset || !data.out_mmap_length)
		DIE("no mmap region reported");
	/* the mm's own checks come before any file's mmap method (a fault fd has none: ENODEV) */
	struct iommu_fault_alloc fa = { .size = sizeof(fa) };
	if (ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa))
		DIE("FAULT_QUEUE_ALLOC");
	static const struct { int fd_fault; size_t len; int flags; off_t off; int err; } mm[] = {
		{ 0, 0, MAP_SHARED, 0, EINVAL }, { 1, 0, MAP_SHARED, 0, EINVAL }, { 0, 4096, MAP_SHARED, 1, EINVAL },
		{ 1, (size_t)-1, MAP_SHARED, 0, ENOMEM }, { 1, 4096, 0, 0, EINVAL }, { 1, 8192, MAP_SHARED, -4096, EOVERFLOW },
		{ 1, 4096, MAP_SHARED_VALIDATE | MAP_FIXED_NOREPLACE, 0, EOPNOTSUPP }, { 1, 4096, MAP_SHARED, 0, ENODEV },
	};
	for (unsigned i = 0; i < sizeof(mm) / sizeof(mm[0]); i++) {
		int mfd = mm[i].fd_fault ? (int)fa.out_fault_fd : fd;
		errno = 0;
		if (mmap(NULL, mm[i].len, PROT_READ, mm[i].flags, mfd, mm[i].off) != MAP_FAILED || errno != mm[i].err)
			DIE("mmap check %u: errno %d, want %d", i, errno, mm[i].err);
	}
	close((int)fa.out_fault_fd);
	destroy(fd, fa.out_fault_id);
	if (mmap(NULL, data.out_mmap_length, PROT_READ, MAP_SHARED, fd, (off_t)data.out_mmap_offset + 4096) != MAP_FAILED || errno != ENXIO)
		DIE("mmap at a wrong offset should be ENXIO");
	if (mmap(NULL, data.out_mmap_length, PROT_READ, MAP_PRIVATE, fd, (off_t)data.out_mmap_offset) != MAP_FAILED || errno != EINVAL)
		DIE("MAP_PRIVATE should be EINVAL");
	__u32 *page = mmap(NULL, data.out_mmap_length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)data.out_mmap_offset);
	if (page == MAP_FAILED)
		DIE("mmap region");
	if (page[0] != 0xbadbeef)
		DIE("region content %x", page[0]);
	/* the region's pages are shared: a second mapping sees the first one's write */
	page[1] = 0x1234;
	__u32 *page2 = mmap(NULL, data.out_mmap_length, PROT_READ, MAP_SHARED, fd, (off_t)data.out_mmap_offset);
	if (page2 == MAP_FAILED || page2[1] != 0x1234 || page2[0] != 0xbadbeef)
		DIE("second mapping does not share the region");
	if (destroy(fd, va.out_viommu_id) != -1 || errno != EBUSY)
		DIE("DESTROY of a mapped vIOMMU should be EBUSY");
	munmap(page2, data.out_mmap_length);
	if (destroy(fd, va.out_viommu_id) != -1 || errno != EBUSY)
		DIE("DESTROY with one mapping left should be EBUSY");
	munmap(page, data.out_mmap_length);
	if (destroy(fd, va.out_viommu_id))
		DIE("DESTROY after munmap");
	close(fd);
	printf("OK mmap\n");
	return 0;
}
#endif

static int mode_failnth(void)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/task/%d/fail-nth", getpid());
	int f = open(path, O_RDWR);
	if (f < 0)
		DIE("open %s", path);
	if (pwrite(f, "1", 1, 0) != 1)
		DIE("arm");
	/* By default (failslab ignore-gfp-wait Y) sleeping allocations are no points: the first is
	 * the copy of the path */
	int fd = open("/dev/iommu", O_RDWR);
	if (fd != -1 || errno != EFAULT)
		DIE("open with fail-nth=1 should fail EFAULT (fd %d)", fd);
	char b[8] = { 0 };
	if (pread(f, b, sizeof(b), 0) < 2 || strcmp(b, "0\n"))
		DIE("fail-nth should read 0 after firing, got '%s'", b);
	/* As the fail_nth selftest sets it: every allocation is a point, the first the path's buffer */
	int g = open("/sys/kernel/debug/failslab/ignore-gfp-wait", O_WRONLY);
	if (g < 0 || write(g, "N", 1) != 1)
		DIE("failslab/ignore-gfp-wait");
	close(g);
	if (pwrite(f, "1", 1, 0) != 1)
		DIE("arm");
	fd = open("/dev/iommu", O_RDWR);
	if (fd != -1 || errno != ENOMEM)
		DIE("open with fail-nth=1 and ignore-gfp-wait N should fail ENOMEM (fd %d)", fd);
	g = open("/sys/kernel/debug/failslab/ignore-gfp-wait", O_WRONLY);
	if (g < 0 || write(g, "Y", 1) != 1)
		DIE("failslab/ignore-gfp-wait");
	close(g);
	fd = xopen();
	if (pwrite(f, "1000", 4, 0) != 4)
		DIE("arm 1000");
	ioas_alloc(fd);
	memset(b, 0, sizeof(b));
	if (pread(f, b, sizeof(b), 0) < 2 || !strcmp(b, "0\n") || !strcmp(b, "1000\n"))
		DIE("fail-nth should have counted down, got '%s'", b);
	if (pwrite(f, "0", 1, 0) != 1)
		DIE("disarm");
	close(fd);
	close(f);
	printf("OK failnth\n");
	return 0;
}

/* an iommufd inherited across exec is still the same context */
static int mode_exec(char **argv)
{
	int fd = open("/dev/iommu", O_RDWR); /* no O_CLOEXEC */
	if (fd < 0)
		DIE("open");
	__u32 a = ioas_alloc(fd);
	char num[16];
	snprintf(num, sizeof(num), "%d", fd);
	pid_t pid = fork();
	if (pid == 0) {
		execl("/proc/self/exe", argv[0], "exec-child", num, (char *)NULL);
		_exit(5);
	}
	int st;
	waitpid(pid, &st, 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		DIE("exec child status %d", st);
	__u32 c = ioas_alloc(fd);
	if (c != a + 2)
		DIE("ids after exec child: %u", c);
	close(fd);
	printf("OK exec\n");
	return 0;
}

static int mode_exec_child(const char *num)
{
	int fd = atoi(num);
	__u32 b = ioas_alloc(fd);
	if (b != 2)
		DIE("exec child got id %u", b);
	close(fd);
	return 0;
}

/* an iommufd received over SCM_RIGHTS by an unrelated program image */
static int send_fd(int sock, int fd)
{
	char c = 'x';
	struct iovec iov = { &c, 1 };
	char ctl[CMSG_SPACE(sizeof(int))];
	memset(ctl, 0, sizeof(ctl));
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof(ctl) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	return sendmsg(sock, &m, 0) == 1 ? 0 : -1;
}

static int mode_scm(char **argv)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		DIE("socketpair");
	char num[16];
	snprintf(num, sizeof(num), "%d", sv[1]);
	pid_t pid = fork();
	if (pid == 0) {
		close(sv[0]);
		execl("/proc/self/exe", argv[0], "scm-child", num, (char *)NULL);
		_exit(5);
	}
	close(sv[1]);
	/* opened after the child's exec: it can only learn of it from the message */
	int fd = xopen();
	__u32 a = ioas_alloc(fd);
	struct iommu_fault_alloc fa = { .size = sizeof(fa) };
	if (ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa))
		DIE("FAULT_QUEUE_ALLOC");
	if (send_fd(sv[0], fd) || send_fd(sv[0], (int)fa.out_fault_fd))
		DIE("sendmsg");
	int st;
	waitpid(pid, &st, 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		DIE("scm child status %d", st);
	if (ioas_alloc(fd) != a + 3)
		DIE("ids after scm child");
	close(fd);
	printf("OK scm\n");
	return 0;
}

static int recv_fd(int sock)
{
	char c;
	struct iovec iov = { &c, 1 };
	char ctl[CMSG_SPACE(sizeof(int))];
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof(ctl) };
	if (recvmsg(sock, &m, 0) != 1)
		return -1;
	int fd;
	memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof(int));
	return fd;
}

static int mode_scm_child(const char *num)
{
	int sock = atoi(num);
	int fd = recv_fd(sock);
	int ffd = recv_fd(sock);
	if (fd < 0 || ffd < 0)
		DIE("recvmsg");
	/* the fault fd reads through the emulator (0: empty), not from the socket */
	struct iommu_hwpt_pgfault rec;
	if (read(ffd, &rec, sizeof(rec)) != 0)
		DIE("read of received fault fd");
	if (read(ffd, &rec, 7) != -1 || errno != ESPIPE)
		DIE("received fault fd is not emulated");
	close(ffd);
	if (ioas_alloc(fd) != 3)
		DIE("scm child id");
	close(fd);
	return 0;
}

/* RLIMIT_MODE SET needs CAP_SYS_RESOURCE: report what the emulator decided */
static int mode_rlimit(void)
{
	int fd = xopen();
	struct iommu_option o = { .size = sizeof(o), .option_id = IOMMU_OPTION_RLIMIT_MODE,
				  .op = IOMMU_OPTION_OP_SET, .val64 = 1 };
	int rc = ioctl(fd, IOMMU_OPTION, &o);
	printf("OK rlimit_set=%s\n", rc == 0 ? "0" : errno == EPERM ? "EPERM" : strerror(errno));
	close(fd);
	return 0;
}

/*
 * Where the struct lives: the shim sends its first bytes inline and stores what
 * the call wrote; the kernel's copy_{from,to}_user rules must hold wherever it is.
 */
static int mode_structmem(void)
{
	int fd = xopen();
	long pg = sysconf(_SC_PAGESIZE);
	char *m = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		DIE("mmap");
	struct iommu_ioas_alloc a = { .size = sizeof(a) };

	/* straddling into the next (writable) page: part inline, part not */
	struct iommu_ioas_alloc *s = (void *)(m + pg - 4);
	memcpy(s, &a, sizeof(a));
	if (ioctl(fd, IOMMU_IOAS_ALLOC, s) || !s->out_ioas_id || destroy(fd, s->out_ioas_id))
		DIE("IOAS_ALLOC straddling a page boundary");

	/* the size readable, the rest in a PROT_NONE page: EFAULT */
	if (mprotect(m + pg, pg, PROT_NONE))
		DIE("mprotect");
	s = (void *)(m + pg - 8);
	memcpy(s, &a, 8);
	if (ioctl(fd, IOMMU_IOAS_ALLOC, s) != -1 || errno != EFAULT)
		DIE("IOAS_ALLOC running into PROT_NONE");
	if (ioctl(fd, IOMMU_IOAS_ALLOC, m + pg) != -1 || errno != EFAULT)
		DIE("IOAS_ALLOC in PROT_NONE");
	if (ioctl(fd, IOMMU_IOAS_ALLOC, NULL) != -1 || errno != EFAULT)
		DIE("IOAS_ALLOC of NULL");

	/* read-only struct: read fine, copy-back EFAULT, memory unchanged, no object left */
	s = (void *)(m + 2 * pg);
	memcpy(s, &a, sizeof(a));
	if (mprotect(m + 2 * pg, pg, PROT_READ))
		DIE("mprotect");
	if (ioctl(fd, IOMMU_IOAS_ALLOC, s) != -1 || errno != EFAULT || s->out_ioas_id)
		DIE("IOAS_ALLOC of a read-only struct");
	__u32 id = ioas_alloc(fd);

	/* two writes apart in one call (ranges array after the struct, a gap between) */
	char *w = m + 3 * pg;
	struct iommu_ioas_iova_ranges *r = (void *)w;
	struct iommu_iova_range *ranges = (void *)(w + 64);
	memset(w, 0x5a, 256);
	*r = (struct iommu_ioas_iova_ranges){ .size = sizeof(*r), .ioas_id = id, .num_iovas = 4,
					       .allowed_iovas = (unsigned long)ranges };
	if (ioctl(fd, IOMMU_IOAS_IOVA_RANGES, r) || r->num_iovas < 1 || ranges[0].last == 0x5a5a5a5a5a5a5a5aull)
		DIE("IOVA_RANGES");
	for (int i = sizeof(*r); i < 64; i++)
		if (w[i] != 0x5a)
			DIE("IOVA_RANGES wrote byte %d between the struct and the ranges", i);

	/* in shared memory (sent without the inline copy) */
	struct iommu_ioas_alloc *sh = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		DIE("mmap shared");
	*sh = a;
	if (ioctl(fd, IOMMU_IOAS_ALLOC, sh) || !sh->out_ioas_id || sh->out_ioas_id == id)
		DIE("IOAS_ALLOC in shared memory");
	printf("OK structmem\n");
	close(fd);
	return 0;
}


/*
 * A hostile client: its own valid handshake over a raw socket (no shim), then
 * frames naming files it does not hold (tokens given on the command line, as if
 * stolen or guessed). Each must be refused (EPERM status, then EOF); prints one
 * line per attempt.
 */
static int raw_connect(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", getenv("IOMMUFD_EMU_SOCKET"));
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		DIE("connect");
	return s;
}

static int xrecv(int s, void *buf, size_t n)
{
	size_t done = 0;
	while (done < n) {
		ssize_t k = recv(s, (char *)buf + done, n - done, 0);
		if (k <= 0)
			return -1;
		done += (size_t)k;
	}
	return 0;
}

static uint8_t nonce_home[16];

/* HELLO + PROVE as ourselves; returns the control socket, *session our key. */
static int handshake(uint64_t *session)
{
	int s = raw_connect();
	struct wire_req_hello h = { .len = sizeof(h), .type = WIRE_T_HELLO, .pid = (uint32_t)getpid(), .uid = getuid(),
				    .memlock = UINT64_MAX, .version = WIRE_VERSION };
	struct wire_rep_hello hr;
	if (write(s, &h, sizeof(h)) != sizeof(h) || xrecv(s, &hr, sizeof(hr)) || hr.status)
		DIE("HELLO");
	memcpy(nonce_home, hr.nonce, 16);
	struct wire_req_prove p = { .len = sizeof(p), .type = WIRE_T_PROVE, .addr = (uint64_t)(uintptr_t)nonce_home };
	struct wire_rep_prove pr;
	char tab[WIRE_REP_PROVE_TAIL_MAX];
	if (write(s, &p, sizeof(p)) != sizeof(p) || xrecv(s, &pr, sizeof(pr)) || pr.status || xrecv(s, tab, pr.tablen))
		DIE("PROVE");
	*session = pr.session;
	return s;
}

/* Send one frame on s; 1 if refused (EPERM status and then EOF), 0 if answered, -1 if anything else. */
static int refused(int s, const void *frame, size_t len)
{
	if (write(s, frame, len) != (ssize_t)len)
		return -1;
	struct wire_rep_status st;
	if (xrecv(s, &st, sizeof(st)))
		return -1;
	char more;
	if (st.len == sizeof(st) && st.status == -EPERM && recv(s, &more, 1, 0) == 0)
		return 1;
	return 0;
}

static int report(const char *what, int r, int *bad)
{
	printf("%s %s\n", r == 1 ? "REFUSED" : "ACCEPTED", what);
	if (r != 1)
		*bad = 1;
	return r;
}

static int mode_forge(char **argv)
{
	uint64_t ctx = strtoull(argv[2], NULL, 0), ev = strtoull(argv[3], NULL, 0);
	pid_t victim = (pid_t)atoi(argv[4]);
	int anchor_fd = atoi(argv[5]);
	uint64_t session;
	int bad = 0;
	prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
	struct iommu_destroy d = { .size = sizeof(d), .id = 1 };
	struct { struct wire_req_ioctl q; struct iommu_destroy d; } io = {
		{ .len = sizeof(io), .type = WIRE_T_IOCTL, .token = ctx, .fd = 3, .request = IOMMU_DESTROY,
		  .arg = (uint64_t)(uintptr_t)&d, .evfd = -1, .memlock = UINT64_MAX, .hintfd = -1, .inl = sizeof(d) }, d };
	/* 1. the victim's context token, on fds that are not its anchor */
	for (int fd = 0; fd < 6; fd++) {
		int s = handshake(&session);
		io.q.fd = fd;
		char what[64];
		snprintf(what, sizeof(what), "ioctl-stolen-token-fd%d", fd);
		report(what, refused(s, &io, sizeof(io)), &bad);
		close(s);
	}
	/* 2. a guessed token */
	int s = handshake(&session);
	io.q.token = 0x1234;
	report("ioctl-guessed-token", refused(s, &io, sizeof(io)), &bad);
	close(s);
	io.q.token = ctx;
	/* 3. read the victim's fault queue */
	char buf[64];
	s = handshake(&session);
	struct wire_req_fileop fo = { .len = sizeof(fo), .type = WIRE_T_FILEOP, .token = ev, .fd = 3, .op = WIRE_FILEOP_READ,
				      .buf = (uint64_t)(uintptr_t)buf, .count = sizeof(buf) };
	report("fileop-stolen-token", refused(s, &fo, sizeof(fo)), &bad);
	close(s);
	/* 4. map the victim's context */
	s = handshake(&session);
	struct wire_req_mmap mm = { .len = sizeof(mm), .type = WIRE_T_MMAP, .token = ctx, .fd = 3, .prot = PROT_READ,
				    .offset = 4096, .length = 4096, .flags = MAP_SHARED, .memfd = 0 };
	report("mmap-stolen-token", refused(s, &mm, sizeof(mm)), &bad);
	close(s);
	/* 5. an ioctl hint naming the victim's event file */
	s = handshake(&session);
	io.q.token = 0x4321;
	io.q.hintfd = 3;
	io.q.hinttoken = ev;
	report("ioctl-stolen-hint", refused(s, &io, sizeof(io)), &bad);
	io.q.hintfd = -1;
	close(s);
	/* 6. OPEN in the victim's name (no session key), and as ourselves claiming a socket that is not our fd */
	s = raw_connect();
	struct wire_req_open op = { .len = sizeof(op), .type = WIRE_T_OPEN, .pid = (uint32_t)victim, .fd = anchor_fd,
				    .ino = 1, .session = 0x99 };
	report("open-as-victim", refused(s, &op, sizeof(op)), &bad);
	close(s);
	int ctl = handshake(&session);
	s = raw_connect();
	op.pid = (uint32_t)getpid();
	op.session = session;
	op.fd = ctl; /* our control socket, not this one */
	struct stat st;
	fstat(s, &st);
	op.ino = (uint64_t)st.st_ino;
	report("open-claiming-another-socket", refused(s, &op, sizeof(op)), &bad);
	close(s);
	/* 7. EVPREP in the victim's name */
	s = raw_connect();
	struct wire_req_evprep ep = { .len = sizeof(ep), .type = WIRE_T_EVPREP, .pid = (uint32_t)victim, .fd = 3, .ino = 1,
				      .session = session };
	report("evprep-as-victim", refused(s, &ep, sizeof(ep)), &bad);
	close(s);
	/* 8. LOOKUP answers only for our own fds: our control socket is no emulated file */
	struct wire_req_lookup lk = { .len = sizeof(lk), .type = WIRE_T_LOOKUP, .fd = ctl };
	struct wire_rep_lookup lr;
	if (write(ctl, &lk, sizeof(lk)) != sizeof(lk) || xrecv(ctl, &lr, sizeof(lr)) || lr.kind != WIRE_KIND_NONE || lr.token)
		DIE("LOOKUP of our own plain socket answered kind %u", lr.kind);
	printf("LOOKUP-own-socket none\n");
	close(ctl);
	return bad;
}

/* An MMIO store into another process's BAR mapping (its file token and mapping handle): refused and closed. */
static int mode_forge_mmio(char **argv)
{
	uint64_t session;
	int bad = 0;
	prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
	int s = handshake(&session);
	struct wire_req_mmio q = { .len = sizeof(q), .type = WIRE_T_MMIO, .token = strtoull(argv[2], NULL, 0),
				   .handle = strtoull(argv[3], NULL, 0), .off = 0x84, .value = 0x20, .fd = 3, .size = 1, .write = 1 };
	report("mmio-stolen-mapping", refused(s, &q, sizeof(q)), &bad);
	close(s);
	return bad;
}

/* Holds a context (IOAS 1) and a fault fd; when told (a line on stdin), checks both are untouched. */
static int mode_victim(void)
{
	int fd = xopen();
	__u32 ioas = ioas_alloc(fd);
	struct iommu_fault_alloc fa = { .size = sizeof(fa) };
	if (ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa))
		DIE("FAULT_QUEUE_ALLOC");
	printf("READY ioas=%u fd=%d pid=%d\n", ioas, fd, getpid());
	fflush(stdout);
	char line[16];
	if (!fgets(line, sizeof(line), stdin))
		DIE("stdin");
	struct iommu_ioas_iova_ranges r = { .size = sizeof(r), .ioas_id = ioas };
	if (ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &r) && errno != EMSGSIZE)
		DIE("IOAS %u gone", ioas);
	struct iommu_hwpt_pgfault rec;
	if (read((int)fa.out_fault_fd, &rec, sizeof(rec)) != 0)
		DIE("fault fd");
	if (destroy(fd, ioas))
		DIE("DESTROY %u", ioas);
	close(fd);
	printf("OK victim\n");
	return 0;
}

/*
 * A signal handler that closes and reopens an emulated fd (close and open are
 * async-signal-safe) while the interrupted thread is inside ioctls on another
 * one: nothing may deadlock (alarm() kills the process if it does).
 */
static volatile int sig_fd = -1;
static volatile int sig_handled;
static void on_usr1(int sig)
{
	(void)sig;
	int e = errno;
	if (sig_fd >= 0)
		close(sig_fd);
	sig_fd = open("/dev/iommu", O_RDWR);
	int f = open("/proc/thread-self/fail-nth", O_RDONLY);
	char b[8];
	if (f >= 0) {
		(void)!read(f, b, sizeof(b));
		close(f);
	}
	sig_handled++;
	errno = e;
}

static pthread_t sig_main;
static volatile int sig_stop;
static void *sig_sender(void *p)
{
	(void)p;
	for (int i = 0; i < 2000 && !sig_stop; i++) {
		pthread_kill(sig_main, SIGUSR1);
		struct timespec ts = { 0, 20000 };
		nanosleep(&ts, NULL);
	}
	sig_stop = 1;
	return NULL;
}

static int mode_sigclose(void)
{
	alarm(60);
	int fd = xopen();
	sig_fd = xopen();
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);
	sig_main = pthread_self();
	pthread_t t;
	pthread_create(&t, NULL, sig_sender, NULL);
	long calls = 0;
	while (!sig_stop) {
		__u32 id = ioas_alloc(fd);
		if (destroy(fd, id))
			DIE("DESTROY %u", id);
		calls++;
	}
	pthread_join(t, NULL);
	if (sig_handled == 0 || sig_fd < 0)
		DIE("handled %d signals, fd %d", sig_handled, sig_fd);
	/* the fd the handler opened last is a working context */
	if (ioas_alloc(sig_fd) != 1)
		DIE("handler's context");
	printf("OK sigclose calls=%ld signals=%d\n", calls, sig_handled);
	return 0;
}

/*
 * Bad buffers and edge cases on every emulated file, printed one line per case
 * ("<file> <case> = <ret> <errno>"), for comparison with the real kernel's
 * output (recorded from the oracle VM in server.test.ts). Never a signal.
 */
static void edge(const char *file, const char *what, long r)
{
	printf("%s %s = %ld %s\n", file, what, r, r < 0 ? strerrorname_np(errno) : "-");
	errno = 0;
}

static char *edge_pages;     /* [rw][PROT_NONE][ro][unmapped] */
static void *volatile null_buf; /* NULL the compiler cannot see */

static void failnth_edges(const char *label, const char *path)
{
	long pg = 4096;
	char *rw = edge_pages, *none = edge_pages + pg, *ro = edge_pages + 2 * pg, *gone = edge_pages + 3 * pg;
	int f = open(path, O_RDWR);
	if (f < 0)
		DIE("open %s", path);
	edge(label, "read-null", read(f, null_buf, 8));
	edge(label, "read-unmapped", read(f, gone, 8));
	edge(label, "read-prot-none", read(f, none, 8));
	edge(label, "read-read-only", read(f, ro, 8));
	edge(label, "read-huge-count", read(f, rw, (size_t)-1 / 2));
	edge(label, "read-zero", read(f, null_buf, 0));
	edge(label, "pread-null", pread(f, null_buf, 8, 0));
	edge(label, "pread-negative", pread(f, rw, 8, -1));
	edge(label, "pread-straddle", pread(f, none - 1, 2, 0));
	edge(label, "pread-beyond", pread(f, rw, 8, 5));
	edge(label, "read-1", read(f, rw, 1));
	edge(label, "read-rest", read(f, rw, 8));
	edge(label, "read-eof", read(f, rw, 8));
	edge(label, "lseek", lseek(f, 0, SEEK_SET));
	edge(label, "write-null", write(f, null_buf, 1));
	edge(label, "write-unmapped", write(f, gone, 1));
	edge(label, "write-prot-none", write(f, none, 1));
	edge(label, "pwrite-negative", pwrite(f, "0", 1, -1));
	none[-1] = '1';
	edge(label, "write-straddle", write(f, none - 1, 2));
	edge(label, "write-zero", write(f, rw, 0));
	static const char *nums[] = { "-1", " 1", "0x10", "010", "08", "4294967295", "4294967296", "9\n", "9\n\n", "+5",
				      "0x", "1x", "00000000000000000000000000000000000000009", "0" };
	for (unsigned i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
		char what[80], b[16] = { 0 };
		long w = write(f, nums[i], strlen(nums[i]));
		ssize_t n = pread(f, b, sizeof(b) - 1, 0);
		/* disarm before anything else can count it down */
		(void)!write(f, "0", 1);
		if (n > 0 && b[n - 1] == '\n')
			b[n - 1] = 0;
		snprintf(what, sizeof(what), "write-'%s'-reads-%s", nums[i][0] == '\n' ? "nl" : nums[i], n > 0 ? b : "?");
		for (char *c = what; *c; c++)
			if (*c == '\n')
				*c = '|';
		edge(label, what, w);
	}
	memset(rw, 0, 64);
	rw[0] = '7';
	edge(label, "write-long-zero-padded", write(f, rw, 64));
	(void)!write(f, "0", 1);
	close(f);
	f = open(path, O_RDONLY);
	edge(label, "write-on-rdonly", write(f, "1", 1));
	close(f);
	f = open(path, O_WRONLY);
	char b[8];
	edge(label, "read-on-wronly", read(f, b, sizeof(b)));
	close(f);
}

static int mode_fileedges(void)
{
	long pg = 4096;
	edge_pages = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (edge_pages == MAP_FAILED)
		DIE("mmap");
	memset(edge_pages, 0, 3 * pg);
	if (mprotect(edge_pages + pg, pg, PROT_NONE) || mprotect(edge_pages + 2 * pg, pg, PROT_READ) || munmap(edge_pages + 3 * pg, pg))
		DIE("mprotect");
	char path[96];
	failnth_edges("self", "/proc/self/fail-nth");
	failnth_edges("thread-self", "/proc/thread-self/fail-nth");
	snprintf(path, sizeof(path), "/proc/self/task/%d/fail-nth", (int)syscall(SYS_gettid));
	failnth_edges("self-task", path);
	snprintf(path, sizeof(path), "/proc/%d/fail-nth", getpid());
	failnth_edges("pid", path);
	snprintf(path, sizeof(path), "/proc/%d/task/%d/fail-nth", getpid(), (int)syscall(SYS_gettid));
	failnth_edges("pid-task", path);
	/* paths the shim must look at without touching them directly */
	char *bad = (char *)8;
	edge("path", "open-null", open(null_buf, O_RDONLY));
	edge("path", "open-bad", open(bad, O_RDONLY));
	edge("path", "openat-bad", openat(AT_FDCWD, bad, O_RDONLY));
	memcpy(edge_pages + pg - 10, "/dev/iommu", 10); /* no terminator before the PROT_NONE page */
	edge("path", "open-unterminated", open(edge_pages + pg - 10, O_RDWR));
	edge("path", "access-bad", access(bad, F_OK));
	edge("path", "faccessat-bad", faccessat(AT_FDCWD, bad, F_OK, 0));
	/* (opendir and fopen of a bad pointer crash inside glibc itself, kernel or not) */
	int fd = xopen();
	char *rw = edge_pages;
	edge("iommu", "read-null", read(fd, null_buf, 8));
	edge("iommu", "read-huge-count", read(fd, rw, (size_t)-1 / 2));
	edge("iommu", "write-null", write(fd, null_buf, 8));
	edge("iommu", "pread-null", pread(fd, null_buf, 8, 0));
	edge("iommu", "pwrite-null", pwrite(fd, null_buf, 8, 0));
	edge("iommu", "lseek", lseek(fd, 0, SEEK_SET));
	close(fd);
	printf("OK fileedges\n");
	return 0;
}

/*
 * copy_struct_from_user's zeroed tail (check_zeroed_user) on several ioctls: a
 * struct longer than the kernel's, its tail running into an unreadable page,
 * with non-zero bytes placed before or after the hole. One line per case, for
 * comparison with the real kernel's answers.
 */
static void zt_case(int fd, const char *name, unsigned long req, size_t known, char *page_end, size_t back, size_t size,
		    const int *nz, int nnz, const char *what)
{
	char *arg = page_end - back;
	memset(page_end - 4096, 0, 4096);
	*(__u32 *)arg = (__u32)size;
	for (int i = 0; i < nnz; i++)
		arg[nz[i]] = (char)0xff;
	int r = ioctl(fd, req, arg);
	printf("%s %s = %s\n", name, what, r == 0 ? "ok" : (errno == E2BIG || errno == EFAULT) ? strerrorname_np(errno) : "other");
}

static int mode_zerotail(void)
{
	int fd = xopen();
	char *m = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED || mprotect(m + 4096, 4096, PROT_NONE))
		DIE("mmap");
	char *end = m + 4096;
	struct { const char *name; unsigned long req; size_t known; } io[] = {
		{ "DESTROY", IOMMU_DESTROY, sizeof(struct iommu_destroy) },
		{ "IOAS_ALLOC", IOMMU_IOAS_ALLOC, sizeof(struct iommu_ioas_alloc) },
		{ "OPTION", IOMMU_OPTION, sizeof(struct iommu_option) },
		{ "IOAS_MAP", IOMMU_IOAS_MAP, sizeof(struct iommu_ioas_map) },
		{ "TEST_CMD", IOMMU_TEST_CMD, sizeof(struct iommu_test_cmd) },
	};
	for (unsigned i = 0; i < sizeof(io) / sizeof(io[0]); i++) {
		size_t k = io[i].known;
		int nz3[] = { (int)k + 3 }, nz15[] = { (int)k + 15 }, nzm[] = { (int)k - 1 }, past[] = { (int)k + 3, (int)k + 4, (int)k + 7 },
		    last[] = { (int)k + 2 };
		zt_case(fd, io[i].name, io[i].req, k, end, k + 16, k + 80, NULL, 0, "zero-tail-into-hole");
		zt_case(fd, io[i].name, io[i].req, k, end, k + 16, k + 80, nz3, 1, "nonzero-then-hole");
		zt_case(fd, io[i].name, io[i].req, k, end, k + 16, k + 80, nz15, 1, "nonzero-last-readable-byte");
		zt_case(fd, io[i].name, io[i].req, k, end, k + 4, k + 32, nzm, 1, "struct-byte-in-first-tail-word");
		zt_case(fd, io[i].name, io[i].req, k, end, k + 64, k + 3, past, 3, "bytes-past-short-tail");
		zt_case(fd, io[i].name, io[i].req, k, end, k + 64, k + 3, last, 1, "short-tail-last-byte");
	}
	close(fd);
	printf("OK zerotail\n");
	return 0;
}

#ifdef IOMMU_VEVENTQ_ALLOC
/* A vIOMMU with the mock's 2-page mmap region: its id, the region's offset and length. */
static __u32 region_viommu(int fd, __u64 *off, __u64 *len)
{
	struct nest_fixture f = nest_fixture(fd);
	struct iommu_viommu_selftest data = { .in_data = 0xbadbeef };
	struct iommu_viommu_alloc va = { .size = sizeof(va), .type = IOMMU_VIOMMU_TYPE_SELFTEST, .dev_id = f.idev,
					 .hwpt_id = f.parent, .data_len = sizeof(data), .data_uptr = (__u64)(unsigned long)&data };
	if (ioctl(fd, IOMMU_VIOMMU_ALLOC, &va))
		DIE("VIOMMU_ALLOC");
	if (data.out_mmap_length != 8192)
		DIE("region of %llu bytes", (unsigned long long)data.out_mmap_length);
	*off = data.out_mmap_offset;
	*len = data.out_mmap_length;
	return va.out_viommu_id;
}

static char *map_region(int fd, __u64 off, __u64 len)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)off);
	if (p == MAP_FAILED)
		DIE("mmap region");
	if (*(__u32 *)p != 0xbadbeef)
		DIE("region content %x", *(__u32 *)p);
	return p;
}

static void expect_busy(int fd, __u32 id, const char *when)
{
	if (destroy(fd, id) != -1 || errno != EBUSY)
		DIE("DESTROY %s should be EBUSY", when);
}

/* A free address range of n pages (mapped and unmapped again). */
static char *hole(size_t n)
{
	char *h = mmap(NULL, n * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	munmap(h, n * 4096);
	return h;
}

/*
 * The vIOMMU stays busy while any piece of a mapping of its region exists, in
 * this process or in a forked child, and is free once the last is gone:
 * partial munmap, mprotect splits, mremap (move, move of part, shrink, grow
 * refused), MAP_FIXED over it, fork, a child's exit and exec.
 */
static int mode_mmappieces(char **argv)
{
	int fd = xopen();
	__u64 off, len;
	long pg = 4096;
	__u32 v;
	char *p;

	/* munmap in two pieces */
	v = region_viommu(fd, &off, &len);
	p = map_region(fd, off, len);
	munmap(p, pg);
	expect_busy(fd, v, "with the second page still mapped");
	munmap(p + pg, pg);
	if (destroy(fd, v))
		DIE("DESTROY after both halves unmapped");

	/* mprotect splits the VMA; unmapping all of it at once closes both pieces */
	v = region_viommu(fd, &off, &len);
	p = map_region(fd, off, len);
	if (mprotect(p + pg, pg, PROT_READ) || mprotect(p + pg, pg, PROT_READ | PROT_WRITE))
		DIE("mprotect");
	munmap(p, pg);
	expect_busy(fd, v, "after unmapping one side of an mprotect split");
	munmap(p + pg, pg);
	if (destroy(fd, v))
		DIE("DESTROY after an mprotect split");

	/* mremap: grow refused (VM_DONTEXPAND), shrink keeps a piece, move follows the mapping */
	v = region_viommu(fd, &off, &len);
	p = map_region(fd, off, len);
	if (mremap(p, len, len + pg, MREMAP_MAYMOVE) != MAP_FAILED || errno != EFAULT)
		DIE("mremap growing a region mapping should be EFAULT");
	char *dst = hole(2);
	char *q = mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	if (q != dst || *(__u32 *)q != 0xbadbeef)
		DIE("mremap move");
	expect_busy(fd, v, "after moving the mapping");
	if (mremap(q, len, pg, 0) != q)
		DIE("mremap shrink");
	expect_busy(fd, v, "after shrinking the mapping");
	munmap(q, pg);
	if (destroy(fd, v))
		DIE("DESTROY after mremap move + shrink + munmap");

	/* move of one page out of the middle of nowhere: the rest stays */
	v = region_viommu(fd, &off, &len);
	p = map_region(fd, off, len);
	dst = hole(1);
	if (mremap(p + pg, pg, pg, MREMAP_MAYMOVE | MREMAP_FIXED, dst) != dst)
		DIE("mremap of the second page");
	munmap(p, pg);
	expect_busy(fd, v, "with the moved page still mapped");
	munmap(dst, pg);
	if (destroy(fd, v))
		DIE("DESTROY after the moved page went");

	/* MAP_FIXED over the mapping unmaps what it covers */
	v = region_viommu(fd, &off, &len);
	p = map_region(fd, off, len);
	if (mmap(p, pg, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != p)
		DIE("MAP_FIXED");
	expect_busy(fd, v, "with half of the mapping replaced");
	if (mmap(p + pg, pg, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != p + pg)
		DIE("MAP_FIXED 2");
	if (destroy(fd, v))
		DIE("DESTROY after MAP_FIXED over all of it");
	munmap(p, len);

	/* fork: the child's copy holds its own reference until it unmaps it */
	v = region_viommu(fd, &off, &len);
	p = map_region(fd, off, len);
	int go[2], done[2];
	if (pipe(go) || pipe(done))
		DIE("pipe");
	pid_t c = fork();
	if (c == 0) {
		char b;
		if (read(go[0], &b, 1) != 1)
			_exit(3);
		if (*(__u32 *)p != 0xbadbeef)
			_exit(4);
		munmap(p, pg);
		(void)!write(done[1], "1", 1);
		if (read(go[0], &b, 1) != 1)
			_exit(5);
		munmap(p + pg, pg);
		(void)!write(done[1], "2", 1);
		if (read(go[0], &b, 1) != 1)
			_exit(6);
		_exit(0);
	}
	munmap(p, len);
	expect_busy(fd, v, "while the forked child maps it");
	char b;
	(void)!write(go[1], "x", 1);
	if (read(done[0], &b, 1) != 1)
		DIE("child");
	expect_busy(fd, v, "while the child maps half of it");
	(void)!write(go[1], "x", 1);
	if (read(done[0], &b, 1) != 1)
		DIE("child");
	if (destroy(fd, v))
		DIE("DESTROY after the child unmapped its copy");
	(void)!write(go[1], "x", 1);
	int st;
	waitpid(c, &st, 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		DIE("child status %x", st);

	/* a child's exit (without unmapping) and exec drop its copies */
	for (int how = 0; how < 2; how++) {
		v = region_viommu(fd, &off, &len);
		p = map_region(fd, off, len);
		if (mprotect(p, pg, PROT_READ))
			DIE("mprotect"); /* two pieces to copy */
		c = fork();
		if (c == 0) {
			if (how)
				execl("/bin/true", "true", (char *)NULL);
			_exit(0);
		}
		munmap(p, len);
		waitpid(c, &st, 0);
		if (destroy(fd, v))
			DIE("DESTROY after the child's %s", how ? "exec" : "exit");
	}
	(void)argv;
	close(fd);
	printf("OK mmappieces\n");
	return 0;
}
#endif

#ifdef IOMMU_VEVENTQ_ALLOC
/*
 * Driven by the test over stdin (one line per step; the server has an
 * emulator bug injected on one path at a time): every path answers EIO and
 * the process keeps working.
 */
static void step(const char *ready)
{
	char line[16];
	printf("%s\n", ready);
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		exit(9);
}

static int mode_bugpaths(void)
{
	step("STEP open");
	int fd = open("/dev/iommu", O_RDWR);
	printf("open = %s\n", fd < 0 ? strerrorname_np(errno) : "ok");
	step("STEP ioctl");
	fd = xopen();
	__u32 ioas = ioas_alloc(fd);
	printf("ioctl = %s\n", destroy(fd, ioas) ? strerrorname_np(errno) : "ok");
	struct iommu_fault_alloc fa = { .size = sizeof(fa) };
	if (ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa))
		DIE("FAULT_QUEUE_ALLOC");
	step("STEP read");
	struct iommu_hwpt_pgfault rec;
	printf("read = %s\n", read((int)fa.out_fault_fd, &rec, sizeof(rec)) < 0 ? strerrorname_np(errno) : "ok");
	__u64 off, len;
	region_viommu(fd, &off, &len);
	step("STEP mmap");
	void *p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, (off_t)off);
	printf("mmap = %s\n", p == MAP_FAILED ? strerrorname_np(errno) : "ok");
	step("STEP done");
	if (ioas_alloc(fd) == 0)
		DIE("after the bugs");
	close(fd);
	printf("OK bugpaths\n");
	return 0;
}
#endif

/*
 * Random frames from the test, sent after a valid handshake: the server must
 * answer or close, never crash. Prints the context token, its anchor fd and a
 * buffer address (for the test to aim frames at), then for each frame read
 * from stdin (u32 length + bytes) one line: "R <bytes>" or "CLOSED" (and
 * makes a new control connection). Frames whose type opens a connection go
 * on a fresh socket.
 */
static int mode_rawframes(void)
{
	uint64_t session;
	int ctl = handshake(&session);
	static char buffer[8192];
	int anchor = raw_connect();
	struct stat st;
	fstat(anchor, &st);
	struct wire_req_open op = { .len = sizeof(op), .type = WIRE_T_OPEN, .pid = (uint32_t)getpid(), .fd = anchor,
				    .ino = (uint64_t)st.st_ino, .session = session };
	struct wire_rep_open orp;
	if (write(anchor, &op, sizeof(op)) != sizeof(op) || xrecv(anchor, &orp, sizeof(orp)) || orp.err)
		DIE("OPEN");
	printf("READY token=%llu fd=%d buf=%llu session=%llu\n", (unsigned long long)orp.token, anchor,
	       (unsigned long long)(uintptr_t)buffer, (unsigned long long)session);
	fflush(stdout);
	uint32_t n;
	static char frame[8192];
	while (fread(&n, 4, 1, stdin) == 1) {
		if (n > sizeof(frame) || fread(frame, 1, n, stdin) != n)
			DIE("stdin");
		uint32_t type = n >= 8 ? ((uint32_t *)frame)[1] : 0;
		int fresh = type == WIRE_T_HELLO || type == WIRE_T_OPEN || type == WIRE_T_EVPREP || type == WIRE_T_HOLDER;
		int s = fresh ? raw_connect() : ctl;
		if (send(s, frame, n, MSG_NOSIGNAL) != (ssize_t)n) {
			printf("CLOSED\n");
			if (!fresh) {
				close(ctl);
				ctl = handshake(&session);
			}
		} else {
			struct pollfd p = { .fd = s, .events = POLLIN };
			size_t got = 0;
			int closed = 0;
			while (poll(&p, 1, got ? 2 : 60) == 1) {
				char b[4096];
				ssize_t k = recv(s, b, sizeof(b), MSG_DONTWAIT);
				if (k <= 0) {
					closed = 1;
					break;
				}
				got += (size_t)k;
			}
			printf(closed ? "CLOSED %zu\n" : "R %zu\n", got);
			if (closed && !fresh) {
				close(ctl);
				ctl = handshake(&session);
			}
		}
		if (fresh)
			close(s);
		fflush(stdout);
	}
	close(anchor);
	close(ctl);
	printf("OK rawframes\n");
	return 0;
}

#ifdef IOMMU_VEVENTQ_ALLOC
/*
 * Soak client (src/server/soak.ts): a random mix of everything a program does
 * with /dev/iommu -- IOAS maps of private and shared memory, mock devices,
 * fault queues, vIOMMU regions mapped and split, vEVENTQs, garbage ioctls,
 * fail-nth, extra contexts, forks -- from the main thread and two workers,
 * for `ms` milliseconds. Errnos are expected (random arguments, fault
 * injection); only a crash or a hang is a finding. Prints its call count.
 */
static volatile long soak_calls;
static volatile int soak_stop;
static unsigned soak_rand(unsigned *s) { *s = *s * 1103515245u + 12345u; return (*s >> 8) & 0xffffff; }

static void soak_op(int fd, unsigned *seed, int allow_fork)
{
	unsigned r = soak_rand(seed);
	long pg = 4096;
	__sync_fetch_and_add(&soak_calls, 1);
	switch (r % 12) {
	case 0: {
		struct iommu_ioas_alloc a = { .size = sizeof(a) };
		if (!ioctl(fd, IOMMU_IOAS_ALLOC, &a))
			destroy(fd, a.out_ioas_id);
		break;
	}
	case 1: case 2: {
		int shared = r & 0x100;
		size_t n = 1 + (r >> 9) % 8;
		char *b = mmap(NULL, n * pg, PROT_READ | PROT_WRITE, (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, -1, 0);
		if (b == MAP_FAILED)
			break;
		memset(b, (int)r, n * pg);
		struct iommu_ioas_alloc a = { .size = sizeof(a) };
		if (!ioctl(fd, IOMMU_IOAS_ALLOC, &a)) {
			if (r & 0x200) {
				struct iommu_test_cmd mock = { .size = sizeof(mock), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = a.out_ioas_id };
				ioctl(fd, IOMMU_TEST_CMD, &mock);
			}
			struct iommu_ioas_map m = { .size = sizeof(m), .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
						    .ioas_id = a.out_ioas_id, .user_va = (__u64)(unsigned long)b, .length = n * pg };
			ioctl(fd, IOMMU_IOAS_MAP, &m);
			if (r & 0x400) {
				struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = a.out_ioas_id, .iova = m.iova, .length = n * pg };
				ioctl(fd, IOMMU_IOAS_UNMAP, &u);
			}
			destroy(fd, a.out_ioas_id); /* EBUSY with a device: left for the context's teardown */
		}
		munmap(b, n * pg);
		break;
	}
	case 3: {
		struct iommu_fault_alloc fa = { .size = sizeof(fa) };
		if (!ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa)) {
			struct iommu_hwpt_pgfault rec;
			(void)!read((int)fa.out_fault_fd, &rec, sizeof(rec));
			close((int)fa.out_fault_fd);
			destroy(fd, fa.out_fault_id);
		}
		break;
	}
	case 4: {
		__u64 off, len;
		/* nest_fixture() without dying: fault injection and the workers' DESTROYs make any step fail */
		struct nest_fixture f = { 0 };
		struct iommu_ioas_alloc ia = { .size = sizeof(ia) };
		if (ioctl(fd, IOMMU_IOAS_ALLOC, &ia))
			break;
		f.ioas = ia.out_ioas_id;
		struct iommu_test_cmd mock = { .size = sizeof(mock), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = f.ioas };
		if (ioctl(fd, IOMMU_TEST_CMD, &mock))
			break;
		f.idev = mock.mock_domain.out_idev_id;
		struct iommu_hwpt_alloc hw = { .size = sizeof(hw), .flags = IOMMU_HWPT_ALLOC_NEST_PARENT, .dev_id = f.idev, .pt_id = f.ioas };
		if (ioctl(fd, IOMMU_HWPT_ALLOC, &hw))
			break;
		f.parent = hw.out_hwpt_id;
		struct iommu_viommu_selftest data = { .in_data = r };
		struct iommu_viommu_alloc va = { .size = sizeof(va), .type = IOMMU_VIOMMU_TYPE_SELFTEST, .dev_id = f.idev,
						 .hwpt_id = f.parent, .data_len = sizeof(data), .data_uptr = (__u64)(unsigned long)&data };
		if (ioctl(fd, IOMMU_VIOMMU_ALLOC, &va))
			break;
		off = data.out_mmap_offset;
		len = data.out_mmap_length;
		char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)off);
		if (p != MAP_FAILED) {
			if (r & 0x100)
				mprotect(p, pg, PROT_READ);
			if (r & 0x200) {
				/* onto a reservation of our own (a hole() could be another thread's mapping by now) */
				char *dst = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
				char *q = dst == MAP_FAILED ? MAP_FAILED : mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
				if (q != MAP_FAILED)
					p = q;
			}
			munmap(p, pg);
			if (!(r & 0x400))
				munmap(p + pg, pg); /* else the context's close leaves it mapped: exit drops it */
		}
		struct iommu_veventq_alloc vq = { .size = sizeof(vq), .viommu_id = va.out_viommu_id, .type = IOMMU_VEVENTQ_TYPE_SELFTEST,
						  .veventq_depth = 2 };
		if (!ioctl(fd, IOMMU_VEVENTQ_ALLOC, &vq))
			close((int)vq.out_veventq_fd);
		break;
	}
	case 5: {
		/* a garbage ioctl: a real request, random bytes, a sane size */
		unsigned char b[128];
		for (unsigned i = 0; i < sizeof(b); i++)
			b[i] = (unsigned char)soak_rand(seed);
		unsigned nr = 0x80 + soak_rand(seed) % 0x15;
		if (soak_rand(seed) & 1)
			nr = 0xa0;
		*(__u32 *)b = 8 + soak_rand(seed) % 96;
		ioctl(fd, _IO(IOMMUFD_TYPE, nr), b);
		break;
	}
	case 6: {
		int f = open("/proc/thread-self/fail-nth", O_RDWR);
		if (f >= 0) {
			char n[8];
			snprintf(n, sizeof(n), "%u", 1 + soak_rand(seed) % 8);
			(void)!write(f, n, strlen(n));
			struct iommu_ioas_alloc a = { .size = sizeof(a) };
			if (!ioctl(fd, IOMMU_IOAS_ALLOC, &a))
				destroy(fd, a.out_ioas_id);
			(void)!write(f, "0", 1);
			close(f);
		}
		break;
	}
	case 7: {
		int g = open("/dev/iommu", O_RDWR);
		if (g >= 0) {
			int h = dup(g);
			struct iommu_ioas_alloc a = { .size = sizeof(a) };
			ioctl(h, IOMMU_IOAS_ALLOC, &a);
			close(g);
			close(h);
		}
		break;
	}
	case 8:
		if (allow_fork && (r & 0x300) == 0) {
			pid_t c = fork();
			if (c == 0) {
				unsigned cs = r;
				for (int i = 0; i < 20; i++)
					soak_op(fd, &cs, 0);
				_exit(0);
			}
			if (c > 0 && (r & 0x400))
				waitpid(c, NULL, 0);
		}
		break;
	default: {
		struct iommu_destroy d = { .size = sizeof(d), .id = soak_rand(seed) % 16 };
		ioctl(fd, IOMMU_DESTROY, &d);
	}
	}
}

static void *soak_worker(void *p)
{
	int fd = *(int *)p;
	unsigned seed = (unsigned)(uintptr_t)pthread_self();
	while (!soak_stop)
		soak_op(fd, &seed, 0);
	return NULL;
}

static int mode_soak(const char *seedarg, const char *msarg)
{
	unsigned seed = (unsigned)strtoul(seedarg, NULL, 0);
	long ms = atol(msarg);
	signal(SIGCHLD, SIG_IGN); /* forked children reap themselves */
	int fd = xopen();
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, soak_worker, &fd);
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (;;) {
		soak_op(fd, &seed, 1);
		clock_gettime(CLOCK_MONOTONIC, &b);
		if ((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000 > ms)
			break;
	}
	soak_stop = 1;
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	close(fd);
	printf("OK soak calls=%ld\n", soak_calls);
	return 0;
}
#endif

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	const char *m = argc > 1 ? argv[1] : "basic";
	if (!strcmp(m, "basic")) return mode_basic();
	if (!strcmp(m, "hold")) return mode_hold();
	if (!strcmp(m, "spin")) return mode_spin();
	if (!strcmp(m, "serverdeath")) return mode_serverdeath();
	if (!strcmp(m, "calls") && argc > 2) return mode_calls(atoi(argv[2]));
	if (!strcmp(m, "forkcall")) return mode_forkcall();
	if (!strcmp(m, "paths")) return mode_paths();
	if (!strcmp(m, "huge")) return mode_huge();
	if (!strcmp(m, "dups")) return mode_dups();
	if (!strcmp(m, "failnth-threads")) return mode_failnth_threads();
	if (!strcmp(m, "debugfs")) return mode_debugfs();
#ifdef IOMMU_IOAS_MAP_FILE
	if (!strcmp(m, "mapfile")) return mode_mapfile();
#endif
	if (!strcmp(m, "rlimit")) return mode_rlimit();
	if (!strcmp(m, "structmem")) return mode_structmem();
	if (!strcmp(m, "latency")) return mode_latency();
	if (!strcmp(m, "fork")) return mode_fork();
	if (!strcmp(m, "threads")) return mode_threads();
	if (!strcmp(m, "event")) return mode_event();
	if (!strcmp(m, "failnth")) return mode_failnth();
	if (!strcmp(m, "exec")) return mode_exec(argv);
	if (!strcmp(m, "scm")) return mode_scm(argv);
	if (!strcmp(m, "scm-child") && argc > 2) return mode_scm_child(argv[2]);
	if (!strcmp(m, "exec-child") && argc > 2) return mode_exec_child(argv[2]);
	if (!strcmp(m, "forge") && argc > 5) return mode_forge(argv);
	if (!strcmp(m, "forge-mmio") && argc > 3) return mode_forge_mmio(argv);
	if (!strcmp(m, "victim")) return mode_victim();
	if (!strcmp(m, "sigclose")) return mode_sigclose();
	if (!strcmp(m, "fileedges")) return mode_fileedges();
	if (!strcmp(m, "rawframes")) return mode_rawframes();
	if (!strcmp(m, "zerotail")) return mode_zerotail();
#ifdef IOMMU_VEVENTQ_ALLOC
	if (!strcmp(m, "vevent")) return mode_vevent();
	if (!strcmp(m, "mmap")) return mode_mmap();
	if (!strcmp(m, "mmappieces")) return mode_mmappieces(argv);
	if (!strcmp(m, "bugpaths")) return mode_bugpaths();
	if (!strcmp(m, "soak") && argc > 3) return mode_soak(argv[2], argv[3]);
#endif
	fprintf(stderr, "unknown mode %s\n", m);
	return 2;
}
