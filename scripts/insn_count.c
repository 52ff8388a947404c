/* A QEMU TCG plugin (qemu-user 7.x, plugin API version 1) for scripts/board_cost.sh: counts the
 * guest instructions a program executes, how many of them are aarch64 SIMD/FP instructions
 * (encoding op0 = x111; on armv7 that share is not counted), and the counts at each mark the
 * program makes (msn_kernels::probe: `hint #126`, a nop on every aarch64 CPU). At exit it
 * prints to qemu's log (stderr with `-d plugin`):
 *   mark insns=N simd=M          one line per mark executed, in order
 *   insns=N simd=M               the totals
 * With the argument `pcs=FILE` it also writes FILE: one line `ADDRESS INSNS TIMES` per
 * translation block (its guest address, its instructions, how often it ran), for a profile by
 * function (scripts/insn_profile.py maps them to the symbols of an unstripped build).
 * A mark's counts include the rest of its translation block (a few instructions): the counters
 * are added once per block, before it runs.
 * Derived from ../shared/tools/insn-count/insn_count.c (the same counts, plus the marks).
 * Build: cc -O2 -shared -fPIC -o insn_count.so insn_count.c */
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef struct qemu_info_t qemu_info_t;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);

extern void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
extern const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
extern size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
extern void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr, uint64_t imm);
extern void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_udata_cb_t cb, enum qemu_plugin_cb_flags flags, void *userdata);
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
extern void qemu_plugin_outs(const char *string);
extern uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

#define MARK 0xD5032FDFu /* hint #126 */

static uint64_t insns, simd;
static uint64_t *marks; /* pairs (insns, simd) */
static size_t n_marks, cap_marks;
static int aarch64 = 1;
/* With pcs=FILE: every block translated, its address, size and execution counter. */
struct block { uint64_t vaddr, n, times; };
static struct block **blocks;
static size_t n_blocks, cap_blocks;
static const char *pcs_path;

static void on_mark(unsigned int vcpu, void *p) {
    if (n_marks == cap_marks) {
        cap_marks = cap_marks ? 2 * cap_marks : 4096;
        uint64_t *m = realloc(marks, cap_marks * 2 * sizeof *marks);
        if (!m) { qemu_plugin_outs("insn_count: out of memory for marks\n"); exit(1); }
        marks = m;
    }
    marks[2 * n_marks] = insns;
    marks[2 * n_marks + 1] = simd;
    n_marks++;
}

static void on_tb(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    size_t n = qemu_plugin_tb_n_insns(tb), s = 0;
    for (size_t i = 0; i < n && aarch64; i++) {
        struct qemu_plugin_insn *in = qemu_plugin_tb_get_insn(tb, i);
        if (qemu_plugin_insn_size(in) == 4) {
            uint32_t w; memcpy(&w, qemu_plugin_insn_data(in), 4);
            if (((w >> 25) & 7) == 7) s++;   /* op0 = x111: SIMD and floating point */
            if (w == MARK) qemu_plugin_register_vcpu_insn_exec_cb(in, on_mark, QEMU_PLUGIN_CB_NO_REGS, NULL);
        }
    }
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns, n);
    if (pcs_path) {
        struct block *b = calloc(1, sizeof *b);
        if (n_blocks == cap_blocks) {
            cap_blocks = cap_blocks ? 2 * cap_blocks : 65536;
            blocks = realloc(blocks, cap_blocks * sizeof *blocks);
        }
        if (!b || !blocks) { qemu_plugin_outs("insn_count: out of memory for blocks\n"); exit(1); }
        b->vaddr = qemu_plugin_tb_vaddr(tb);
        b->n = n;
        blocks[n_blocks++] = b;
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->times, 1);
    }
    if (s) qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &simd, s);
}

static void at_exit(qemu_plugin_id_t id, void *p) {
    char buf[128];
    for (size_t i = 0; i < n_marks; i++) {
        snprintf(buf, sizeof buf, "mark insns=%llu simd=%llu\n",
                 (unsigned long long)marks[2 * i], (unsigned long long)marks[2 * i + 1]);
        qemu_plugin_outs(buf);
    }
    snprintf(buf, sizeof buf, "insns=%llu simd=%llu\n", (unsigned long long)insns, (unsigned long long)simd);
    qemu_plugin_outs(buf);
    if (pcs_path) {
        FILE *f = fopen(pcs_path, "w");
        if (!f) { qemu_plugin_outs("insn_count: cannot write the pcs file\n"); return; }
        for (size_t i = 0; i < n_blocks; i++)
            if (blocks[i]->times)
                fprintf(f, "%llx %llu %llu\n", (unsigned long long)blocks[i]->vaddr,
                        (unsigned long long)blocks[i]->n, (unsigned long long)blocks[i]->times);
        fclose(f);
    }
}

/* Argument `arch=arm` (armv7): count instructions only (no SIMD share, no marks);
 * `pcs=FILE`: the blocks' counts to FILE. */
__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "arch=arm") == 0) aarch64 = 0;
        else if (strncmp(argv[i], "pcs=", 4) == 0) pcs_path = argv[i] + 4;
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
