//! Generates Rust code for Meshward's own protos. protoc comes from the
//! `protoc-bin-vendored` crate so a fresh machine needs nothing installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let include = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(
            &[
                "proto/meshward/v1/resources.proto",
                "proto/meshward/demo/v1/echo.proto",
                "proto/spiffe/workload.proto",
            ],
            &[
                "proto",
                include.to_str().ok_or("protoc include path is not UTF-8")?,
            ],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
