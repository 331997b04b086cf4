//! Compiles the wire contract with the pure-Rust `protox` compiler, so building needs no
//! `protoc`, and writes the encoded descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/flagshare/v1/flagshare.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let file_descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("flagshare_descriptor.bin"),
        prost::Message::encode_to_vec(&file_descriptors),
    )?;
    tonic_prost_build::configure()
        .bytes(".flagshare.v1.QueryRequest.digests")
        .bytes(".flagshare.v1.QueryBatch.digests")
        .compile_fds(file_descriptors)?;
    Ok(())
}
