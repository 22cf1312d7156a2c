/*
 * Latency probes for `npm run bench` (our own code):
 *   shimbench echo SOCKET N REQ REP   bare Unix-socket round trips: REQ bytes out, REP bytes back (the floor)
 *   shimbench ioas N          IOMMU_IOAS_ALLOC + IOMMU_DESTROY through the shim, timed per ioctl
 *   shimbench rw N            IOMMU_TEST_CMD ACCESS_RW of 4 KiB through an IOAS-mapped buffer
 *   shimbench idle S          one ioctl a second for S seconds, then S seconds with none: the CPU time
 *                             the server (our parent, `iommufd-emu run`, all its threads) used in each,
 *                             from /proc/<ppid>/task/<tid>/schedstat
 * Each prints one JSON line: {"median_ns":…,"p99_ns":…,"n":…}. Every mode first
 * runs WARMUP untimed iterations (both ends' caches and the server's JIT settle),
 * the same for the floor and the ioctls.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <linux/iommufd.h>
#include "iommufd_test.h"

#define WARMUP 2000

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static void report(uint64_t *t, int n)
{
	qsort(t, n, sizeof(*t), cmp_u64);
	printf("{\"median_ns\":%llu,\"p99_ns\":%llu,\"n\":%d}\n", (unsigned long long)t[n / 2],
	       (unsigned long long)t[(int)(n * 0.99)], n);
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static int full_io(int fd, void *buf, size_t len, int wr)
{
	size_t done = 0;
	while (done < len) {
		ssize_t r = wr ? write(fd, (char *)buf + done, len - done) : read(fd, (char *)buf + done, len - done);
		if (r <= 0)
			return -1;
		done += r;
	}
	return 0;
}

/* The driver passes the byte counts of a shimmed IOAS_ALLOC exchange (frame headers + inline struct). */
static void bench_echo(const char *path, int n, size_t reqlen, size_t replen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	uint8_t *req = calloc(1, reqlen), *rep = malloc(replen);
	uint64_t *t = calloc(n, sizeof(*t));

	strncpy(sa.sun_path, path, sizeof(sa.sun_path) - 1);
	if (!req || !rep || s < 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa)))
		die("connect");
	for (int i = -WARMUP; i < n; i++) {
		uint64_t t0 = now_ns();
		if (full_io(s, req, reqlen, 1) || full_io(s, rep, replen, 0))
			die("echo");
		if (i >= 0)
			t[i] = now_ns() - t0;
	}
	report(t, n);
}

static void bench_ioas(int n)
{
	int fd = open("/dev/iommu", O_RDWR);
	uint64_t *t = calloc(2 * n, sizeof(*t));

	if (fd < 0)
		die("open /dev/iommu");
	for (int i = -WARMUP; i < n; i++) {
		struct iommu_ioas_alloc a = { .size = sizeof(a) };
		struct iommu_destroy d = { .size = sizeof(d) };
		uint64_t t0 = now_ns(), t1, t2;

		if (ioctl(fd, IOMMU_IOAS_ALLOC, &a))
			die("IOAS_ALLOC");
		t1 = now_ns();
		d.id = a.out_ioas_id;
		if (ioctl(fd, IOMMU_DESTROY, &d))
			die("DESTROY");
		t2 = now_ns();
		if (i >= 0) {
			t[2 * i] = t1 - t0;
			t[2 * i + 1] = t2 - t1;
		}
	}
	report(t, 2 * n);
}

static void bench_rw(int n)
{
	const size_t len = 64 * 1024;
	int fd = open("/dev/iommu", O_RDWR);
	void *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	char *out = malloc(4096);
	uint64_t *t = calloc(n, sizeof(*t));
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	struct iommu_ioas_map m = { .size = sizeof(m) };
	struct iommu_test_cmd c = { .size = sizeof(c), .op = IOMMU_TEST_OP_CREATE_ACCESS };

	if (fd < 0 || buf == MAP_FAILED || !out)
		die("setup");
	memset(buf, 0x5a, len);
	if (ioctl(fd, IOMMU_IOAS_ALLOC, &a))
		die("IOAS_ALLOC");
	m.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;
	m.ioas_id = a.out_ioas_id;
	m.user_va = (uintptr_t)buf;
	m.length = len;
	m.iova = 1ull << 24;
	if (ioctl(fd, IOMMU_IOAS_MAP, &m))
		die("IOAS_MAP");
	c.id = a.out_ioas_id;
	if (ioctl(fd, IOMMU_TEST_CMD, &c))
		die("CREATE_ACCESS");
	int access_fd = c.create_access.out_access_fd;
	for (int i = -WARMUP; i < n; i++) {
		struct iommu_test_cmd rw = {
			.size = sizeof(rw), .op = IOMMU_TEST_OP_ACCESS_RW, .id = access_fd,
			.access_rw = { .iova = m.iova + ((i + WARMUP) % 16) * 4096, .length = 4096, .uptr = (uintptr_t)out },
		};
		uint64_t t0 = now_ns();

		if (ioctl(fd, IOMMU_TEST_CMD, &rw))
			die("ACCESS_RW");
		if (i >= 0)
			t[i] = now_ns() - t0;
		if (out[0] != 0x5a)
			die("ACCESS_RW content");
	}
	report(t, n);
}

/* utime + stime of process pid, in clock ticks */
/* CPU time (ns) of every thread of process pid so far: the sum of /proc/<pid>/task/<tid>/schedstat. */
static long long cpu_ns(pid_t pid)
{
	char path[96], buf[256];
	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	DIR *d = opendir(path);
	if (!d)
		die("opendir task");
	long long sum = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%s/schedstat", (int)pid, e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue; /* a thread that just ended */
		long long ns = 0;
		if (fgets(buf, sizeof(buf), f) && sscanf(buf, "%lld", &ns) == 1)
			sum += ns;
		fclose(f);
	}
	closedir(d);
	return sum;
}

/*
 * The server's CPU time (all its threads) over `seconds` of this client making one
 * call a second, then over `seconds` more of it asleep with no call at all.
 */
static void bench_idle(int seconds)
{
	int fd = open("/dev/iommu", O_RDWR);
	if (fd < 0)
		die("open /dev/iommu");
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	if (ioctl(fd, IOMMU_IOAS_ALLOC, &a))
		die("IOAS_ALLOC");
	sleep(1); /* the server's spin window after the set-up calls is long over */
	pid_t server = getppid();
	long long t0 = cpu_ns(server);
	for (int i = 0; i < seconds; i++) {
		sleep(1);
		struct iommu_destroy d = { .size = sizeof(d), .id = a.out_ioas_id + 1 };
		ioctl(fd, IOMMU_DESTROY, &d); /* ENOENT: an answer of any kind is one call */
	}
	long long t1 = cpu_ns(server);
	sleep(seconds);
	long long t2 = cpu_ns(server);
	printf("{\"server_cpu_ms\":%.2f,\"quiet_cpu_ms\":%.2f,\"seconds\":%d,\"calls\":%d}\n", (t1 - t0) / 1e6, (t2 - t1) / 1e6,
	       seconds, seconds);
}

int main(int argc, char **argv)
{
	if (argc == 6 && !strcmp(argv[1], "echo"))
		bench_echo(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
	else if (argc == 3 && !strcmp(argv[1], "ioas"))
		bench_ioas(atoi(argv[2]));
	else if (argc == 3 && !strcmp(argv[1], "rw"))
		bench_rw(atoi(argv[2]));
	else if (argc == 3 && !strcmp(argv[1], "idle"))
		bench_idle(atoi(argv[2]));
	else {
		fprintf(stderr, "usage: %s echo SOCKET N REQ REP | ioas N | rw N | idle SECONDS\n", argv[0]);
		return 2;
	}
	return 0;
}
