#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    phive::fuzzing::data_url(data);
});
