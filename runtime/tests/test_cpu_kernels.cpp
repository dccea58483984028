// The CPU engine's matmul kernels against a double-precision reference, per kernel table this
// machine can run (ctest -R sdar_cpu_kernels; also run for AArch64 under qemu, see README).
//
// Tolerances: float activations: 2e-6 * sum|w x| (float32 accumulation of up to 1536 products).
// int8 activations: each activation is rounded to a multiple of its block scale s = max|x| / 127,
// an error of at most s / 2, so |y - y_ref| <= sum over blocks of (s_b / 2) * sum_b |w| (plus the
// float slack above). Quantized results must also be bit-identical across kernel tables.
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "amx.h"
#include "cpu_features.h"
#include "errors.h"
#include "gemm.h"
#include "matmul.h"
#include "thread_pool.h"

namespace {

using sdar::cpu::kPanel;
using sdar::cpu::PackedMatrix;
using sdar::cpu::WeightFormat;

int failures = 0;

const char* gemm_kernels_name(const sdar::cpu::KernelTable& table) { return sdar::cpu::gemm_kernels_for(table).name; }
#define CHECK(cond, ...)                                        \
  do {                                                          \
    if (!(cond)) {                                              \
      std::fprintf(stderr, "%s:%d: CHECK(%s) ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                        \
      std::fprintf(stderr, "\n");                               \
      ++failures;                                               \
    }                                                           \
  } while (0)

// A random matrix in a packed format, with its dequantized weights in double.
struct TestMatrix {
  PackedMatrix view;
  std::vector<std::uint8_t> bytes;
  std::vector<float> floats;  // F32 data
  std::vector<float> scales;
  std::vector<float> zero_scales;
  std::vector<double> dense;  // [rows][cols]
};

TestMatrix make_matrix(WeightFormat format, int rows, int cols, int group, bool symmetric, std::mt19937& rng) {
  TestMatrix t;
  const int panels = (rows + kPanel - 1) / kPanel;
  const int padded = panels * kPanel;
  t.dense.assign(static_cast<std::size_t>(rows) * cols, 0.0);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  if (format == WeightFormat::F32) {
    t.floats.assign(static_cast<std::size_t>(padded) * cols, 0.0f);
    for (int n = 0; n < rows; ++n) {
      for (int k = 0; k < cols; ++k) {
        const float v = normal(rng);
        t.floats[(static_cast<std::size_t>(n / kPanel) * cols + k) * kPanel + n % kPanel] = v;
        t.dense[static_cast<std::size_t>(n) * cols + k] = v;
      }
    }
    t.view = PackedMatrix{format, rows, cols, 0, true, t.floats.data(), nullptr, nullptr};
    return t;
  }
  const int bits = format == WeightFormat::Q4 ? 4 : 8;
  const int levels = 1 << bits;
  const int groups = cols / group;
  std::uniform_int_distribution<int> code(0, levels - 1);
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  const int units = bits == 4 ? (cols + 63) / 64 : cols / 32;  // 32 bytes per row per unit
  t.bytes.assign(static_cast<std::size_t>(padded) * units * 32, 0);
  t.scales.assign(static_cast<std::size_t>(panels) * groups * kPanel, 0.0f);
  t.zero_scales.assign(t.scales.size(), 0.0f);
  for (int n = 0; n < rows; ++n) {
    for (int g = 0; g < groups; ++g) {
      const float s = scale(rng);
      const int z = symmetric ? levels / 2 : code(rng);
      const std::size_t si = (static_cast<std::size_t>(n / kPanel) * groups + g) * kPanel + n % kPanel;
      t.scales[si] = s;
      t.zero_scales[si] = static_cast<float>(z) * s;
      for (int k = g * group; k < (g + 1) * group; ++k) {
        const int u = code(rng);
        const int unit_weights = bits == 4 ? 64 : 32;
        const std::size_t unit_row = (static_cast<std::size_t>(n / kPanel) * units + k / unit_weights) * kPanel + n % kPanel;
        if (bits == 8) {
          t.bytes[unit_row * 32 + k % 32] = static_cast<std::uint8_t>(u);
        } else {
          std::uint8_t& b = t.bytes[unit_row * 32 + k % 32];
          b = static_cast<std::uint8_t>(k % 64 < 32 ? (b & 0xF0) | u : (b & 0x0F) | (u << 4));
        }
        t.dense[static_cast<std::size_t>(n) * cols + k] = static_cast<double>(u - z) * s;
      }
    }
  }
  t.view = PackedMatrix{format, rows, cols, group, symmetric, t.bytes.data(), t.scales.data(),
                        symmetric ? nullptr : t.zero_scales.data()};
  return t;
}

// |y - y_ref| bounds per output: float slack, and the int8 activation rounding bound.
void check(const TestMatrix& t, const std::vector<float>& x, int rows, const std::vector<float>& y, bool int8,
           int block, const std::string& what) {
  const int N = t.view.rows;
  const int K = t.view.cols;
  int bad = 0;
  for (int m = 0; m < rows; ++m) {
    for (int n = 0; n < N; ++n) {
      double ref = 0.0;
      double mag = 0.0;
      double rounding = 0.0;
      for (int b = 0; b < (int8 ? K / block : 0); ++b) {
        double amax = 0.0;
        double wsum = 0.0;
        for (int k = b * block; k < (b + 1) * block; ++k) {
          amax = std::fmax(amax, std::fabs(x[static_cast<std::size_t>(m) * K + k]));
          wsum += std::fabs(t.dense[static_cast<std::size_t>(n) * K + k]);
        }
        rounding += amax / 127.0 / 2.0 * wsum;
      }
      for (int k = 0; k < K; ++k) {
        const double p = t.dense[static_cast<std::size_t>(n) * K + k] * x[static_cast<std::size_t>(m) * K + k];
        ref += p;
        mag += std::fabs(p);
      }
      const double err = std::fabs(y[static_cast<std::size_t>(m) * N + n] - ref);
      const double tol = 2e-6 * mag + rounding * 1.0001 + 1e-30;
      if (!(err <= tol) && bad++ < 3) {
        CHECK(err <= tol, "%s: y[%d][%d] = %.9g, reference %.9g (tolerance %.3g)", what.c_str(), m, n,
              y[static_cast<std::size_t>(m) * N + n], ref, tol);
      }
    }
  }
}

void test_matmul(const sdar::cpu::KernelTable& kernels, int threads, std::mt19937& rng) {
  sdar::cpu::ThreadPool pool(threads);
  sdar::cpu::Matmul matmul(kernels, pool);
  const sdar::cpu::KernelTable& scalar = sdar::cpu::scalar_kernels();
  sdar::cpu::ThreadPool scalar_pool(1);
  sdar::cpu::Matmul reference(scalar, scalar_pool);
  matmul.reserve(16, 1536);
  reference.reserve(16, 1536);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  struct Shape { WeightFormat format; int rows; int cols; int group; bool symmetric; };
  const Shape shapes[] = {
      {WeightFormat::F32, 37, 100, 0, true},   {WeightFormat::F32, 8, 64, 0, true},
      {WeightFormat::Q4, 37, 256, 32, true},   {WeightFormat::Q4, 24, 256, 64, false},
      {WeightFormat::Q4, 17, 384, 128, true},  {WeightFormat::Q4, 9, 1536, 256, false},
      {WeightFormat::Q8, 37, 256, 32, true},   {WeightFormat::Q8, 16, 512, 128, false},
      {WeightFormat::Q8, 5, 1024, 1024, true},
      {WeightFormat::Q4, 13, 96, 32, false},  {WeightFormat::Q8, 11, 96, 32, true},  // 3 chunks: half a Q4 unit
  };
  for (const Shape& s : shapes) {
    const TestMatrix t = make_matrix(s.format, s.rows, s.cols, s.group, s.symmetric, rng);
    for (int rows = 1; rows <= 16; ++rows) {
      std::vector<float> x(static_cast<std::size_t>(rows) * s.cols);
      for (auto& v : x) v = normal(rng);
      x[0] = 0.0f;  // a zero next to ordinary values
      std::vector<float> y(static_cast<std::size_t>(rows) * s.rows, NAN);
      const std::string what = std::string(kernels.name) + " " + sdar::cpu::weight_format_name(s.format) + " " +
                               std::to_string(s.rows) + "x" + std::to_string(s.cols) + " g" + std::to_string(s.group) +
                               (s.symmetric ? " sym" : " asym") + " M=" + std::to_string(rows) + " threads=" +
                               std::to_string(threads);
      matmul(t.view, x.data(), rows, s.cols, y.data(), s.rows);
      const bool quantized = s.format != WeightFormat::F32;
      const int block = quantized ? sdar::cpu::activation_block(t.view) : 0;
      check(t, x, rows, y, quantized, block, what);
      if (quantized) {
        std::vector<float> y_ref(y.size(), NAN);
        reference(t.view, x.data(), rows, s.cols, y_ref.data(), s.rows);
        int differ = 0;
        for (std::size_t i = 0; i < y.size(); ++i) differ += y[i] != y_ref[i];
        CHECK(differ == 0, "%s: %d outputs differ from the scalar kernels' bit for bit", what.c_str(), differ);
        std::vector<float> y_float(y.size(), NAN);
        matmul(t.view, x.data(), rows, s.cols, y_float.data(), s.rows, sdar::cpu::Activations::Float);
        check(t, x, rows, y_float, false, 0, what + " float activations");
      }
    }
  }
}

// The GEMM path (gemm.h) of float32 matmuls at the row counts of a prefill, against the small-M path
// of the same table and the scalar table: the same bits (one chain of fused multiply-adds per output,
// k in order; the small-M path's tiles of 1 or 2 rows, the last of an M = 4i + 1 or 4i + 2, split
// their chains, so those rows are compared with the scalar table only), and within the float tolerance
// of the double reference. Odd N and K, K over several GEMM blocks, M around the switch-over and 512.
void test_gemm(const sdar::cpu::KernelTable& kernels, int threads, std::mt19937& rng) {
  // The AVX-512 VNNI table takes the AVX-512 microkernels wherever the build has them (its CPUs all can run them).
  if (std::string(kernels.name) == "avx512vnni" && sdar::cpu::avx512_gemm() != nullptr) {
    CHECK(std::string(gemm_kernels_name(kernels)) == "avx512", "the avx512vnni table takes the %s GEMM microkernels",
          gemm_kernels_name(kernels));
  }
  sdar::cpu::ThreadPool pool(threads);
  sdar::cpu::Matmul gemm(kernels, pool);
  sdar::cpu::Matmul small(kernels, pool);
  sdar::cpu::ThreadPool scalar_pool(1);
  sdar::cpu::Matmul scalar(sdar::cpu::scalar_kernels(), scalar_pool);
  gemm.set_gemm_min_rows(sdar::cpu::kGemmDefaultMinRows);
  small.set_gemm_min_rows(0);
  scalar.set_gemm_min_rows(0);
  const int threshold = sdar::cpu::kGemmDefaultMinRows;
  struct Case { int n; int k; std::vector<int> rows; };
  const Case cases[] = {
      {37, 100, {threshold - 1, threshold, threshold + 1, threshold + 2, 61}},
      {45, 2 * sdar::cpu::kGemmDepth + 13, {threshold, threshold + 3, 64}},
      {24, 300, {512}},
      // Strips of 4 panels (the AVX-512 microkernel's 32 columns): two whole ones and one of 3 panels,
      // the last of them partial; tiles of 12 rows with 3 and 4 rows in the last.
      {85, 3 * sdar::cpu::kGemmDepth + 7, {threshold + 7, 100}},
      {59, 2 * sdar::cpu::kGemmDepth, {512}},
  };
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const Case& c : cases) {
    const TestMatrix t = make_matrix(WeightFormat::F32, c.n, c.k, 0, true, rng);
    for (const int rows : c.rows) {
      for (sdar::cpu::Matmul* m : {&gemm, &small, &scalar}) m->reserve(rows, c.k);
      std::vector<float> x(static_cast<std::size_t>(rows) * c.k);
      for (auto& v : x) v = normal(rng);
      const std::string what = std::string(kernels.name) + " GEMM f32 " + std::to_string(c.n) + "x" + std::to_string(c.k) +
                               " M=" + std::to_string(rows) + " threads=" + std::to_string(threads) + " (" +
                               gemm_kernels_name(kernels) + " microkernels)";
      std::vector<float> y(static_cast<std::size_t>(rows) * c.n, NAN);
      std::vector<float> y_small(y.size(), NAN);
      std::vector<float> y_scalar(y.size(), NAN);
      gemm(t.view, x.data(), rows, c.k, y.data(), c.n);
      small(t.view, x.data(), rows, c.k, y_small.data(), c.n);
      scalar(t.view, x.data(), rows, c.k, y_scalar.data(), c.n);
      check(t, x, rows, y, false, 0, what);
      int differ_scalar = 0;
      int differ_small = 0;
      const int tiled = rows % 4 == 3 ? rows : rows / 4 * 4;  // rows the small-M path runs in tiles of 4
      for (int m = 0; m < rows; ++m) {
        for (int n = 0; n < c.n; ++n) {
          const std::size_t i = static_cast<std::size_t>(m) * c.n + n;
          differ_scalar += y[i] != y_scalar[i];
          differ_small += m < tiled && y[i] != y_small[i];
        }
      }
      CHECK(differ_scalar == 0, "%s: %d outputs differ from the scalar kernels' bit for bit", what.c_str(), differ_scalar);
      CHECK(differ_small == 0, "%s: %d outputs differ from the small-M path's bit for bit", what.c_str(), differ_small);
    }
  }
}

void test_gemm_setting() {
  ::setenv("SDAR_CPU_GEMM_MIN_ROWS", "64", 1);
  CHECK(sdar::cpu::gemm_min_rows_from_environment() == 64, "SDAR_CPU_GEMM_MIN_ROWS=64 must give 64");
  ::setenv("SDAR_CPU_GEMM_MIN_ROWS", "0", 1);
  CHECK(sdar::cpu::gemm_min_rows_from_environment() == 0, "SDAR_CPU_GEMM_MIN_ROWS=0 must turn the GEMM off");
  for (const char* bad : {"many", "-1", "12x"}) {
    ::setenv("SDAR_CPU_GEMM_MIN_ROWS", bad, 1);
    bool refused = false;
    try {
      sdar::cpu::gemm_min_rows_from_environment();
    } catch (const sdar::InvalidArgument&) {
      refused = true;
    }
    CHECK(refused, "SDAR_CPU_GEMM_MIN_ROWS=%s must be refused", bad);
  }
  ::unsetenv("SDAR_CPU_GEMM_MIN_ROWS");
  CHECK(sdar::cpu::gemm_min_rows_from_environment() == sdar::cpu::kGemmDefaultMinRows, "unset: the default");
}

// The blocked paths of quantized matmuls of many rows, the AMX kernel (amx.h) and a table's strips
// kernel (kernels.h), against the same table's small-M path and the scalar table: the same bits on
// every row and column, and within the int8 bound of the double reference. Q4 and Q8, symmetric and
// not, activation blocks of 32, 64 and 128 (groups up to 256), N with partial strips (1, 2 or 3
// panels of AMX's 4, one of the strips kernel's 2) and a part panel, K over several blocks (and an
// odd number of chunks of 32), M around the switch-over, not a multiple of 16, leaving every
// remainder of the strips kernel's tiles of 6 rows, and 512.
void test_quantized_blocked(const sdar::cpu::KernelTable& table, bool amx_path, int threads, std::mt19937& rng) {
  const std::string path = amx_path ? "AMX" : std::string(table.name) + " strips";
  sdar::cpu::ThreadPool pool(threads);
  sdar::cpu::Matmul blocked(table, pool);
  sdar::cpu::Matmul small(table, pool);
  sdar::cpu::ThreadPool scalar_pool(1);
  sdar::cpu::Matmul scalar(sdar::cpu::scalar_kernels(), scalar_pool);
  blocked.set_amx(amx_path);
  blocked.set_gemm_min_rows(sdar::cpu::kGemmDefaultMinRows);
  small.set_amx(false);
  small.set_gemm_min_rows(0);
  CHECK(blocked.amx() == amx_path && !small.amx(), "set_amx must turn the AMX path on and off where it can run");
  const int threshold = amx_path ? sdar::cpu::kAmxMinRows : sdar::cpu::kGemmDefaultMinRows;
  struct Case { WeightFormat format; int n; int k; int group; bool symmetric; std::vector<int> rows; };
  const Case cases[] = {
      {WeightFormat::Q4, 37, 256, 32, true, {threshold - 1, threshold, threshold + 1, 47}},
      {WeightFormat::Q4, 85, 384, 128, false, {threshold + 16, 100}},
      {WeightFormat::Q4, 64, 512, 64, true, {512}},
      {WeightFormat::Q4, 13, 96, 32, false, {threshold + 3}},  // 3 chunks: half a Q4 unit; one strip of 2 panels
      {WeightFormat::Q4, 200, 1024, 256, false, {61}},          // blocks of 128 in groups of 256
      {WeightFormat::Q8, 37, 256, 32, false, {threshold, 77}},
      {WeightFormat::Q8, 90, 512, 128, true, {64, 130}},
      {WeightFormat::Q8, 24, 160, 32, true, {40}},              // 5 chunks; a strip of 3 panels
      {WeightFormat::Q8, 8, 192, 64, false, {512}},
  };
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const Case& c : cases) {
    const TestMatrix t = make_matrix(c.format, c.n, c.k, c.group, c.symmetric, rng);
    for (const int rows : c.rows) {
      for (sdar::cpu::Matmul* m : {&blocked, &small, &scalar}) m->reserve(rows, c.k);
      std::vector<float> x(static_cast<std::size_t>(rows) * c.k);
      for (auto& v : x) v = normal(rng);
      x[1] *= 40.0f;  // one large block next to ordinary ones
      const std::string what = path + " " + sdar::cpu::weight_format_name(c.format) + " " + std::to_string(c.n) + "x" +
                               std::to_string(c.k) + " g" + std::to_string(c.group) + (c.symmetric ? " sym" : " asym") +
                               " M=" + std::to_string(rows) + " threads=" + std::to_string(threads);
      std::vector<float> y(static_cast<std::size_t>(rows) * c.n, NAN);
      std::vector<float> y_small(y.size(), NAN);
      std::vector<float> y_scalar(y.size(), NAN);
      blocked(t.view, x.data(), rows, c.k, y.data(), c.n);
      small(t.view, x.data(), rows, c.k, y_small.data(), c.n);
      scalar(t.view, x.data(), rows, c.k, y_scalar.data(), c.n);
      check(t, x, rows, y, true, sdar::cpu::activation_block(t.view), what);
      int differ_small = 0;
      int differ_scalar = 0;
      for (std::size_t i = 0; i < y.size(); ++i) {
        differ_small += !(y[i] == y_small[i]);  // NaN (an output never written) differs too
        differ_scalar += !(y[i] == y_scalar[i]);
      }
      CHECK(differ_small == 0, "%s: %d outputs differ from the %s small-M path's bit for bit", what.c_str(), differ_small,
            table.name);
      CHECK(differ_scalar == 0, "%s: %d outputs differ from the scalar kernels' bit for bit", what.c_str(), differ_scalar);
    }
  }
}

void test_amx(int threads, std::mt19937& rng) {
  bool has_table = false;
  for (const std::string& n : sdar::cpu::available_kernels()) has_table = has_table || n == "avx512vnni";
  if (!has_table || !sdar::cpu::amx_usable()) {
    std::printf("amx: SKIPPED: this CPU, OS or build has no AMX-INT8 (or no avx512vnni table): not tested here\n");
    return;
  }
  test_quantized_blocked(sdar::cpu::select_kernels("avx512vnni"), true, threads, rng);
}

void test_amx_setting() {
  ::setenv("SDAR_CPU_AMX", "0", 1);
  CHECK(!sdar::cpu::amx_enabled_from_environment(), "SDAR_CPU_AMX=0 must turn the AMX path off");
  ::setenv("SDAR_CPU_AMX", "1", 1);
  CHECK(sdar::cpu::amx_enabled_from_environment(), "SDAR_CPU_AMX=1 must leave it on");
  for (const char* bad : {"no", "2", "off"}) {
    ::setenv("SDAR_CPU_AMX", bad, 1);
    bool refused = false;
    try {
      sdar::cpu::amx_enabled_from_environment();
    } catch (const sdar::InvalidArgument&) {
      refused = true;
    }
    CHECK(refused, "SDAR_CPU_AMX=%s must be refused", bad);
  }
  ::unsetenv("SDAR_CPU_AMX");
  CHECK(sdar::cpu::amx_enabled_from_environment(), "unset: on");
  // Only the avx512vnni table takes it, and only where it can run.
  sdar::cpu::ThreadPool pool(1);
  for (const std::string& name : sdar::cpu::available_kernels()) {
    sdar::cpu::Matmul m(sdar::cpu::select_kernels(name), pool);
    const bool expected = name == "avx512vnni" && sdar::cpu::amx_usable();
    CHECK(m.amx() == expected, "the %s table: AMX path %s", name.c_str(), m.amx() ? "on" : "off");
  }
}

void test_thread_pool() {
  for (int i = 0; i < 50; ++i) sdar::cpu::ThreadPool short_lived(3);  // destroyed before its threads start

  sdar::cpu::ThreadPool pool(3);
  for (int round = 0; round < 200; ++round) {
    const int tasks = 1 + round % 37;
    std::vector<int> hits(tasks, 0);
    pool.parallel_for(tasks, [&](int i) { ++hits[i]; });
    int wrong = 0;
    for (int h : hits) wrong += h != 1;
    CHECK(wrong == 0, "round %d: %d tasks not run exactly once", round, wrong);
  }

  // slot(): within a run, every task sees a slot in [0, size()) that no task running at the same
  // time holds (the engine's per-thread scratch relies on it); the calling thread's slot is 0, in
  // this pool and in any other; another pool's worker gets 0 from this pool.
  CHECK(pool.slot() == 0, "the calling thread's slot is %d, not 0", pool.slot());
  std::vector<std::atomic<int>> holders(pool.size());
  std::atomic<int> bad_slot{0};
  std::atomic<int> shared_slot{0};
  for (int round = 0; round < 50; ++round) {
    pool.parallel_for(64, [&](int) {
      const int slot = pool.slot();
      if (slot < 0 || slot >= pool.size()) {
        ++bad_slot;
        return;
      }
      if (holders[slot].fetch_add(1) != 0) ++shared_slot;
      for (volatile int spin = 0; spin < 2000; spin = spin + 1) {
      }
      holders[slot].fetch_sub(1);
    });
  }
  CHECK(bad_slot.load() == 0, "%d tasks saw a slot outside [0, %d)", bad_slot.load(), pool.size());
  CHECK(shared_slot.load() == 0, "%d tasks ran while another held their slot", shared_slot.load());
  sdar::cpu::ThreadPool other(2);
  std::atomic<int> foreign{0};
  std::atomic<int> on_worker{0};  // tasks that ran on the other pool's worker (the check needs some)
  for (int round = 0; round < 200 && on_worker.load() == 0; ++round) {
    other.parallel_for(16, [&](int) {
      foreign += pool.slot() != 0;
      on_worker += other.slot() != 0;
      for (volatile int spin = 0; spin < 20000; spin = spin + 1) {
      }
    });
  }
  CHECK(on_worker.load() > 0, "no task of a 2-thread pool ran on its worker in 200 runs");
  CHECK(foreign.load() == 0, "%d tasks of another pool got a non-zero slot of this one", foreign.load());
}

// The run-time detection: SDAR_EXPECT_KERNELS (e.g. "dotprod,neon,scalar", set by check_aarch64.sh
// per emulated CPU model) names the tables this CPU must offer, in order; every other table name
// must be refused with the reason.
void test_detection() {
  std::string available;
  for (const std::string& name : sdar::cpu::available_kernels()) available += (available.empty() ? "" : ",") + name;
  const char* expected = std::getenv("SDAR_EXPECT_KERNELS");
  if (expected != nullptr) {
    CHECK(available == expected, "available kernel tables '%s', expected '%s'", available.c_str(), expected);
  }
  for (const char* name : {"avx512vnni", "avxvnni", "avx2", "i8mm", "dotprod", "neon", "scalar"}) {
    if (("," + available + ",").find(std::string(",") + name + ",") != std::string::npos) continue;
    bool refused = false;
    try {
      sdar::cpu::select_kernels(name);
    } catch (const std::exception& e) {
      refused = std::string(e.what()).find("cannot run here") != std::string::npos;
    }
    CHECK(refused, "the '%s' kernels are not available here, so selecting them must be refused", name);
  }
}

}  // namespace

#ifdef SDAR_TEST_EMULATED_AVXVNNI
namespace sdar::cpu {
const KernelTable* emulated_avxvnni_kernels();  // avxvnni_emulated.cpp
}
#endif

int main() {
  test_thread_pool();
  test_detection();
  std::mt19937 rng(1234);
  test_gemm_setting();
  test_amx_setting();
  const std::vector<std::string> available = sdar::cpu::available_kernels();
  for (const std::string& name : available) {
    std::printf("kernels: %s\n", name.c_str());
    for (int threads : {1, 2}) test_matmul(sdar::cpu::select_kernels(name), threads, rng);
    for (int threads : {1, 2}) test_gemm(sdar::cpu::select_kernels(name), threads, rng);
    const sdar::cpu::KernelTable& table = sdar::cpu::select_kernels(name);
    if (table.quantized_strips != nullptr) {
      for (int threads : {1, 2}) test_quantized_blocked(table, false, threads, rng);
    }
  }
  for (int threads : {1, 2}) test_amx(threads, rng);
#if defined(__x86_64__) || defined(_M_X64)
  for (const char* name : {"avx512vnni", "avxvnni", "avx2"}) {
    bool found = false;
    for (const std::string& n : available) found = found || n == name;
    if (!found) std::printf("kernels: %s SKIPPED: this CPU or build lacks it (not tested here)\n", name);
  }
#endif
#ifdef SDAR_TEST_EMULATED_AVXVNNI
  bool has_avx2 = false;
  for (const std::string& n : available) has_avx2 = has_avx2 || n == "avx2";
  if (has_avx2) {
    std::printf("kernels: avxvnni source, vpdpbusd emulated with AVX2\n");
    for (int threads : {1, 2}) test_matmul(*sdar::cpu::emulated_avxvnni_kernels(), threads, rng);
    for (int threads : {1, 2}) test_quantized_blocked(*sdar::cpu::emulated_avxvnni_kernels(), false, threads, rng);
  }
#endif
  bool refused = false;
  try {
    sdar::cpu::select_kernels("sse9");
  } catch (const std::exception&) {
    refused = true;
  }
  CHECK(refused, "an unknown kernel name must be refused");
  if (failures == 0) std::printf("all CPU kernel checks passed\n");
  return failures == 0 ? 0 : 1;
}
