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
            endpoints: Vec::new(),
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

/// SHA-256 of the certificate the server presents to a new connection now.
async fn presented_certificate(server: &TestServer, bundle: &Bundle) -> [u8; 32] {
    use rustls_pki_types::pem::PemObject as _;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(bundle.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let chain = vec![rustls_pki_types::CertificateDer::from_pem_slice(bundle.cert_pem.as_bytes()).unwrap()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(bundle.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
    flagshare::pki::certificate_sha256(&session.peer_certificates().unwrap()[0])
}

#[tokio::test]
async fn a_renewed_server_certificate_reaches_new_connections_while_open_ones_keep_working() {
    let server = TestServer::start().await;
    let bundle = server.enroll("alpha", Role::Member).await;
    let mut open = FlagsClient::new(server.channel(&bundle).await);
    open.query(query_request(&[email_digest("a@example.com")]))
        .await
        .unwrap();
    let before = presented_certificate(&server, &bundle).await;
    let pki_dir = server.data_dir().join("pki");
    assert_eq!(
        before,
        flagshare::pki::pem_certificate_sha256(&std::fs::read_to_string(pki_dir.join("server.pem")).unwrap()).unwrap()
    );

    let mut admin = server.admin_client().await;
    let renewed = admin
        .renew_server_certificate(pb::RenewServerCertificateRequest {})
        .await
        .unwrap()
        .into_inner();
    let after = presented_certificate(&server, &bundle).await;
    assert_ne!(before, after);
    assert_eq!(
        after,
        flagshare::pki::pem_certificate_sha256(&renewed.certificate_pem).unwrap()
    );
    // Written to the data folder: a restart presents it too.
    assert_eq!(
        std::fs::read_to_string(pki_dir.join("server.pem")).unwrap(),
        renewed.certificate_pem
    );
    assert!(!pki_dir.join("server.key.new").exists() && !pki_dir.join("server.renewing").exists());
    assert_eq!(renewed.host_names, vec!["localhost", "127.0.0.1", "::1"]);
    // The open connection goes on; a new one works with the same bundle.
    open.query(query_request(&[email_digest("a@example.com")]))
        .await
        .unwrap();
    FlagsClient::new(server.channel(&bundle).await)
        .query(query_request(&[email_digest("b@example.com")]))
        .await
        .unwrap();
    // The metrics show the new expiry at once; the renewal is audited.
    let expiry = server
        .scrape()
        .await
        .value(
            "flagshare_certificate_expiry_timestamp_seconds",
            r#"certificate="server",principal="""#,
        )
        .unwrap();
    assert_eq!(expiry as i64, renewed.expires_at.unwrap().seconds);
    let audited = admin
        .list_audit(pb::ListAuditRequest {
            op: "renew_server_certificate".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(audited.len(), 1);

    // With the CA key offline, renewal is refused and nothing changes.
    std::fs::rename(pki_dir.join("ca.key"), server.data_dir().join("ca.key.offline")).unwrap();
    let refused = admin
        .renew_server_certificate(pb::RenewServerCertificateRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("kept offline"), "{}", refused.message());
    assert_eq!(presented_certificate(&server, &bundle).await, after);

    // After a restart, the renewed certificate is the one presented.
    let dir = server.stop().await;
    let server = TestServer::start_in(dir).await;
    assert_eq!(presented_certificate(&server, &bundle).await, after);
}

#[tokio::test]
async fn member_list_shows_when_each_certificate_expires() {
    let server = TestServer::start().await;
    server.enroll("alpha", Role::Member).await;
    let principals = server
        .admin_client()
        .await
        .list_principals(pb::ListPrincipalsRequest {})
        .await
        .unwrap()
        .into_inner()
        .principals;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for principal in &principals {
        let expires = principal.certificate_expires_at.as_ref().unwrap().seconds;
        // Two years, give or take the hour certificates are backdated.
        assert!(
            (expires - now - 2 * 365 * 86_400).abs() < 2 * 3600,
            "{}: {expires}",
            principal.name
        );
    }
    let scraped = server.scrape().await;
    let alpha = scraped
        .value(
            "flagshare_certificate_expiry_timestamp_seconds",
            r#"certificate="client",principal="alpha""#,
        )
        .unwrap();
    let listed = principals.iter().find(|p| p.name == "alpha").unwrap();
    assert_eq!(alpha as i64, listed.certificate_expires_at.as_ref().unwrap().seconds);
}
