/* A deterministic stand-in for libFuzzer, so the fuzz targets run in every test run:
 * each file named on the command line is fed as is, then `TT_FUZZ_RUNS` (default
 * 20000) inputs derived from them by seeded mutations (bit flips, byte sets, inserts,
 * deletes, splices) are fed too. A crash, a sanitizer report or a hang fails the test.
 * Built with clang and -fsanitize=fuzzer instead (tests/fuzz/run-libfuzzer.sh), the same
 * targets get real coverage-guided fuzzing and this file is left out. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_INPUT (64 * 1024)

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rng(void)
{
    /* xorshift64*: fixed seed, so a failure reproduces. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dULL;
}

static size_t mutate(uint8_t *buf, size_t len, const uint8_t *other, size_t other_len)
{
    int rounds = 1 + (int)(rng() % 4);

    while (rounds-- > 0) {
        size_t pos = len > 0 ? (size_t)(rng() % len) : 0;
        switch (rng() % 6) {
        case 0: /* flip a bit */
            if (len > 0)
                buf[pos] ^= (uint8_t)(1u << (rng() % 8));
            break;
        case 1: /* set an interesting byte */
        {
            static const uint8_t bytes[] = {0,   0xff, '"', '\\', '/', '*', ':',  '{',
                                            '}', '[',  ']', ',',  '.', '%', 0x80, 0x7f};
            if (len > 0)
                buf[pos] = bytes[rng() % sizeof(bytes)];
            break;
        }
        case 2: /* insert a byte */
            if (len < MAX_INPUT) {
                memmove(buf + pos + 1, buf + pos, len - pos);
                buf[pos] = (uint8_t)rng();
                len++;
            }
            break;
        case 3: /* delete a run */
            if (len > 0) {
                size_t n = 1 + (size_t)(rng() % 16);
                if (n > len - pos)
                    n = len - pos;
                memmove(buf + pos, buf + pos + n, len - pos - n);
                len -= n;
            }
            break;
        case 4: /* splice in a piece of another input */
            if (other_len > 0) {
                size_t from = (size_t)(rng() % other_len);
                size_t n = 1 + (size_t)(rng() % 64);
                if (n > other_len - from)
                    n = other_len - from;
                if (len + n <= MAX_INPUT) {
                    memmove(buf + pos + n, buf + pos, len - pos);
                    memcpy(buf + pos, other + from, n);
                    len += n;
                }
            }
            break;
        default: /* truncate */
            len = pos;
            break;
        }
    }
    return len;
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = malloc(MAX_INPUT);

    if (f == NULL || buf == NULL) {
        fprintf(stderr, "fuzz driver: cannot read %s\n", path);
        exit(2);
    }
    *len = fread(buf, 1, MAX_INPUT, f);
    fclose(f);
    return buf;
}

int main(int argc, char **argv)
{
    const char *env = getenv("TT_FUZZ_RUNS");
    long runs = env != NULL ? strtol(env, NULL, 10) : 20000;
    int n = argc - 1;
    uint8_t **seeds = calloc((size_t)(n > 0 ? n : 1), sizeof(*seeds));
    size_t *lens = calloc((size_t)(n > 0 ? n : 1), sizeof(*lens));
    uint8_t *buf = malloc(MAX_INPUT);

    if (seeds == NULL || lens == NULL || buf == NULL)
        return 2;
    for (int i = 0; i < n; i++) {
        seeds[i] = read_file(argv[i + 1], &lens[i]);
        LLVMFuzzerTestOneInput(seeds[i], lens[i]);
    }
    LLVMFuzzerTestOneInput((const uint8_t *)"", 0);
    for (long r = 0; n > 0 && r < runs; r++) {
        int a = (int)(rng() % (uint64_t)n), b = (int)(rng() % (uint64_t)n);
        memcpy(buf, seeds[a], lens[a]);
        size_t len = mutate(buf, lens[a], seeds[b], lens[b]);
        /* A private copy of the exact size, so ASan sees any read past the end. */
        uint8_t *input = malloc(len > 0 ? len : 1);
        if (input == NULL)
            return 2;
        memcpy(input, buf, len);
        LLVMFuzzerTestOneInput(input, len);
        free(input);
    }
    printf("fuzz driver: %d seeds, %ld mutated inputs, no crash\n", n, runs);
    for (int i = 0; i < n; i++)
        free(seeds[i]);
    free(seeds);
    free(lens);
    free(buf);
    return 0;
}
