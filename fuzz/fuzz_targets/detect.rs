//! Protocol detection on anything a peer may send: never a panic, and a
//! decision made on a prefix never changes with more bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::detect::classify;

fuzz_target!(|data: &[u8]| {
    let whole = classify(data);
    if let Some(cut) = (0..=data.len()).find(|&cut| classify(&data[..cut]).is_some()) {
        assert_eq!(classify(&data[..cut]), whole);
    }
});
