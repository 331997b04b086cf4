//! A server whose commits go through its Raft log (`replicated_log`): the same answers,
//! every change an applied entry, kept across a restart, and a compaction that takes a
//! removed digest out of the log as out of the data.

use flagshare::pb;
use flagshare::store::{Store, StoreOptions};

use crate::support::{TestServer, email_digest, flag, query, submit_request};

/// Every row of the server's Raft log (index, entry), read from its stopped database.
fn raft_log(data: &std::path::Path) -> Vec<(u64, Vec<u8>)> {
    let store = Store::open(&data.join("db"), &StoreOptions::default()).unwrap();
    store.raft_log_between(0, u64::MAX, usize::MAX).unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

#[tokio::test]
async fn a_server_on_its_raft_log_answers_alike_keeps_all_across_a_restart_and_compaction_trims_the_log() {
    let on_the_log = |config: &mut flagshare::config::Config| config.replicated_log = true;
    let server = TestServer::start_configured(on_the_log).await;
    let mut alpha = server.member("alpha").await;
    let mut beta = server.member("beta").await;
    let kept = email_digest("kept@example.com");
    let gone = email_digest("gone@example.com");
    alpha
        .submit(submit_request(vec![
            flag(kept, pb::Category::Grooming, 80),
            flag(gone, pb::Category::Grooming, 80),
        ]))
        .await
        .unwrap();
    alpha
        .retract(pb::RetractRequest {
            flags: vec![pb::FlagSelector {
                digest: gone.to_vec(),
                kind: 0,
                category: 0,
            }],
            reason: pb::RetractReason::FalsePositive as i32,
        })
        .await
        .unwrap();
    let matches = query(&mut beta, &[kept, gone]).await;
    assert_eq!(matches.len(), 1);
    assert_eq!(matches[0].digest, kept.to_vec());
    let dir = server.stop().await;

    // Each change was an entry; the submitted digests are in the log's write sets.
    let log = raft_log(dir.path());
    assert!(log.len() >= 4, "{} entries", log.len());
    assert!(log.iter().any(|(_, entry)| contains(entry, &gone)));

    let server = TestServer::start_in_configured(dir, "flagshare-dev", on_the_log).await;
    let mut gamma = server.member("gamma").await;
    assert_eq!(query(&mut gamma, &[kept, gone]).await.len(), 1);
    let mut admin = server.admin_client().await;
    let verified = admin
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{verified:?}");
    admin.compact(pb::CompactRequest {}).await.unwrap();
    let dir = server.stop().await;

    // The applied log went behind a snapshot: the retracted digest is in no entry.
    let log = raft_log(dir.path());
    assert!(log.len() <= 3, "{} entries after compaction", log.len());
    assert!(!log.iter().any(|(_, entry)| contains(entry, &gone)));
}
