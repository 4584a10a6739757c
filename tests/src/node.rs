//! Node.js from the Rust test suite: `cargo test --workspace` runs the `@herald/client`
//! package's typecheck, build and `node --test` suites, and the examples built on it.
//!
//! [`client_package`] prepares `client/node` once per test process: `npm ci` when
//! `node_modules` is missing or was installed from another `package-lock.json`, then the
//! typecheck and the build. [`run`] runs a command and fails with its whole output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository root")
        .to_path_buf()
}

/// Runs `cmd` and returns its output; panics with stdout and stderr unless it succeeded.
pub fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{what}: cannot run {cmd:?}: {e} (Node.js 20+ and npm are needed)")
    });
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn npm(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("npm");
    cmd.args(args)
        .current_dir(dir)
        .env("npm_config_audit", "false")
        .env("npm_config_fund", "false")
        .env("npm_config_update_notifier", "false");
    cmd
}

/// Installs `dir`'s locked devDependencies unless `node_modules` already holds exactly
/// that lockfile's install.
pub fn npm_ci(dir: &Path) {
    let lock = std::fs::read(dir.join("package-lock.json")).expect("a committed package-lock.json");
    let stamp = dir.join("node_modules").join(".herald-installed-lock");
    if std::fs::read(&stamp).ok().as_deref() == Some(&lock[..]) {
        return;
    }
    run(
        &mut npm(dir, &["ci"]),
        &format!("npm ci in {}", dir.display()),
    );
    std::fs::write(&stamp, &lock).expect("write the install stamp");
}

/// `client/node`, installed, typechecked (`tsc --noEmit`, strict, sources and tests) and
/// built (`dist/`), once per process.
pub fn client_package() -> &'static Path {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY.get_or_init(|| {
        let version = run(Command::new("node").arg("--version"), "node --version");
        let version = String::from_utf8_lossy(&version.stdout);
        let major: u32 = version
            .trim()
            .trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        assert!(
            major >= 20,
            "@herald/client needs Node.js 20 or newer, found {version}"
        );
        let dir = repo_root().join("client").join("node");
        npm_ci(&dir);
        run(
            &mut npm(&dir, &["run", "typecheck"]),
            "tsc --noEmit (strict)",
        );
        run(
            &mut npm(&dir, &["run", "build"]),
            "the @herald/client build",
        );
        dir
    })
}

/// `npm` in `dir` with the given arguments (for suites and examples).
pub fn npm_command(dir: &Path, args: &[&str]) -> Command {
    npm(dir, args)
}
