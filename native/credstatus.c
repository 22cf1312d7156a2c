/* Test client for the live-credential rules and /proc/<pid>/status (src/server/credentials.test.ts).
 *
 *   credstatus status   pin pages through a mock domain, print VmPin/VmLck as every reader sees them
 *   credstatus dropcap  RLIMIT_MEMLOCK 0, then pin with CAP_IPC_LOCK and after dropping it
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/iommufd.h>
#include "iommufd_test.h"

#define DIE(what) do { printf("FAIL %s: %s\n", what, strerror(errno)); exit(1); } while (0)

static __u32 ioas_alloc(int fd)
{
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	if (ioctl(fd, IOMMU_IOAS_ALLOC, &a))
		DIE("IOAS_ALLOC");
	return a.out_ioas_id;
}

static void mock_domain(int fd, __u32 ioas)
{
	struct iommu_test_cmd c = { .size = sizeof(c), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	if (ioctl(fd, IOMMU_TEST_CMD, &c))
		DIE("MOCK_DOMAIN");
}

/* IOAS_MAP of `len` fresh bytes: 0 or the errno. */
static int map(int fd, __u32 ioas, size_t len, __u64 *iova)
{
	void *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(buf, 1, len);
	struct iommu_ioas_map m = {
		.size = sizeof(m), .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas, .user_va = (__u64)(unsigned long)buf, .length = len,
	};
	int rc = ioctl(fd, IOMMU_IOAS_MAP, &m) ? errno : 0;
	*iova = m.iova;
	return rc;
}

static long field(const char *text, const char *name)
{
	const char *p = strstr(text, name);
	return p ? strtol(p + strlen(name), NULL, 10) : -1;
}

static void show(const char *way, const char *text)
{
	printf("%s VmPin=%ld VmLck=%ld\n", way, field(text, "VmPin:"), field(text, "VmLck:"));
}

static void readers(const char *tag)
{
	char b[8192], path[64];
	ssize_t n;
	/* open + read */
	int fd = open("/proc/self/status", O_RDONLY);
	n = read(fd, b, sizeof(b) - 1);
	b[n > 0 ? n : 0] = 0;
	printf("%s ", tag);
	show("read", b);
	/* the same fd read again from offset 0 (regenerated), then pread */
	n = pread(fd, b, sizeof(b) - 1, 0);
	b[n > 0 ? n : 0] = 0;
	printf("%s ", tag);
	show("pread", b);
	close(fd);
	/* /proc/<pid>/status through stdio */
	snprintf(path, sizeof(path), "/proc/%d/status", getpid());
	FILE *f = fopen(path, "r");
	size_t got = fread(b, 1, sizeof(b) - 1, f);
	b[got] = 0;
	fclose(f);
	printf("%s ", tag);
	show("fopen", b);
	/* relative to a directory fd of /proc/thread-self */
	int dir = open("/proc/thread-self", O_RDONLY | O_DIRECTORY);
	fd = openat(dir, "status", O_RDONLY);
	n = read(fd, b, sizeof(b) - 1);
	b[n > 0 ? n : 0] = 0;
	close(fd);
	close(dir);
	printf("%s ", tag);
	show("openat", b);
}

static int status_mode(void)
{
	int fd = open("/dev/iommu", O_RDWR);
	if (fd < 0)
		DIE("open");
	__u32 ioas = ioas_alloc(fd);
	readers("before");
	mock_domain(fd, ioas);
	readers("nodomain"); /* a domain, nothing mapped */
	__u64 iova;
	printf("map %d\n", map(fd, ioas, 4 * 4096, &iova));
	readers("pinned");
	/* A child reads its parent's status and its own. */
	pid_t parent = getpid();
	pid_t child = fork();
	if (!child) {
		char b[8192], path[64];
		snprintf(path, sizeof(path), "/proc/%d/status", parent);
		FILE *f = fopen(path, "r");
		size_t got = fread(b, 1, sizeof(b) - 1, f);
		b[got] = 0;
		fclose(f);
		printf("child-parent ");
		show("fopen", b);
		int s = open("/proc/self/status", O_RDONLY);
		ssize_t n = read(s, b, sizeof(b) - 1);
		b[n > 0 ? n : 0] = 0;
		printf("child-self ");
		show("read", b);
		fflush(stdout);
		_exit(0);
	}
	waitpid(child, NULL, 0);
	close(fd);
	readers("closed");
	return 0;
}

static int drop_ipc_lock(void)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	if (syscall(SYS_capget, &h, d))
		return -1;
	d[CAP_IPC_LOCK / 32].effective &= ~(1u << (CAP_IPC_LOCK % 32));
	return (int)syscall(SYS_capset, &h, d);
}

static int has_ipc_lock(void)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	if (syscall(SYS_capget, &h, d))
		return 0;
	return !!(d[CAP_IPC_LOCK / 32].effective & (1u << (CAP_IPC_LOCK % 32)));
}

static int dropcap_mode(void)
{
	struct rlimit rl = { 0, 0 };
	if (setrlimit(RLIMIT_MEMLOCK, &rl))
		DIE("setrlimit");
	int fd = open("/dev/iommu", O_RDWR);
	if (fd < 0)
		DIE("open");
	__u32 ioas = ioas_alloc(fd);
	mock_domain(fd, ioas);
	__u64 iova;
	printf("hadcap=%d\n", has_ipc_lock());
	printf("map-with-cap %d\n", map(fd, ioas, 4096, &iova));
	if (drop_ipc_lock())
		DIE("capset");
	printf("map-without-cap %d\n", map(fd, ioas, 4096, &iova));
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 1 && !strcmp(argv[1], "status"))
		return status_mode();
	if (argc > 1 && !strcmp(argv[1], "dropcap"))
		return dropcap_mode();
	fprintf(stderr, "usage: %s status|dropcap\n", argv[0]);
	return 2;
}
