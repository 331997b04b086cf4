//! Mutual TLS and principals: every way a caller can be refused.

use flagshare::client::Bundle;
use flagshare::model::Role;
use flagshare::pb;
use flagshare::pb::admin_client::AdminClient;
use flagshare::pb::flags_client::FlagsClient;
use flagshare::pki::{Pki, generate_client_key};
use rcgen::PublicKeyData as _;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::support::{TestServer, email_digest, query_request};

/// Calls `Query` on a channel that may or may not have connected; returns the refusal.
/// `None` for a channel that failed to connect: refused during the handshake.
async fn first_call_refusal(channel: Option<Channel>) -> Option<tonic::Status> {
    let Some(channel) = channel else {
        return Some(tonic::Status::unavailable("refused at connect"));
    };
    FlagsClient::new(channel)
        .query(query_request(&[email_digest("a@example.com")]))
        .await
        .err()
}

fn bundle_from_cert(server: &TestServer, cert_pem: String, key_pem: String, ca_pem: String) -> Bundle {
    Bundle {
        dir: Default::default(),
        config: flagshare::client::BundleConfig {
            name: "unregistered".to_owned(),
            role: "member".to_owned(),
            endpoint: server.endpoint(),
            server_name: "localhost".to_owned(),
            operator_id: String::new(),
            operator_key: String::new(),
        },
        cert_pem,
        key_pem,
        ca_pem,
    }
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let server = TestServer::start().await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&server.admin.ca_pem))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(server.endpoint())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .ok();
    let refusal = first_call_refusal(channel).await;
    assert!(refusal.is_some(), "a call without a client certificate must fail");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let server = TestServer::start().await;
    let other = tempfile::tempdir().unwrap();
    let other_pki = Pki::create(other.path(), "someone-else", &["localhost".to_owned()]).unwrap();
    let key = generate_client_key().unwrap();
    let (cert_pem, _) = other_pki
        .issue_client_certificate("intruder", Role::Member, &key.subject_public_key_info())
        .unwrap();
    // The client trusts the real server CA, but presents a certificate the server's CA never signed.
    let bundle = bundle_from_cert(&server, cert_pem, key.serialize_pem(), server.admin.ca_pem.clone());
    let refusal = first_call_refusal(bundle.connect(Some(&server.endpoint())).await.ok()).await;
    assert!(refusal.is_some(), "a certificate from another CA must be refused");
}

#[tokio::test]
async fn a_ca_signed_but_unregistered_certificate_is_unauthenticated() {
    let server = TestServer::start().await;
    let pki = Pki::load(server.data_dir()).unwrap();
    let key = generate_client_key().unwrap();
    let (cert_pem, _) = pki
        .issue_client_certificate("ghost", Role::Member, &key.subject_public_key_info())
        .unwrap();
    let bundle = bundle_from_cert(&server, cert_pem, key.serialize_pem(), pki.ca_pem.clone());
    let mut client = FlagsClient::new(server.channel(&bundle).await);
    let status = client
        .query(query_request(&[email_digest("a@example.com")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("not registered"), "{}", status.message());
}

#[tokio::test]
async fn a_suspended_member_is_refused_on_an_already_open_connection_and_can_be_reinstated() {
    let server = TestServer::start().await;
    let mut alpha = server.member("alpha").await;
    let digest = email_digest("a@example.com");
    alpha.query(query_request(&[digest])).await.unwrap();

    let mut admin = server.admin_client().await;
    admin
        .set_principal_status(pb::SetPrincipalStatusRequest {
            name: "alpha".to_owned(),
            status: pb::PrincipalStatus::Suspended as i32,
            withdraw_flags: false,
        })
        .await
        .unwrap();
    let status = alpha.query(query_request(&[digest])).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("'alpha' is suspended"),
        "{}",
        status.message()
    );

    admin
        .set_principal_status(pb::SetPrincipalStatusRequest {
            name: "alpha".to_owned(),
            status: pb::PrincipalStatus::Active as i32,
            withdraw_flags: false,
        })
        .await
        .unwrap();
    alpha.query(query_request(&[digest])).await.unwrap();
}

#[tokio::test]
async fn plaintext_connections_are_refused() {
    let server = TestServer::start().await;
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", server.addr.port()))
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .ok();
    assert!(
        first_call_refusal(channel).await.is_some(),
        "plaintext must never be served"
    );
}

#[tokio::test]
async fn each_role_reaches_only_its_own_service() {
    let server = TestServer::start().await;
    let member = server.enroll("alpha", Role::Member).await;
    let peer = server.enroll("peer-op", Role::Peer).await;

    let mut member_as_admin = AdminClient::new(server.channel(&member).await);
    let status = member_as_admin
        .list_principals(pb::ListPrincipalsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("has role member; this call needs role admin"),
        "{}",
        status.message()
    );

    let mut admin_as_member = FlagsClient::new(server.channel(&server.admin).await);
    let status = admin_as_member
        .query(query_request(&[email_digest("a@example.com")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let mut peer_as_member = FlagsClient::new(server.channel(&peer).await);
    let status = peer_as_member
        .query(query_request(&[email_digest("a@example.com")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn principal_names_are_unique_and_an_admin_cannot_lock_itself_out() {
    let server = TestServer::start().await;
    server.enroll("alpha", Role::Member).await;
    let mut admin = server.admin_client().await;
    let key = generate_client_key().unwrap();
    let status = admin
        .add_principal(pb::AddPrincipalRequest {
            name: "alpha".to_owned(),
            role: pb::Role::Member as i32,
            public_key_der: key.subject_public_key_info(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    let status = admin
        .add_principal(pb::AddPrincipalRequest {
            name: "Bad Name".to_owned(),
            role: pb::Role::Member as i32,
            public_key_der: key.subject_public_key_info(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("name:"), "{}", status.message());
    let status = admin
        .set_principal_status(pb::SetPrincipalStatusRequest {
            name: "admin".to_owned(),
            status: pb::PrincipalStatus::Suspended as i32,
            withdraw_flags: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let listed = admin
        .list_principals(pb::ListPrincipalsRequest {})
        .await
        .unwrap()
        .into_inner()
        .principals;
    let names: Vec<&str> = listed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["admin", "alpha"]);
}

/// Reads a stream until it ends with an error; fails if it does not within 10 s.
async fn ending<T>(stream: &mut tonic::Streaming<T>) -> tonic::Status {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("the stream ended without a status"),
            Ok(Err(status)) => return status,
            Err(_) => panic!("the stream is still open 10 s after its credentials changed"),
        }
    }
}

#[tokio::test]
async fn rotating_a_certificate_or_removing_a_principal_ends_its_open_streams() {
    let server = TestServer::start().await;
    let alpha = server.enroll("alpha", flagshare::model::Role::Member).await;
    let mut alpha_client = FlagsClient::new(server.channel(&alpha).await);
    let mut feed = alpha_client
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    feed.message().await.unwrap();
    let mut admin = server.admin_client().await;
    flagshare::client::rotate(&mut admin, "alpha", &server.endpoint(), "localhost")
        .await
        .unwrap();
    let status = ending(&mut feed).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{}", status.message());

    // A peer's pull ends when its peer configuration is removed, and it cannot pull again.
    let peer = server.enroll("op-x", flagshare::model::Role::Peer).await;
    admin
        .configure_peer(pb::ConfigurePeerRequest {
            name: "op-x".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut federation = pb::federation_client::FederationClient::new(server.channel(&peer).await);
    let mut pull = federation.pull(pb::PullRequest::default()).await.unwrap().into_inner();
    pull.message().await.unwrap();
    admin
        .remove_peer(pb::RemovePeerRequest {
            name: "op-x".to_owned(),
        })
        .await
        .unwrap();
    let status = ending(&mut pull).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{}", status.message());
    let again = federation.pull(pb::PullRequest::default()).await.unwrap_err();
    assert_eq!(again.code(), Code::PermissionDenied, "{}", again.message());
    let principals = admin
        .list_principals(pb::ListPrincipalsRequest {})
        .await
        .unwrap()
        .into_inner()
        .principals;
    let removed = principals.iter().find(|p| p.name == "op-x").unwrap();
    assert_eq!(removed.status, pb::PrincipalStatus::Removed as i32);
}
