//! Real tools the tests drive (`promtool`, headless `chromium`), installed from Debian
//! packages when absent so that `cargo test --workspace` works on a fresh machine.
//! Installs are serialised across test processes with `flock`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

static INSTALL: Mutex<()> = Mutex::new(());

fn find(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(binary))
            .find(|p| p.is_file())
    })
}

fn apt(args: &str) -> std::process::Output {
    Command::new("flock")
        .args(["/tmp/herald-tests-apt.lock", "sh", "-c"])
        .arg(format!("DEBIAN_FRONTEND=noninteractive apt-get {args}"))
        .output()
        .expect("run flock + apt-get (util-linux and apt are needed to install test tools)")
}

/// The path of `binary`, installing Debian `package` first if it is not on `PATH`.
pub fn ensure(binary: &str, package: &str) -> PathBuf {
    if let Some(p) = find(binary) {
        return p;
    }
    let _one = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = find(binary) {
        return p;
    }
    eprintln!("herald-tests: installing the Debian package {package} for {binary}");
    let mut out = apt(&format!("install -y -qq {package}"));
    if !out.status.success() {
        let _ = apt("update -qq");
        out = apt(&format!("install -y -qq {package}"));
    }
    assert!(
        out.status.success(),
        "could not install {package} (needed for {binary}; run as root, or install it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    find(binary).unwrap_or_else(|| panic!("{package} is installed but {binary} is not on PATH"))
}
