fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=faas/v1");
    tonic_prost_build::configure()
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
