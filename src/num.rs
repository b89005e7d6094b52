//! Whole numbers as `f64` and back, in one place, for rates, percentages, quantiles and
//! durations shown to people. Everywhere else numbers change type through `try_from` with
//! a stated fallback; these are the two conversions that have no `TryFrom`.
//!
//! A count, a byte size or a millisecond timing is exact in an `f64` below 2^53
//! (9·10^15: 285,000 years in milliseconds), which none of them reach; past that the
//! nearest `f64` is still the right answer for a rate.

/// A whole number as the nearest `f64`.
pub(crate) trait ToF64 {
    fn to_f64(self) -> f64;
}

macro_rules! to_f64 {
    ($($t:ty),*) => {$(
        impl ToF64 for $t {
            #[expect(
                clippy::cast_precision_loss,
                reason = "the nearest f64 is the answer wanted: exact below 2^53, which counts, sizes and timings stay under"
            )]
            fn to_f64(self) -> f64 {
                self as f64
            }
        }
    )*};
}

to_f64!(usize, u64, i64);

/// `x` rounded toward zero into a `u64`, saturating: negative numbers and NaN give 0, and
/// numbers past `u64::MAX` give `u64::MAX`.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a float-to-int `as` saturates and maps NaN to 0, which is the stated fallback"
)]
pub(crate) fn saturating_u64(x: f64) -> u64 {
    x as u64
}

/// [`saturating_u64`] into a `usize`.
pub(crate) fn saturating_usize(x: f64) -> usize {
    usize::try_from(saturating_u64(x)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates_at_both_ends_and_maps_nan_to_zero() {
        assert_eq!(saturating_u64(-3.5), 0);
        assert_eq!(saturating_u64(f64::NAN), 0);
        assert_eq!(saturating_u64(2.9), 2);
        assert_eq!(saturating_u64(1e30), u64::MAX);
        assert_eq!(saturating_usize(7.99), 7);
        assert_eq!(3usize.to_f64().to_bits(), 3.0f64.to_bits());
        assert_eq!((-2i64).to_f64().to_bits(), (-2.0f64).to_bits());
    }
}
