fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=faas/v1");
    // The API's descriptors, for gRPC server reflection (grpcurl lists and
    // calls the API without the .proto files).
    let descriptors =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("faas_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        // Secret values: a Debug of their own that never prints the value
        // (src/lib.rs), so that no `?op` in a log can leak one.
        .skip_debug(["faas.v1.SecretValue", "faas.v1.PutSecretRequest"])
        .compile_protos(
            &[
                "faas/v1/api.proto",
                "faas/v1/agent.proto",
                "faas/v1/internal.proto",
            ],
            &["."],
        )?;
    Ok(())
}
