fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=faas/v1");
    tonic_prost_build::configure().compile_protos(
        &[
            "faas/v1/api.proto",
            "faas/v1/agent.proto",
            "faas/v1/internal.proto",
        ],
        &["."],
    )?;
    Ok(())
}
