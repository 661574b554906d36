/* Compiled kernels of lotavec's top-k selection (loaded with ctypes: lotavec/native.py).
 *
 * Every kernel reads a candidate's base and fine-tuned *storage* arrays (BF16/F16 as uint16 bit
 * patterns, F32 as float) and computes the selection key of entry i on the fly:
 *     key = bits of fabsf(f32(ft[i]) - f32(base[i]))      (uint32; orders like the score)
 * exactly as the numpy path does (IEEE float32 subtraction, round to nearest; no fast-math), so
 * no score array is ever materialised. Excluded entries (a sorted, unique int64 list) are never
 * counted or emitted but are still checked for non-finite scores, like the numpy path.
 *
 * dtype codes: 0 = BF16, 1 = F16, 2 = F32.
 */
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

#define BLOCK 1024
#define KEY_INF 0x7F800000u

static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* IEEE half -> float32 bits, exact (subnormals, inf and NaN included). */
static inline float h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    if (exp == 0x1Fu) return u2f(sign | 0x7F800000u | (man << 13));
    if (exp == 0) {
        /* subnormal (or zero): man * 2^-24, exact in float32 */
        float v = (float)man * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    return u2f(sign | ((exp + 112u) << 23) | (man << 13));
}

/* Keys of entries [s, s + m) into out[0..m); returns the OR of (key >= KEY_INF) flags. */
static inline int keys_block(const void *base, const void *ft, int64_t s, int64_t m, int dtype,
                             uint32_t *out) {
    uint32_t bad = 0;
    if (dtype == 0) {
        const uint16_t *b = (const uint16_t *)base + s, *f = (const uint16_t *)ft + s;
        for (int64_t i = 0; i < m; i++) {
            uint32_t k = f2u(fabsf(u2f((uint32_t)f[i] << 16) - u2f((uint32_t)b[i] << 16)));
            out[i] = k;
            bad |= (k >= KEY_INF);
        }
    } else if (dtype == 1) {
        const uint16_t *b = (const uint16_t *)base + s, *f = (const uint16_t *)ft + s;
        for (int64_t i = 0; i < m; i++) {
            uint32_t k = f2u(fabsf(h2f(f[i]) - h2f(b[i])));
            out[i] = k;
            bad |= (k >= KEY_INF);
        }
    } else {
        const float *b = (const float *)base + s, *f = (const float *)ft + s;
        for (int64_t i = 0; i < m; i++) {
            uint32_t k = f2u(fabsf(f[i] - b[i]));
            out[i] = k;
            bad |= (k >= KEY_INF);
        }
    }
    return (int)bad;
}

/* Mark excluded entries of block [s, s + m) in keep[] (1 = eligible); advances *j. */
static inline int64_t mark_excluded(const int64_t *ex, int64_t nex, int64_t *j, int64_t s, int64_t m,
                                    uint8_t *keep) {
    int64_t n = 0;
    memset(keep, 1, (size_t)m);
    while (*j < nex && ex[*j] < s + m) {
        keep[ex[*j] - s] = 0;
        (*j)++;
        n++;
    }
    return n;
}

/* One pass over a candidate.
 *   mode 0: hist[key >> 16] += 1 for eligible non-zero keys; counts[0] += eligible zero keys.
 *   mode 1: hist[key & 0xFFFF] += 1 for eligible keys with key >> 16 == param.
 *   mode 2: counts[0] += eligible keys == param.
 * Returns -1, or the flat index of the first non-finite score (the pass then stops). */
int64_t lv_sel_scan(const void *base, const void *ft, int64_t n, int32_t dtype, const int64_t *ex,
                    int64_t nex, int32_t mode, uint32_t param, int64_t *hist, int64_t *counts) {
    uint32_t keys[BLOCK];
    uint8_t keep[BLOCK];
    int64_t j = 0, zeros = 0, eq = 0;
    for (int64_t s = 0; s < n; s += BLOCK) {
        int64_t m = n - s < BLOCK ? n - s : BLOCK;
        if (keys_block(base, ft, s, m, dtype, keys)) {
            for (int64_t i = 0; i < m; i++)
                if (keys[i] >= KEY_INF) return s + i;
        }
        int64_t nx = (ex && j < nex && ex[j] < s + m) ? mark_excluded(ex, nex, &j, s, m, keep) : 0;
        if (mode == 0) {
            /* compact the non-zero keys first: unchanged entries (often most) cost no histogram
             * update, and the histogram loop has no unpredictable branch */
            uint32_t nz[BLOCK];
            int64_t c = 0;
            if (nx)
                for (int64_t i = 0; i < m; i++) keys[i] &= 0u - (uint32_t)keep[i];
            for (int64_t i = 0; i < m; i++) {
                nz[c] = keys[i];
                c += keys[i] != 0;
            }
            zeros += (m - nx) - c;
            for (int64_t i = 0; i < c; i++) hist[nz[i] >> 16]++;
        } else if (mode == 1) {
            uint32_t in[BLOCK];
            int64_t c = 0;
            for (int64_t i = 0; i < m; i++) {
                in[c] = keys[i];
                c += ((keys[i] >> 16) == param) & (!nx || keep[i]);
            }
            for (int64_t i = 0; i < c; i++) hist[in[i] & 0xFFFFu]++;
        } else {
            for (int64_t i = 0; i < m; i++) eq += (keys[i] == param) & (!nx || keep[i]);
        }
    }
    counts[0] += mode == 0 ? zeros : eq;
    return -1;
}

/* Emit, in flat order, the eligible entries with key > t and the first `quota` with key == t.
 * idx_out gets their flat indices; when vals_mode is 1 or 2, vals_out gets per entry the
 * fine-tuned bits (1) or the wrap-around difference fine-tuned bits - base bits (2), in the
 * storage width (2 bytes for BF16/F16, 4 for F32). quota = INT64_MAX takes every tie. idx_out/vals_out need room for one entry more
 * than are eligible. Returns the number emitted, or -1 - (flat index of the first non-finite score). */
int64_t lv_sel_emit(const void *base, const void *ft, int64_t n, int32_t dtype, const int64_t *ex,
                    int64_t nex, uint32_t t, int64_t quota, int64_t *idx_out, int32_t vals_mode,
                    void *vals_out) {
    uint32_t keys[BLOCK];
    uint8_t keep[BLOCK];
    int64_t j = 0, c = 0, q = quota;
    for (int64_t s = 0; s < n; s += BLOCK) {
        int64_t m = n - s < BLOCK ? n - s : BLOCK;
        if (keys_block(base, ft, s, m, dtype, keys)) {
            for (int64_t i = 0; i < m; i++)
                if (keys[i] >= KEY_INF) return -1 - (s + i);
        }
        int64_t nx = (ex && j < nex && ex[j] < s + m) ? mark_excluded(ex, nex, &j, s, m, keep) : 0;
        int64_t c0 = c;
        if (nx || (q > 0 && q != INT64_MAX)) { /* ties to count (or exclusions): general loop */
            for (int64_t i = 0; i < m; i++) {
                uint32_t k = keys[i];
                int64_t el = nx ? keep[i] : 1;
                int64_t tie = (k == t) & (q > 0) & el;
                q -= tie;
                idx_out[c] = s + i;
                c += ((k > t) & el) | tie;
            }
        } else if (q == 0) { /* no more ties: keys > t */
            for (int64_t i = 0; i < m; i++) {
                idx_out[c] = s + i;
                c += keys[i] > t;
            }
        } else { /* every tie: keys >= t */
            for (int64_t i = 0; i < m; i++) {
                idx_out[c] = s + i;
                c += keys[i] >= t;
            }
        }
        if (vals_mode) {
            /* second loop over this block's emitted indices: keeps the first loop branch-free */
            if (dtype == 2) {
                const uint32_t *b = (const uint32_t *)base, *f = (const uint32_t *)ft;
                uint32_t *v = (uint32_t *)vals_out;
                for (int64_t e = c0; e < c; e++) {
                    int64_t i = idx_out[e];
                    v[e] = vals_mode == 1 ? f[i] : (uint32_t)(f[i] - b[i]);
                }
            } else {
                const uint16_t *b = (const uint16_t *)base, *f = (const uint16_t *)ft;
                uint16_t *v = (uint16_t *)vals_out;
                for (int64_t e = c0; e < c; e++) {
                    int64_t i = idx_out[e];
                    v[e] = vals_mode == 1 ? f[i] : (uint16_t)(f[i] - b[i]);
                }
            }
        }
    }
    return c;
}

static struct PyModuleDef lv_module = {PyModuleDef_HEAD_INIT, "_cselect", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__cselect(void) { return PyModule_Create(&lv_module); }
