/* failnth_count.so: LD_PRELOAD'ed under iommufd_fail_nth, prints "NTH n" to stderr for every
 * fail-nth value the test arms (a pwrite of n != 0 to a fail-nth file), so a run's log gives
 * each case's sweep length (the largest n). Used the same way on the oracle kernel (through
 * native/oracle/failnth_launch.c) and through the shim (scripts/failnth-sweeps.sh), after the
 * shim in LD_PRELOAD order so the fail-nth files it emulates are seen too.
 *   gcc -shared -fPIC -O2 -o failnth_count.so failnth_count.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static void note(int fd, const void *buf, size_t n)
{
	char p[64], link[256];
	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	ssize_t l = readlink(p, link, sizeof(link) - 1);
	if (l <= 0) return;
	link[l] = 0;
	if (!strstr(link, "fail-nth") || n == 0 || n > 15) return;
	char v[16];
	memcpy(v, buf, n); v[n] = 0;
	if (strcmp(v, "0") != 0) fprintf(stderr, "NTH %s\n", v);
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
	static ssize_t (*real)(int, const void *, size_t, off_t);
	if (!real) real = dlsym(RTLD_NEXT, "pwrite");
	note(fd, buf, n);
	return real(fd, buf, n, off);
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
	static ssize_t (*real)(int, const void *, size_t, off_t);
	if (!real) real = dlsym(RTLD_NEXT, "pwrite64");
	note(fd, buf, n);
	return real(fd, buf, n, off);
}
