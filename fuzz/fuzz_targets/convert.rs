//! Wire conversions over arbitrary protobuf bytes: a submission, a retraction, a query
//! batch and a federated event each convert or are refused, never panic.
#![no_main]

use flagshare::pb;
use flagshare::server::convert;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(request) = pb::SubmitRequest::decode(bytes)
        && let Ok(flags) = convert::new_flags_from_pb(request.flags)
    {
        let _ = flagshare::domain::flags::validate_new_flags(&flags, flagshare::util::now_ms());
    }
    if let Ok(request) = pb::RetractRequest::decode(bytes) {
        let _ = convert::selectors_from_pb(request.flags);
        let _ = flagshare::wire::member_retract_reason_from_pb(request.reason);
    }
    if let Ok(request) = pb::QueryRequest::decode(bytes) {
        let _ = flagshare::wire::digests_from_packed(&request.digests);
    }
    if let Ok(batch) = pb::PullBatch::decode(bytes) {
        for event in batch.events {
            let _ = convert::event_from_pb(event);
        }
    }
    if let Ok(request) = pb::ListAuditRequest::decode(bytes) {
        let _ = convert::audit_filter_from_pb(request);
    }
});
