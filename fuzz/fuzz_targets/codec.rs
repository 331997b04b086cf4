//! Every store value decoder over arbitrary bytes: a refusal, never a panic; what decodes
//! re-encodes to the same bytes.
#![no_main]

use flagshare::store::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(entries) = codec::decode_summary(bytes) {
        assert_eq!(codec::encode_summary(&entries).ok().as_deref(), Some(bytes));
    }
    if let Ok(change) = codec::decode_change(bytes) {
        // v3 rows are read and rewritten as v4: compare what they mean.
        assert_eq!(codec::decode_change(&codec::encode_change(&change)).ok(), Some(change));
    }
    let _ = codec::decode_principal(bytes);
    let _ = codec::decode_principal_stats(bytes);
    let _ = codec::decode_audit(bytes);
    let _ = codec::decode_chain_end(bytes);
    let _ = codec::decode_foreign_member(bytes);
    let _ = flagshare::store::keys::decode_flag_key(bytes);
    let _ = flagshare::store::keys::decode_dispute_key(bytes);
});
