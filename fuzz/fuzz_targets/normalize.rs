//! The identifier normaliser over arbitrary text, for every kind: a refusal or a normal
//! form, never a panic.
#![no_main]

use flagshare::digest::{Kind, NormalizeOptions, normalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    for kind in Kind::ALL {
        let _ = normalize(kind, text, &NormalizeOptions::default());
    }
});
