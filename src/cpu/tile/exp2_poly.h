// 2^t polynomial coefficients for f = t - floor(t) in [0, 1): p(f) ~= 2^f, Horner order
// c0 + f*(c1 + f*(c2 + ...)). Fitted by iteratively reweighted least squares (relative error,
// 20001-point grid on [0,1]) and evaluated in float32 Horner (dev/01_exp2_fit.py):
//   degree 4: max rel err 2.7e-6  (bf16 P whose fp32 sum must meet the stats tolerance 2^-15)
//   degree 5: max rel err 1.6e-7  (fp32 P, ~1.3 ulp)
// Plain constants only: included from any ISA file.
#pragma once

namespace speedattn {
namespace exp2c {
constexpr float d4[5] = {1.0000026226043701f, 0.69300377368927f, 0.24144285917282104f, 0.05201146379113197f,
                         0.013534098863601685f};
constexpr float d5[6] = {0.9999999403953552f, 0.6931530833244324f, 0.24015361070632935f,
                         0.055826324969530106f, 0.008989343419671059f, 0.0018775708740577102f};
// Arguments below this are clamped: 2^-126 is the smallest normal (no denormal assists);
// masked positions are zeroed explicitly, so the clamp never leaks into a result.
constexpr float kMinArg = -126.0f;
}  // namespace exp2c
}  // namespace speedattn
