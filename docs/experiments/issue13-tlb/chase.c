// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Runs chase.bpf.c's programs in turn, each for CALLS BPF_PROG_TEST_RUN
 * calls (repeat=1, a new random IPv4 source per call), ROUNDS times, and
 * prints the kernel's mean time per call and its excess over `drop`.
 *
 *   clang -O2 -g -target bpf -idirafter /usr/include/x86_64-linux-gnu \
 *       -c chase.bpf.c -o chase.bpf.o
 *   gcc -O2 chase.c -o chase -lbpf        # libbpf-dev
 *   ./chase [CALLS [ROUNDS]]              # as root; defaults 200000 3 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

static uint64_t state = 88172645463325252ull;

static uint64_t rnd(void)
{
	state ^= state << 13;
	state ^= state >> 7;
	state ^= state << 17;
	return state;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

/* Random words in an mmapable array. */
static void fill_flat(struct bpf_map *m)
{
	size_t size = (size_t)bpf_map__max_entries(m) * bpf_map__value_size(m);
	uint64_t *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, bpf_map__fd(m), 0);
	if (p == MAP_FAILED)
		die("mmap");
	for (size_t i = 0; i < size / 8; i++)
		p[i] = rnd();
	munmap(p, size);
}

/* An inner array of random lines in every slot of the array of maps. */
static void fill_outer(struct bpf_map *outer)
{
	for (uint32_t o = 0; o < bpf_map__max_entries(outer); o++) {
		int fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, NULL, 4, 64, 256, NULL);
		if (fd < 0)
			die("bpf_map_create");
		for (uint32_t i = 0; i < 256; i++) {
			uint64_t line[8];
			for (int k = 0; k < 8; k++)
				line[k] = rnd();
			if (bpf_map_update_elem(fd, &i, line, 0))
				die("filling an inner array");
		}
		if (bpf_map_update_elem(bpf_map__fd(outer), &o, &fd, 0))
			die("filling the array of maps");
	}
}

int main(int argc, char **argv)
{
	int calls = argc > 1 ? atoi(argv[1]) : 200000, rounds = argc > 2 ? atoi(argv[2]) : 3;
	const char *names[] = {"drop", "c_flat8", "c_sparse", "c_flat32", "c_mim"};
	int n = sizeof(names) / sizeof(names[0]), fds[5];
	struct bpf_object *obj = bpf_object__open_file("chase.bpf.o", NULL);
	if (!obj || bpf_object__load(obj))
		die("loading chase.bpf.o");
	fill_flat(bpf_object__find_map_by_name(obj, "flat8"));
	fill_flat(bpf_object__find_map_by_name(obj, "flat32"));
	fill_outer(bpf_object__find_map_by_name(obj, "outer"));
	for (int i = 0; i < n; i++)
		fds[i] = bpf_program__fd(bpf_object__find_program_by_name(obj, names[i]));
	unsigned char frame[64] = {0};
	frame[12] = 0x08; /* IPv4 */
	frame[14] = 0x45;
	for (int r = 0; r < rounds; r++) {
		double base = 0;
		for (int i = 0; i < n; i++) {
			double sum = 0;
			for (int c = 0; c < calls; c++) {
				uint32_t src = rnd();
				memcpy(frame + 26, &src, 4);
				LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = frame, .data_size_in = sizeof(frame),
					    .repeat = 1);
				if (bpf_prog_test_run_opts(fds[i], &o))
					die("BPF_PROG_TEST_RUN");
				sum += o.duration;
			}
			double mean = sum / calls;
			if (i == 0)
				base = mean;
			printf("round %d  %-9s %7.1f ns  +%6.1f\n", r, names[i], mean, mean - base);
		}
	}
	return 0;
}
