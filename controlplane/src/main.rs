use clap::Parser;
use faas_controlplane::config::{Command, Config, Flags};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    faas_telemetry::init_logging();
    let mut flags = Flags::parse();
    match flags.command.take() {
        None => faas_controlplane::run(Config::resolve(flags)?).await,
        Some(Command::EtcdCerts { dir, san }) => {
            let written = faas_controlplane::etcd_certs(&dir, &san)?;
            for name in written {
                // The command's output: the files it wrote, one per line.
                #[allow(clippy::print_stdout)]
                {
                    println!("{}", dir.join(name).display());
                }
            }
            Ok(())
        }
        Some(Command::RegistryCerts { dir, sans }) => {
            let mut written = faas_pki::registry::ensure_signer(&dir)?;
            if !sans.is_empty() {
                written.extend(faas_pki::registry::ensure_tls(&dir, &sans)?);
            }
            for name in written {
                #[allow(clippy::print_stdout)]
                {
                    println!("{}", dir.join(name).display());
                }
            }
            Ok(())
        }
        Some(Command::SecretsKey { file }) => {
            let key = faas_pki::sealing::FileKey::ensure(&file)?;
            use faas_pki::sealing::KeyProvider;
            #[allow(clippy::print_stdout)]
            {
                println!("{} key {}", file.display(), key.key_id());
            }
            Ok(())
        }
        Some(Command::EtcdHealth) => {
            if faas_controlplane::etcd_health(&Config::resolve(flags)?).await? {
                Ok(())
            } else {
                anyhow::bail!("etcd answers but knows no leader")
            }
        }
    }
}
