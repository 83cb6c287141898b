//! `koukan`: the email transport sidecar.
#![forbid(unsafe_code)]

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "koukan", version, about = "Email transport sidecar")]
struct Cli {
    /// Bootstrap config (YAML). Runs the proxy.
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validates a config file; prints every error with its field path.
    CheckConfig { file: PathBuf },
    /// Creates the embedded store the config names, where no file exists.
    /// A valid store is left untouched. A file that is not a store is
    /// refused, or with --force moved aside to `<path>.invalid-<unix
    /// seconds>` (never deleted) and replaced by a new store.
    InitStore {
        /// Bootstrap config (YAML) naming `storage.embedded.path`.
        #[arg(long, short)]
        config: PathBuf,
        /// Move an existing file that is not a store aside.
        #[arg(long)]
        force: bool,
    },
    /// Prints a salted hash of a secret for an AUTH secrets file. The
    /// secret is read from stdin; without input a random one is generated
    /// and printed first.
    HashSecret,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn hash_secret() -> ExitCode {
    let stdin = std::io::stdin();
    let mut secret = String::new();
    if !stdin.is_terminal() {
        let _ = stdin.lock().read_line(&mut secret);
    }
    let secret = secret.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() {
        let generated = koukan_smtp_server::generate_secret();
        println!(
            "{} {}",
            generated,
            koukan_smtp_server::hash_secret(&generated)
        );
    } else {
        println!("{}", koukan_smtp_server::hash_secret(&secret));
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match (cli.command, cli.config) {
        (Some(Command::CheckConfig { file }), _) => match koukan_proxy::server::check(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::FAILURE
            }
        },
        (Some(Command::HashSecret), _) => hash_secret(),
        (Some(Command::InitStore { config, force }), _) => {
            match koukan_proxy::server::init_store(&config, force) {
                Ok(done) => {
                    println!("{done}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("koukan: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        (None, Some(config)) => {
            init_logging();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(koukan_proxy::server::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("koukan: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        (None, None) => {
            eprintln!("koukan: --config FILE is required (see --help)");
            ExitCode::from(2)
        }
    }
}
