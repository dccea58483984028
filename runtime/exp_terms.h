// The float64 terms of a greedy step's softmax: w[i] = exp(double(logits[i]) - top).
//
// A 151,936-token vocabulary makes this most of the host's time per step (libm's exp costs ~5 ns a
// call); with AVX2 and FMA the terms are computed four at a time. Both paths are accurate to about
// 2 ulp; terms below exp(-708) are 0, which as part of a sum that reaches 1 (the top token's own
// term) changes no bit of it.
#pragma once

namespace sdar {

// top >= every logit (the caller passes the maximum), so every exponent is <= 0.
void exp_terms(const float* logits, int n, double top, double* w);

}  // namespace sdar
