//! flagshare: member platforms of a child-safety consortium share keyed digests of the
//! accounts they flagged, and check their own accounts against what the others flagged.
//!
//! Layers, in the direction data flows: `server` (wire) → `domain` (rules) → `store`
//! (RocksDB). `digest` is pure code the member side runs. See ARCHITECTURE.md.

pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod digest;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod model;
pub mod pki;
pub mod server;
pub mod store;
pub mod util;
pub mod wire;

/// Types generated from `proto/flagshare/v1/flagshare.proto`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("flagshare.v1");

    /// The encoded descriptor set of the wire contract, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flagshare_descriptor.bin"));
}
