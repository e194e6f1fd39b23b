//! Test helpers; the namespace and process guards live in `xdplb-testsupport`.
pub use xdplb_testsupport::*;
