//! `layerhop install-service`: the systemd unit, filled in for one home, written or printed.
//!
//! The unit ships inside the binary (`node/dist/layerhop.service`, embedded with
//! `include_str!`), so an installed binary needs nothing from the source tree. The file in the
//! repository is a working unit for the default paths; installing it for another home, user or
//! binary replaces those paths. A path systemd would read differently from what it says
//! (whitespace, quotes, backslashes, `%` specifiers) is refused, not escaped.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The unit as it is in the repository.
pub const UNIT: &str = include_str!("../dist/layerhop.service");

/// The unit's file name.
pub const UNIT_NAME: &str = "layerhop.service";

/// Where units are installed unless told otherwise.
pub const UNIT_DIR: &str = "/etc/systemd/system";

const DEFAULT_HOME: &str = "/var/lib/layerhop";
const DEFAULT_EXE: &str = "/usr/local/bin/layerhop";

/// What to install.
#[derive(Debug)]
pub struct Options {
    /// The node's home (made absolute).
    pub home: PathBuf,
    /// The user the service runs as (default: root, without capabilities).
    pub user: Option<String>,
    /// The `layerhop` binary the unit runs.
    pub exe: PathBuf,
}

fn plain_path(what: &str, p: &Path) -> Result<String> {
    let s = p.to_str().with_context(|| format!("{what} {} is not UTF-8", p.display()))?;
    if !p.is_absolute() {
        bail!("{what} {s:?} is not an absolute path");
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\' | '%' | ';')) {
        bail!("{what} {s:?} contains {c:?}, which a systemd unit would read differently: choose a path without it");
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// Under these, `ProtectHome=yes` would hide the home: the unit binds it into an empty tmpfs.
fn under_protected_home(home: &str) -> bool {
    ["/home", "/root", "/run/user"].iter().any(|d| home == *d || home.starts_with(&format!("{d}/")))
}

/// The unit for `o`.
pub fn render(o: &Options) -> Result<String> {
    let home = plain_path("--home", &o.home)?;
    let exe = plain_path("the layerhop binary", &o.exe)?;
    let mut unit = UNIT.replace(DEFAULT_EXE, &exe).replace(DEFAULT_HOME, &home);
    if under_protected_home(&home) {
        unit = unit.replace("ProtectHome=yes\n", &format!("ProtectHome=tmpfs\nBindPaths={home}\n"));
    }
    if let Some(u) = &o.user {
        let ok = !u.is_empty() && u.len() <= 32 && u.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) && !u.starts_with('-');
        if !ok {
            bail!("--user {u:?} is not a valid user name");
        }
        unit = unit.replace("[Service]\n", &format!("[Service]\nUser={u}\n"));
    }
    Ok(unit)
}

/// `layerhop install-service`: print the unit (`dry_run`) or write it to `unit_dir`.
pub fn run(o: &Options, dry_run: bool, unit_dir: &Path) -> Result<String> {
    let unit = render(o)?;
    if dry_run {
        return Ok(unit);
    }
    if !o.home.join("config.toml").is_file() {
        bail!("{} is not an initialized home (no config.toml): run `layerhop init --home {}` first", o.home.display(), o.home.display());
    }
    let path = unit_dir.join(UNIT_NAME);
    let tmp = unit_dir.join(format!(".{UNIT_NAME}.tmp"));
    std::fs::write(&tmp, &unit).with_context(|| format!("writing {} (run as root, or use --dry-run)", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} into place", path.display()))?;
    Ok(format!(
        "wrote {}\nnext: systemctl daemon-reload && systemctl enable --now layerhop\n(logs: journalctl -u layerhop; stop: systemctl stop layerhop sends SIGTERM)",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(home: &str, user: Option<&str>) -> Options {
        Options { home: home.into(), user: user.map(str::to_owned), exe: "/opt/lh/bin/layerhop".into() }
    }

    #[test]
    fn fills_in_home_user_and_binary() {
        let u = render(&opts("/srv/layerhop", Some("layerhop"))).expect("unit");
        assert!(u.contains("ExecStart=/opt/lh/bin/layerhop run --home /srv/layerhop\n"), "{u}");
        assert!(u.contains("ExecReload=/bin/kill -HUP $MAINPID\n"), "{u}");
        assert!(u.contains("ReadWritePaths=/srv/layerhop\n"));
        assert!(u.contains("[Service]\nUser=layerhop\n"));
        assert!(u.contains("ProtectHome=yes\n"));
        assert!(!u.contains("/var/lib/layerhop") && !u.contains("/usr/local/bin/layerhop run"));
        let h = render(&opts("/home/op/lh", None)).expect("unit");
        assert!(h.contains("ProtectHome=tmpfs\nBindPaths=/home/op/lh\n"), "{h}");
        assert!(!h.contains("User="));
    }

    #[test]
    fn refuses_what_systemd_would_misread() {
        for bad in ["/srv/my home", "/srv/a%i", "relative/home", "/srv/\"q\""] {
            assert!(render(&opts(bad, None)).is_err(), "{bad}");
        }
        assert!(render(&opts("/srv/x", Some("bad user"))).is_err());
    }
}
