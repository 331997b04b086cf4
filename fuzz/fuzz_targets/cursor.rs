//! The feed cursor parser over arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let identity = [7u8; 8];
    if let Ok(sequence) = flagshare::domain::feed::decode_cursor(text, &identity) {
        let again = flagshare::domain::feed::encode_cursor(&identity, sequence);
        assert_eq!(
            flagshare::domain::feed::decode_cursor(&again, &identity).ok(),
            Some(sequence)
        );
    }
});
