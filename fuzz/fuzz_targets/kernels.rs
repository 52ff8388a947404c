#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| msn_fuzz::kernels::target(data));
