//! Compiles `proto/ext.proto` with the pure-Rust `protox` compiler, so that no
//! system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/ext.proto");
    let descriptors = protox::compile(["proto/ext.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
