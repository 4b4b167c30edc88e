//! Helpers of the http and hockeyapp tests: the fixture server (`server.rs`), contexts,
//! digests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use dtk_api::{Context, Secrets};

mod server;
pub use server::*;

/// A context for a project in `dir` (its `.dkt` is created), with `secrets` and a short
/// network timeout.
pub fn context(dir: &Path, secrets: &[(&str, &str)]) -> Context {
    let dkt = dir.join(".dkt");
    std::fs::create_dir_all(&dkt).unwrap();
    let mut s = Secrets::default();
    for (k, v) in secrets {
        s.set(&dkt.join("secrets"), k, v).unwrap();
    }
    let mut ctx = Context::new(&dkt, s);
    ctx.network_timeout = Duration::from_secs(5);
    ctx.cwd = dir.to_owned();
    ctx
}

/// A port on 127.0.0.1 where nothing listens.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

/// Hex md5 of `bytes`.
pub fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    hex(&md5::Md5::digest(bytes))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
