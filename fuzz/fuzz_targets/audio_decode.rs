#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    phive::fuzzing::audio_decode(data);
});
