/* Compiled kernels of lotavec's ticket codecs and merge (loaded with ctypes: lotavec/native.py).
 *
 * Each function is the single-pass equivalent of a numpy sequence in lotavec/format/codecs.py or
 * lotavec/merge/engine.py, which stay the reference (the tests compare both). Inputs are trusted
 * to be in range: callers validate sizes before the call, and index arrays come from the decoders
 * below, which produce strictly increasing indices and report the last one for the range check.
 */
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Gap-coded mask (spec §5.2): width-byte gaps stored as byte planes (raw[b * nnz + j] is byte b of
 * gap j). Writes offset + local index per entry: i0 = g0, ij = i(j-1) + gj + 1. Returns the last
 * local index (-1 when nnz == 0) for the caller's range check. */
int64_t lv_gaps_decode(const uint8_t *raw, int32_t width, int64_t nnz, int64_t offset, int64_t *out) {
    int64_t i = -1;
    const uint8_t *p0 = raw, *p1 = raw + nnz, *p2 = raw + 2 * nnz, *p3 = raw + 3 * nnz;
    if (width == 1) {
        for (int64_t j = 0; j < nnz; j++) { i += (int64_t)p0[j] + 1; out[j] = i + offset; }
    } else if (width == 2) {
        for (int64_t j = 0; j < nnz; j++) {
            i += ((int64_t)p0[j] | ((int64_t)p1[j] << 8)) + 1;
            out[j] = i + offset;
        }
    } else {
        for (int64_t j = 0; j < nnz; j++) {
            uint64_t g = (uint64_t)p0[j] | ((uint64_t)p1[j] << 8) | ((uint64_t)p2[j] << 16) | ((uint64_t)p3[j] << 24);
            i += (int64_t)g + 1;
            out[j] = i + offset;
        }
    }
    return i;
}

/* Bitmap mask (spec §5.3): LSB-first bits of `length` entries. Writes offset + position of each set
 * bit while fewer than `cap` were written; returns the number of set bits (all of them). */
int64_t lv_bitmap_decode(const uint8_t *bits, int64_t length, int64_t offset, int64_t *out, int64_t cap) {
    int64_t n = 0, nbytes = (length + 7) / 8, full = length / 64;
    for (int64_t w = 0; w < full; w++) {
        uint64_t v;
        memcpy(&v, bits + 8 * w, 8);
        while (v) {
            int b = __builtin_ctzll(v);
            if (n < cap) out[n] = offset + 64 * w + b;
            n++;
            v &= v - 1;
        }
    }
    for (int64_t byte = 8 * full; byte < nbytes; byte++) {
        unsigned v = bits[byte];
        while (v) {
            int b = __builtin_ctz(v);
            if (n < cap) out[n] = offset + 8 * byte + b;
            n++;
            v &= v - 1;
        }
    }
    return n;
}

/* Byte-unshuffle n elements of `width` bytes (little-endian); with zigzag, map each unsigned
 * value u to (u >> 1) ^ -(u & 1), the wrap-around difference of the ulpdiff codec (spec §6.1). */
void lv_unshuffle(const uint8_t *raw, int32_t width, int64_t n, int32_t zigzag, void *out) {
    if (width == 2) {
        uint16_t *o = (uint16_t *)out;
        const uint8_t *p0 = raw, *p1 = raw + n;
        if (zigzag) {
            for (int64_t j = 0; j < n; j++) {
                uint16_t u = (uint16_t)(p0[j] | (p1[j] << 8));
                o[j] = (uint16_t)((u >> 1) ^ (uint16_t)(-(int32_t)(u & 1)));
            }
        } else {
            for (int64_t j = 0; j < n; j++) o[j] = (uint16_t)(p0[j] | (p1[j] << 8));
        }
    } else if (width == 4) {
        uint32_t *o = (uint32_t *)out;
        const uint8_t *p0 = raw, *p1 = raw + n, *p2 = raw + 2 * n, *p3 = raw + 3 * n;
        for (int64_t j = 0; j < n; j++) {
            uint32_t u = (uint32_t)p0[j] | ((uint32_t)p1[j] << 8) | ((uint32_t)p2[j] << 16) | ((uint32_t)p3[j] << 24);
            o[j] = zigzag ? ((u >> 1) ^ (uint32_t)(-(int64_t)(u & 1))) : u;
        }
    } else {
        memcpy(out, raw, (size_t)n * (size_t)width);
    }
}

/* Count tickets per entry: count[idx[j]] += 1, saturating at 255. */
void lv_count(uint8_t *count, const int64_t *idx, int64_t n) {
    for (int64_t j = 0; j < n; j++) {
        uint8_t *c = count + idx[j];
        *c += (*c != 255);
    }
}

/* Exact application of one lossless ticket on 16-bit storage (BF16/F16):
 *   out[idx[j]] = base[idx[j]] + payload[j]   (mode 0, ulpdiff: wrap-around add of bit patterns)
 *   out[idx[j]] = payload[j]                  (mode 1, raw: the fine-tuned bits)
 * Entries with count[idx[j]] > 1 (when count is given) are skipped and their positions j written to
 * shared[]; *nshared receives how many. Returns the number of entries whose value changed (bits
 * differ and not just +0/-0), or -(j + 1) for the first entry j whose result is Inf/NaN (nothing
 * after it is written). */
int64_t lv_apply16(uint16_t *out, const uint16_t *base, const int64_t *idx, const uint16_t *payload, int64_t n,
                   int32_t mode, uint16_t expmask, const uint8_t *count, int64_t *shared, int64_t *nshared) {
    int64_t changed = 0, ns = 0;
    for (int64_t j = 0; j < n; j++) {
        int64_t i = idx[j];
        if (count && count[i] > 1) { shared[ns++] = j; continue; }
        uint16_t b = base[i];
        uint16_t f = mode ? payload[j] : (uint16_t)(b + payload[j]);
        if ((f & expmask) == expmask) { *nshared = ns; return -(j + 1); }
        out[i] = f;
        changed += (f != b) & (((f | b) & 0x7FFF) != 0);
    }
    *nshared = ns;
    return changed;
}

/* lv_apply16 for 32-bit storage (F32). */
int64_t lv_apply32(uint32_t *out, const uint32_t *base, const int64_t *idx, const uint32_t *payload, int64_t n,
                   int32_t mode, uint32_t expmask, const uint8_t *count, int64_t *shared, int64_t *nshared) {
    int64_t changed = 0, ns = 0;
    for (int64_t j = 0; j < n; j++) {
        int64_t i = idx[j];
        if (count && count[i] > 1) { shared[ns++] = j; continue; }
        uint32_t b = base[i];
        uint32_t f = mode ? payload[j] : (uint32_t)(b + payload[j]);
        if ((f & expmask) == expmask) { *nshared = ns; return -(j + 1); }
        out[i] = f;
        changed += (f != b) & (((f | b) & 0x7FFFFFFFu) != 0);
    }
    *nshared = ns;
    return changed;
}

/* A valid (empty) extension module, so that setuptools builds and installs this file like any
 * other; lotavec uses it only through ctypes. */
static struct PyModuleDef lv_module = {PyModuleDef_HEAD_INIT, "_ccodec", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__ccodec(void) { return PyModule_Create(&lv_module); }
