//! What every client command shares: the connection flags, the mutual-TLS client setup,
//! and how a refused call is printed.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use tonic::transport::Channel;

use crate::client::Bundle;
use crate::config::DEFAULT_DATA_DIR;
use crate::pb;
use crate::pb::admin_client::AdminClient;
use crate::pb::flags_client::FlagsClient;

/// Largest answer a command accepts (a feed batch or an audit listing can be large).
const MAX_ANSWER_BYTES: usize = 64 << 20;

#[derive(Args, Clone)]
pub struct ConnectArgs {
    /// Client bundle folder (from `flagshare admin member add`).
    #[arg(long, env = "FLAGSHARE_BUNDLE")]
    pub bundle: Option<PathBuf>,
    /// Server endpoint, or several nodes' as a comma-separated list tried in order
    /// (default: the bundle's `endpoint`, then its `endpoints`).
    #[arg(long, env = "FLAGSHARE_ENDPOINT")]
    pub endpoint: Option<String>,
}

impl ConnectArgs {
    /// The bundle named by `--bundle`, or `default` when given.
    pub fn load_bundle(&self, default: Option<PathBuf>) -> anyhow::Result<Bundle> {
        let dir = self
            .bundle
            .clone()
            .or(default)
            .context("--bundle (or FLAGSHARE_BUNDLE) is required to reach the server")?;
        Ok(Bundle::load(&dir)?)
    }

    pub async fn channel(&self, bundle: &Bundle) -> anyhow::Result<Channel> {
        Ok(bundle.connect(self.endpoint.as_deref()).await?)
    }

    /// A `Flags` client for a member's bundle.
    pub async fn flags_client(&self) -> anyhow::Result<FlagsClient<Channel>> {
        let bundle = self.load_bundle(None)?;
        Ok(FlagsClient::new(self.channel(&bundle).await?).max_decoding_message_size(MAX_ANSWER_BYTES))
    }

    /// An `Admin` client, with the bundle it uses (default: the one `init` wrote under
    /// ./flagshare-data/clients/admin).
    pub async fn admin_client(&self) -> anyhow::Result<(AdminClient<Channel>, Bundle)> {
        let bundle = self.load_bundle(Some(PathBuf::from(DEFAULT_DATA_DIR).join("clients").join("admin")))?;
        let client = AdminClient::new(self.channel(&bundle).await?).max_decoding_message_size(MAX_ANSWER_BYTES);
        Ok((client, bundle))
    }
}

impl ConnectArgs {
    /// An `Admin` client on the leader of a replicated operator, for a change: every
    /// node answers reads, but only the leader changes anything, and a follower's admin
    /// calls are not forwarded (a node's credentials never act as an admin). The node
    /// first reached says which node leads; the client goes there when it is another. A
    /// single server, or a leader out of reach, keeps the first connection (whose refusal
    /// then names the leader).
    pub async fn admin_client_on_leader(&self) -> anyhow::Result<(AdminClient<Channel>, Bundle)> {
        let (mut client, bundle) = self.admin_client().await?;
        let Ok(status) = client.get_cluster_status(pb::GetClusterStatusRequest {}).await else {
            return Ok((client, bundle));
        };
        let status = status.into_inner();
        if !status.replicated || status.leader_id == 0 || status.leader_id == status.node_id {
            return Ok((client, bundle));
        }
        let Some(leader) = status.nodes.iter().find(|node| node.id == status.leader_id) else {
            return Ok((client, bundle));
        };
        match bundle.connect(Some(&leader.address)).await {
            Ok(channel) => Ok((
                AdminClient::new(channel).max_decoding_message_size(MAX_ANSWER_BYTES),
                bundle,
            )),
            Err(err) => {
                eprintln!(
                    "warning: node {} leads the cluster, at {}, and cannot be reached ({err}); asking node {}",
                    leader.id, leader.address, status.node_id
                );
                Ok((client, bundle))
            }
        }
    }
}

/// A refused call, as every command prints it.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("server refused: {} ({:?})", status.message(), status.code())
}
