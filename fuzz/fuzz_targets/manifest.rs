//! The store's manifest parser on any text: an error or resources, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = weft_store::Resource::parse_all(text);
    }
});
