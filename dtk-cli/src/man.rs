//! Man pages from the clap definitions (`dkt man --dir DIR`).

use std::path::Path;

use anyhow::Context as _;

/// Write `dkt.1` and one page per subcommand (`dkt-source-add.1`, ...) into `dir`; returns
/// the file names written.
pub(crate) fn write_pages(dir: &Path) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = <crate::cli::Cli as clap::CommandFactory>::command();
    cmd.build();
    let mut written = Vec::new();
    page(dir, &cmd, &mut written)?;
    Ok(written)
}

fn page(dir: &Path, cmd: &clap::Command, written: &mut Vec<String>) -> anyhow::Result<()> {
    // After `build`, a subcommand's display name is its full name (`dkt-source-add`), the
    // page's title and file name, as man(1) finds it.
    let file = format!("{}.1", cmd.get_display_name().unwrap_or(cmd.get_name()));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
    let path = dir.join(&file);
    std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(file);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() != "help" {
            page(dir, sub, written)?;
        }
    }
    Ok(())
}
